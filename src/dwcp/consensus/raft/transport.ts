// Raft messages between processes over TCP: frames of [u32 length][JSON],
// one outgoing connection per peer (re-dialled with back-off), incoming
// ones only read. Raft tolerates loss, so a message for a peer that is down
// or too far behind is dropped, never queued without bound.
import type { Server, Socket } from 'node:net';
import { clusterConnect, clusterServer, type ClusterTls } from '../secure.js';
import { NovacronError } from '../../../errors.js';
import type { Entry, Message, MessageType, NodeId, Snapshot } from './types.js';

interface WireEntry extends Omit<Entry, 'data'> {
  data: string;
}

type WireMessage = Omit<Message, 'entries' | 'snapshot'> & {
  entries: WireEntry[];
  snapshot: { meta: NonNullable<Message['snapshot']>['meta']; data: string } | undefined;
};

/** A value as one [u32 length][JSON] frame, built in a single buffer. */
export function jsonFrame(value: unknown): Buffer {
  const json = JSON.stringify(value);
  const n = Buffer.byteLength(json);
  const out = Buffer.allocUnsafe(4 + n);
  out.writeUInt32LE(n, 0);
  out.write(json, 4);
  return out;
}

export function encodeMessage(m: Message): Buffer {
  const w: WireMessage = {
    ...m,
    entries: m.entries.map((e) => ({ ...e, data: Buffer.from(e.data).toString('base64') })),
    snapshot: m.snapshot ? { meta: m.snapshot.meta, data: Buffer.from(m.snapshot.data).toString('base64') } : undefined,
  };
  return jsonFrame(w);
}

const MESSAGE_TYPES: ReadonlySet<string> = new Set<MessageType>([
  'app', 'appResp', 'vote', 'voteResp', 'preVote', 'preVoteResp', 'heartbeat', 'heartbeatResp', 'snap', 'timeoutNow',
]);
const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;

function malformed(what: string): NovacronError {
  return new NovacronError('ERR_RAFT_MALFORMED', `malformed Raft message: ${what}`);
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

// A field a message type does not use may be left out (it is then 0, empty
// or false); one that is present must have its type.
function count(o: Record<string, unknown>, k: string): number {
  const v = o[k] ?? 0;
  if (!Number.isSafeInteger(v) || (v as number) < 0) throw malformed(`${k} must be a non-negative integer`);
  return v as number;
}

function nodeId(v: unknown, k: string): NodeId {
  if (!Number.isSafeInteger(v) || (v as number) < 1) throw malformed(`${k} must be a node id (a positive integer)`);
  return v as number;
}

function bytes(v: unknown, k: string): Uint8Array {
  if (typeof v !== 'string' || !BASE64.test(v)) throw malformed(`${k} must be base64`);
  return new Uint8Array(Buffer.from(v, 'base64'));
}

function entry(v: unknown): Entry {
  if (!isRecord(v)) throw malformed('an entry must be an object');
  if (v.type !== 'normal' && v.type !== 'conf') throw malformed('entry type must be normal or conf');
  return { term: count(v, 'term'), index: count(v, 'index'), type: v.type, data: bytes(v.data ?? '', 'entry data') };
}

/**
 * The message in a frame's body, every field checked: a peer's bug or a
 * stranger's bytes end its connection (ERR_RAFT_MALFORMED), not this node.
 */
export function decodeMessage(body: Buffer): Message {
  let w: unknown;
  try {
    w = JSON.parse(body.toString());
  } catch {
    throw malformed('not JSON');
  }
  if (!isRecord(w)) throw malformed('not an object');
  if (typeof w.type !== 'string' || !MESSAGE_TYPES.has(w.type)) throw malformed(`unknown type ${JSON.stringify(w.type)}`);
  const entries = w.entries ?? [];
  if (!Array.isArray(entries)) throw malformed('entries must be an array');
  for (const k of ['reject', 'force'] as const) if (w[k] !== undefined && typeof w[k] !== 'boolean') throw malformed(`${k} must be true or false`);
  if (w.context !== undefined && typeof w.context !== 'string') throw malformed('context must be a string');
  let snapshot: Snapshot | undefined;
  if (w.snapshot !== undefined) {
    const sn = w.snapshot;
    if (!isRecord(sn) || !isRecord(sn.meta) || !Array.isArray(sn.meta.voters)) throw malformed('snapshot must have meta with voters');
    const meta = sn.meta;
    snapshot = { meta: { index: count(meta, 'index'), term: count(meta, 'term'), voters: (meta.voters as unknown[]).map((v) => nodeId(v, 'voter')) }, data: bytes(sn.data, 'snapshot data') };
  }
  return {
    type: w.type as MessageType,
    from: nodeId(w.from, 'from'),
    to: nodeId(w.to, 'to'),
    term: count(w, 'term'),
    logTerm: count(w, 'logTerm'),
    index: count(w, 'index'),
    entries: entries.map(entry),
    commit: count(w, 'commit'),
    reject: w.reject === true,
    rejectHint: count(w, 'rejectHint'),
    context: (w.context as string | undefined) ?? '',
    snapshot,
    force: w.force === true,
  };
}

/** Splits a byte stream into [u32 length][body] frames. */
export class FrameReader {
  #buf: Buffer = Buffer.alloc(0);
  constructor(
    private readonly onFrame: (body: Buffer) => void,
    private readonly maxFrame = 64 << 20,
  ) {}
  push(chunk: Buffer): void {
    this.#buf = this.#buf.length ? Buffer.concat([this.#buf, chunk]) : Buffer.from(chunk.buffer, chunk.byteOffset, chunk.length);
    while (this.#buf.length >= 4) {
      const len = this.#buf.readUInt32LE(0);
      if (len > this.maxFrame) throw new Error(`frame of ${len} bytes is over the limit`);
      if (this.#buf.length < 4 + len) break;
      const body = this.#buf.subarray(4, 4 + len);
      this.#buf = this.#buf.subarray(4 + len);
      this.onFrame(body);
    }
  }
}

/** Reads frames from `sock` into `onFrame`; a frame over the limit (or a throwing handler) ends the connection. */
export function readFrames(sock: Socket, onFrame: (body: Buffer) => void, maxFrame?: number): void {
  const reader = new FrameReader(onFrame, maxFrame);
  sock.on('data', (d: Buffer) => {
    try {
      reader.push(d);
    } catch {
      sock.destroy();
    }
  });
  sock.on('error', () => undefined);
}

export interface PeerAddress {
  host: string;
  port: number;
}

const MAX_BACKLOG = 64 << 20;

// Writes made in one turn of the event loop leave in one writev: a Ready's
// messages to a peer, or the replies to a burst of requests, cost one
// syscall instead of one each.
const corkedNow = new WeakSet<Socket>();
export function corked(sock: Socket): Socket {
  if (!corkedNow.has(sock)) {
    corkedNow.add(sock);
    sock.cork();
    process.nextTick(() => {
      corkedNow.delete(sock);
      sock.uncork();
    });
  }
  return sock;
}

export class RaftTransport {
  #server: Server | undefined;
  #out = new Map<NodeId, { sock: Socket | undefined; retryAt: number; backoff: number }>();
  #inbound = new Set<Socket>();
  #closed = false;

  constructor(
    readonly id: NodeId,
    private readonly peers: ReadonlyMap<NodeId, PeerAddress>,
    private readonly onMessage: (m: Message) => void,
    /** Mutual TLS between members; plain TCP without. */
    private readonly tls?: ClusterTls,
  ) {}

  async listen(port: number, host = '127.0.0.1'): Promise<number> {
    this.#server = clusterServer(this.tls, (sock) => {
      this.#inbound.add(sock);
      sock.setNoDelay(true);
      readFrames(sock, (body) => {
        let m: Message;
        try {
          m = decodeMessage(body);
        } catch {
          sock.destroy();
          return;
        }
        // Addressed to another node: the dialler's member map is wrong.
        if (m.to !== this.id) {
          sock.destroy();
          return;
        }
        this.onMessage(m);
      });
      sock.on('close', () => this.#inbound.delete(sock));
    });
    await new Promise<void>((resolve, reject) => {
      this.#server!.once('error', reject);
      this.#server!.listen(port, host, () => resolve());
    });
    const a = this.#server.address();
    return typeof a === 'object' && a ? a.port : port;
  }

  send(m: Message): void {
    if (this.#closed) return;
    const sock = this.#socket(m.to);
    if (!sock || sock.writableLength > MAX_BACKLOG) return;
    corked(sock).write(encodeMessage(m));
  }

  #socket(to: NodeId): Socket | undefined {
    let o = this.#out.get(to);
    if (!o) this.#out.set(to, (o = { sock: undefined, retryAt: 0, backoff: 50 }));
    if (o.sock) return o.sock;
    const now = Date.now();
    if (now < o.retryAt) return undefined;
    const addr = this.peers.get(to);
    if (!addr) return undefined;
    const entry = o;
    const sock = clusterConnect(addr, this.tls, () => (entry.backoff = 50));
    sock.setNoDelay(true);
    o.sock = sock;
    sock.on('error', () => undefined);
    sock.on('close', () => {
      if (entry.sock === sock) entry.sock = undefined;
      entry.retryAt = Date.now() + entry.backoff;
      entry.backoff = Math.min(entry.backoff * 2, 2000);
    });
    return sock;
  }

  async close(): Promise<void> {
    this.#closed = true;
    for (const o of this.#out.values()) o.sock?.destroy();
    for (const s of this.#inbound) s.destroy();
    await new Promise<void>((r) => (this.#server ? this.#server.close(() => r()) : r()));
  }
}
