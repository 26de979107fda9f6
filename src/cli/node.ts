// `novacron start`, `novacron status`, `novacron config print`.
import { parseArgs } from 'node:util';
import { request } from 'node:http';
import { formatConfig, loadConfig, type LoadOptions } from '../control/config.js';
import { NovacronError } from '../errors.js';
import { UsageError } from './usage.js';

const NODE_OPTIONS = {
  config: { type: 'string', multiple: true },
  'api-port': { type: 'string' },
  'api-host': { type: 'string' },
  'data-port': { type: 'string' },
  'data-dir': { type: 'string' },
  'log-level': { type: 'string' },
  set: { type: 'string', multiple: true },
} as const;

type NodeFlags = { config?: string[]; 'api-port'?: string; 'api-host'?: string; 'data-port'?: string; 'data-dir'?: string; 'log-level'?: string; set?: string[] };

/** Command-line flags as config sources: the named ones, then `--set section.key=value`. */
function loadOptions(v: NodeFlags): LoadOptions {
  const flags: Record<string, string> = {};
  const named: Array<[keyof NodeFlags, string]> = [
    ['api-port', 'api.port'],
    ['api-host', 'api.host'],
    ['data-port', 'data.port'],
    ['data-dir', 'node.dataDir'],
    ['log-level', 'log.level'],
  ];
  for (const [flag, field] of named) {
    const x = v[flag];
    if (typeof x === 'string') flags[field] = x;
  }
  for (const s of v.set ?? []) {
    const eq = s.indexOf('=');
    if (eq <= 0) throw new UsageError(`--set takes section.key=value, got ${s}`);
    flags[s.slice(0, eq)] = s.slice(eq + 1);
  }
  return { files: v.config ?? [], flags };
}

export async function cmdStart(args: string[]): Promise<void> {
  const { values } = parseArgs({ args, options: NODE_OPTIONS, strict: true });
  const { NovacronNode } = await import('../control/node.js');
  const node = new NovacronNode(loadOptions(values));
  let stopping = false;
  const stop = (signal: string): void => {
    if (stopping) return;
    stopping = true;
    node.log.info({ signal }, 'shutting down');
    void node.stop().then(() => process.exit(0));
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  process.on('SIGHUP', () => void node.reload());
  node.watchConfigFiles();
  try {
    await node.start();
  } catch (err) {
    node.log.fatal({ err: (err as Error).message, code: (err as { code?: string }).code }, 'start failed');
    throw err;
  }
}

function getJson(host: string, port: number, path: string): Promise<{ status: number; body: unknown }> {
  return new Promise((resolve, reject) => {
    const req = request({ host, port, path, timeout: 5000 }, (res) => {
      let data = '';
      res.on('data', (d: Buffer) => (data += d.toString()));
      res.on('end', () => {
        try {
          resolve({ status: res.statusCode ?? 0, body: JSON.parse(data) });
        } catch {
          reject(new Error(`bad answer from ${host}:${port}${path}`));
        }
      });
    });
    req.on('timeout', () => req.destroy(new Error(`no answer from ${host}:${port} within 5 s`)));
    req.on('error', reject);
    req.end();
  });
}

export async function cmdStatus(args: string[]): Promise<void> {
  const { values } = parseArgs({ args, options: { ...NODE_OPTIONS, json: { type: 'boolean', default: false } }, strict: true });
  const { config } = loadConfig(loadOptions(values));
  const host = config.api.host === '0.0.0.0' ? '127.0.0.1' : config.api.host;
  let res: { status: number; body: unknown };
  try {
    res = await getJson(host, config.api.port, '/health');
  } catch (err) {
    throw new NovacronError('ERR_NODE_UNREACHABLE', `no node answers on ${host}:${config.api.port}: ${(err as Error).message}`, { cause: err });
  }
  const body = res.body as { status: string; components: Array<{ name: string; state: string; ok: boolean; startMs: number; error?: string }> };
  if (values.json) {
    process.stdout.write(`${JSON.stringify(body)}\n`);
  } else {
    process.stdout.write(`node on ${host}:${config.api.port}: ${body.status}\n`);
    for (const c of body.components) {
      process.stdout.write(`  ${c.name.padEnd(12)} ${c.state.padEnd(9)} ${c.ok ? 'ok' : 'NOT OK'}${c.error ? `: ${c.error}` : ''}\n`);
    }
  }
  if (res.status !== 200) process.exitCode = 1;
}

export async function cmdConfig(args: string[]): Promise<void> {
  const [sub, ...rest] = args;
  if (sub !== 'print') throw new UsageError('usage: novacron config print [--config FILE] [--json]');
  const { values } = parseArgs({ args: rest, options: { ...NODE_OPTIONS, json: { type: 'boolean', default: false } }, strict: true });
  const loaded = loadConfig(loadOptions(values));
  process.stdout.write(values.json ? `${JSON.stringify(loaded)}\n` : `${formatConfig(loaded)}\n`);
}
