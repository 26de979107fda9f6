// CRDT laws, checked on random states and random delivery orders: merge is
// commutative, associative and idempotent; replicas that exchange states or
// deltas, in any order and with duplicates, converge; and each type's own
// semantics (add wins, last writer wins, counters add up).
import t from 'tap';
import { canonical, GCounter, LWWRegister, ORMap, ORSet, PNCounter, VClock, type GCounterState, type LWWRegisterState, type ORMapState, type ORSetState, type PNCounterState } from '../../../src/dwcp/sync/crdt.js';
import { rng } from '../../helpers.js';

interface Type<S> {
  name: string;
  empty(): S;
  /** A random change at replica r: new state and delta. */
  op(s: S, r: string, rand: () => number, clock: number): { state: S; delta: S };
  merge(a: S, b: S): S;
  /** What users observe (convergence is checked on this and on the whole state). */
  view(s: S): unknown;
}

const pick = <T,>(xs: readonly T[], rand: () => number): T => xs[Math.floor(rand() * xs.length)]!;
const ELEMENTS = ['a', 'b', 'c', 'd'];

const types: Array<Type<unknown>> = [
  { name: 'GCounter', empty: GCounter.empty, op: (s, r, rand) => GCounter.increment(s as GCounterState, r, 1 + Math.floor(rand() * 3)), merge: (a, b) => GCounter.merge(a as GCounterState, b as GCounterState), view: (s) => GCounter.value(s as GCounterState) },
  { name: 'PNCounter', empty: PNCounter.empty, op: (s, r, rand) => PNCounter.add(s as PNCounterState, r, Math.floor(rand() * 7) - 3), merge: (a, b) => PNCounter.merge(a as PNCounterState, b as PNCounterState), view: (s) => PNCounter.value(s as PNCounterState) },
  { name: 'LWWRegister', empty: LWWRegister.empty, op: (s, r, rand, clock) => LWWRegister.set(s as LWWRegisterState<string>, r, `v${Math.floor(rand() * 5)}`, clock - Math.floor(rand() * 3)), merge: (a, b) => LWWRegister.merge(a as LWWRegisterState<string>, b as LWWRegisterState<string>), view: (s) => (s as LWWRegisterState<string>).value },
  {
    name: 'ORSet',
    empty: ORSet.empty,
    op: (s, r, rand) => (rand() < 0.6 ? ORSet.add(s as ORSetState, r, pick(ELEMENTS, rand)) : ORSet.remove(s as ORSetState, pick(ELEMENTS, rand))),
    merge: (a, b) => ORSet.merge(a as ORSetState, b as ORSetState),
    view: (s) => ORSet.values(s as ORSetState),
  },
  {
    name: 'ORMap',
    empty: ORMap.empty,
    op: (s, r, rand, clock) => (rand() < 0.7 ? ORMap.set(s as ORMapState<number>, r, pick(ELEMENTS, rand), Math.floor(rand() * 100), clock) : ORMap.remove(s as ORMapState<number>, pick(ELEMENTS, rand))),
    merge: (a, b) => ORMap.merge(a as ORMapState<number>, b as ORMapState<number>),
    view: (s) => ORMap.entries(s as ORMapState<number>),
  },
];

// Three replicas make random changes; returns each replica's state and every delta made.
function history(ty: Type<unknown>, rand: () => number, steps: number): { states: unknown[]; deltas: unknown[] } {
  const states = [ty.empty(), ty.empty(), ty.empty()];
  const deltas: unknown[] = [];
  for (let i = 0; i < steps; i++) {
    const r = Math.floor(rand() * 3);
    if (rand() < 0.2) {
      // Now and then a replica hears from another.
      const from = Math.floor(rand() * 3);
      states[r] = ty.merge(states[r], states[from]);
      continue;
    }
    const { state, delta } = ty.op(states[r], `r${r}`, rand, i);
    states[r] = state;
    deltas.push(delta);
  }
  return { states, deltas };
}

for (const ty of types) {
  t.test(`${ty.name}: merge is commutative, associative, idempotent`, async (t) => {
    let bad = 0;
    for (let seed = 1; seed <= 300; seed++) {
      const rand = rng(seed);
      const [a, b, c] = history(ty, rand, 30).states as [unknown, unknown, unknown];
      const eq = (x: unknown, y: unknown): boolean => canonical(x) === canonical(y);
      if (!eq(ty.merge(a, b), ty.merge(b, a))) bad++;
      if (!eq(ty.merge(ty.merge(a, b), c), ty.merge(a, ty.merge(b, c)))) bad++;
      if (!eq(ty.merge(a, a), a) || !eq(ty.merge(ty.merge(a, b), b), ty.merge(a, b))) bad++;
    }
    t.equal(bad, 0);
  });

  t.test(`${ty.name}: replicas converge whatever the delivery order, duplicates included`, async (t) => {
    let bad = 0;
    for (let seed = 1; seed <= 200; seed++) {
      const rand = rng(1000 + seed);
      const { deltas } = history(ty, rand, 40);
      // Each of three receivers applies every delta in its own shuffled order, some twice.
      const views = [0, 1, 2].map(() => {
        const order = [...deltas, ...deltas.filter(() => rand() < 0.2)].sort(() => rand() - 0.5);
        return order.reduce((s, d) => ty.merge(s, d), ty.empty());
      });
      const all = deltas.reduce((s, d) => ty.merge(s, d), ty.empty());
      for (const v of views) if (canonical(v) !== canonical(all) || canonical(ty.view(v)) !== canonical(ty.view(all))) bad++;
    }
    t.equal(bad, 0);
  });
}

t.test('semantics: counters add up, last writer wins, add wins over a concurrent remove', async (t) => {
  let a = PNCounter.add(PNCounter.empty(), 'a', 5).state;
  let b = PNCounter.add(PNCounter.empty(), 'b', -2).state;
  b = PNCounter.add(b, 'b', 1).state;
  t.equal(PNCounter.value(PNCounter.merge(a, b)), 4);
  t.throws(() => GCounter.increment(GCounter.empty(), 'a', -1), RangeError);
  void a;

  const r1 = LWWRegister.set(LWWRegister.empty<string>(), 'a', 'first', 10).state;
  const r2 = LWWRegister.set(LWWRegister.empty<string>(), 'b', 'second', 11).state;
  t.equal(LWWRegister.merge(r1, r2).value, 'second', 'the later write');
  const tie = LWWRegister.set(LWWRegister.empty<string>(), 'z', 'tie', 10).state;
  t.equal(LWWRegister.merge(r1, tie).value, 'tie', 'ties go to the higher replica id');
  // A replica's next write wins over its own last one even with a clock that did not move.
  t.equal(LWWRegister.set(r1, 'a', 'again', 10).state.value, 'again');

  // x is in both; a removes it while b, not having seen that, adds it again: it stays.
  let sa = ORSet.add(ORSet.empty(), 'a', 'x').state;
  let sb = ORSet.merge(ORSet.empty(), sa);
  sa = ORSet.remove(sa, 'x').state;
  sb = ORSet.add(sb, 'b', 'x').state;
  t.ok(ORSet.has(ORSet.merge(sa, sb), 'x'), 'add wins');
  // A remove that has seen every add takes it away everywhere.
  const both = ORSet.merge(sa, sb);
  const gone = ORSet.remove(both, 'x');
  t.notOk(ORSet.has(ORSet.merge(sb, gone.delta), 'x'));
  t.notOk(ORSet.has(ORSet.merge(gone.state, sa), 'x'));

  let ma = ORMap.set(ORMap.empty<string>(), 'a', 'vm1', 'host-a', 1).state;
  let mb = ORMap.merge(ORMap.empty<string>(), ma);
  ma = ORMap.remove(ma, 'vm1').state;
  mb = ORMap.set(mb, 'b', 'vm1', 'host-b', 2).state;
  t.same(ORMap.entries(ORMap.merge(ma, mb)), [['vm1', 'host-b']], 'a concurrent set beats the remove');
  t.same(ORMap.entries(ORMap.remove(ORMap.merge(ma, mb), 'vm1').state), []);

  t.equal(VClock.compare({ a: 1 }, { a: 2 }), 'before');
  t.equal(VClock.compare({ a: 2, b: 1 }, { a: 2 }), 'after');
  t.equal(VClock.compare({ a: 1, b: 0 }, { a: 1 }), 'equal');
  t.equal(VClock.compare({ a: 2 }, { b: 1 }), 'concurrent');
  t.same(VClock.increment(VClock.merge({ a: 1 }, { b: 2 }), 'a'), { a: 2, b: 2 });
});
