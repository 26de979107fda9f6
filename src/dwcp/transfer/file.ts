// File transfer over AMST: `novacron send` / `novacron receive`.
//
// The file goes in segments (128 MiB by default) so memory stays bounded
// whatever its size. Each segment is HDE-encoded page by page (sendPages);
// with a baseline (the previous version of the file, which the receiver also
// holds), the encoder is first primed with the baseline's segment and the
// receiver starts from its copy, so unchanged pages cost a few bytes and
// changed ones a delta. Without one, zero and duplicate pages still shrink.
//
// Control messages are JSON objects (first byte `{`); every other message is
// an HDE frame (first byte `H`). In order, on one connection:
//   sender   {t:'hello', v, name, size, pageSize, segmentBytes, baseline: {name,size,sha256}|null}
//   receiver {t:'accept', baseline: bool, reason?} or {t:'reject', code, message}
//   sender   per segment: {t:'segment', index, bytes}, frames, {t:'segmentEnd', index}
//   sender   {t:'end', sha256}
//   receiver {t:'done', ok, sha256, code?, message?}
// The receiver writes `<out>/.<name>.<random>.part` (its own, so transfers
// of one name at once cannot write into each other), fsyncs it, checks
// SHA-256 and renames it to `<out>/<name>` (then fsyncs the directory): a
// file appears whole and verified, or not at all.
import { createHash, randomBytes } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { open, rename, rm, stat, type FileHandle } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { NovacronError, InvalidArgumentError } from '../../errors.js';
import { HdeDecoder, HdeEncoder } from '../encoding/hde.js';
import type { Compression } from '../encoding/compression.js';
import { connect, listen, type AmstConnection, type AmstServer, type IoMode, type Transport } from '../transport/amst.js';
import { sendPages } from './pages.js';

/** Errors of a file transfer; `code` is `ERR_TRANSFER_<WHAT>`. */
export class TransferError extends NovacronError {
  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(code, message, options);
    this.name = 'TransferError';
  }
}

const PROTOCOL_VERSION = 1;
const DEFAULT_SEGMENT = 128 * 1024 * 1024;
const MAX_SEGMENT = 1024 * 1024 * 1024;

export interface SendFileOptions {
  host: string;
  port: number;
  /** TCP streams. Default 8. */
  streams?: number;
  io?: IoMode;
  /** What carries the data (see ConnectOptions.transport). Default `auto`. */
  transport?: Transport;
  /** Previous version of the file, also present in the receiver's output directory under its own name. */
  baseline?: string;
  /** Default 4096. */
  pageSize?: number;
  /** Bytes per segment, a multiple of the page size up to 1 GiB. Default 128 MiB. The sender holds one or two (with a baseline), the receiver two. */
  segmentBytes?: number;
  /** Default lz4. */
  compression?: Compression;
  /** Bytes of the file the receiver has acknowledged. */
  onProgress?: (bytesDone: number, bytesTotal: number) => void;
}

export interface TransferSummary {
  name: string;
  /** File bytes. */
  bytes: number;
  /** HDE frame bytes carried (compressed, deltas). */
  wireBytes: number;
  seconds: number;
  /** File bytes per second / 1e9. */
  gbPerSecond: number;
  sha256: string;
  /** The receiver recomputed the SHA-256 of what it wrote and it matched. */
  verified: boolean;
  /** The baseline was used (the receiver held the same version). */
  baselineUsed: boolean;
  pages: { zero: number; dup: number; delta: number; unchanged: number; full: number };
}

type Control =
  | { t: 'hello'; v: number; name: string; size: number; pageSize: number; segmentBytes: number; baseline: { name: string; size: number; sha256: string } | null }
  | { t: 'accept'; baseline: boolean; reason?: string }
  | { t: 'reject'; code: string; message: string }
  | { t: 'segment'; index: number; bytes: number }
  | { t: 'segmentEnd'; index: number }
  | { t: 'end'; sha256: string }
  | { t: 'done'; ok: boolean; sha256?: string; code?: string; message?: string };

const BRACE = 0x7b;

function encodeControl(c: Control): Buffer {
  return Buffer.from(JSON.stringify(c));
}

function decodeControl(m: Buffer): Control {
  let v: unknown;
  try {
    v = JSON.parse(m.toString('utf8'));
  } catch {
    throw new TransferError('ERR_TRANSFER_PROTOCOL', 'malformed control message');
  }
  if (typeof v !== 'object' || v === null || typeof (v as { t?: unknown }).t !== 'string') {
    throw new TransferError('ERR_TRANSFER_PROTOCOL', 'control message without a type');
  }
  return v as Control;
}

/** `.<name>.<12 hex>.part`, the name cut to whole characters so the whole stays within 255 bytes. */
function partName(name: string): string {
  let prefix = '';
  let bytes = 0;
  for (const ch of name) {
    bytes += Buffer.byteLength(ch);
    if (bytes > 200) break;
    prefix += ch;
  }
  return `.${prefix}.${randomBytes(6).toString('hex')}.part`;
}

const isInt = (v: unknown, min: number, max: number): v is number => Number.isSafeInteger(v) && (v as number) >= min && (v as number) <= max;

/**
 * A file name the receiver may create: one path component of at most 255
 * bytes (the file system's limit), nothing hidden or special, and no lone
 * surrogate (which the file system would store as U+FFFD, another name).
 */
function checkName(name: unknown): string {
  if (typeof name !== 'string' || name.length === 0 || Buffer.byteLength(name) > 255 || name !== basename(name) || name.startsWith('.') || /[\0/\\]|\p{Cs}/u.test(name)) {
    throw new TransferError('ERR_TRANSFER_BAD_NAME', `refusing file name ${JSON.stringify(name)}`);
  }
  return name;
}

async function sha256File(path: string, chunk = 8 << 20): Promise<string> {
  const h = createHash('sha256');
  const fh = await open(path, 'r');
  try {
    const buf = Buffer.allocUnsafe(chunk);
    for (;;) {
      const { bytesRead } = await fh.read(buf, 0, chunk, null);
      if (bytesRead === 0) break;
      h.update(buf.subarray(0, bytesRead));
    }
  } finally {
    await fh.close();
  }
  return h.digest('hex');
}

/** Reads up to `length` bytes at `position`; the rest of `buf` up to `length` is zeroed. */
async function readAt(fh: FileHandle, buf: Buffer, length: number, position: number): Promise<number> {
  let got = 0;
  while (got < length) {
    const { bytesRead } = await fh.read(buf, got, length - got, position + got);
    if (bytesRead === 0) break;
    got += bytesRead;
  }
  buf.fill(0, got, length);
  return got;
}

// How long a graceful close may take before the connection is dropped: a
// peer that never finishes closing must not pin a connection forever.
const CLOSE_GRACE_MS = 5000;

async function closeWithin(conn: AmstConnection, ms = CLOSE_GRACE_MS): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<boolean>((r) => (timer = setTimeout(() => r(true), ms)));
  const closed = conn.close().then(
    () => false,
    () => false,
  );
  if (await Promise.race([closed, late])) conn.destroy();
  clearTimeout(timer);
}

/**
 * The next message of `queue`, which a listener registered before this call
 * fills; fails if the connection closes first.
 */
function nextMessage(conn: AmstConnection, queue: Buffer[]): Promise<Buffer> {
  const head = queue.shift();
  if (head) return Promise.resolve(head);
  return new Promise((resolve, reject) => {
    const onMessage = (): void => {
      cleanup();
      resolve(queue.shift()!);
    };
    const onClose = (err?: Error): void => {
      cleanup();
      reject(new TransferError('ERR_TRANSFER_CONNECTION', `connection closed before the receiver answered${err ? `: ${err.message}` : ''}`, { cause: err }));
    };
    const cleanup = (): void => {
      conn.off('message', onMessage);
      conn.off('close', onClose);
    };
    conn.on('message', onMessage);
    conn.on('close', onClose);
  });
}

/** Sends one file to a `receiveFiles` server and waits for its verified answer. */
export async function sendFile(path: string, options: SendFileOptions): Promise<TransferSummary> {
  if (typeof path !== 'string' || path.length === 0) throw new InvalidArgumentError('path must be a non-empty string');
  if (typeof options !== 'object' || options === null) throw new InvalidArgumentError('options must be an object');
  if (options.onProgress !== undefined && typeof options.onProgress !== 'function') throw new InvalidArgumentError('onProgress must be a function');
  const pageSize = options.pageSize ?? 4096;
  const segmentBytes = options.segmentBytes ?? DEFAULT_SEGMENT;
  if (!isInt(segmentBytes, pageSize, MAX_SEGMENT) || segmentBytes % pageSize !== 0) {
    throw new InvalidArgumentError(`segmentBytes must be a multiple of the page size ${pageSize}, at most ${MAX_SEGMENT}`);
  }
  const name = checkName(basename(path));
  const size = (await stat(path)).size;
  let baseline: { name: string; size: number; sha256: string } | null = null;
  if (options.baseline !== undefined) {
    baseline = { name: checkName(basename(options.baseline)), size: (await stat(options.baseline)).size, sha256: await sha256File(options.baseline) };
  }
  // Everything that can refuse the options (the encoder checks pageSize and
  // compression) comes before the connection, and whatever was taken by the
  // time something fails is given back.
  const encoder = new HdeEncoder({ pageSize, compression: options.compression ?? 'lz4', cacheBytes: segmentBytes });
  let fh: FileHandle | undefined;
  let baseFh: FileHandle | undefined;
  let conn: AmstConnection;
  const started = process.hrtime.bigint();
  try {
    fh = await open(path, 'r');
    baseFh = baseline ? await open(options.baseline!, 'r') : undefined;
    conn = await connect({
      host: options.host,
      port: options.port,
      streams: options.streams ?? 8,
      ...(options.io ? { io: options.io } : {}),
      ...(options.transport ? { transport: options.transport } : {}),
    });
  } catch (err) {
    encoder.close();
    await fh?.close();
    await baseFh?.close();
    throw err;
  }
  const inbox: Buffer[] = [];
  const keep = (m: Buffer): void => void inbox.push(m);
  conn.on('message', keep);
  try {
    await conn.send(encodeControl({ t: 'hello', v: PROTOCOL_VERSION, name, size, pageSize, segmentBytes, baseline }));
    const answer = decodeControl(await nextMessage(conn, inbox));
    if (answer.t === 'reject') throw new TransferError(answer.code, `receiver refused: ${answer.message}`);
    if (answer.t !== 'accept') throw new TransferError('ERR_TRANSFER_PROTOCOL', `unexpected answer ${answer.t}`);
    const useBaseline = answer.baseline && baseFh !== undefined;
    const hash = createHash('sha256');
    const seg = Buffer.allocUnsafe(segmentBytes);
    const old = useBaseline ? Buffer.allocUnsafe(segmentBytes) : undefined;
    const scratch = useBaseline ? Buffer.allocUnsafe(encoder.maxEncodedSize(256)) : undefined;
    let wireBytes = 0;
    let done = 0;
    const pages = { zero: 0, dup: 0, delta: 0, unchanged: 0, full: 0 };
    for (let index = 0, pos = 0; pos < size; index++, pos += segmentBytes) {
      const bytes = Math.min(segmentBytes, size - pos);
      const padded = Math.ceil(bytes / pageSize) * pageSize;
      const got = await readAt(fh, seg, padded, pos);
      if (got < bytes) throw new TransferError('ERR_TRANSFER_SOURCE_CHANGED', `${path} shrank while being sent`);
      hash.update(seg.subarray(0, bytes));
      encoder.reset();
      if (useBaseline) {
        // Teach the encoder what the receiver starts this segment from.
        const oldLen = Math.max(0, Math.min(padded, baseline!.size - pos));
        await readAt(baseFh!, old!, padded, pos);
        const oldPages = Math.ceil(oldLen / pageSize);
        for (let p = 0; p < oldPages; p += 256) {
          const n = Math.min(256, oldPages - p);
          const pns = new BigUint64Array(n);
          for (let i = 0; i < n; i++) pns[i] = BigInt(p + i);
          encoder.encodeInto(scratch!, old!.subarray(p * pageSize, (p + n) * pageSize), pns);
        }
      }
      await conn.send(encodeControl({ t: 'segment', index, bytes }));
      const before = encoder.stats();
      const r = await sendPages(conn, encoder, seg.subarray(0, padded), {
        onProgress: (pagesDone) => options.onProgress?.(Math.min(size, done + pagesDone * pageSize), size),
      });
      wireBytes += r.wireBytes;
      const after = encoder.stats();
      pages.zero += after.zero - before.zero;
      pages.dup += after.dup - before.dup;
      pages.delta += after.delta - after.unchanged - (before.delta - before.unchanged);
      pages.unchanged += after.unchanged - before.unchanged;
      pages.full += after.full - before.full;
      await conn.send(encodeControl({ t: 'segmentEnd', index }));
      done += bytes;
    }
    const sha256 = hash.digest('hex');
    await conn.send(encodeControl({ t: 'end', sha256 }));
    const verdict = decodeControl(await nextMessage(conn, inbox));
    if (verdict.t !== 'done') throw new TransferError('ERR_TRANSFER_PROTOCOL', `unexpected answer ${verdict.t}`);
    if (!verdict.ok) throw new TransferError(verdict.code ?? 'ERR_TRANSFER_FAILED', `receiver failed: ${verdict.message ?? 'unknown error'}`);
    const seconds = Number(process.hrtime.bigint() - started) / 1e9;
    options.onProgress?.(size, size);
    return {
      name,
      bytes: size,
      wireBytes,
      seconds,
      gbPerSecond: size / seconds / 1e9,
      sha256,
      verified: verdict.sha256 === sha256,
      baselineUsed: useBaseline,
      pages,
    };
  } catch (err) {
    // A receiver that gives up says why before it closes: prefer its reason
    // to the transport error the closing caused here.
    for (const m of inbox) {
      if (m[0] !== BRACE) continue;
      const c = decodeControl(m);
      if ((c.t === 'done' && !c.ok) || c.t === 'reject') throw new TransferError(c.code ?? 'ERR_TRANSFER_FAILED', `receiver failed: ${c.message ?? 'unknown error'}`);
    }
    throw err;
  } finally {
    encoder.close();
    await fh.close();
    await baseFh?.close();
    await closeWithin(conn);
  }
}

export interface ReceiveOptions {
  /** Address to bind. Default 0.0.0.0. */
  host?: string;
  port: number;
  /** Directory files are written to (it must exist). Baselines are looked up here too. */
  outDir: string;
  io?: IoMode;
  /** `tcp` declines senders' RDMA offers (see ListenOptions.transport). Default `auto`. */
  transport?: 'auto' | 'tcp';
  /** Largest file accepted, bytes. Default 1 TiB. */
  maxBytes?: number;
  /**
   * A transfer whose sender sends nothing for this long fails
   * (ERR_TRANSFER_TIMEOUT) and its partial file is removed. Default 60 s.
   */
  idleTimeoutMs?: number;
}

export interface ReceivedFile {
  name: string;
  path: string;
  bytes: number;
  sha256: string;
  baselineUsed: boolean;
  seconds: number;
}

/**
 * A file receiver. Events: `file` (ReceivedFile) for each file written and
 * verified, `transferError` (a NovacronError, such as a TransferError or an
 * HdeError; the file name or undefined) for each transfer that failed;
 * nothing is left behind by a failed one.
 */
export interface FileReceiver {
  on(event: 'file', listener: (file: ReceivedFile) => void): this;
  on(event: 'transferError', listener: (error: NovacronError, name: string | undefined) => void): this;
  once(event: 'file', listener: (file: ReceivedFile) => void): this;
  once(event: 'transferError', listener: (error: NovacronError, name: string | undefined) => void): this;
}
export class FileReceiver extends EventEmitter {
  readonly server: AmstServer;
  readonly outDir: string;
  readonly maxBytes: number;
  readonly idleTimeoutMs: number;

  /** @internal */
  constructor(server: AmstServer, outDir: string, maxBytes: number, idleTimeoutMs: number) {
    super();
    this.server = server;
    this.outDir = outDir;
    this.maxBytes = maxBytes;
    this.idleTimeoutMs = idleTimeoutMs;
    server.on('connection', (conn: AmstConnection) => this.#serve(conn));
  }

  get port(): number {
    return this.server.port;
  }

  /** Stops listening and ends transfers in progress (they fail; their partial files are removed). */
  async close(): Promise<void> {
    await this.server.close();
    await Promise.all([...this.#open].map((c) => closeWithin(c)));
  }

  #open = new Set<AmstConnection>();

  #serve(conn: AmstConnection): void {
    // Messages are handled one at a time, in order, each after the last one's file I/O.
    let chain = Promise.resolve();
    const session = new ReceiveSession(this, conn);
    this.#open.add(conn);
    conn.once('close', () => this.#open.delete(conn));
    // A sender that goes quiet must not hold a partial file and its buffers forever.
    const idle = setTimeout(() => {
      chain = chain.then(() => session.fail(new TransferError('ERR_TRANSFER_TIMEOUT', `the sender sent nothing for ${this.idleTimeoutMs} ms`)));
    }, this.idleTimeoutMs);
    conn.on('message', (m: Buffer) => {
      idle.refresh();
      chain = chain.then(() => session.handle(m)).catch((err: unknown) => session.fail(err));
    });
    conn.on('close', () => {
      clearTimeout(idle);
      chain = chain.then(() => session.abandon());
    });
  }
}

class ReceiveSession {
  #rx: FileReceiver;
  #conn: AmstConnection;
  #hello: Extract<Control, { t: 'hello' }> | undefined;
  #fh: FileHandle | undefined;
  #partPath = '';
  #baseFh: FileHandle | undefined;
  // Two segment buffers: one is decoded into while the other is written out.
  #regions: Buffer[] = [];
  #region: Buffer | undefined;
  #free: Array<Promise<void>> = [Promise.resolve(), Promise.resolve()];
  #writes: Promise<void> = Promise.resolve();
  #writeError: unknown;
  #decoder: HdeDecoder | undefined;
  #segment = -1;
  #segmentBytes = 0;
  #written = 0;
  #hash = createHash('sha256');
  #started = process.hrtime.bigint();
  #finished = false;
  #baselineUsed = false;

  constructor(rx: FileReceiver, conn: AmstConnection) {
    this.#rx = rx;
    this.#conn = conn;
  }

  async handle(m: Buffer): Promise<void> {
    if (this.#finished) return;
    if (m[0] !== BRACE) {
      if (!this.#decoder) throw new TransferError('ERR_TRANSFER_PROTOCOL', 'page frame outside a segment');
      this.#decoder.decode(m);
      return;
    }
    const c = decodeControl(m);
    switch (c.t) {
      case 'hello':
        return this.#onHello(c);
      case 'segment':
        return this.#onSegment(c);
      case 'segmentEnd':
        return this.#onSegmentEnd(c);
      case 'end':
        return this.#onEnd(c);
      default:
        throw new TransferError('ERR_TRANSFER_PROTOCOL', `unexpected control message ${c.t}`);
    }
  }

  async #onHello(c: Extract<Control, { t: 'hello' }>): Promise<void> {
    if (this.#hello) throw new TransferError('ERR_TRANSFER_PROTOCOL', 'second hello');
    if (c.v !== PROTOCOL_VERSION) throw new TransferError('ERR_TRANSFER_VERSION', `unsupported transfer protocol version ${String(c.v)}`);
    checkName(c.name);
    if (!isInt(c.size, 0, this.#rx.maxBytes)) throw new TransferError('ERR_TRANSFER_TOO_LARGE', `file size ${String(c.size)} is over the limit of ${this.#rx.maxBytes}`);
    if (!isInt(c.pageSize, 512, 65536) || (c.pageSize & (c.pageSize - 1)) !== 0) throw new TransferError('ERR_TRANSFER_PROTOCOL', 'bad page size');
    if (!isInt(c.segmentBytes, c.pageSize, MAX_SEGMENT) || c.segmentBytes % c.pageSize !== 0) throw new TransferError('ERR_TRANSFER_PROTOCOL', 'bad segment size');
    this.#hello = c;
    let useBaseline = false;
    let reason: string | undefined;
    if (c.baseline) {
      const path = join(this.#rx.outDir, checkName(c.baseline.name));
      try {
        if ((await stat(path)).size !== c.baseline.size || (await sha256File(path)) !== c.baseline.sha256) reason = 'baseline differs here';
        else {
          this.#baseFh = await open(path, 'r');
          useBaseline = true;
          this.#baselineUsed = true;
        }
      } catch {
        reason = 'no baseline here';
      }
    }
    this.#partPath = join(this.#rx.outDir, partName(c.name));
    this.#fh = await open(this.#partPath, 'wx');  // a new file: never one in use, never through a symlink
    // No larger than the file needs, and the second only if there is a second segment.
    const first = Math.min(c.segmentBytes, Math.max(c.pageSize, Math.ceil(c.size / c.pageSize) * c.pageSize));
    this.#regions = c.size > c.segmentBytes ? [Buffer.allocUnsafe(first), Buffer.allocUnsafe(first)] : [Buffer.allocUnsafe(first)];
    await this.#conn.send(encodeControl(reason ? { t: 'accept', baseline: false, reason } : { t: 'accept', baseline: useBaseline }));
  }

  async #onSegment(c: Extract<Control, { t: 'segment' }>): Promise<void> {
    const h = this.#hello;
    if (!h || this.#regions.length === 0) throw new TransferError('ERR_TRANSFER_PROTOCOL', 'segment before hello');
    const pos = (this.#segment + 1) * h.segmentBytes;
    if (c.index !== this.#segment + 1 || !isInt(c.bytes, 1, h.segmentBytes) || pos + c.bytes > h.size || this.#decoder) {
      throw new TransferError('ERR_TRANSFER_PROTOCOL', `unexpected segment ${String(c.index)}`);
    }
    this.#segment = c.index;
    this.#segmentBytes = c.bytes;
    // The buffer two segments back may still be on its way to disk.
    await this.#free[c.index % 2];
    this.#throwWriteError();
    this.#region = this.#regions[c.index % 2]!;
    const padded = Math.ceil(c.bytes / h.pageSize) * h.pageSize;
    const region = this.#region.subarray(0, padded);
    // Deltas apply to what the baseline held here; every page gets a record,
    // so without a baseline the region's old bytes never show through.
    if (this.#baseFh) await readAt(this.#baseFh, this.#region, padded, pos);
    this.#decoder = new HdeDecoder({ pageSize: h.pageSize, region });
  }

  async #onSegmentEnd(c: Extract<Control, { t: 'segmentEnd' }>): Promise<void> {
    const h = this.#hello!;
    if (!this.#decoder || c.index !== this.#segment) throw new TransferError('ERR_TRANSFER_PROTOCOL', 'segment end out of place');
    const pages = this.#decoder.stats().pages;
    this.#decoder.close();
    this.#decoder = undefined;
    if (pages !== Math.ceil(this.#segmentBytes / h.pageSize)) {
      throw new TransferError('ERR_TRANSFER_PROTOCOL', `segment ${c.index} carried ${pages} pages, expected ${Math.ceil(this.#segmentBytes / h.pageSize)}`);
    }
    // Written and hashed in the background, in order, while the next
    // segment is decoded into the other buffer.
    const data = this.#region!.subarray(0, this.#segmentBytes);
    const fh = this.#fh!;
    const at = c.index * h.segmentBytes;
    const task = this.#writes.then(async () => {
      let off = 0;
      while (off < data.length) {
        const { bytesWritten } = await fh.write(data, off, data.length - off, at + off);
        off += bytesWritten;
      }
      this.#hash.update(data);
      this.#written += data.length;
    });
    const settled = task.catch((err: unknown) => {
      this.#writeError ??= err;
    });
    this.#writes = settled;
    this.#free[c.index % 2] = settled;
  }

  #throwWriteError(): void {
    if (this.#writeError !== undefined) {
      const e = this.#writeError;
      throw e instanceof NovacronError ? e : new TransferError('ERR_TRANSFER_WRITE', `writing ${this.#partPath}: ${e instanceof Error ? e.message : String(e)}`, { cause: e });
    }
  }

  async #onEnd(c: Extract<Control, { t: 'end' }>): Promise<void> {
    const h = this.#hello;
    await this.#writes;
    this.#throwWriteError();
    if (!h || this.#decoder || this.#written !== h.size) throw new TransferError('ERR_TRANSFER_PROTOCOL', 'end before the whole file arrived');
    const sha256 = this.#hash.digest('hex');
    if (sha256 !== c.sha256) throw new TransferError('ERR_TRANSFER_CHECKSUM', `SHA-256 mismatch: sender ${String(c.sha256)}, written ${sha256}`);
    await this.#fh!.sync();
    await this.#fh!.close();
    this.#fh = undefined;
    const final = join(this.#rx.outDir, h.name);
    await rename(this.#partPath, final);
    const dir = await open(this.#rx.outDir, 'r');
    try {
      await dir.sync();
    } finally {
      await dir.close();
    }
    this.#finished = true;
    await this.#baseFh?.close();
    this.#baseFh = undefined;
    await this.#conn.send(encodeControl({ t: 'done', ok: true, sha256 }));
    const seconds = Number(process.hrtime.bigint() - this.#started) / 1e9;
    this.#rx.emit('file', { name: h.name, path: final, bytes: h.size, sha256, baselineUsed: this.#baselineUsed, seconds } satisfies ReceivedFile);
  }

  /** A transfer went wrong: tell the sender, drop the partial file. */
  async fail(err: unknown): Promise<void> {
    if (this.#finished) return;
    this.#finished = true;
    const e = err instanceof NovacronError ? err : new TransferError('ERR_TRANSFER_FAILED', err instanceof Error ? err.message : String(err), { cause: err });
    await this.#cleanup();
    const reply: Control = this.#hello ? { t: 'done', ok: false, code: e.code, message: e.message } : { t: 'reject', code: e.code, message: e.message };
    this.#rx.emit('transferError', e, this.#hello?.name);
    await this.#conn.send(encodeControl(reply)).catch(() => undefined);
    await closeWithin(this.#conn);
  }

  /** The connection closed; anything unfinished is removed. */
  async abandon(): Promise<void> {
    if (this.#finished) return;
    this.#finished = true;
    await this.#cleanup();
    if (this.#hello) this.#rx.emit('transferError', new TransferError('ERR_TRANSFER_CONNECTION', 'sender went away mid-transfer'), this.#hello.name);
  }

  async #cleanup(): Promise<void> {
    await this.#writes;  // never rejects; the file handle must outlive the writes
    this.#decoder?.close();
    this.#decoder = undefined;
    await this.#fh?.close().catch(() => undefined);
    this.#fh = undefined;
    await this.#baseFh?.close().catch(() => undefined);
    this.#baseFh = undefined;
    if (this.#partPath) await rm(this.#partPath, { force: true });
  }
}

/** Starts a file receiver; resolves once it listens. */
export async function receiveFiles(options: ReceiveOptions): Promise<FileReceiver> {
  if (typeof options !== 'object' || options === null) throw new InvalidArgumentError('options must be an object');
  if (typeof options.outDir !== 'string' || options.outDir.length === 0) throw new InvalidArgumentError('outDir must be the path of a directory');
  if (options.maxBytes !== undefined && !isInt(options.maxBytes, 1, Number.MAX_SAFE_INTEGER)) {
    throw new InvalidArgumentError(`maxBytes must be a positive integer, got ${String(options.maxBytes)}`);
  }
  if (options.idleTimeoutMs !== undefined && !isInt(options.idleTimeoutMs, 1, 2 ** 31 - 1)) {
    throw new InvalidArgumentError(`idleTimeoutMs must be a positive integer of milliseconds, got ${String(options.idleTimeoutMs)}`);
  }
  const st = await stat(options.outDir).catch(() => null);
  if (!st?.isDirectory()) throw new InvalidArgumentError(`output directory ${options.outDir} does not exist`);
  const server = await listen({
    host: options.host ?? '0.0.0.0',
    port: options.port,
    ...(options.io ? { io: options.io } : {}),
    ...(options.transport ? { transport: options.transport } : {}),
  });
  return new FileReceiver(server, options.outDir, options.maxBytes ?? 2 ** 40, options.idleTimeoutMs ?? 60_000);
}
