// The checker itself: histories that are and are not linearizable.
import t from 'tap';
import { checkLinearizable, type KvInput, type KvOutput, type Operation } from './linearizability.js';

const op = (client: number, input: KvInput, output: KvOutput, call: number, ret: number, key = 'x'): Operation => ({ client, key, input, output, call, ret });

t.test('sequential and overlapping histories', async (t) => {
  // put a; get a; put b; get b, one after another.
  t.ok(
    checkLinearizable([
      op(1, { op: 'put', value: 'a' }, { ok: true }, 1, 2),
      op(1, { op: 'get' }, { value: 'a' }, 3, 4),
      op(2, { op: 'put', value: 'b' }, { ok: true }, 5, 6),
      op(2, { op: 'get' }, { value: 'b' }, 7, 8),
    ]).ok,
  );
  // A read that returns an overwritten value after the overwrite finished: not linearizable.
  const stale = checkLinearizable([
    op(1, { op: 'put', value: 'a' }, { ok: true }, 1, 2),
    op(2, { op: 'put', value: 'b' }, { ok: true }, 3, 4),
    op(3, { op: 'get' }, { value: 'a' }, 5, 6),
  ]);
  t.notOk(stale.ok);
  t.equal(stale.key, 'x');
  // The same read overlapping the second put may see either value.
  for (const seen of ['a', 'b']) {
    t.ok(
      checkLinearizable([
        op(1, { op: 'put', value: 'a' }, { ok: true }, 1, 2),
        op(2, { op: 'put', value: 'b' }, { ok: true }, 3, 6),
        op(3, { op: 'get' }, { value: seen }, 4, 5),
      ]).ok,
      `overlapping read of ${seen}`,
    );
  }
  // Two reads that disagree on the order of two concurrent writes cannot both be right.
  t.notOk(
    checkLinearizable([
      op(1, { op: 'put', value: 'a' }, { ok: true }, 1, 10),
      op(2, { op: 'put', value: 'b' }, { ok: true }, 1, 10),
      op(3, { op: 'get' }, { value: 'a' }, 11, 12),
      op(4, { op: 'get' }, { value: 'b' }, 13, 14),
      op(3, { op: 'get' }, { value: 'a' }, 15, 16),
    ]).ok,
  );
});

t.test('compare-and-set, delete, and outcomes nobody heard', async (t) => {
  t.ok(
    checkLinearizable([
      op(1, { op: 'cas', expect: undefined, value: 'a' }, { swapped: true }, 1, 2),
      op(2, { op: 'cas', expect: undefined, value: 'b' }, { swapped: false }, 3, 4),
      op(1, { op: 'delete' }, { ok: true }, 5, 6),
      op(2, { op: 'get' }, { value: undefined }, 7, 8),
    ]).ok,
  );
  t.notOk(
    checkLinearizable([
      op(1, { op: 'put', value: 'a' }, { ok: true }, 1, 2),
      op(2, { op: 'cas', expect: 'a', value: 'b' }, { swapped: false }, 3, 4),
    ]).ok,
    'a CAS that should have swapped',
  );
  // A put whose client gave up may have happened (seen later) or not (never seen).
  const lost = op(1, { op: 'put', value: 'maybe' }, { unknown: true }, 1, Infinity);
  t.ok(checkLinearizable([lost, op(2, { op: 'get' }, { value: 'maybe' }, 5, 6)]).ok);
  t.ok(checkLinearizable([lost, op(2, { op: 'get' }, { value: undefined }, 5, 6)]).ok);
  // ...but not seen, then unseen again.
  t.notOk(
    checkLinearizable([
      lost,
      op(2, { op: 'get' }, { value: 'maybe' }, 5, 6),
      op(2, { op: 'get' }, { value: undefined }, 7, 8),
    ]).ok,
  );
  // Keys are independent: a violation on one is found among many good ones.
  const many: Operation[] = [];
  for (let k = 0; k < 20; k++) many.push(op(1, { op: 'put', value: `v${k}` }, { ok: true }, 2 * k + 1, 2 * k + 2, `k${k}`), op(2, { op: 'get' }, { value: `v${k}` }, 100 + k, 200 + k, `k${k}`));
  t.ok(checkLinearizable(many).ok);
  many.push(op(3, { op: 'get' }, { value: 'v3' }, 300, 301, 'k4'));
  t.equal(checkLinearizable(many).key, 'k4');
});
