// AMST: message transport over N TCP streams. One native I/O thread per
// Node thread serves every connection; this module routes its events to the
// objects below.
//
//   const server = await listen({ port: 7701 });
//   server.on('connection', (conn) => conn.on('message', (buf) => ...));
//   const conn = await connect({ host: '10.0.0.2', port: 7701, streams: 8 });
//   await conn.send(buf);   // resolves once the peer holds the whole message
import { EventEmitter } from 'node:events';
import { isIP } from 'node:net';
import { constants as osConstants } from 'node:os';
import { getSystemErrorMap } from 'node:util';
import { native, type NativeAmstEngine, type NativeAmstStats, type NativeAmstStreamStats } from '../../native.js';
import { InvalidArgumentError, NovacronError, rethrowLater, statusName } from '../../errors.js';
import { NETWORK_MODES, type NetworkMode } from '../mode.js';

/** Errors of the transport; `code` is `ERR_AMST_<STATUS>`. */
export class TransportError extends NovacronError {
  /** errno name of the underlying socket error, when there was one (e.g. `ECONNREFUSED`). */
  readonly syscallError: string | undefined;
  constructor(code: string, message: string, syscallError?: string) {
    super(code, message);
    this.name = 'TransportError';
    this.syscallError = syscallError;
  }
}

/**
 * Where a connection's socket I/O runs. `thread`: a native I/O thread per
 * Node thread, so bulk transfers proceed while JS works (best throughput).
 * `loop`: the Node event loop itself, which saves the cross-thread wake-ups
 * of every request/response (best latency for small messages).
 */
export type IoMode = 'thread' | 'loop';

export interface ListenOptions {
  /** Numeric address to bind. Default 127.0.0.1. */
  host?: string;
  /** Port; 0 picks a free one. Default 0. */
  port?: number;
  /** Where accepted connections' I/O runs. Default `thread`. */
  io?: IoMode;
  /** Accepted connections lend their received messages (see ConnectOptions.lendBuffers). Default false. */
  lendBuffers?: boolean;
  /** See ConnectOptions.busyPollMicros. */
  busyPollMicros?: number;
  /**
   * `auto`: take clients' RDMA offers when this host has an RDMA device
   * with an active port; `tcp`: decline them (clients asking for `rdma`
   * then fail with ERR_AMST_UNAVAILABLE, `auto` ones use TCP). Default `auto`.
   */
  transport?: 'auto' | 'tcp';
  /** RDMA device, GID index and ring size of accepted connections' lanes: see ConnectOptions. */
  rdmaDevice?: string;
  rdmaGidIndex?: number;
  rdmaRingBytes?: number;
  /**
   * An accepted socket that has not opened its stream (sent its HELLO)
   * within this many milliseconds is closed, so scans and stalled clients do
   * not hold descriptors for good. 10 to 3,600,000. Default 10,000.
   */
  handshakeTimeoutMs?: number;
  /** See ConnectOptions.peerTimeoutMs; for the sockets this listener accepts. */
  peerTimeoutMs?: number;
  /** See ConnectOptions.highWaterMark; for the connections this listener accepts. */
  highWaterMark?: number;
  /**
   * Congestion control of accepted sockets (what this end sends with); a
   * name the kernel lacks fails listen. Default: the system's.
   */
  congestion?: string;
  /**
   * SO_SNDBUF / SO_RCVBUF of accepted sockets, set on the listening socket
   * so that the handshake's window scale fits them; 0 keeps the kernel's
   * autotuning. Default 0.
   */
  sendBufferBytes?: number;
  recvBufferBytes?: number;
}

/**
 * What carries a connection's data. `auto`: RDMA queue pairs when both hosts
 * have an RDMA device and the server agrees, else TCP. `rdma`: RDMA or the
 * connect fails with ERR_AMST_UNAVAILABLE. `tcp`: TCP only. Over RDMA the
 * TCP streams stay up: they set RDMA up, and the connection moves back to
 * them without losing a message if RDMA fails (a `transport` event says so).
 */
export type Transport = 'auto' | 'rdma' | 'tcp';

export interface ConnectOptions {
  /** Numeric IPv4 or IPv6 address of the peer. */
  host: string;
  port: number;
  /** TCP streams, 1 to 512. Default from `mode`: 8 (internet, hybrid) or 16 (datacenter). */
  streams?: number;
  /** TCP congestion control per stream. Default from `mode`: `bbr` (internet), `cubic` (datacenter), system default otherwise. */
  congestion?: string;
  /** Chunk size messages are cut into, a power of two from 4 KiB to 16 MiB. Default 256 KiB. */
  chunkSize?: number;
  /** SO_SNDBUF / SO_RCVBUF per stream in bytes; 0 leaves the kernel's autotuning. Default 0. */
  sendBufferBytes?: number;
  recvBufferBytes?: number;
  /** Link mode, for the defaults above. */
  mode?: NetworkMode;
  /**
   * Bytes of received messages held for a consumer yet to come (no
   * `message` or `batch` listener; or the async iterator not keeping up)
   * before the connection stops reading: the peer's sends then wait, as TCP
   * flow control makes them, and so do this end's (their acknowledgements
   * are behind the held data). Reading starts again once half of it is
   * taken. 1,024 to 1,073,741,824. Default 16 MiB.
   */
  highWaterMark?: number;
  /** Where the connection's I/O runs. Default `thread`. */
  io?: IoMode;
  /** Dial a lost stream again (back-off from 50 ms, 6 attempts). Default true. */
  redial?: boolean;
  /**
   * A stream's dial (the first, or a re-dial) that has not connected within
   * this many milliseconds fails like a refused one (ETIMEDOUT): `connect`
   * resolves with the streams that did connect, or rejects with
   * ERR_AMST_CONNECTION_LOST when none did. 0 waits for the kernel's SYN
   * retries (about two minutes). 0 to 3,600,000. Default 10,000.
   */
  connectTimeoutMs?: number;
  /**
   * A peer that acknowledges nothing for this many milliseconds (data in
   * flight; keepalive probes while idle, in whole seconds) fails the stream
   * with ETIMEDOUT, so a host that vanished without a reset is noticed in
   * seconds rather than TCP's ~15 minutes: its streams' data goes again on
   * the others, and when none is left, pending sends reject with
   * ERR_AMST_CONNECTION_LOST. A live peer that only stopped reading still
   * answers the kernel's window probes and is left alone. 0 keeps the
   * kernel's defaults. 0 to 3,600,000. Default 30,000.
   */
  peerTimeoutMs?: number;
  /**
   * Send payloads of 16 KiB and more with MSG_ZEROCOPY. Off by default: on
   * loopback and veth the kernel copies anyway and it is slower (see the
   * README); on a real NIC it saves the sender's copy. `stats()` counts
   * zero-copy sends and the ones the kernel copied after all.
   */
  zeroCopy?: boolean;
  /**
   * Hand payloads of 64 KiB and more to TCP by page references (vmsplice +
   * splice) instead of copying them into the kernel: the receiver's copy is
   * then the only one, loopback and veth included. Default true; `zeroCopy`
   * takes precedence. `stats()` counts the bytes sent this way.
   */
  splice?: boolean;
  /**
   * Lend received messages of 64 KiB and more instead of giving them: the
   * Buffer a `message` or `batch` listener gets is valid until the listener
   * returns, after which its memory carries a later message. Copy what you
   * keep (`Buffer.from(msg)`). A bulk receiver then allocates nothing per
   * message and V8 runs no major collections for it (see the README's
   * benchmarks). Messages past the lending pool (64 MiB per thread) are given as usual.
   * Default false.
   */
  lendBuffers?: boolean;
  /**
   * With `io: 'loop'`: after each send and each batch of received events,
   * keep Node's event loop polling without sleeping for this many
   * microseconds (0 to 10,000), so a reply is handled as it lands instead
   * of after an idle CPU wakes up. Trades CPU for round-trip latency (see
   * the README's benchmarks); applies to the thread's loop engine, which
   * uses the largest value asked for. Default 0.
   */
  busyPollMicros?: number;
  /** See Transport. Default `auto`. */
  transport?: Transport;
  /** RDMA queue pairs per connection, 1 to 16. Default: one per stream, at most 16. */
  rdmaLanes?: number;
  /** Per lane, the ring the peer writes large chunks into: 64 KiB to 1 GiB. Default 4 MiB. */
  rdmaRingBytes?: number;
  /** RDMA device to use (as `novacron doctor` lists them). Default: the first with an active port. */
  rdmaDevice?: string;
  /**
   * GID table index (RoCE). Default: the first RoCE v2 GID holding an IPv4
   * address, as rdma_cm picks (`novacron doctor` shows it); InfiniBand: 0.
   * One engine (per Node thread and I/O mode) opens one device, with the
   * device and GID of the first connection or listener that uses RDMA.
   */
  rdmaGidIndex?: number;
}

/** Per-stream figures, TCP_INFO included. */
export type StreamStats = NativeAmstStreamStats;

/**
 * Counters of a connection: messages and payload bytes sent (acknowledged by
 * the peer) and received, chunks sent again after a lost stream, payloads
 * sent with MSG_ZEROCOPY and of those the ones the kernel copied anyway, what
 * carries the data (`transport`, and RDMA lanes with their bytes), the
 * throughput over the last second (`sendBytesPerSec`, `receiveBytesPerSec`:
 * bytes on the wire, so including chunk headers and resent chunks), and
 * per-stream figures.
 */
export type ConnectionStats = NativeAmstStats;

function errnoName(n: number | undefined): string | undefined {
  if (!n) return undefined;
  for (const [name, value] of Object.entries(osConstants.errno)) if (value === n) return name;
  return `errno ${n}`;
}

// Event type codes, in the native Event::Type order.
const EVENT_TYPES = [
  'listening', 'incoming', 'connected', 'message', 'sendDone', 'sendProgress', 'sendFailed',
  'streamLost', 'streamUp', 'streamRetired', 'transport', 'closed', 'error',
] as const;
const EVENT_FIELDS = 7;

/** One decoded event of the native engine. */
interface AmstEvent {
  type: (typeof EVENT_TYPES)[number];
  id: number;
  value: number;
  listener: number;
  /** Status name, when the event carries a failure. */
  status: string | undefined;
  osError: number;
  extra: number;
  data: Buffer | undefined;
  /** The message is a view of a lent slab, valid only during this event. */
  lent: boolean;
}

function eventError(e: AmstEvent, what: string): TransportError {
  const status = e.status ?? 'CONNECTION_LOST';
  const sys = errnoName(e.osError);
  // "invalid argument (EADDRINUSE)" says less than the errno's own words.
  const said = status === 'INVALID_ARGUMENT' && e.osError ? getSystemErrorMap().get(-e.osError)?.[1] : undefined;
  return new TransportError(`ERR_AMST_${status}`, `${what}: ${said ?? status.toLowerCase().replace(/_/g, ' ')}${sys ? ` (${sys})` : ''}`, sys);
}

interface Handler {
  handleEvent(e: AmstEvent): void;
}

// The per-thread engine, created on first use and kept referenced (so the
// process stays up) only while something is open.
class Router {
  readonly engine: NativeAmstEngine;
  readonly handlers = new Map<number, Handler>();
  readonly servers = new Map<number, AmstServer>();
  #open = 0;

  constructor(io: IoMode) {
    this.engine = new native.AmstEngine((fields, buffers, arena) => {
      let nextBuffer = 0;
      // A listener that throws must not cost the rest of the batch (later
      // messages, closes, slab returns): its error is thrown again on its
      // own (thrown back into N-API it was swallowed with a deprecation
      // warning, and the loop engine stalled).
      for (let i = 0; i < fields.length; i += EVENT_FIELDS) {
        const type = EVENT_TYPES[fields[i]!] ?? 'error';
        const status = fields[i + 4]!;
        const e: AmstEvent = {
          type,
          id: fields[i + 1]!,
          value: fields[i + 2]!,
          listener: fields[i + 3]!,
          status: status === 0 ? undefined : statusName(status),
          osError: fields[i + 5]!,
          extra: fields[i + 6]!,
          data: undefined,
          lent: false,
        };
        let slab = -1;
        if (type === 'message') {
          const off = e.listener;
          if (off >= 0) {
            e.data = arena!.subarray(off, off + e.extra);
          } else if (e.osError >= 0) {
            slab = e.osError;
            e.lent = true;
            e.data = Buffer.from(buffers[nextBuffer++] as ArrayBuffer, 0, e.extra);
          } else {
            e.data = buffers[nextBuffer++] as Buffer;
          }
          e.osError = 0;
        }
        try {
          // An incoming connection has a new id; its listener's id says where it goes.
          if (type === 'incoming') this.servers.get(e.listener)?.accept(e);
          else this.handlers.get(e.id)?.handleEvent(e);
        } catch (error) {
          rethrowLater(error);
        }
        // A lent message: its slab carries another once the listeners return.
        if (slab >= 0) this.engine.release(slab);
      }
    }, io);
  }

  #busyPoll = 0;

  busyPoll(microseconds: number): void {
    if (microseconds <= this.#busyPoll) return;
    this.#busyPoll = microseconds;
    this.engine.setBusyPoll(microseconds);
  }

  retain(): void {
    if (this.#open++ === 0) this.engine.ref();
  }

  release(): void {
    if (--this.#open === 0) this.engine.unref();
  }
}

// One engine per I/O mode per thread; ids are per engine.
const routers = new Map<IoMode, Router>();
function getRouter(io: unknown): Router {
  if (io !== undefined && io !== 'thread' && io !== 'loop') throw new InvalidArgumentError(`io must be 'thread' or 'loop', got ${shown(io)}`);
  const mode: IoMode = io ?? 'thread';
  let r = routers.get(mode);
  if (!r) {
    r = new Router(mode);
    routers.set(mode, r);
  }
  return r;
}

// Option checks. Each throws an InvalidArgumentError, which connect() and
// listen() return as a rejection: nothing unchecked reaches the engine.
function shown(v: unknown): string {
  if (typeof v === 'string') return `'${v}'`;
  if (typeof v === 'object' && v !== null) return Array.isArray(v) ? 'an array' : 'an object';
  return String(v);
}

function checkHost(host: unknown): string {
  if (typeof host !== 'string' || isIP(host) === 0) throw new InvalidArgumentError(`host must be a numeric IPv4 or IPv6 address, got ${shown(host)}`);
  return host;
}

function checkBool(v: unknown, name: string, otherwise: boolean): boolean {
  if (v === undefined) return otherwise;
  if (typeof v !== 'boolean') throw new InvalidArgumentError(`${name} must be true or false, got ${shown(v)}`);
  return v;
}

function checkInt(v: unknown, name: string, min: number, max: number, otherwise: number): number {
  if (v === undefined) return otherwise;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) {
    throw new InvalidArgumentError(`${name} must be an integer from ${min} to ${max}, got ${shown(v)}`);
  }
  return v;
}

// SO_SNDBUF / SO_RCVBUF take an int; the kernel caps them further (net.core.wmem_max, rmem_max).
const checkBufferBytes = (v: unknown, name: string): number => checkInt(v, name, 0, 2 ** 30, 0);

// ConnectOptions.highWaterMark, on both ends.
const checkHighWaterMark = (v: unknown): number => checkInt(v, 'highWaterMark', 1024, 2 ** 30, 16 * 1024 * 1024);

// ConnectOptions.peerTimeoutMs, on both ends.
const checkPeerTimeout = (v: unknown): number => checkInt(v, 'peerTimeoutMs', 0, 3_600_000, 30_000);

// A kernel congestion control name (what TCP_CONGESTION takes); '' keeps the system's.
const CONGESTION_NAME = /^[a-z0-9_]{1,15}$/;
function checkCongestion(name: unknown): string {
  if (typeof name !== 'string' || !CONGESTION_NAME.test(name)) throw new InvalidArgumentError(`congestion must be a kernel algorithm name, got ${shown(name)}`);
  return name;
}

// What the kernel said to a congestion control it would not set, in words.
function congestionRefused(name: string, sys: string | undefined): string | undefined {
  if (sys === 'ENOENT') return `congestion control ${name} is not offered by this kernel (see /proc/sys/net/ipv4/tcp_available_congestion_control)`;
  if (sys === 'EPERM') return `congestion control ${name} is not allowed for this user (see /proc/sys/net/ipv4/tcp_allowed_congestion_control)`;
  return undefined;
}

// A failure to set congestion control `name` (ENOENT, EPERM), in words;
// any other error as it is.
function congestionError(err: unknown, name: string, what: string): unknown {
  const sys = err instanceof TransportError ? err.syscallError : undefined;
  const said = name !== '' ? congestionRefused(name, sys) : undefined;
  return said ? new TransportError('ERR_AMST_INVALID_ARGUMENT', `${what}: ${said} (${sys ?? 'error'})`, sys) : err;
}

function checkBusyPoll(us: unknown, io: unknown): number {
  if (us === undefined || us === 0) return 0;
  if (typeof us !== 'number' || !Number.isInteger(us) || us < 0 || us > 10000) {
    throw new InvalidArgumentError(`busyPollMicros must be an integer from 0 to 10000, got ${shown(us)}`);
  }
  if (io !== 'loop') throw new InvalidArgumentError("busyPollMicros needs io: 'loop'");
  return us;
}

interface RdmaChoice {
  device: string;
  gidIndex: number;
  ringBytes: number;
}

function checkRdma(o: { rdmaDevice?: unknown; rdmaGidIndex?: unknown; rdmaRingBytes?: unknown }): RdmaChoice {
  const ringBytes = o.rdmaRingBytes ?? 4 * 1024 * 1024;
  if (typeof ringBytes !== 'number' || !Number.isInteger(ringBytes) || ringBytes < 64 * 1024 || ringBytes > 1024 * 1024 * 1024) {
    throw new InvalidArgumentError(`rdmaRingBytes must be an integer from 65536 to 1073741824, got ${String(ringBytes)}`);
  }
  const device = o.rdmaDevice ?? '';
  if (typeof device !== 'string') throw new InvalidArgumentError('rdmaDevice must be a string');
  const gidIndex = o.rdmaGidIndex;
  if (gidIndex !== undefined && (typeof gidIndex !== 'number' || !Number.isInteger(gidIndex) || gidIndex < 0 || gidIndex > 255)) {
    throw new InvalidArgumentError(`rdmaGidIndex must be an integer from 0 to 255, got ${String(gidIndex)}`);
  }
  return { device, gidIndex: gidIndex ?? -1, ringBytes };
}

function checkPort(port: unknown, allowZero: boolean): number {
  if (typeof port !== 'number' || !Number.isInteger(port) || port < (allowZero ? 0 : 1) || port > 65535) {
    throw new InvalidArgumentError(`port must be an integer from ${allowZero ? 0 : 1} to 65535, got ${shown(port)}`);
  }
  return port;
}

interface PendingSend {
  buffer: Uint8Array;
  resolve: () => void;
  reject: (err: Error) => void;
  onProgress: ((bytesAcknowledged: number, total: number) => void) | undefined;
}

interface PendingBatch {
  buffers: readonly Uint8Array[];
  /** Pack buffers to reuse once every id of the batch has an outcome (the engine reads them until then). */
  packs: Buffer[];
  remaining: number;
  resolve: () => void;
  reject: (err: Error) => void;
  failed: boolean;
}

export interface SendOptions {
  /**
   * Called as the peer reports holding more of a large message (about every
   * sixteenth of it, for messages of several chunks), and once with
   * `(total, total)` just before the promise resolves.
   */
  onProgress?: (bytesAcknowledged: number, total: number) => void;
}

// Small messages travel in packs (native/transport/frame.h, kFlagPacked):
// [u32 count] then count x ([u32 length][bytes]), little-endian, at most
// PACK_MAX bytes, one message id for the lot.
const PACK_ITEM_MAX = 2048;
const PACK_MAX = 64 * 1024;

// Pack buffers (PACK_MAX bytes each) back from completed batches: a steady
// stream of small messages then allocates nothing, which spares V8 the major
// collections that megabytes of short-lived buffers a second bring on.
const packPool: Buffer[] = [];
const PACK_POOL_MAX = 256;

// Called through a reference taken once: `p.set` looks `set` up through
// Buffer.prototype on every call (an inline-cache miss in optimised code),
// which cost a quarter of packing a 64-byte message.
const typedArraySet = Uint8Array.prototype.set;

function recyclePacks(packs: Buffer[]): void {
  for (const p of packs) if (packPool.length < PACK_POOL_MAX) packPool.push(p);
  packs.length = 0;
}

// The wire messages for `messages`: runs of two or more small ones copied
// into packs (whose full buffers go to `packs`), the rest as they are; and
// which of them are packs (flags[i] = 1). One pass, which also checks every
// message (null when one is not a non-empty Uint8Array; its packs are then
// back in the pool): for 64-byte messages a second pass costs a third as
// much again as the copy itself.
function pack(messages: readonly Uint8Array[], packs: Buffer[]): [Uint8Array[], Uint8Array] | null {
  const n = messages.length;
  const wire: Uint8Array[] = [];
  const flags = new Uint8Array(n);
  let p: Buffer | undefined;  // the open pack's buffer; set whenever count > 0
  let off = 0;
  let count = 0;
  for (let i = 0; i < n; i++) {
    const m = messages[i];
    if (!(m instanceof Uint8Array) || m.length === 0) {
      recyclePacks(packs);
      return null;
    }
    const len = m.length;
    if (count > 0 && (len > PACK_ITEM_MAX || off + 4 + len > PACK_MAX)) {
      if (closePack(p!, off, count, messages[i - 1]!, wire, flags)) p = undefined;
      count = 0;
    }
    if (len > PACK_ITEM_MAX) {
      wire.push(m);
      continue;
    }
    if (p === undefined) packs.push((p = packPool.pop() ?? Buffer.allocUnsafeSlow(PACK_MAX)));
    if (count === 0) off = 4;
    // By hand: writeUInt32LE's checks cost as much as these four stores.
    p[off] = len & 0xff;
    p[off + 1] = (len >>> 8) & 0xff;
    p[off + 2] = (len >>> 16) & 0xff;
    p[off + 3] = len >>> 24;
    typedArraySet.call(p, m, off + 4);
    off += 4 + len;
    count++;
  }
  if (count > 0) closePack(p!, off, count, messages[n - 1]!, wire, flags);
  return [wire, flags];
}

// Ends the open pack: a run of one goes as the message itself (`last`) and
// leaves the buffer for the next run; else the pack goes out. True when it
// did, and the buffer is spent.
function closePack(p: Buffer, off: number, count: number, last: Uint8Array, wire: Uint8Array[], flags: Uint8Array): boolean {
  if (count === 1) {
    wire.push(last);
    return false;
  }
  p.writeUInt32LE(count, 0);
  flags[wire.length] = 1;
  wire.push(p.subarray(0, off));
  return true;
}

/**
 * Messages that arrived together: the small messages of one pack (see
 * `sendMany`), or a single message. For receivers of millions of small
 * messages a second, which then make no object per message until asked.
 */
export class MessageBatch implements Iterable<Buffer> {
  /** Messages in the batch. */
  readonly count: number;
  #data: Buffer;
  #packed: boolean;

  /** @internal */
  constructor(data: Buffer, packed: number) {
    this.#data = data;
    this.#packed = packed > 0;
    this.count = packed > 0 ? packed : 1;
  }

  /** Payload bytes of all its messages. */
  get byteLength(): number {
    return this.#packed ? this.#data.length - 4 - 4 * this.count : this.#data.length;
  }

  /** Each message, in order, as a view of the received bytes. */
  [Symbol.iterator](): IterableIterator<Buffer> {
    return this.toArray()[Symbol.iterator]();
  }

  toArray(): Buffer[] {
    if (!this.#packed) return [this.#data];
    const out: Buffer[] = [];
    eachPacked(this.#data, this.count, (m) => void out.push(m));
    return out;
  }
}

// The messages of a pack (its layout checked natively): [u32 count] then
// count x ([u32 length][bytes]), each as a view.
function eachPacked(data: Buffer, count: number, fn: (m: Buffer) => void): void {
  for (let i = 0, off = 4; i < count; i++) {
    const len = data.readUInt32LE(off);
    fn(data.subarray(off + 4, off + 4 + len));
    off += 4 + len;
  }
}

// Why a connection is not reading (AmstConnection.#pausedBy).
const PAUSED_BY_USER = 1;
const PAUSED_BY_HELD = 2;

/**
 * One connection: an ordered, message-oriented flow over N TCP streams.
 * Events: `message` (Buffer) or, while anyone listens for it, `batch`
 * (MessageBatch: every message arrives in one then, and `message` is not
 * emitted). Messages that arrive while there is neither are held, in order,
 * for the first such listener or for the async iterator (`for await (const
 * m of conn)`); past `highWaterMark` bytes held the connection stops
 * reading until they are taken. Also `streamLost` (index, errno name), `streamUp`
 * (index: re-dialled or added), `streamRetired` (index: removed by
 * setStreams at either end), `transport` ('rdma' | 'tcp', and the error
 * that took it off RDMA), `close` (error or undefined).
 */
// The events' listener types (declaration merging: typed overloads in front
// of EventEmitter's untyped ones).
type ConnectionListener<K extends keyof AmstConnectionEvents> = (...args: AmstConnectionEvents[K]) => void;
/** Events of an AmstConnection and their arguments. */
export interface AmstConnectionEvents {
  message: [message: Buffer];
  batch: [batch: MessageBatch];
  streamLost: [index: number, errno: string | undefined];
  streamUp: [index: number];
  streamRetired: [index: number];
  transport: [carrier: 'tcp' | 'rdma', error: TransportError | undefined];
  close: [error: TransportError | undefined];
  /** EventEmitter's own. */
  newListener: [event: string | symbol, listener: (...args: never[]) => void];
}
export interface AmstConnection {
  on<K extends keyof AmstConnectionEvents>(event: K, listener: ConnectionListener<K>): this;
  once<K extends keyof AmstConnectionEvents>(event: K, listener: ConnectionListener<K>): this;
  off<K extends keyof AmstConnectionEvents>(event: K, listener: ConnectionListener<K>): this;
  addListener<K extends keyof AmstConnectionEvents>(event: K, listener: ConnectionListener<K>): this;
  removeListener<K extends keyof AmstConnectionEvents>(event: K, listener: ConnectionListener<K>): this;
}
export class AmstConnection extends EventEmitter implements Handler {
  readonly id: number;
  /** Streams the connection was set up with. */
  streams: number;
  /** What carries the data now: `rdma` once RDMA is set up, `tcp` before, without it, or after a fallback. */
  transport: 'tcp' | 'rdma' = 'tcp';
  #router: Router;
  #nextMessage = 0;
  #pending = new Map<number, PendingSend>();
  #batches = new Map<number, PendingBatch>();
  #closed = false;
  #client: boolean;
  #closeWaiters: Array<() => void> = [];
  #connectWaiter: { resolve: (c: AmstConnection) => void; reject: (e: Error) => void } | undefined;
  // Messages waiting for a consumer: #held[#heldHead...], #heldBytes in all.
  #held: Buffer[] = [];
  #heldHead = 0;
  #heldBytes = 0;
  #highWaterMark: number;
  #pausedBy = 0;
  #iterating = false;
  #reader: { resolve: (r: IteratorResult<Buffer>) => void; reject: (e: Error) => void } | undefined;
  // How the connection ended, for the iterator: once past the held messages
  // it ends, or throws this once.
  #endError: Error | undefined;
  // Its first stream's addresses, read once it has one (kept after close).
  #addresses: ReturnType<NativeAmstEngine['addresses']> = null;

  /** @internal */
  constructor(r: Router, id: number, streams: number, client: boolean, highWaterMark: number) {
    super();
    this.#router = r;
    this.id = id;
    this.streams = streams;
    this.#client = client;
    this.#highWaterMark = highWaterMark;
    r.handlers.set(id, this);
    r.retain();
    if (!client) this.#addresses = r.engine.addresses(id);
    // A listener attached after messages were held gets them first, in
    // order, once it is in place.
    this.on('newListener', (event: string | symbol) => {
      if ((event === 'message' || event === 'batch') && this.#heldHead < this.#held.length) queueMicrotask(() => this.#flushHeld());
    });
  }

  /** @internal */
  waitConnected(): Promise<AmstConnection> {
    return new Promise((resolve, reject) => {
      this.#connectWaiter = { resolve, reject };
    });
  }

  /**
   * Sends one message. Resolves when the peer holds all of it; rejects with
   * a TransportError if the connection ends first. The buffer is not copied:
   * do not change it until the promise settles.
   */
  send(message: Uint8Array, options?: SendOptions): Promise<void> {
    if (!(message instanceof Uint8Array)) return Promise.reject(new InvalidArgumentError('message must be a Buffer or Uint8Array'));
    if (message.length === 0) return Promise.reject(new InvalidArgumentError('message must not be empty'));
    if (this.#closed) return Promise.reject(new TransportError('ERR_AMST_CLOSED', 'send: connection is closed'));
    const onProgress = options?.onProgress;
    if (onProgress !== undefined && typeof onProgress !== 'function') {
      return Promise.reject(new InvalidArgumentError('onProgress must be a function'));
    }
    const id = this.#nextMessage++;
    return new Promise<void>((resolve, reject) => {
      this.#pending.set(id, { buffer: message, resolve, reject, onProgress });
      this.#router.engine.send(this.id, id, message);
    });
  }

  /**
   * Sends many messages at once, in order: one promise, one native call and
   * one wake-up of the I/O thread for all of them. Runs of small messages (up
   * to 2 KiB each) are copied into packs of up to 64 KiB that travel as one
   * message each, which is what makes small messages fast; larger buffers
   * are not copied. The peer still receives every message on its own (or in
   * `batch` events). Resolves when the peer holds every one; rejects on the
   * first that cannot be delivered.
   */
  sendMany(messages: readonly Uint8Array[]): Promise<void> {
    if (!Array.isArray(messages)) return Promise.reject(new InvalidArgumentError('messages must be an array of Buffers or Uint8Arrays'));
    const packs: Buffer[] = [];
    const packing = pack(messages, packs);
    if (packing === null) return Promise.reject(new InvalidArgumentError('every message must be a non-empty Buffer or Uint8Array'));
    if (this.#closed) {
      recyclePacks(packs);
      return Promise.reject(new TransportError('ERR_AMST_CLOSED', 'send: connection is closed'));
    }
    if (messages.length === 0) return Promise.resolve();
    const first = this.#nextMessage;
    const [wire, packed] = packing;
    this.#nextMessage += wire.length;
    return new Promise<void>((resolve, reject) => {
      const batch: PendingBatch = { buffers: wire, packs, remaining: wire.length, resolve, reject, failed: false };
      for (let i = 0; i < wire.length; i++) this.#batches.set(first + i, batch);
      this.#router.engine.sendMany(this.id, first, wire, packed);
    });
  }

  /** Messages not yet acknowledged by the peer. */
  get pendingSends(): number {
    return this.#pending.size + this.#batches.size;
  }

  /** Counters and TCP_INFO per stream; null once closed. */
  stats(): ConnectionStats | null {
    return this.#closed ? null : this.#router.engine.stats(this.id);
  }

  /** Finishes pending sends, then closes both directions. */
  close(): Promise<void> {
    if (this.#closed) return Promise.resolve();
    const done = new Promise<void>((resolve) => this.#closeWaiters.push(resolve));
    // The peer's messages in flight must be read for both ends to finish:
    // from here on they are held past highWaterMark.
    if (this.#pausedBy !== 0) {
      this.#pausedBy = 0;
      this.#router.engine.pauseReading(this.id, false);
    }
    this.#router.engine.close(this.id);
    return done;
  }

  /**
   * Stops reading this connection: messages already read still arrive, and
   * the peer's sends then wait (TCP flow control; RDMA credits). For a
   * consumer that cannot keep up, e.g. one writing to a slow disk. The
   * peer's acknowledgements are not read either: this end's own sends
   * complete after resume(). close() resumes.
   */
  pause(): void {
    this.#setPaused(PAUSED_BY_USER, true);
  }

  /** Undoes pause(). */
  resume(): void {
    this.#setPaused(PAUSED_BY_USER, false);
  }

  /** The peer's numeric address (an IPv4 peer of a dual-stack listener as `::ffff:a.b.c.d`). */
  get remoteAddress(): string | undefined {
    return this.#endpoints()?.remoteAddress;
  }

  /** The peer's port: the listener's for a dialled connection, the first stream's for an accepted one. */
  get remotePort(): number | undefined {
    return this.#endpoints()?.remotePort;
  }

  get localAddress(): string | undefined {
    return this.#endpoints()?.localAddress;
  }

  get localPort(): number | undefined {
    return this.#endpoints()?.localPort;
  }

  #endpoints(): ReturnType<NativeAmstEngine['addresses']> {
    if (this.#addresses === null && !this.#closed) this.#addresses = this.#router.engine.addresses(this.id);
    return this.#addresses;
  }

  /** Whether pause() is in force. */
  get isPaused(): boolean {
    return (this.#pausedBy & PAUSED_BY_USER) !== 0;
  }

  /**
   * Received messages, in order, as an async iterator: the messages held
   * for want of a `message` or `batch` listener (it gets none while such a
   * listener is attached). Ends when the connection closes cleanly and
   * throws the connection's error when it does not, in both cases after the
   * messages that arrived before. Leaving the loop stops the iteration, not
   * the connection; one iteration at a time. Lent messages are copied.
   */
  messages(): AsyncIterableIterator<Buffer> {
    if (this.#iterating) throw new InvalidArgumentError('messages(): this connection is already being iterated');
    this.#iterating = true;
    const done = (): IteratorResult<Buffer> => ({ value: undefined, done: true });
    const it: AsyncIterableIterator<Buffer> = {
      next: () => {
        if (!this.#iterating) return Promise.resolve(done());
        if (this.#heldHead < this.#held.length) return Promise.resolve({ value: this.#takeHeld(), done: false });
        if (this.#closed) {
          this.#iterating = false;
          const err = this.#endError;
          this.#endError = undefined;
          return err ? Promise.reject(err) : Promise.resolve(done());
        }
        if (this.#reader) return Promise.reject(new InvalidArgumentError('messages(): next() called again before the previous one settled'));
        return new Promise((resolve, reject) => (this.#reader = { resolve, reject }));
      },
      return: () => {
        this.#iterating = false;
        const r = this.#reader;
        this.#reader = undefined;
        r?.resolve(done());
        return Promise.resolve(done());
      },
      [Symbol.asyncIterator]: () => it,
    };
    return it;
  }

  [Symbol.asyncIterator](): AsyncIterableIterator<Buffer> {
    return this.messages();
  }

  #setPaused(reason: number, on: boolean): void {
    const was = this.#pausedBy !== 0;
    this.#pausedBy = on ? this.#pausedBy | reason : this.#pausedBy & ~reason;
    const now = this.#pausedBy !== 0;
    if (was !== now && !this.#closed) this.#router.engine.pauseReading(this.id, now);
  }

  #hasListener(): boolean {
    return this.listenerCount('message') > 0 || this.listenerCount('batch') > 0;
  }

  // Holds one received message (a pack: each of its messages); a waiting
  // iterator takes it at once.
  #hold(data: Buffer, packed: number, lent: boolean): void {
    const own = lent ? Buffer.from(data) : data;
    const keep = (m: Buffer): void => {
      this.#held.push(m);
      this.#heldBytes += m.length;
    };
    if (packed === 0) keep(own);
    else eachPacked(own, packed, keep);
    const r = this.#reader;
    if (r) {
      this.#reader = undefined;
      r.resolve({ value: this.#takeHeld(), done: false });
    }
    if (this.#heldBytes > this.#highWaterMark && !this.#closed) this.#setPaused(PAUSED_BY_HELD, true);
  }

  #takeHeld(): Buffer {
    const m = this.#held[this.#heldHead]!;
    this.#held[this.#heldHead++] = undefined as unknown as Buffer;
    if (this.#heldHead === this.#held.length) {
      this.#held = [];
      this.#heldHead = 0;
    } else if (this.#heldHead > 1024 && this.#heldHead * 2 > this.#held.length) {
      this.#held = this.#held.slice(this.#heldHead);
      this.#heldHead = 0;
    }
    this.#heldBytes -= m.length;
    if (this.#heldBytes <= this.#highWaterMark / 2) this.#setPaused(PAUSED_BY_HELD, false);
    return m;
  }

  #flushHeld(): void {
    while (this.#heldHead < this.#held.length && this.#hasListener()) this.#deliver(this.#takeHeld(), 0);
  }

  #deliver(data: Buffer, packed: number): void {
    if (this.listenerCount('batch') > 0) {
      this.emit('batch', new MessageBatch(data, packed));
      return;
    }
    if (packed === 0) {
      this.emit('message', data);
      return;
    }
    eachPacked(data, packed, (m) => this.emit('message', m));
  }

  /** Closes now; pending sends reject with ERR_AMST_CLOSED. */
  destroy(): void {
    if (!this.#closed) this.#router.engine.destroy(this.id);
  }

  /**
   * Grows or shrinks the connection to `n` streams (1 to 512) while it
   * carries traffic: new streams are dialled, surplus ones finish what they
   * carry and close cleanly. Only the connecting side can do this; the
   * peer follows. Progress shows as `streamUp` / `streamRetired` events.
   */
  setStreams(n: number): void {
    if (!Number.isInteger(n) || n < 1 || n > 512) throw new InvalidArgumentError(`streams must be an integer from 1 to 512, got ${String(n)}`);
    if (!this.#client) throw new InvalidArgumentError('setStreams: only the side that connected can change the stream count');
    if (this.#closed) throw new TransportError('ERR_AMST_CLOSED', 'setStreams: connection is closed');
    this.streams = n;
    this.#router.engine.setStreams(this.id, n);
  }

  /**
   * Switches every stream, now and as later dialled, to congestion control
   * `name` (`bbr`, `cubic`, any the kernel offers). Either end may do this
   * for the streams it sends on.
   */
  setCongestion(name: string): void {
    checkCongestion(name);
    if (this.#closed) throw new TransportError('ERR_AMST_CLOSED', 'setCongestion: connection is closed');
    const err = this.#router.engine.setCongestion(this.id, name);
    if (err !== 0) {
      const sys = errnoName(err);
      throw new TransportError('ERR_AMST_INVALID_ARGUMENT', `setCongestion: ${congestionRefused(name, sys) ?? `congestion control ${name} failed`} (${sys ?? 'error'})`, sys);
    }
  }

  /** Whether this end dialled the connection (only it can change the stream count). */
  get isClient(): boolean {
    return this.#client;
  }

  /** Fault injection for tests: resets one stream as a network failure would. */
  killStream(index: number): void {
    this.#router.engine.killStream(this.id, index);
  }

  /** @internal */
  handleEvent(e: AmstEvent): void {
    switch (e.type) {
      case 'connected':
        this.streams = e.value;
        this.#addresses = this.#router.engine.addresses(this.id);
        this.#connectWaiter?.resolve(this);
        this.#connectWaiter = undefined;
        return;
      case 'error':
        this.#connectWaiter?.reject(eventError(e, 'connect'));
        this.#connectWaiter = undefined;
        return;
      case 'message': {
        if (this.#heldHead === this.#held.length && this.#hasListener()) {
          this.#deliver(e.data!, e.value);
          return;
        }
        // No listener, or older messages still held for one just attached.
        this.#hold(e.data!, e.value, e.lent);
        this.#flushHeld();
        return;
      }
      case 'sendDone': {
        const p = this.#pending.get(e.value);
        if (!p) {
          const b = this.#batches.get(e.value);
          if (!b) return;
          this.#batches.delete(e.value);
          if (--b.remaining === 0) {
            recyclePacks(b.packs);
            if (!b.failed) b.resolve();
          }
          return;
        }
        this.#pending.delete(e.value);
        p.onProgress?.(p.buffer.length, p.buffer.length);
        p.resolve();
        return;
      }
      case 'sendProgress': {
        const p = this.#pending.get(e.value);
        p?.onProgress?.(e.extra, p.buffer.length);
        return;
      }
      case 'sendFailed': {
        const p = this.#pending.get(e.value);
        this.#pending.delete(e.value);
        p?.reject(eventError(e, 'send'));
        const b = this.#batches.get(e.value);
        if (b) {
          this.#batches.delete(e.value);
          if (--b.remaining === 0) recyclePacks(b.packs);
          if (!b.failed) {
            b.failed = true;
            b.reject(eventError(e, 'send'));
          }
        }
        return;
      }
      case 'streamLost':
        this.emit('streamLost', e.value, errnoName(e.osError));
        return;
      case 'streamUp':
        this.emit('streamUp', e.value);
        return;
      case 'streamRetired':
        this.emit('streamRetired', e.value);
        return;
      case 'transport':
        this.transport = e.value === 1 ? 'rdma' : 'tcp';
        this.emit('transport', this.transport, e.status ? eventError(e, 'rdma') : undefined);
        return;
      case 'closed': {
        this.#closed = true;
        this.#router.handlers.delete(this.id);
        this.#router.release();
        const err = e.status ? eventError(e, 'connection') : undefined;
        for (const p of this.#pending.values()) p.reject(err ?? new TransportError('ERR_AMST_CLOSED', 'send: connection closed'));
        this.#pending.clear();
        for (const b of this.#batches.values()) {
          if (!b.failed) {
            b.failed = true;
            b.reject(err ?? new TransportError('ERR_AMST_CLOSED', 'send: connection closed'));
          }
        }
        this.#batches.clear();
        this.#connectWaiter?.reject(err ?? new TransportError('ERR_AMST_CLOSED', 'connect: closed'));
        this.#endError = err;
        const r = this.#reader;
        if (r) {
          this.#reader = undefined;
          this.#iterating = false;
          this.#endError = undefined;
          if (err) r.reject(err);
          else r.resolve({ value: undefined, done: true });
        }
        for (const w of this.#closeWaiters) w();
        this.emit('close', err);
        return;
      }
      default:
        return;
    }
  }
}

/** A listening socket. Events: `connection` (AmstConnection), `close`. */
export interface AmstServer {
  on(event: 'connection', listener: (conn: AmstConnection) => void): this;
  on(event: 'close', listener: () => void): this;
  once(event: 'connection', listener: (conn: AmstConnection) => void): this;
  once(event: 'close', listener: () => void): this;
}
export class AmstServer extends EventEmitter implements Handler {
  readonly id: number;
  port = 0;
  #router: Router;
  #highWaterMark: number;  // of accepted connections
  #ready: { resolve: (s: AmstServer) => void; reject: (e: Error) => void } | undefined;
  #closed: Array<() => void> = [];

  /** @internal */
  constructor(r: Router, id: number, highWaterMark: number) {
    super();
    this.#router = r;
    this.#highWaterMark = highWaterMark;
    this.id = id;
    r.handlers.set(id, this);
    r.servers.set(id, this);
    r.retain();
  }

  /** @internal */
  waitListening(): Promise<AmstServer> {
    return new Promise((resolve, reject) => {
      this.#ready = { resolve, reject };
    });
  }

  /** Stops accepting; open connections are unaffected. */
  close(): Promise<void> {
    const done = new Promise<void>((resolve) => this.#closed.push(resolve));
    this.#router.engine.close(this.id);
    return done;
  }

  /** @internal */
  handleEvent(e: AmstEvent): void {
    switch (e.type) {
      case 'listening':
        this.port = e.value;
        this.#ready?.resolve(this);
        this.#ready = undefined;
        return;
      case 'error':
        this.#ready?.reject(eventError(e, 'listen'));
        this.#ready = undefined;
        this.#forget();
        return;
      case 'closed':
        this.#forget();
        for (const w of this.#closed) w();
        this.emit('close');
        return;
      default:
        return;
    }
  }

  #forget(): void {
    this.#router.handlers.delete(this.id);
    this.#router.servers.delete(this.id);
    this.#router.release();
  }

  /** @internal */
  accept(e: AmstEvent): void {
    const conn = new AmstConnection(this.#router, e.id, e.value, false, this.#highWaterMark);
    this.emit('connection', conn);
  }
}

/** Starts listening; resolves once bound (`server.port` holds the port). */
export function listen(options: ListenOptions = {}): Promise<AmstServer> {
  try {
    if (typeof options !== 'object' || options === null) throw new InvalidArgumentError('options must be an object');
    const host = checkHost(options.host ?? '127.0.0.1');
    const port = checkPort(options.port ?? 0, true);
    const busy = checkBusyPoll(options.busyPollMicros, options.io);
    const lend = checkBool(options.lendBuffers, 'lendBuffers', false);
    const transport = options.transport ?? 'auto';
    if (transport !== 'auto' && transport !== 'tcp') throw new InvalidArgumentError(`listen transport must be 'auto' or 'tcp', got ${shown(transport)}`);
    const rdma = checkRdma(options);
    const handshakeMs = checkInt(options.handshakeTimeoutMs, 'handshakeTimeoutMs', 10, 3_600_000, 10_000);
    const peerTimeoutMs = checkPeerTimeout(options.peerTimeoutMs);
    const highWaterMark = checkHighWaterMark(options.highWaterMark);
    const congestion = options.congestion === undefined ? '' : checkCongestion(options.congestion);
    const sendBuffer = checkBufferBytes(options.sendBufferBytes, 'sendBufferBytes');
    const recvBuffer = checkBufferBytes(options.recvBufferBytes, 'recvBufferBytes');
    const r = getRouter(options.io);
    r.busyPoll(busy);
    const id = r.engine.listen(host, port, lend, transport === 'tcp' ? 0 : 1, rdma.device, rdma.gidIndex, rdma.ringBytes, handshakeMs, peerTimeoutMs,
      congestion, sendBuffer, recvBuffer);
    return new AmstServer(r, id, highWaterMark).waitListening().catch((err: unknown) => {
      throw congestionError(err, congestion, 'listen');
    });
  } catch (err) {
    return Promise.reject(err as Error);
  }
}

/** Opens a connection of N streams; resolves once every stream has connected or failed (at least one connected). */
export function connect(options: ConnectOptions): Promise<AmstConnection> {
  let opened: ReturnType<typeof open>;
  try {
    opened = open(options);
  } catch (err) {
    return Promise.reject(err as Error);
  }
  const { r, id, streams, congestion, highWaterMark } = opened;
  return new AmstConnection(r, id, streams, true, highWaterMark).waitConnected().catch((err: unknown) => {
    // Every stream failed setting the congestion control: say so, not "connection lost".
    throw congestionError(err, congestion, 'connect');
  });
}

// Checks every option, then asks the engine to dial.
function open(options: ConnectOptions): { r: Router; id: number; streams: number; congestion: string; highWaterMark: number } {
  if (typeof options !== 'object' || options === null) throw new InvalidArgumentError('options must be an object');
  const host = checkHost(options.host);
  const port = checkPort(options.port, false);
  const mode: unknown = options.mode;
  if (mode !== undefined && !NETWORK_MODES.includes(mode as NetworkMode)) {
    throw new InvalidArgumentError(`mode must be 'datacenter', 'internet' or 'hybrid', got ${shown(mode)}`);
  }
  const streams = checkInt(options.streams, 'streams', 1, 512, mode === 'datacenter' ? 16 : 8);
  const chunk: unknown = options.chunkSize ?? 256 * 1024;
  if (typeof chunk !== 'number' || !Number.isInteger(chunk) || chunk < 4096 || chunk > 16 * 1024 * 1024 || (chunk & (chunk - 1)) !== 0) {
    throw new InvalidArgumentError(`chunkSize must be a power of two from 4096 to 16777216, got ${shown(chunk)}`);
  }
  const congestion = options.congestion === undefined ? (mode === 'internet' ? 'bbr' : mode === 'datacenter' ? 'cubic' : '') : checkCongestion(options.congestion);
  const sendBuffer = checkBufferBytes(options.sendBufferBytes, 'sendBufferBytes');
  const recvBuffer = checkBufferBytes(options.recvBufferBytes, 'recvBufferBytes');
  const transport: unknown = options.transport ?? 'auto';
  const transportCode = transport === 'tcp' ? 0 : transport === 'auto' ? 1 : transport === 'rdma' ? 2 : -1;
  if (transportCode < 0) throw new InvalidArgumentError(`transport must be 'auto', 'rdma' or 'tcp', got ${shown(transport)}`);
  const lanes = checkInt(options.rdmaLanes, 'rdmaLanes', 1, 16, 0);
  const rdma = checkRdma(options);
  const flags = {
    redial: checkBool(options.redial, 'redial', true),
    zeroCopy: checkBool(options.zeroCopy, 'zeroCopy', false),
    splice: checkBool(options.splice, 'splice', true),
    lendBuffers: checkBool(options.lendBuffers, 'lendBuffers', false),
  };
  const connectTimeoutMs = checkInt(options.connectTimeoutMs, 'connectTimeoutMs', 0, 3_600_000, 10_000);
  const peerTimeoutMs = checkPeerTimeout(options.peerTimeoutMs);
  const highWaterMark = checkHighWaterMark(options.highWaterMark);
  const busy = checkBusyPoll(options.busyPollMicros, options.io);
  const r = getRouter(options.io);
  r.busyPoll(busy);
  const id = r.engine.connect({
    host,
    port,
    streams,
    chunkShift: Math.log2(chunk),
    congestion,
    sendBuffer,
    recvBuffer,
    ...flags,
    transport: transportCode,
    rdmaLanes: lanes,
    rdmaRingBytes: rdma.ringBytes,
    rdmaDevice: rdma.device,
    rdmaGidIndex: rdma.gidIndex,
    connectTimeoutMs,
    peerTimeoutMs,
  });
  return { r, id, streams, congestion, highWaterMark };
}

