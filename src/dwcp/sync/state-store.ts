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
import type { Server, Socket } from 'node:net';
import { clusterConnect, clusterServer, type ClusterTls } from '../consensus/secure.js';
import { corked, readFrames, type PeerAddress } from '../consensus/raft/transport.js';
import { NovacronError, callIsolated } from '../../errors.js';
import type { RaftKvClient } from '../consensus/raft/client.js';
import type { RaftKvNode } from '../consensus/raft/kv-node.js';
import { ORMap, canonical, isStringORMapState, type ORMapState } from './crdt.js';

export interface StateStore {
  /** The protocol answering now. */
  readonly protocol: 'raft' | 'crdt';
  get(key: string): Promise<string | undefined>;
  put(key: string, value: string): Promise<void>;
  delete(key: string): Promise<void>;
  /** Sets `value` if the key holds `expect` (undefined: absent); whether it did. */
  cas(key: string, expect: string | undefined, value: string): Promise<boolean>;
  /**
   * Calls `cb` with each change to a key starting with `prefix`, as this
   * replica applies it. A `cb` that throws stops nothing: its error is
   * thrown again as an uncaught exception of its own.
   */
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

  async get(key: string, timeoutMs?: number): Promise<string | undefined> {
    return (await this.client.call({ op: 'get', key }, timeoutMs)).value ?? undefined;
  }
  async put(key: string, value: string, timeoutMs?: number): Promise<void> {
    await this.client.call({ op: 'put', key, value }, timeoutMs);
  }
  async delete(key: string, timeoutMs?: number): Promise<void> {
    await this.client.call({ op: 'delete', key }, timeoutMs);
  }
  async cas(key: string, expect: string | undefined, value: string, timeoutMs?: number): Promise<boolean> {
    return (await this.client.call({ op: 'cas', key, expect: expect ?? null, value }, timeoutMs)).swapped === true;
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
  peers: readonly string[];
  #server: Server;
  #out = new Map<string, Socket>();
  #cb: (from: string, data: Uint8Array) => void = () => undefined;
  #inbound = new Set<Socket>();

  #addrs: Map<string, PeerAddress>;

  private constructor(
    readonly id: string,
    addrs: ReadonlyMap<string, PeerAddress>,
    server: Server,
    private readonly tls: ClusterTls | undefined,
  ) {
    this.#addrs = new Map(addrs);
    this.peers = [...addrs.keys()].filter((p) => p !== id);
    this.#server = server;
  }

  /** Replaces the replicas gossiped to (membership learned at run time, e.g. from SWIM). */
  setPeers(addrs: ReadonlyMap<string, PeerAddress>): void {
    const me = this.#addrs.get(this.id);
    this.#addrs = new Map(addrs);
    if (me) this.#addrs.set(this.id, me);
    this.peers = [...this.#addrs.keys()].filter((p) => p !== this.id);
    for (const [peer, sock] of this.#out) {
      if (!this.#addrs.has(peer)) {
        sock.destroy();
        this.#out.delete(peer);
      }
    }
  }

  /** Listens at this replica's address in `addrs` (port 0: any) and returns the transport; mutual TLS with `tls`. */
  static async listen(id: string, addrs: ReadonlyMap<string, PeerAddress>, tls?: ClusterTls): Promise<TcpGossipTransport> {
    const me = addrs.get(id);
    if (!me) throw new NovacronError('ERR_INVALID_ARGUMENT', `replica ${id} has no address`);
    let t: TcpGossipTransport | undefined;
    const server = clusterServer(tls, (sock) => {
      t!.#inbound.add(sock);
      readFrames(sock, (body) => {
        const n = body[0]!;
        t!.#cb(body.subarray(1, 1 + n).toString(), body.subarray(1 + n));
      });
      sock.on('close', () => t!.#inbound.delete(sock));
    });
    t = new TcpGossipTransport(id, addrs, server, tls);
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
      const a = this.#addrs.get(peer);
      if (!a) return;
      try {
        sock = clusterConnect(a, this.tls);
      } catch {
        return; // an address the socket refuses: like a peer that is down
      }
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
  #watchers = new Set<(key: string, value: string | undefined) => void>();

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
      if (a === b) continue;
      for (const w of this.#watchers) callIsolated(w, k, b);  // a watcher's bug must not stop a merge
    }
  }

  #receive(data: Uint8Array): void {
    let delta: ORMapState<string>;
    try {
      const v: unknown = JSON.parse(Buffer.from(data).toString());
      if (!isStringORMapState(v)) return; // not ours, or broken: never merged
      delta = v;
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
    this.#watchers.add(f);
    return () => this.#watchers.delete(f);
  }
  /** The whole replicated state, canonical: equal on replicas that agree. */
  fingerprint(): string {
    return canonical(ORMap.entries(this.#state));
  }
  async close(): Promise<void> {
    clearInterval(this.#timer);
  }
}

export interface HybridOptions {
  raft: RaftStateStore;
  crdt: CrdtStateStore;
  /** How long Raft may fail to answer before the store falls back to CRDTs. Default 2,000 ms. */
  raftTimeoutMs?: number;
  /** Reads in fallback fail with ERR_SYNC_STALE once the last state confirmed by Raft is older. Default 30,000 ms. */
  maxStalenessMs?: number;
  /** How often, in fallback, Raft is tried again. Default 500 ms. */
  probeMs?: number;
  now?: () => number;
}

/**
 * Hybrid mode: Raft while a quorum answers; when it does not, CRDTs with
 * bounded staleness, and back when it returns. Every change Raft applies is
 * mirrored into the CRDT replica, so the fallback starts from the last
 * agreed state. In fallback, writes go to the CRDTs (and to every replica
 * still reachable), reads answer from the local replica as long as the last
 * state Raft confirmed is at most `maxStalenessMs` old, and
 * compare-and-set is refused (ERR_SYNC_DEGRADED: nothing can make it
 * atomic without a quorum). When Raft answers again, each replica writes
 * its own fallback writes through Raft, in the order it made them; from
 * then on Raft's order decides, and its changes overwrite the CRDT copies.
 */
export class HybridStateStore implements StateStore {
  #o: Required<Omit<HybridOptions, 'raft' | 'crdt'>>;
  #raft: RaftStateStore;
  #crdt: CrdtStateStore;
  #fallback = false;
  #lastConfirmed: number;
  #outage: Array<{ key: string; value: string | undefined }> = [];
  #probe: NodeJS.Timeout | undefined;
  #unmirror: () => void;
  #reconciling: Promise<void> | undefined;

  constructor(o: HybridOptions) {
    this.#raft = o.raft;
    this.#crdt = o.crdt;
    this.#o = { raftTimeoutMs: o.raftTimeoutMs ?? 2000, maxStalenessMs: o.maxStalenessMs ?? 30_000, probeMs: o.probeMs ?? 500, now: o.now ?? Date.now };
    this.#lastConfirmed = this.#o.now();
    this.#unmirror = this.#raft.watch('', (k, v) => {
      this.#lastConfirmed = this.#o.now();
      void (v === undefined ? this.#crdt.delete(k) : this.#crdt.put(k, v));
    });
  }

  /** The protocol answering now. */
  get protocol(): 'raft' | 'crdt' {
    return this.#fallback ? 'crdt' : 'raft';
  }

  /** Milliseconds since Raft last confirmed the state (0 while it answers). */
  get staleness(): number {
    return this.#fallback ? this.#o.now() - this.#lastConfirmed : 0;
  }

  #enterFallback(): void {
    if (this.#fallback) return;
    this.#fallback = true;
    this.#probe = setInterval(() => void this.#tryRaft(), this.#o.probeMs);
    this.#probe.unref();
  }

  async #tryRaft(): Promise<void> {
    if (this.#reconciling) return this.#reconciling;
    this.#reconciling = (async () => {
      try {
        await this.#raft.get('\u0000probe', this.#o.probeMs);
        // Back: this replica's fallback writes go through Raft, in order.
        while (this.#outage.length) {
          const w = this.#outage[0]!;
          if (w.value === undefined) await this.#raft.delete(w.key, this.#o.raftTimeoutMs);
          else await this.#raft.put(w.key, w.value, this.#o.raftTimeoutMs);
          this.#outage.shift();
        }
        this.#fallback = false;
        this.#lastConfirmed = this.#o.now();
        clearInterval(this.#probe);
      } catch {
        // Still no quorum; the next probe tries again.
      } finally {
        this.#reconciling = undefined;
      }
    })();
    return this.#reconciling;
  }

  // Runs `op` on Raft; false when Raft could not answer (now in fallback).
  // A leader lost with the write in flight (outcome unknown) counts as no
  // answer for idempotent operations: they are simply written again later.
  async #viaRaft<T>(op: () => Promise<T>, idempotent = true): Promise<{ ok: true; v: T } | { ok: false }> {
    if (this.#fallback) return { ok: false };
    try {
      const v = await op();
      this.#lastConfirmed = this.#o.now();
      return { ok: true, v };
    } catch (err) {
      const code = (err as { code?: string }).code;
      if (code !== 'ERR_RAFT_UNAVAILABLE' && !(idempotent && code === 'ERR_RAFT_OUTCOME_UNKNOWN')) throw err;
      this.#enterFallback();
      return { ok: false };
    }
  }

  async get(key: string): Promise<string | undefined> {
    const r = await this.#viaRaft(() => this.#raft.get(key, this.#o.raftTimeoutMs));
    if (r.ok) return r.v;
    if (this.staleness > this.#o.maxStalenessMs) throw new NovacronError('ERR_SYNC_STALE', `no Raft quorum for ${this.staleness} ms, over the ${this.#o.maxStalenessMs} ms allowed`);
    return this.#crdt.get(key);
  }

  async put(key: string, value: string): Promise<void> {
    const r = await this.#viaRaft(() => this.#raft.put(key, value, this.#o.raftTimeoutMs));
    if (r.ok) return;
    await this.#crdt.put(key, value);
    this.#outage.push({ key, value });
  }

  async delete(key: string): Promise<void> {
    const r = await this.#viaRaft(() => this.#raft.delete(key, this.#o.raftTimeoutMs));
    if (r.ok) return;
    await this.#crdt.delete(key);
    this.#outage.push({ key, value: undefined });
  }

  async cas(key: string, expect: string | undefined, value: string): Promise<boolean> {
    const r = await this.#viaRaft(() => this.#raft.cas(key, expect, value, this.#o.raftTimeoutMs), false);
    if (r.ok) return r.v;
    throw new NovacronError('ERR_SYNC_DEGRADED', 'compare-and-set needs a Raft quorum, and there is none now');
  }

  watch(prefix: string, cb: (key: string, value: string | undefined) => void): () => void {
    // The CRDT replica sees both: Raft's changes (mirrored) and fallback writes.
    return this.#crdt.watch(prefix, cb);
  }

  async close(): Promise<void> {
    clearInterval(this.#probe);
    this.#unmirror();
  }
}

export type LinkMode = 'datacenter' | 'internet' | 'hybrid';

/**
 * The protocol ACP uses for a mode: Raft where a quorum is near
 * (datacenter), CRDTs where it is not (internet), Raft with a CRDT
 * fallback in between (hybrid: HybridStateStore).
 */
export function protocolFor(mode: LinkMode): 'raft' | 'crdt' | 'raft+crdt' {
  if (mode === 'datacenter') return 'raft';
  if (mode === 'internet') return 'crdt';
  if (mode === 'hybrid') return 'raft+crdt';
  throw new NovacronError('ERR_INVALID_ARGUMENT', `unknown link mode ${String(mode)}`);
}
