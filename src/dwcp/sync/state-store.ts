// ASS: the cluster's replicated key-value state (VM metadata, placement),
// one interface over two protocols, chosen by link mode:
// - datacenter: Raft. Linearizable: a read sees every write that completed
//   before it started, and compare-and-set is atomic cluster-wide.
// - internet: CRDTs. Every replica takes writes at once, even cut off, and
//   replicas exchange deltas (and now and then whole states) until they
//   agree. Conflicts resolve the same way everywhere: of concurrent writes
//   to a key the one with the highest (hybrid timestamp, replica id) wins,
//   and a key deleted while concurrently written stays, with the written
//   value (add wins). compare-and-set compares against this replica's copy
//   only: two replicas may both succeed, and the later write then wins.
import { EventEmitter } from 'node:events';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { corked, readFrames, type PeerAddress } from '../consensus/raft/transport.js';
import { NovacronError } from '../../errors.js';
import type { RaftKvClient } from '../consensus/raft/client.js';
import type { RaftKvNode } from '../consensus/raft/kv-node.js';
import { ORMap, canonical, type ORMapState } from './crdt.js';

export interface StateStore {
  readonly protocol: 'raft' | 'crdt';
  get(key: string): Promise<string | undefined>;
  put(key: string, value: string): Promise<void>;
  delete(key: string): Promise<void>;
  /** Sets `value` if the key holds `expect` (undefined: absent); whether it did. */
  cas(key: string, expect: string | undefined, value: string): Promise<boolean>;
  /** Calls `cb` with each change to a key starting with `prefix`, as this replica applies it. */
  watch(prefix: string, cb: (key: string, value: string | undefined) => void): () => void;
  close(): Promise<void>;
}

/** Datacenter mode: a member of a Raft cluster, and a client that finds its leader. */
export class RaftStateStore implements StateStore {
  readonly protocol = 'raft';
  constructor(
    private readonly node: RaftKvNode,
    private readonly client: RaftKvClient,
  ) {}

  async get(key: string): Promise<string | undefined> {
    return (await this.client.call({ op: 'get', key })).value ?? undefined;
  }
  async put(key: string, value: string): Promise<void> {
    await this.client.call({ op: 'put', key, value });
  }
  async delete(key: string): Promise<void> {
    await this.client.call({ op: 'delete', key });
  }
  async cas(key: string, expect: string | undefined, value: string): Promise<boolean> {
    return (await this.client.call({ op: 'cas', key, expect: expect ?? null, value })).swapped === true;
  }
  watch(prefix: string, cb: (key: string, value: string | undefined) => void): () => void {
    return this.node.subscribe((k, v) => k.startsWith(prefix) && cb(k, v));
  }
  async close(): Promise<void> {
    this.client.close();
  }
}

/** How CRDT replicas reach each other: send bytes to a peer, hear from any. */
export interface GossipTransport {
  readonly peers: readonly string[];
  send(peer: string, data: Uint8Array): void;
  onMessage(cb: (from: string, data: Uint8Array) => void): void;
}

/** In-process replicas (tests, a single process with several stores). */
export class LocalGossipHub {
  #members = new Map<string, (from: string, data: Uint8Array) => void>();
  /** Links cut in both directions ("a|b"). */
  readonly cut = new Set<string>();
  transport(id: string, peers: string[]): GossipTransport {
    return {
      peers,
      send: (peer, data) => {
        if (this.cut.has(`${id}|${peer}`) || this.cut.has(`${peer}|${id}`)) return;
        const copy = new Uint8Array(data);
        queueMicrotask(() => this.#members.get(peer)?.(id, copy));
      },
      onMessage: (cb) => void this.#members.set(id, cb),
    };
  }
}

/**
 * Replicas in different processes: [u32 length][sender id][payload] frames
 * over TCP, one outgoing connection per peer, re-dialled when it drops.
 * Gossip tolerates loss, so nothing is queued for a peer that is down.
 */
export class TcpGossipTransport implements GossipTransport {
  readonly peers: readonly string[];
  #server: Server;
  #out = new Map<string, Socket>();
  #cb: (from: string, data: Uint8Array) => void = () => undefined;
  #inbound = new Set<Socket>();

  private constructor(
    readonly id: string,
    private readonly addrs: ReadonlyMap<string, PeerAddress>,
    server: Server,
  ) {
    this.peers = [...addrs.keys()].filter((p) => p !== id);
    this.#server = server;
  }

  /** Listens at this replica's address in `addrs` (port 0: any) and returns the transport. */
  static async listen(id: string, addrs: ReadonlyMap<string, PeerAddress>): Promise<TcpGossipTransport> {
    const me = addrs.get(id);
    if (!me) throw new NovacronError('ERR_INVALID_ARGUMENT', `replica ${id} has no address`);
    let t: TcpGossipTransport | undefined;
    const server = createServer((sock) => {
      t!.#inbound.add(sock);
      readFrames(sock, (body) => {
        const n = body[0]!;
        t!.#cb(body.subarray(1, 1 + n).toString(), body.subarray(1 + n));
      });
      sock.on('close', () => t!.#inbound.delete(sock));
    });
    t = new TcpGossipTransport(id, addrs, server);
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(me.port, me.host, () => resolve());
    });
    return t;
  }

  get port(): number {
    const a = this.#server.address();
    return typeof a === 'object' && a ? a.port : 0;
  }

  send(peer: string, data: Uint8Array): void {
    let sock = this.#out.get(peer);
    if (!sock || sock.destroyed) {
      const a = this.addrs.get(peer);
      if (!a) return;
      sock = connect(a.port, a.host);
      sock.on('error', () => undefined);
      sock.on('close', () => this.#out.get(peer) === sock && this.#out.delete(peer));
      this.#out.set(peer, sock);
    }
    if (sock.writableLength > 16 << 20) return;
    const id = Buffer.from(this.id);
    const head = Buffer.allocUnsafe(5);
    head.writeUInt32LE(1 + id.length + data.length, 0);
    head[4] = id.length;
    corked(sock).write(Buffer.concat([head, id, data]));
  }

  onMessage(cb: (from: string, data: Uint8Array) => void): void {
    this.#cb = cb;
  }

  async close(): Promise<void> {
    for (const s of this.#out.values()) s.destroy();
    for (const s of this.#inbound) s.destroy();
    await new Promise<void>((r) => this.#server.close(() => r()));
  }
}

export interface CrdtStoreOptions {
  replica: string;
  transport: GossipTransport;
  /** How often deltas go out (and, every tenth time, the whole state). Default 50 ms. */
  gossipMs?: number;
  /** Wall clock, for the hybrid timestamps. */
  now?: () => number;
}

/** Internet mode: an add-wins map of last-writer-wins registers, gossiped. */
export class CrdtStateStore implements StateStore {
  readonly protocol = 'crdt';
  readonly replica: string;
  #state: ORMapState<string> = ORMap.empty();
  #pending: ORMapState<string>[] = [];
  #t: GossipTransport;
  #timer: NodeJS.Timeout;
  #round = 0;
  #clock = 0;
  #now: () => number;
  #events = new EventEmitter();

  constructor(o: CrdtStoreOptions) {
    this.replica = o.replica;
    this.#t = o.transport;
    this.#now = o.now ?? Date.now;
    this.#t.onMessage((_from, data) => this.#receive(data));
    this.#timer = setInterval(() => this.gossip(), o.gossipMs ?? 50);
    this.#timer.unref();
  }

  // Hybrid logical clock: wall time, but never behind anything seen.
  #tick(): number {
    this.#clock = Math.max(this.#clock + 1, this.#now());
    return this.#clock;
  }

  #apply(delta: ORMapState<string>, local: boolean): void {
    const before = this.#state;
    this.#state = ORMap.merge(before, delta);
    for (const reg of Object.values(delta.values)) this.#clock = Math.max(this.#clock, reg.ts);
    if (local) this.#pending.push(delta);
    const keys = new Set([...Object.keys(delta.values), ...Object.keys(delta.keys.entries), ...ORMap.entries(before).map(([k]) => k)]);
    for (const k of keys) {
      const a = ORMap.get(before, k);
      const b = ORMap.get(this.#state, k);
      if (a !== b) this.#events.emit('change', k, b);
    }
  }

  #receive(data: Uint8Array): void {
    let delta: ORMapState<string>;
    try {
      delta = JSON.parse(Buffer.from(data).toString()) as ORMapState<string>;
      if (!delta || typeof delta !== 'object' || !delta.keys || typeof delta.values !== 'object') return;
    } catch {
      return; // not ours
    }
    this.#apply(delta, false);
  }

  /** Sends what changed here since the last round (every tenth round: the whole state, which heals lost deltas). */
  gossip(): void {
    const full = ++this.#round % 10 === 0;
    if (!full && this.#pending.length === 0) return;
    const payload = full ? this.#state : this.#pending.reduce((a, d) => ORMap.merge(a, d), ORMap.empty<string>());
    this.#pending = [];
    const bytes = Buffer.from(JSON.stringify(payload));
    for (const p of this.#t.peers) this.#t.send(p, bytes);
  }

  async get(key: string): Promise<string | undefined> {
    return ORMap.get(this.#state, key);
  }
  async put(key: string, value: string): Promise<void> {
    this.#apply(ORMap.set(this.#state, this.replica, key, value, this.#tick()).delta, true);
  }
  async delete(key: string): Promise<void> {
    this.#apply(ORMap.remove(this.#state, key).delta, true);
  }
  async cas(key: string, expect: string | undefined, value: string): Promise<boolean> {
    if (ORMap.get(this.#state, key) !== expect) return false;
    await this.put(key, value);
    return true;
  }
  watch(prefix: string, cb: (key: string, value: string | undefined) => void): () => void {
    const f = (k: string, v: string | undefined): void => {
      if (k.startsWith(prefix)) cb(k, v);
    };
    this.#events.on('change', f);
    return () => this.#events.off('change', f);
  }
  /** The whole replicated state, canonical: equal on replicas that agree. */
  fingerprint(): string {
    return canonical(ORMap.entries(this.#state));
  }
  async close(): Promise<void> {
    clearInterval(this.#timer);
  }
}

export type LinkMode = 'datacenter' | 'internet' | 'hybrid';

/**
 * The protocol ACP uses for a mode: Raft where a quorum is near
 * (datacenter), CRDTs where it is not (internet, and hybrid, which this
 * version treats as internet: see the README).
 */
export function protocolFor(mode: LinkMode): StateStore['protocol'] {
  if (mode === 'datacenter') return 'raft';
  if (mode === 'internet' || mode === 'hybrid') return 'crdt';
  throw new NovacronError('ERR_INVALID_ARGUMENT', `unknown link mode ${String(mode)}`);
}
