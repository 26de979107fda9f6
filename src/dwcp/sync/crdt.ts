// State-based CRDTs with deltas, for cluster state in internet mode where a
// Raft quorum is too far away: replicas change their own copy at once and
// exchange states or deltas in any order, any number of times; merge is
// commutative, associative and idempotent, so all replicas that have seen
// the same changes hold the same state.
//
// Conflict policy: counters add up every replica's changes; a register keeps
// the write with the highest (timestamp, replica id), so concurrent writes
// resolve the same way everywhere (last writer wins, ties by replica id); a
// set or map entry added and removed concurrently stays (add wins), and a
// remove takes away only the adds it has seen.
//
// Every mutation returns a delta: a small state holding just that change,
// which merges like a full one (so it can be sent instead of the state).

import { canonical } from '../canonical.js';

export type ReplicaId = string;

/** replica -> highest counter seen. */
export type VectorClock = Readonly<Record<ReplicaId, number>>;

export type Causality = 'equal' | 'before' | 'after' | 'concurrent';

export const VClock = {
  merge(a: VectorClock, b: VectorClock): VectorClock {
    const out: Record<ReplicaId, number> = { ...a };
    for (const [r, n] of Object.entries(b)) out[r] = Math.max(out[r] ?? 0, n);
    return out;
  },
  increment(v: VectorClock, r: ReplicaId): VectorClock {
    return { ...v, [r]: (v[r] ?? 0) + 1 };
  },
  /** How `a` relates to `b` in causal order. */
  compare(a: VectorClock, b: VectorClock): Causality {
    let less = false;
    let more = false;
    for (const r of new Set([...Object.keys(a), ...Object.keys(b)])) {
      const x = a[r] ?? 0;
      const y = b[r] ?? 0;
      if (x < y) less = true;
      if (x > y) more = true;
    }
    return less && more ? 'concurrent' : less ? 'before' : more ? 'after' : 'equal';
  },
};

export { canonical };

// --- counters ---------------------------------------------------------------

/** Grow-only counter: each replica's own total; the value is their sum. */
export type GCounterState = Readonly<Record<ReplicaId, number>>;

export const GCounter = {
  empty(): GCounterState {
    return {};
  },
  /** Adds `n` (>= 0) at replica `r`; returns the new state and its delta. */
  increment(s: GCounterState, r: ReplicaId, n = 1): { state: GCounterState; delta: GCounterState } {
    if (!(n >= 0)) throw new RangeError('a grow-only counter only grows');
    const mine = (s[r] ?? 0) + n;
    return { state: { ...s, [r]: mine }, delta: { [r]: mine } };
  },
  value(s: GCounterState): number {
    return Object.values(s).reduce((a, b) => a + b, 0);
  },
  merge(a: GCounterState, b: GCounterState): GCounterState {
    return VClock.merge(a, b);
  },
};

/** Counter that goes both ways: one grow-only counter for increments, one for decrements. */
export interface PNCounterState {
  readonly p: GCounterState;
  readonly n: GCounterState;
}

export const PNCounter = {
  empty(): PNCounterState {
    return { p: {}, n: {} };
  },
  add(s: PNCounterState, r: ReplicaId, by: number): { state: PNCounterState; delta: PNCounterState } {
    if (by >= 0) {
      const { state, delta } = GCounter.increment(s.p, r, by);
      return { state: { p: state, n: s.n }, delta: { p: delta, n: {} } };
    }
    const { state, delta } = GCounter.increment(s.n, r, -by);
    return { state: { p: s.p, n: state }, delta: { p: {}, n: delta } };
  },
  value(s: PNCounterState): number {
    return GCounter.value(s.p) - GCounter.value(s.n);
  },
  merge(a: PNCounterState, b: PNCounterState): PNCounterState {
    return { p: GCounter.merge(a.p, b.p), n: GCounter.merge(a.n, b.n) };
  },
};

// --- register ---------------------------------------------------------------

/** Last-writer-wins register. `ts` is the writer's clock (e.g. a hybrid logical clock); ties go to the higher replica id. */
export interface LWWRegisterState<T> {
  readonly value: T | undefined;
  readonly ts: number;
  readonly replica: ReplicaId;
}

export const LWWRegister = {
  empty<T>(): LWWRegisterState<T> {
    return { value: undefined, ts: 0, replica: '' };
  },
  set<T>(s: LWWRegisterState<T>, r: ReplicaId, value: T, ts: number): { state: LWWRegisterState<T>; delta: LWWRegisterState<T> } {
    // Never step back in time on the same replica: a write follows what it saw.
    const w: LWWRegisterState<T> = { value, ts: Math.max(ts, s.ts + (s.replica >= r ? 1 : 0)), replica: r };
    const state = LWWRegister.merge(s, w);
    return { state, delta: w };
  },
  merge<T>(a: LWWRegisterState<T>, b: LWWRegisterState<T>): LWWRegisterState<T> {
    if (a.ts !== b.ts) return a.ts > b.ts ? a : b;
    if (a.replica !== b.replica) return a.replica > b.replica ? a : b;
    // Same writer and time: the same write (canonical order keeps merge commutative otherwise).
    return canonical(a.value) >= canonical(b.value) ? a : b;
  },
};

// --- observed-remove set and map (add wins) ---------------------------------

/** A dot: the `n`th event of a replica, as "replica:n". */
type Dot = string;

const dot = (r: ReplicaId, n: number): Dot => `${r}:${n}`;
function parseDot(d: Dot): [ReplicaId, number] {
  const i = d.lastIndexOf(':');
  return [d.slice(0, i), Number(d.slice(i + 1))];
}

/**
 * Causal context: the dots a state has seen, as a vector clock for the
 * contiguous part and a cloud of the rest (deltas arrive with gaps).
 */
export interface CausalContext {
  readonly vc: VectorClock;
  readonly cloud: readonly Dot[];
}

const Ctx = {
  empty(): CausalContext {
    return { vc: {}, cloud: [] };
  },
  has(c: CausalContext, d: Dot): boolean {
    const [r, n] = parseDot(d);
    return n <= (c.vc[r] ?? 0) || c.cloud.includes(d);
  },
  next(c: CausalContext, r: ReplicaId): Dot {
    return dot(r, (c.vc[r] ?? 0) + 1);
  },
  /** Union, with cloud dots folded into the vector clock where they join it. */
  merge(a: CausalContext, b: CausalContext): CausalContext {
    const vc: Record<ReplicaId, number> = { ...VClock.merge(a.vc, b.vc) };
    let cloud = [...new Set([...a.cloud, ...b.cloud])];
    for (let changed = true; changed; ) {
      changed = false;
      cloud = cloud.filter((d) => {
        const [r, n] = parseDot(d);
        if (n <= (vc[r] ?? 0)) return false;
        if (n === (vc[r] ?? 0) + 1) {
          vc[r] = n;
          changed = true;
          return false;
        }
        return true;
      });
    }
    return { vc, cloud: cloud.sort() };
  },
  of(dots: Iterable<Dot>): CausalContext {
    return Ctx.merge(Ctx.empty(), { vc: {}, cloud: [...dots] });
  },
};

/** Add-wins observed-remove set. `entries`: element -> the dots of the adds that put it there. */
export interface ORSetState {
  readonly entries: Readonly<Record<string, readonly Dot[]>>;
  readonly context: CausalContext;
}

export const ORSet = {
  empty(): ORSetState {
    return { entries: {}, context: Ctx.empty() };
  },
  add(s: ORSetState, r: ReplicaId, element: string): { state: ORSetState; delta: ORSetState } {
    const d = Ctx.next(s.context, r);
    // The new add replaces the adds this replica has seen of the element.
    const delta: ORSetState = { entries: { [element]: [d] }, context: Ctx.of([d, ...(s.entries[element] ?? [])]) };
    return { state: ORSet.merge(s, delta), delta };
  },
  /** Removes the adds of `element` seen here; a concurrent add elsewhere survives. */
  remove(s: ORSetState, element: string): { state: ORSetState; delta: ORSetState } {
    const delta: ORSetState = { entries: {}, context: Ctx.of(s.entries[element] ?? []) };
    return { state: ORSet.merge(s, delta), delta };
  },
  has(s: ORSetState, element: string): boolean {
    return (s.entries[element]?.length ?? 0) > 0;
  },
  values(s: ORSetState): string[] {
    return Object.keys(s.entries).sort();
  },
  merge(a: ORSetState, b: ORSetState): ORSetState {
    const entries: Record<string, Dot[]> = {};
    for (const e of new Set([...Object.keys(a.entries), ...Object.keys(b.entries)])) {
      const da = a.entries[e] ?? [];
      const db = b.entries[e] ?? [];
      // A dot stays if both have it, or one has it and the other never saw it
      // (seeing it and not having it means it was removed there).
      const keep = new Set<Dot>();
      for (const d of da) if (db.includes(d) || !Ctx.has(b.context, d)) keep.add(d);
      for (const d of db) if (da.includes(d) || !Ctx.has(a.context, d)) keep.add(d);
      if (keep.size) entries[e] = [...keep].sort();
    }
    return { entries, context: Ctx.merge(a.context, b.context) };
  },
};

/**
 * Add-wins map of last-writer-wins registers: keys present as in an ORSet,
 * each key's value an LWWRegister. A key removed and concurrently set stays
 * with the set value.
 */
export interface ORMapState<T> {
  readonly keys: ORSetState;
  readonly values: Readonly<Record<string, LWWRegisterState<T>>>;
}

// Checks of a state that arrived from another replica: every field typed,
// every dot well-formed, and no "__proto__" key (JSON.parse makes it an own
// property, which the merges' plain objects would take as their prototype).
function plainRecord(v: unknown, each: (x: unknown) => boolean): boolean {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return false;
  for (const [k, x] of Object.entries(v)) if (k === '__proto__' || !each(x)) return false;
  return true;
}

function isDot(v: unknown): v is Dot {
  if (typeof v !== 'string') return false;
  const i = v.lastIndexOf(':');
  const n = Number(v.slice(i + 1));
  return i > 0 && Number.isSafeInteger(n) && n >= 1 && String(n) === v.slice(i + 1);
}

const isCount = (v: unknown): boolean => Number.isSafeInteger(v) && (v as number) >= 0;

function isContext(v: unknown): v is CausalContext {
  const c = v as { vc?: unknown; cloud?: unknown } | null;
  return typeof c === 'object' && c !== null && plainRecord(c.vc, isCount) && Array.isArray(c.cloud) && c.cloud.every(isDot);
}

function isORSetState(v: unknown): v is ORSetState {
  const s = v as { entries?: unknown; context?: unknown } | null;
  return typeof s === 'object' && s !== null && plainRecord(s.entries, (d) => Array.isArray(d) && d.every(isDot)) && isContext(s.context);
}

function isStringRegister(v: unknown): v is LWWRegisterState<string> {
  const r = v as { value?: unknown; ts?: unknown; replica?: unknown } | null;
  return typeof r === 'object' && r !== null && (r.value === undefined || typeof r.value === 'string') &&
    typeof r.ts === 'number' && Number.isFinite(r.ts) && r.ts >= 0 && typeof r.replica === 'string';
}

/** Whether `v` (parsed from the wire) is a map of string registers that merge can take. */
export function isStringORMapState(v: unknown): v is ORMapState<string> {
  const m = v as { keys?: unknown; values?: unknown } | null;
  return typeof m === 'object' && m !== null && isORSetState(m.keys) && plainRecord(m.values, isStringRegister);
}

export const ORMap = {
  empty<T>(): ORMapState<T> {
    return { keys: ORSet.empty(), values: {} };
  },
  set<T>(s: ORMapState<T>, r: ReplicaId, key: string, value: T, ts: number): { state: ORMapState<T>; delta: ORMapState<T> } {
    const k = ORSet.add(s.keys, r, key);
    const v = LWWRegister.set(s.values[key] ?? LWWRegister.empty<T>(), r, value, ts);
    const delta: ORMapState<T> = { keys: k.delta, values: { [key]: v.delta } };
    return { state: ORMap.merge(s, delta), delta };
  },
  remove<T>(s: ORMapState<T>, key: string): { state: ORMapState<T>; delta: ORMapState<T> } {
    const k = ORSet.remove(s.keys, key);
    const delta: ORMapState<T> = { keys: k.delta, values: {} };
    return { state: ORMap.merge(s, delta), delta };
  },
  get<T>(s: ORMapState<T>, key: string): T | undefined {
    return ORSet.has(s.keys, key) ? s.values[key]?.value : undefined;
  },
  entries<T>(s: ORMapState<T>): Array<[string, T | undefined]> {
    return ORSet.values(s.keys).map((k) => [k, s.values[k]?.value]);
  },
  merge<T>(a: ORMapState<T>, b: ORMapState<T>): ORMapState<T> {
    const values: Record<string, LWWRegisterState<T>> = { ...a.values };
    for (const [k, v] of Object.entries(b.values)) values[k] = values[k] ? LWWRegister.merge(values[k], v) : v;
    return { keys: ORSet.merge(a.keys, b.keys), values };
  },
};
