// A deterministic simulator for the Raft core: seeded, single-threaded,
// virtual time. It runs a replicated key-value store on N nodes with
// clients, and injects message loss, duplication, reordering and delay,
// partitions (halves, a bridge node, an isolated leader), crashes with the
// unsynced tail of a node's writes lost, clock skew and leader transfers.
// Every run's client history is checked for linearizability; a failing seed
// replays exactly.
import { Raft, sendableBeforePersist } from '../../../src/dwcp/consensus/raft/raft.js';
import type { Entry, HardState, Message, NodeId, Ready, Snapshot } from '../../../src/dwcp/consensus/raft/types.js';
import type { KvInput, KvOutput, Operation } from './linearizability.js';

/** xorshift128+, seeded: the simulator's only randomness. */
export function seeded(seed: number): () => number {
  let a = (seed ^ 0x9e3779b9) >>> 0 || 1;
  let b = Math.imul(seed, 0x85ebca6b) >>> 0 || 2;
  let c = 0x27d4eb2f;
  let d = 0x165667b1;
  return () => {
    const t = a ^ (a << 11);
    a = b;
    b = c;
    c = d;
    d = (d ^ (d >>> 19) ^ (t ^ (t >>> 8))) >>> 0;
    return d / 4294967296;
  };
}

export interface SimOptions {
  seed: number;
  nodes?: number;
  clients?: number;
  keys?: number;
  /** Virtual milliseconds to run the workload. */
  durationMs?: number;
  loss?: number;
  duplicate?: number;
  maxDelayMs?: number;
  partitions?: boolean;
  crashes?: boolean;
  transfers?: boolean;
  /** Compact the log every this many applied entries (0: never). */
  snapshotEvery?: number;
  /** A planted bug, for the checker's own test: any node answers reads from its local state, without read-index or leadership. */
  staleReads?: boolean;
}

interface Command {
  client: number;
  seq: number;
  key: string;
  input: KvInput;
}

interface Stored {
  hard: HardState;
  snapshot: Snapshot | undefined;
  entries: Entry[];
}

interface PendingOp {
  client: number;
  seq: number;
}

class SimNode {
  raft!: Raft;
  up = true;
  stored: Stored = { hard: { term: 0, vote: 0, commit: 0 }, snapshot: undefined, entries: [] };
  kv = new Map<string, string>();
  // Per client, the last command applied and its result: a retried command
  // is answered from here, not executed twice.
  sessions = new Map<number, { seq: number; out: KvOutput }>();
  appliedIndex = 0;
  // Ready being written; it completes after the fsync delay.
  inflight: Ready | undefined;
  waiting = new Map<string, PendingOp>(); // `${client}:${seq}` -> proposal made here
  reads: Array<{ ctx: string; index: number; op: PendingOp; key: string }> = [];
  incarnation = 0;
  tickMs: number;

  constructor(
    readonly id: NodeId,
    tickMs: number,
  ) {
    this.tickMs = tickMs;
  }
}

type Event = { at: number; seq: number; run: () => void };

export interface SimResult {
  history: Operation[];
  stats: { elections: number; crashes: number; partitions: number; transfers: number; snapshots: number; committed: number; messages: number; dropped: number };
}

export class Sim {
  readonly rnd: () => number;
  now = 0;
  #seq = 0;
  #events: Event[] = [];
  nodes: SimNode[] = [];
  #cut = new Set<string>(); // "a-b" links down
  history: Operation[] = [];
  #clock = 0; // history timestamps: strictly increasing
  stats = { elections: 0, crashes: 0, partitions: 0, transfers: 0, snapshots: 0, committed: 0, messages: 0, dropped: 0 };
  #o: Required<SimOptions>;
  #voters: NodeId[];
  #pendingClient = new Map<string, { op: Operation; settle: (out: KvOutput) => void }>();

  constructor(o: SimOptions) {
    this.#o = {
      nodes: 3,
      clients: 4,
      keys: 3,
      durationMs: 10_000,
      loss: 0.02,
      duplicate: 0.01,
      maxDelayMs: 10,
      partitions: true,
      crashes: true,
      transfers: true,
      snapshotEvery: 40,
      staleReads: false,
      ...o,
    };
    this.rnd = seeded(o.seed);
    this.#voters = Array.from({ length: this.#o.nodes }, (_, i) => i + 1);
    for (const id of this.#voters) {
      // Clock skew: each node's tick interval is 8 to 12 ms.
      const n = new SimNode(id, 8 + Math.floor(this.rnd() * 5));
      this.nodes.push(n);
      this.#boot(n);
    }
  }

  #at(delay: number, run: () => void): void {
    const e = { at: this.now + delay, seq: this.#seq++, run };
    // Binary insertion: events run by time, then by scheduling order.
    let lo = 0;
    let hi = this.#events.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      const m = this.#events[mid]!;
      if (m.at < e.at || (m.at === e.at && m.seq < e.seq)) lo = mid + 1;
      else hi = mid;
    }
    this.#events.splice(lo, 0, e);
  }

  #node(id: NodeId): SimNode {
    return this.nodes[id - 1]!;
  }

  #boot(n: SimNode): void {
    n.incarnation++;
    n.up = true;
    n.inflight = undefined;
    n.waiting.clear();
    n.reads = [];
    // The state machine starts from the snapshot; the core hands back the
    // committed entries after it to apply again.
    this.#restore(n, n.stored.snapshot);
    n.raft = new Raft({
      id: n.id,
      voters: this.#voters,
      stored: { hardState: { ...n.stored.hard }, snapshot: n.stored.snapshot, entries: n.stored.entries.map((e) => ({ ...e })) },
      electionTicks: 10,
      heartbeatTicks: 2,
      maxEntriesPerMessage: 16,
      maxInflight: 8,
      random: this.rnd,
    });
    const inc = n.incarnation;
    const tick = (): void => {
      if (!n.up || n.incarnation !== inc) return;
      n.raft.tick();
      this.#process(n);
      this.#at(n.tickMs, tick);
    };
    this.#at(n.tickMs * this.rnd(), tick);
  }

  // The driver: persist (fsync takes 0.2-2 ms), then send, apply, advance.
  #process(n: SimNode): void {
    if (!n.up || n.inflight || !n.raft.hasReady()) return;
    const rd = n.raft.ready();
    if (rd.soft?.role === 'leader') this.stats.elections++;
    n.inflight = rd;
    const inc = n.incarnation;
    // A leader's appends go out while it writes; the rest wait for the fsync.
    for (const m of rd.messages) if (sendableBeforePersist(m)) this.#send(m);
    const fsyncMs = 0.2 + this.rnd() * 1.8;
    // Crashes aimed at the moment that matters most: mid-fsync, with some
    // of the Ready's messages already out.
    if (this.#o.crashes && this.rnd() < 0.001 && this.nodes.filter((x) => x.up).length > 1) this.#at(this.rnd() * fsyncMs, () => n.up && n.incarnation === inc && this.#crash(n));
    this.#at(fsyncMs, () => {
      if (!n.up || n.incarnation !== inc) return; // crashed before the fsync finished: nothing of it is on disk
      this.#persist(n, rd);
      for (const m of rd.messages) if (!sendableBeforePersist(m)) this.#send(m);
      this.#apply(n, rd);
      n.raft.advance(rd);
      n.inflight = undefined;
      this.#maybeSnapshot(n);
      this.#process(n);
    });
  }

  #persist(n: SimNode, rd: Ready): void {
    const s = n.stored;
    if (rd.snapshot) {
      s.snapshot = rd.snapshot;
      s.entries = [];
    }
    if (rd.entries.length) {
      const first = rd.entries[0]!.index;
      s.entries = s.entries.filter((e) => e.index < first).concat(rd.entries.map((e) => ({ ...e })));
    }
    if (rd.hardState) s.hard = { ...rd.hardState };
  }

  #apply(n: SimNode, rd: Ready): void {
    if (rd.snapshot) this.#restore(n, rd.snapshot);
    for (const e of rd.committed) {
      if (e.index <= n.appliedIndex) continue;
      n.appliedIndex = e.index;
      this.stats.committed++;
      if (e.type !== 'normal' || e.data.length === 0) continue;
      const c = JSON.parse(Buffer.from(e.data).toString()) as Command;
      const session = n.sessions.get(c.client);
      let out: KvOutput;
      if (session && session.seq >= c.seq) {
        if (session.seq > c.seq) continue; // an old duplicate; its client has moved on
        out = session.out;
      } else {
        out = this.#execute(n, c);
        n.sessions.set(c.client, { seq: c.seq, out });
      }
      const id = `${c.client}:${c.seq}`;
      if (n.waiting.has(id)) {
        n.waiting.delete(id);
        this.#reply(id, out);
      }
    }
    for (const r of rd.readStates) {
      const w = n.reads.find((x) => x.ctx === r.context);
      if (w) w.index = r.index;
    }
    this.#serveReads(n);
  }

  #restore(n: SimNode, snap: Snapshot | undefined): void {
    const d = snap ? (JSON.parse(Buffer.from(snap.data).toString()) as { kv: Array<[string, string]>; sessions: Array<[number, { seq: number; out: KvOutput }]> }) : { kv: [], sessions: [] };
    n.kv = new Map(d.kv);
    n.sessions = new Map(d.sessions);
    n.appliedIndex = snap?.meta.index ?? 0;
  }

  // Compacts the log behind what this node has applied.
  #maybeSnapshot(n: SimNode): void {
    const every = this.#o.snapshotEvery;
    if (!every || n.raft.applied - (n.raft.snapshot?.meta.index ?? 0) < every) return;
    const snap = n.raft.compact(n.raft.applied, Buffer.from(JSON.stringify({ kv: [...n.kv], sessions: [...n.sessions] })));
    n.stored.snapshot = snap;
    n.stored.entries = n.stored.entries.filter((e) => e.index > snap.meta.index);
    this.stats.snapshots++;
  }

  #execute(n: SimNode, c: Command): KvOutput {
    const cur = n.kv.get(c.key);
    switch (c.input.op) {
      case 'put':
        n.kv.set(c.key, c.input.value);
        return { ok: true };
      case 'delete':
        n.kv.delete(c.key);
        return { ok: true };
      case 'cas':
        if (cur !== c.input.expect) return { swapped: false };
        n.kv.set(c.key, c.input.value);
        return { swapped: true };
      case 'get':
        return { value: cur };
    }
  }

  #serveReads(n: SimNode): void {
    n.reads = n.reads.filter((r) => {
      if (r.index < 0 || r.index > n.appliedIndex) return true;
      this.#reply(`${r.op.client}:${r.op.seq}`, { value: n.kv.get(r.key) });
      return false;
    });
  }

  #send(m: Message): void {
    this.stats.messages++;
    const deliver = (): void => {
      const to = this.#node(m.to);
      if (!to || !to.up || this.#cut.has(`${m.from}-${m.to}`)) {
        this.stats.dropped++;
        return;
      }
      to.raft.step(m);
      this.#process(to);
    };
    if (this.rnd() < this.#o.loss) {
      this.stats.dropped++;
      return;
    }
    // Independent delays reorder messages.
    this.#at(0.1 + this.rnd() * this.#o.maxDelayMs, deliver);
    if (this.rnd() < this.#o.duplicate) this.#at(0.1 + this.rnd() * this.#o.maxDelayMs * 3, deliver);
  }

  // Client replies travel back with a delay; they are not lost (a lost
  // reply would only make an outcome unknown, which timeouts already cover).
  #reply(id: string, out: KvOutput): void {
    this.#at(0.1 + this.rnd() * this.#o.maxDelayMs, () => this.#pendingClient.get(id)?.settle(out));
  }

  #partition(): void {
    const ids = this.#voters;
    const kind = Math.floor(this.rnd() * 3);
    this.#cut.clear();
    const cutBetween = (a: NodeId[], b: NodeId[]): void => {
      for (const x of a) for (const y of b) if (x !== y) this.#cut.add(`${x}-${y}`).add(`${y}-${x}`);
    };
    if (kind === 0) {
      // Halves.
      const shuffled = [...ids].sort(() => this.rnd() - 0.5);
      const k = Math.max(1, Math.floor(ids.length / 2));
      cutBetween(shuffled.slice(0, k), shuffled.slice(k));
    } else if (kind === 1) {
      // A bridge: two groups that both reach one node (the first) but not each other.
      const rest = [...ids].sort(() => this.rnd() - 0.5).slice(1);
      const half = Math.ceil(rest.length / 2);
      cutBetween(rest.slice(0, half), rest.slice(half));
    } else {
      // The leader alone.
      const leader = this.nodes.find((n) => n.up && n.raft.role === 'leader')?.id ?? ids[Math.floor(this.rnd() * ids.length)]!;
      cutBetween([leader], ids.filter((x) => x !== leader));
    }
    this.stats.partitions++;
  }

  #crash(n: SimNode): void {
    n.up = false;
    n.incarnation++;
    // What an fsync had not finished writing is gone: with a Ready in
    // flight, nothing of it reached the disk (#persist never ran).
    this.stats.crashes++;
    this.#at(50 + this.rnd() * 400, () => this.#boot(n));
  }

  // One client: operations one after another, each to the node it thinks leads.
  #client(c: number): void {
    let seq = 0;
    let target: NodeId = 1 + Math.floor(this.rnd() * this.#voters.length);
    const next = (): void => {
      if (this.now > this.#o.durationMs) return;
      seq++;
      const key = `k${Math.floor(this.rnd() * this.#o.keys)}`;
      const r = this.rnd();
      const value = `v${c}.${seq}`;
      const input: KvInput =
        r < 0.4 ? { op: 'get' } : r < 0.75 ? { op: 'put', value } : r < 0.85 ? { op: 'delete' } : { op: 'cas', expect: this.rnd() < 0.5 ? undefined : `v${Math.floor(this.rnd() * this.#o.clients)}.${Math.max(1, seq - 1 - Math.floor(this.rnd() * 3))}`, value };
      const op: Operation = { client: c, key, input, output: { unknown: true }, call: ++this.#clock, ret: Infinity };
      this.history.push(op);
      const id = `${c}:${seq}`;
      let done = false;
      const finish = (out: KvOutput | undefined): void => {
        if (done) return;
        done = true;
        this.#pendingClient.delete(id);
        if (out) {
          op.output = out;
          op.ret = ++this.#clock;
        }
        this.#at(1 + this.rnd() * 5, next);
      };
      this.#pendingClient.set(id, { op, settle: (out) => finish(out) });
      // Give up after 1 s: the outcome stays unknown.
      this.#at(1000, () => finish(undefined));
      // Each attempt goes to the node believed to lead; after 100 ms without
      // an answer the same command (same seq) goes again, wherever the
      // leader now is. Sessions make the retry safe.
      const attempt = (): void => {
        if (done) return;
        this.#at(100, attempt);
        const n = this.#node(target);
        const leader = n.up ? n.raft.leader : 0;
        if (this.#o.staleReads && input.op === 'get' && n.up) {
          this.#reply(id, { value: n.kv.get(key) });
          return;
        }
        if (!n.up || n.raft.role !== 'leader') {
          target = leader && leader !== target ? leader : 1 + Math.floor(this.rnd() * this.#voters.length);
          return;
        }
        const pending: PendingOp = { client: c, seq };
        if (input.op === 'get') {
          const ctx = `${c}:${seq}:${n.incarnation}:${this.#seq}`;
          if (!n.raft.readIndex(ctx)) return;
          n.reads.push({ ctx, index: -1, op: pending, key });
        } else {
          const cmd: Command = { client: c, seq, key, input };
          if (!n.raft.propose(Buffer.from(JSON.stringify(cmd)))) return;
          n.waiting.set(id, pending);
        }
        this.#process(n);
      };
      attempt();
    };
    this.#at(this.rnd() * 20, next);
  }

  run(): SimResult {
    const o = this.#o;
    for (let c = 1; c <= o.clients; c++) this.#client(c);
    // Faults, scheduled from the seed.
    const faults = (): void => {
      if (this.now > o.durationMs) {
        this.#cut.clear();
        return;
      }
      const r = this.rnd();
      if (o.partitions && r < 0.3) {
        this.#partition();
        this.#at(200 + this.rnd() * 800, () => this.#cut.clear());
      } else if (o.crashes && r < 0.55) {
        const n = this.nodes[Math.floor(this.rnd() * this.nodes.length)]!;
        if (n.up && this.nodes.filter((x) => x.up).length > 1) this.#crash(n);
      } else if (o.transfers && r < 0.65) {
        const leader = this.nodes.find((n) => n.up && n.raft.role === 'leader');
        if (leader) {
          const to = this.#voters[Math.floor(this.rnd() * this.#voters.length)]!;
          if (leader.raft.transferLeader(to)) this.stats.transfers++;
          this.#process(leader);
        }
      }
      this.#at(300 + this.rnd() * 700, faults);
    };
    this.#at(500, faults);
    // Run the workload, then a quiet period for pending operations to settle.
    const end = o.durationMs + 2000;
    while (this.#events.length && this.#events[0]!.at <= end) {
      const e = this.#events.shift()!;
      this.now = e.at;
      e.run();
    }
    return { history: this.history, stats: this.stats };
  }

  /** The committed prefixes of all logs agree (the state machine safety property). */
  checkLogs(): string | undefined {
    const byIndex = new Map<number, string>();
    for (const n of this.nodes) {
      const r = n.raft;
      for (let i = r.firstIndex(); i <= r.committed; i++) {
        const t = r.termAt(i);
        if (t === undefined) continue;
        const k = `${t}`;
        const have = byIndex.get(i);
        if (have !== undefined && have !== k) return `committed entry ${i} differs between nodes (terms ${have} and ${k})`;
        byIndex.set(i, k);
      }
    }
    return undefined;
  }
}
