// `novacron send` and `novacron receive`.
import { parseArgs } from 'node:util';
import { sendFile, receiveFiles, type TransferSummary } from '../dwcp/transfer/file.js';
import { UsageError } from './usage.js';

const GiB = 2 ** 30;
const MiB = 2 ** 20;

function human(bytes: number): string {
  return bytes >= GiB ? `${(bytes / GiB).toFixed(2)} GiB` : bytes >= MiB ? `${(bytes / MiB).toFixed(1)} MiB` : `${bytes} B`;
}

/** `host:port`; IPv6 as `[addr]:port`. */
export function parseTarget(s: string): { host: string; port: number } {
  const m = /^\[([^\]]+)\]:(\d+)$/.exec(s) ?? /^([^:]+):(\d+)$/.exec(s);
  const port = m ? Number(m[2]) : NaN;
  if (!m || !Number.isInteger(port) || port < 1 || port > 65535) throw new UsageError(`--to must be host:port, got ${s}`);
  return { host: m[1]!, port };
}

// A bar on a terminal, redrawn at most every 100 ms; nothing when stderr is
// not a terminal (logs and pipes get the summary only).
function progressBar(stream: NodeJS.WriteStream): (done: number, total: number) => void {
  if (!stream.isTTY) return () => undefined;
  const start = Date.now();
  let last = 0;
  let finished = false;
  return (done, total) => {
    const now = Date.now();
    if (finished || (now - last < 100 && done < total)) return;
    finished = done >= total;
    last = now;
    const width = 30;
    const frac = total === 0 ? 1 : done / total;
    const filled = Math.round(frac * width);
    const rate = done / Math.max(1e-3, (now - start) / 1000);
    stream.write(`\r[${'#'.repeat(filled)}${' '.repeat(width - filled)}] ${(frac * 100).toFixed(0).padStart(3)}% ${human(done)} / ${human(total)} ${(rate / 1e9).toFixed(2)} GB/s `);
    if (done >= total) stream.write('\n');
  };
}

function formatSummary(s: TransferSummary): string {
  const p = s.pages;
  return [
    `sent ${s.name}: ${human(s.bytes)} in ${s.seconds.toFixed(2)} s, ${s.gbPerSecond.toFixed(2)} GB/s`,
    `  on the wire ${human(s.wireBytes)} (${s.bytes ? ((100 * s.wireBytes) / s.bytes).toFixed(2) : '0'} % of the file)${s.baselineUsed ? ', delta against the baseline' : ''}`,
    `  pages: ${p.zero} zero, ${p.dup} duplicate, ${p.unchanged} unchanged, ${p.delta} delta, ${p.full} full`,
    `  sha256 ${s.sha256} ${s.verified ? 'verified by the receiver' : 'NOT verified'}`,
  ].join('\n');
}

// The value of flag `--name` when it is one of `allowed` (or absent).
function oneOf<T extends string>(name: string, v: string | undefined, allowed: readonly T[]): T | undefined {
  if (v === undefined || (allowed as readonly string[]).includes(v)) return v as T | undefined;
  throw new UsageError(`--${name} must be ${allowed.slice(0, -1).join(', ')} or ${allowed.at(-1)!}, got ${v}`);
}

export async function cmdSend(args: string[]): Promise<void> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      to: { type: 'string' },
      baseline: { type: 'string' },
      streams: { type: 'string' },
      io: { type: 'string' },
      transport: { type: 'string' },
      'segment-mib': { type: 'string' },
      compression: { type: 'string' },
      json: { type: 'boolean', default: false },
    },
    strict: true,
  });
  if (positionals.length !== 1 || !values.to) throw new UsageError('usage: novacron send FILE --to host:port [--baseline OLD]');
  const { host, port } = parseTarget(values.to);
  const compression = values.compression ?? 'lz4';
  if (compression !== 'lz4' && compression !== 'zstd' && compression !== 'none') throw new UsageError(`--compression must be lz4, zstd or none, got ${compression}`);
  const io = oneOf('io', values.io, ['thread', 'loop'] as const);
  const transport = oneOf('transport', values.transport, ['auto', 'rdma', 'tcp'] as const);
  const summary = await sendFile(positionals[0]!, {
    host,
    port,
    compression,
    ...(values.baseline !== undefined ? { baseline: values.baseline } : {}),
    ...(values.streams !== undefined ? { streams: Number(values.streams) } : {}),
    ...(io ? { io } : {}),
    ...(transport ? { transport } : {}),
    ...(values['segment-mib'] !== undefined ? { segmentBytes: Number(values['segment-mib']) * MiB } : {}),
    onProgress: progressBar(process.stderr),
  });
  process.stdout.write(values.json ? `${JSON.stringify(summary)}\n` : `${formatSummary(summary)}\n`);
  if (!summary.verified) process.exitCode = 1;
}

export async function cmdReceive(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: {
      port: { type: 'string' },
      host: { type: 'string' },
      out: { type: 'string' },
      io: { type: 'string' },
      transport: { type: 'string' },
      keep: { type: 'boolean', default: false },
      json: { type: 'boolean', default: false },
    },
    strict: true,
  });
  const port = Number(values.port);
  if (!values.port || !values.out) throw new UsageError('usage: novacron receive --port P --out DIR [--keep]');
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new UsageError(`--port must be an integer from 0 to 65535, got ${values.port}`);
  const io = oneOf('io', values.io, ['thread', 'loop'] as const);
  const transport = oneOf('transport', values.transport, ['auto', 'tcp'] as const);
  const rx = await receiveFiles({
    port,
    outDir: values.out,
    ...(values.host ? { host: values.host } : {}),
    ...(io ? { io } : {}),
    ...(transport ? { transport } : {}),
  });
  process.stderr.write(`receiving into ${values.out} on port ${rx.port}${values.keep ? '' : ' (one file)'}\n`);
  const stop = (): void => void rx.close();
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  await new Promise<void>((resolve) => {
    rx.on('file', (f: { name: string; path: string; bytes: number; sha256: string; baselineUsed: boolean; seconds: number }) => {
      process.stdout.write(values.json ? `${JSON.stringify(f)}\n`
        : `received ${f.path}: ${human(f.bytes)} in ${f.seconds.toFixed(2)} s${f.baselineUsed ? ' (delta against the baseline)' : ''}, sha256 ${f.sha256} verified\n`);
      if (!values.keep) void rx.close();
    });
    rx.on('transferError', (e: Error & { code?: string }, name?: string) => {
      process.stderr.write(`transfer${name ? ` of ${name}` : ''} failed: ${e.message} (${e.code ?? 'ERR_TRANSFER_FAILED'})\n`);
      if (!values.keep) {
        process.exitCode = 1;
        void rx.close();
      }
    });
    rx.server.on('close', resolve);
  });
}
