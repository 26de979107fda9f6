// Raft messages between processes over TCP: frames of [u32 length][JSON],
// one outgoing connection per peer (re-dialled with back-off), incoming
// ones only read. Raft tolerates loss, so a message for a peer that is down
// or too far behind is dropped, never queued without bound.
import type { Server, Socket } from 'node:net';
import { clusterConnect, clusterServer, type ClusterTls } from '../secure.js';
import type { Entry, Message, NodeId } from './types.js';

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

export function decodeMessage(body: Buffer): Message {
  const w = JSON.parse(body.toString()) as WireMessage;
  return {
    ...w,
    entries: w.entries.map((e) => ({ ...e, data: new Uint8Array(Buffer.from(e.data, 'base64')) })),
    snapshot: w.snapshot ? { meta: w.snapshot.meta, data: new Uint8Array(Buffer.from(w.snapshot.data, 'base64')) } : undefined,
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
