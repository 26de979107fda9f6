// Raft under the deterministic simulator: thousands of seeded runs with
// loss, duplication, reordering, partitions, crashes that lose unsynced
// writes, clock skew and leader transfers. Every run's client history must
// be linearizable and committed logs must agree. A failure prints its seed;
// replay one with RAFT_SEED=<seed> npx tap test/dwcp/consensus/raft-sim.test.ts
import t from 'tap';
import { Sim, type SimOptions } from './sim.js';
import { checkLinearizable } from './linearizability.js';

const one = process.env.RAFT_SEED ? Number(process.env.RAFT_SEED) : undefined;
const seeds = one !== undefined ? [one] : Array.from({ length: Number(process.env.RAFT_SEEDS ?? 2000) }, (_, i) => i + 1);

// The fault mix and cluster size follow from the seed.
function options(seed: number): SimOptions {
  const harsh = seed % 4 === 0;
  return { seed, nodes: 3 + (seed % 3), durationMs: 3000, loss: harsh ? 0.15 : 0.02, duplicate: harsh ? 0.05 : 0.01, maxDelayMs: harsh ? 30 : 10 };
}

t.test(`${seeds.length} seeded runs: linearizable histories, agreeing logs`, async (t) => {
  const failures: string[] = [];
  const totals = { ops: 0, unknown: 0, elections: 0, crashes: 0, partitions: 0, transfers: 0, snapshots: 0 };
  for (const seed of seeds) {
    let why: string | undefined;
    try {
      const sim = new Sim(options(seed));
      const r = sim.run();
      const lin = checkLinearizable(r.history);
      why = !lin.ok ? `history of key ${lin.key} is not linearizable` : sim.checkLogs();
      totals.ops += r.history.length;
      totals.unknown += r.history.filter((o) => o.ret === Infinity).length;
      for (const k of ['elections', 'crashes', 'partitions', 'transfers', 'snapshots'] as const) totals[k] += r.stats[k];
    } catch (err) {
      why = `threw ${(err as Error).stack}`;
    }
    if (why) failures.push(`seed ${seed}: ${why} (replay: RAFT_SEED=${seed} npx tap test/dwcp/consensus/raft-sim.test.ts)`);
  }
  t.same(failures, [], 'no seed fails');
  t.comment(JSON.stringify(totals));
  if (seeds.length > 100) {
    // The runs did exercise what they claim to.
    t.ok(totals.elections > seeds.length && totals.crashes > seeds.length / 2 && totals.partitions > seeds.length && totals.snapshots > seeds.length, 'faults happened');
    t.ok(totals.unknown < totals.ops / 20, `most outcomes known (${totals.unknown} of ${totals.ops} unknown)`);
  }
});

t.test('a seed replays exactly', async (t) => {
  const a = new Sim(options(7)).run();
  const b = new Sim(options(7)).run();
  t.same(b.history, a.history);
  t.same(b.stats, a.stats);
});

t.test('the checker catches a planted bug: reads answered from local state', async (t) => {
  let caught: number | undefined;
  for (let seed = 1; seed <= 200 && caught === undefined; seed++) {
    if (!checkLinearizable(new Sim({ ...options(seed), staleReads: true }).run().history).ok) caught = seed;
  }
  t.ok(caught !== undefined, `stale reads found (first at seed ${caught})`);
});
