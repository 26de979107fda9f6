// A replicated key-value store on Raft, in one process per node: the
// driver (persist with fsync, then send, then apply, then advance), the
// state machine, and a client port speaking [u32 length][JSON] frames:
//   {"id":1,"op":"put","key":"k","value":"v"}  -> {"id":1,"ok":true}
//   {"id":2,"op":"get","key":"k"}              -> {"id":2,"ok":true,"value":"v"}  (read-index: linearizable)
//   {"id":3,"op":"delete","key":"k"}           -> {"id":3,"ok":true}
//   {"id":4,"op":"cas","key":"k","expect":"v","value":"w"} -> {"id":4,"ok":true,"swapped":true}
//   {"id":5,"op":"status"}                     -> {"id":5,"ok":true,"role":"leader","leader":1,"term":2,...}
//   {"id":6,"op":"transfer","to":2}            -> {"id":6,"ok":true,"leader":2}   (leadership handed over)
//   {"id":7,"op":"member","action":"add","node":4,"address":"host:port"} (or "remove") -> {"ok":true,"voters":[...]}
// A node that does not lead answers {"error":"ERR_RAFT_NOT_LEADER","leader":n}.
import type { Server, Socket } from 'node:net';
import { clusterServer, type ClusterTls } from '../secure.js';
import { NovacronError, callIsolated } from '../../../errors.js';
import { decodeConfChange, Raft, sendableBeforePersist } from './raft.js';
import { corked, FrameReader, jsonFrame, RaftTransport, type PeerAddress } from './transport.js';
import type { NodeId, Ready } from './types.js';
import { RaftWal } from './wal.js';

export interface KvNodeOptions {
  id: NodeId;
  /** Every voter's Raft address, this node's included. */
  peers: ReadonlyMap<NodeId, PeerAddress>;
  dir: string;
  clientPort: number;
  host?: string;
  /** Milliseconds per Raft tick. Default 20 (heartbeat every 2 ticks, election after 10 to 20). */
  tickMs?: number;
  /** Compact the log every this many applied entries. Default 10,000. */
  snapshotEvery?: number;
  /** Mutual TLS for the Raft and client ports; plain TCP without. */
  tls?: ClusterTls;
  /** A new member: it waits to be added (a 'member' request at the leader) instead of campaigning. */
  join?: boolean;
}

export type KvRequest =
  | { id: number; op: 'put'; key: string; value: string }
  | { id: number; op: 'get'; key: string }
  | { id: number; op: 'delete'; key: string }
  | { id: number; op: 'cas'; key: string; expect: string | null; value: string }
  | { id: number; op: 'member'; action: 'add' | 'remove'; node: NodeId; address?: string }
  | { id: number; op: 'transfer'; to: NodeId }
  | { id: number; op: 'status' };

export type KvOk = { id: number; ok: true; value?: string | null; swapped?: boolean; [k: string]: unknown };
export type KvError = { id: number; error: string; message?: string; leader?: NodeId };
export type KvResponse = KvOk | KvError;

interface Command {
  /** Proposer and its sequence: how the proposer knows its command applied. */
  from: NodeId;
  seq: number;
  op: 'put' | 'delete' | 'cas';
  key: string;
  value?: string;
  expect?: string | null;
}

const NOT_LEADER = 'ERR_RAFT_NOT_LEADER';

export class RaftKvNode {
  readonly id: NodeId;
  raft!: Raft;
  #o: KvNodeOptions;
  #wal!: RaftWal;
  #transport: RaftTransport;
  #clients: Server | undefined;
  #sockets = new Set<Socket>();
  #kv = new Map<string, string>();
  #applied = 0;
  #seq = 0;
  #waiting = new Map<number, (r: { ok: true; swapped?: boolean } | { error: string }) => void>();
  #reads = new Map<string, { index: number; done: (index: number) => void; fail: (e: string) => void }>();
  #timer: NodeJS.Timeout | undefined;
  #busy = false;
  #again = false;
  #closed = false;
  #readSeq = 0;
  #wasLeader = false;
  #watchers = new Set<(key: string, value: string | undefined) => void>();

  // Members' Raft addresses; membership changes add and remove them.
  #peers: Map<NodeId, PeerAddress>;

  constructor(o: KvNodeOptions) {
    this.id = o.id;
    this.#o = o;
    this.#peers = new Map(o.peers);
    this.#transport = new RaftTransport(
      o.id,
      this.#peers,
      (m) => {
        if (this.#closed) return;
        this.raft.step(m);
        this.#kick();
      },
      o.tls,
    );
  }

  async start(): Promise<void> {
    const { wal, stored } = await RaftWal.open(this.#o.dir);
    this.#wal = wal;
    if (stored.snapshot) this.#restore(stored.snapshot.data, stored.snapshot.meta.index);
    this.raft = new Raft({ id: this.id, voters: this.#o.join ? [] : [...this.#o.peers.keys()], stored, electionTicks: 10, heartbeatTicks: 2, maxEntriesPerMessage: 256, maxInflight: 64, random: Math.random });
    const self = this.#peers.get(this.id);
    if (!self) throw new NovacronError('ERR_RAFT_CONFIG', `node ${this.id} is not among the peers`);
    await this.#transport.listen(self.port, self.host);
    this.#clients = clusterServer(this.#o.tls, (s) => this.#serveClient(s));
    await new Promise<void>((resolve, reject) => {
      this.#clients!.once('error', reject);
      this.#clients!.listen(this.#o.clientPort, this.#o.host ?? '127.0.0.1', () => resolve());
    });
    this.#timer = setInterval(() => {
      this.raft.tick();
      this.#kick();
    }, this.#o.tickMs ?? 20);
    // Alone, there is nobody to wait for: lead at once.
    if (this.#o.peers.size === 1 && !this.#o.join) {
      this.raft.campaign();
      this.#kick();
    }
  }

  /** Resolves once this node knows a leader (rejects after `ms`). */
  async waitForLeader(ms = 10_000): Promise<void> {
    const end = Date.now() + ms;
    while (this.raft.leader === 0 || this.#busy) {
      if (Date.now() > end) throw new NovacronError('ERR_RAFT_UNAVAILABLE', `no leader within ${ms} ms`);
      await new Promise((r) => setTimeout(r, 2));
    }
  }

  get clientPort(): number {
    const a = this.#clients?.address();
    return typeof a === 'object' && a ? a.port : 0;
  }

  #restore(data: Uint8Array, index: number): void {
    const before = this.#kv;
    this.#kv = new Map(JSON.parse(Buffer.from(data).toString()) as Array<[string, string]>);
    this.#applied = index;
    for (const k of new Set([...before.keys(), ...this.#kv.keys()])) if (before.get(k) !== this.#kv.get(k)) this.#changed(k);
  }

  /** Calls `cb` with every change this node applies (any node: every node applies every entry). */
  subscribe(cb: (key: string, value: string | undefined) => void): () => void {
    this.#watchers.add(cb);
    return () => this.#watchers.delete(cb);
  }

  #changed(key: string): void {
    const v = this.#kv.get(key);
    // A watcher's bug must not stop the node mid-apply.
    for (const w of this.#watchers) callIsolated(w, key, v);
  }

  /** This node's applied value of `key` (not linearizable: see request({op: 'get'})). */
  localGet(key: string): string | undefined {
    return this.#kv.get(key);
  }

  #kick(): void {
    if (this.#busy) {
      this.#again = true;
      return;
    }
    this.#process().catch((err: unknown) => this.#fail(err));
  }

  // The driver. One Ready at a time; what arrives meanwhile waits in the
  // core and goes out with the next one, so one fsync covers many proposals.
  async #process(): Promise<void> {
    this.#busy = true;
    try {
      do {
        this.#again = false;
        while (!this.#closed && this.raft.hasReady()) {
          const rd = this.raft.ready();
          for (const m of rd.messages) if (sendableBeforePersist(m)) this.#transport.send(m);
          await this.#wal.save(rd);
          if (this.#closed) return;
          for (const m of rd.messages) if (!sendableBeforePersist(m)) this.#transport.send(m);
          this.#apply(rd);
          this.raft.advance(rd);
          if (this.#wasLeader && this.raft.role !== 'leader') this.#failPending();
          this.#wasLeader = this.raft.role === 'leader';
          await this.#maybeCompact();
        }
      } while (this.#again && !this.#closed);
    } finally {
      this.#busy = false;
    }
  }

  #apply(rd: Ready): void {
    if (rd.snapshot) this.#restore(rd.snapshot.data, rd.snapshot.meta.index);
    for (const e of rd.committed) {
      if (e.index <= this.#applied) continue;
      this.#applied = e.index;
      if (e.type === 'conf') {
        this.#memberChanged(e.data);
        continue;
      }
      if (e.data.length === 0) continue;
      const c = JSON.parse(Buffer.from(e.data).toString()) as Command;
      let swapped: boolean | undefined;
      const before = this.#kv.get(c.key);
      if (c.op === 'put') this.#kv.set(c.key, c.value!);
      else if (c.op === 'delete') this.#kv.delete(c.key);
      else {
        swapped = (before ?? null) === c.expect;
        if (swapped) this.#kv.set(c.key, c.value!);
      }
      if (this.#kv.get(c.key) !== before) this.#changed(c.key);
      if (c.from === this.id) {
        const w = this.#waiting.get(c.seq);
        this.#waiting.delete(c.seq);
        w?.(swapped === undefined ? { ok: true } : { ok: true, swapped });
      }
    }
    for (const r of rd.readStates) {
      const w = this.#reads.get(r.context);
      if (w) w.index = r.index;
    }
    for (const [ctx, r] of this.#reads) {
      if (r.index >= 0 && r.index <= this.#applied) {
        this.#reads.delete(ctx);
        r.done(r.index);
      }
    }
  }

  /** Why this node stopped, when a write to its log failed (it cannot go on safely). */
  failure: NovacronError | undefined;

  // A failed write or fsync leaves the log in doubt: stop taking part
  // rather than acknowledge anything more, and tell whoever waits.
  #fail(err: unknown): void {
    if (this.failure) return;
    this.failure = new NovacronError('ERR_RAFT_STORAGE', `raft node ${this.id} stopped: its log could not be written (${(err as Error).message})`, { cause: err });
    this.#closed = true;
    clearInterval(this.#timer);
    for (const w of this.#waiting.values()) w({ error: 'ERR_RAFT_STORAGE' });
    this.#waiting.clear();
    for (const r of this.#reads.values()) r.fail('ERR_RAFT_STORAGE');
    this.#reads.clear();
  }

  // A membership change committed: dial the new member, forget a removed one.
  #memberChanged(data: Uint8Array): void {
    const c = decodeConfChange(data);
    if (c.type === 'remove') {
      if (c.node !== this.id) this.#peers.delete(c.node);
    } else if (c.address) {
      const m = /^(.+):(\d+)$/.exec(c.address);
      if (m) this.#peers.set(c.node, { host: m[1]!, port: Number(m[2]) });
    }
    for (const w of this.#memberWaits.splice(0)) w();
  }

  #memberWaits: Array<() => void> = [];

  // Lost leadership: what was proposed here may or may not commit; the
  // client is told it does not know, rather than left waiting.
  #failPending(): void {
    for (const w of this.#waiting.values()) w({ error: 'ERR_RAFT_OUTCOME_UNKNOWN' });
    this.#waiting.clear();
    for (const r of this.#reads.values()) r.fail(NOT_LEADER);
    this.#reads.clear();
  }

  async #maybeCompact(): Promise<void> {
    const every = this.#o.snapshotEvery ?? 10_000;
    const since = this.raft.applied - (this.raft.snapshot?.meta.index ?? 0);
    if (since < every) return;
    const snap = this.raft.compact(this.raft.applied, Buffer.from(JSON.stringify([...this.#kv])));
    await this.#wal.compact(snap);
  }

  /** Runs one client request at this node. */
  async request(q: KvRequest): Promise<KvResponse> {
    if (this.failure) return { id: q.id, error: 'ERR_RAFT_STORAGE', message: this.failure.message };
    if (q.op === 'status') {
      return { id: q.id, ok: true, role: this.raft.role, leader: this.raft.leader, term: this.raft.term, commit: this.raft.committed, applied: this.#applied, walBytes: this.#wal.size };
    }
    if (this.raft.role !== 'leader') return { id: q.id, error: NOT_LEADER, leader: this.raft.leader };
    if (q.op === 'member') {
      if ((q.action === 'add' && typeof q.address !== 'string') || !Number.isInteger(q.node) || q.node <= 0) return { id: q.id, error: 'ERR_RAFT_BAD_REQUEST', message: 'member: node (a positive integer) and, to add, address (host:port)' };
      const want = q.action === 'add';
      if (this.raft.voters.has(q.node) === want) return { id: q.id, ok: true, voters: [...this.raft.voters] };
      if (!this.raft.proposeConfChange({ type: q.action, node: q.node, ...(want ? { address: q.address! } : {}) })) {
        return { id: q.id, error: 'ERR_RAFT_CHANGE_PENDING', message: 'another membership change is in progress; try again' };
      }
      this.#kick();
      const deadline = Date.now() + 10_000;
      while (this.raft.voters.has(q.node) !== want) {
        if (Date.now() > deadline) return { id: q.id, error: 'ERR_RAFT_OUTCOME_UNKNOWN' };
        await new Promise<void>((r) => {
          this.#memberWaits.push(r);
          setTimeout(r, 100).unref();
        });
      }
      return { id: q.id, ok: true, voters: [...this.raft.voters] };
    }
    if (q.op === 'transfer') {
      // Hands leadership over (before taking this node down, say); answers once it has moved.
      if (!this.raft.transferLeader(q.to)) return { id: q.id, error: 'ERR_RAFT_BAD_REQUEST', message: `cannot transfer leadership to ${String(q.to)}: not another voter` };
      this.#kick();
      const deadline = Date.now() + 5000;
      while (this.raft.leader !== q.to && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
      return this.raft.leader === q.to ? { id: q.id, ok: true, leader: q.to } : { id: q.id, error: 'ERR_RAFT_OUTCOME_UNKNOWN', message: 'the transfer did not complete in 5 s' };
    }
    if (q.op === 'get') {
      const ctx = `${this.id}:${++this.#readSeq}`;
      const wait = new Promise<{ ok: true } | { error: string }>((resolve) => {
        this.#reads.set(ctx, { index: -1, done: () => resolve({ ok: true }), fail: (e) => resolve({ error: e }) });
      });
      this.raft.readIndex(ctx);
      this.#kick();
      const r = await wait;
      return 'error' in r ? { id: q.id, error: r.error } : { id: q.id, ok: true, value: this.#kv.get(q.key) ?? null };
    }
    const seq = ++this.#seq;
    const cmd: Command = { from: this.id, seq, op: q.op, key: q.key, ...(q.op !== 'delete' ? { value: q.value } : {}), ...(q.op === 'cas' ? { expect: q.expect } : {}) };
    const done = new Promise<{ ok: true; swapped?: boolean } | { error: string }>((resolve) => this.#waiting.set(seq, resolve));
    if (!this.raft.propose(Buffer.from(JSON.stringify(cmd)))) {
      this.#waiting.delete(seq);
      return { id: q.id, error: NOT_LEADER, leader: this.raft.leader };
    }
    this.#kick();
    const r = await done;
    return 'error' in r ? { id: q.id, error: r.error } : { id: q.id, ...r };
  }

  #serveClient(sock: Socket): void {
    this.#sockets.add(sock);
    sock.setNoDelay(true);
    const reply = (r: KvResponse): void => void corked(sock).write(jsonFrame(r));
    const reader = new FrameReader((body) => {
      let q: KvRequest;
      try {
        q = JSON.parse(body.toString()) as KvRequest;
        if (typeof q !== 'object' || q === null || typeof q.id !== 'number' || !['put', 'get', 'delete', 'cas', 'member', 'transfer', 'status'].includes(q.op)) throw new Error('not a request');
        if (q.op === 'member' && q.action !== 'add' && q.action !== 'remove') throw new Error('member: action must be add or remove');
        if (q.op !== 'status' && q.op !== 'member' && q.op !== 'transfer' && (typeof q.key !== 'string' || ((q.op === 'put' || q.op === 'cas') && typeof q.value !== 'string'))) throw new Error('key and value must be strings');
      } catch (err) {
        reply({ id: -1, error: 'ERR_RAFT_BAD_REQUEST', message: (err as Error).message });
        return;
      }
      void this.request(q).then(reply);
    }, 1 << 20);
    sock.on('data', (d: Buffer) => {
      try {
        reader.push(d);
      } catch (err) {
        reply({ id: -1, error: 'ERR_RAFT_BAD_REQUEST', message: (err as Error).message });
        sock.destroy();
      }
    });
    sock.on('error', () => undefined);
    sock.on('close', () => this.#sockets.delete(sock));
  }

  async close(): Promise<void> {
    this.#closed = true;
    clearInterval(this.#timer);
    for (const s of this.#sockets) s.destroy();
    await new Promise<void>((r) => (this.#clients ? this.#clients.close(() => r()) : r()));
    await this.#transport.close();
    while (this.#busy) await new Promise((r) => setTimeout(r, 1));
    await this.#wal.close();
  }
}
