import t from 'tap';
import { Initializer, InitError, RetriableError, planLevels, type Component } from '../../src/control/initializer.js';

const comp = (name: string, deps: string[] = [], extra: Partial<Component> = {}): Component => ({ name, dependsOn: deps, start: async () => undefined, ...extra });

// Components that take `ms` to start and log +name / -name around it.
const timedIn =
  (events: string[]) =>
  (name: string, ms: number, deps: string[] = []): Component =>
    comp(name, deps, {
      start: async () => {
        events.push(`+${name}`);
        await new Promise((r) => setTimeout(r, ms));
        events.push(`-${name}`);
      },
    });

t.test('levels follow dependencies; cycles and missing dependencies are clear errors', async (t) => {
  t.same(planLevels([comp('a'), comp('b', ['a']), comp('c', ['a']), comp('d', ['b', 'c']), comp('e')]), [['a', 'e'], ['b', 'c'], ['d']]);
  t.throws(() => planLevels([comp('a', ['c']), comp('b', ['a']), comp('c', ['b'])]), { code: 'ERR_INIT_CYCLE', message: /a -> c -> b -> a/ });
  t.throws(() => planLevels([comp('a', ['a'])]), { code: 'ERR_INIT_CYCLE' });
  t.throws(() => planLevels([comp('a', ['ghost'])]), { code: 'ERR_INIT_MISSING_DEPENDENCY', message: /a depends on ghost/ });
  t.throws(() => planLevels([comp('a'), comp('a')]), { code: 'ERR_INIT_DUPLICATE' });
});

t.test('a level starts in parallel, after the one before it', async (t) => {
  const events: string[] = [];
  const slow = timedIn(events);
  const init = new Initializer([slow('a', 40), slow('b', 40), slow('c', 10, ['a', 'b'])]);
  const t0 = performance.now();
  await init.start();
  const ms = performance.now() - t0;
  t.same(events.slice(0, 2).sort(), ['+a', '+b'], 'a and b start together');
  t.same(events.slice(4), ['+c', '-c'], 'c after both');
  t.ok(ms < 40 + 40, `took ${ms.toFixed(0)} ms, less than a then b`);
  t.ok(init.status().every((s) => s.state === 'running'));
});

t.test('a component waits for its own dependencies only, not for its whole level', async (t) => {
  const events: string[] = [];
  const timed = timedIn(events);
  // slow and fast are level 0, after is level 1 but needs only fast.
  const levels: Array<[number, number]> = [];
  const init = new Initializer([timed('slow', 80), timed('fast', 5), timed('after', 5, ['fast'])], {
    observer: { levelDone: (level, _names, ms) => void levels.push([level, ms]) },
  });
  await init.start();
  t.ok(events.indexOf('+after') < events.indexOf('-slow'), `after started before slow finished: ${events.join(' ')}`);
  t.same(levels.map(([l]) => l).sort(), [0, 1], 'each level reported once');
  // The sequential baseline still goes level by level.
  events.length = 0;
  await new Initializer([timed('slow', 20), timed('fast', 5), timed('after', 5, ['fast'])], { sequential: true }).start();
  t.same(events, ['+slow', '-slow', '+fast', '-fast', '+after', '-after']);
});

t.test('retriable failures are retried with growing, jittered delays', async (t) => {
  const delays: number[] = [];
  let tries = 0;
  const init = new Initializer(
    [comp('flaky', [], { start: async () => { if (++tries < 3) throw new RetriableError('port busy'); } })],
    { attempts: 3, backoffMs: 100, random: () => 0.25, sleep: async (ms) => void delays.push(ms) },
  );
  await init.start();
  t.equal(tries, 3);
  t.same(delays, [75, 150], 'backoff 100 x 2^(n-1) x (0.5 + jitter)');
  t.equal(init.status()[0]!.attempts, 3);
  // Out of attempts: a critical component fails the start.
  let n = 0;
  const never = new Initializer([comp('never', [], { start: async () => { n++; throw new RetriableError('still busy'); } })], { attempts: 4, sleep: async () => undefined });
  await t.rejects(never.start(), { code: 'ERR_INIT_CRITICAL', component: 'never', message: /still busy/ });
  t.equal(n, 4);
  // Not retriable: one attempt only.
  let m = 0;
  const plain = new Initializer([comp('broken', [], { start: async () => { m++; throw new Error('config is wrong'); } })], { sleep: async () => undefined });
  await t.rejects(plain.start(), InitError);
  t.equal(m, 1);
});

t.test('a critical failure stops what started, in reverse order', async (t) => {
  const stopped: string[] = [];
  const stoppable = (name: string, deps: string[] = []): Component => comp(name, deps, { stop: async () => void stopped.push(name) });
  const init = new Initializer([
    stoppable('db'),
    stoppable('net'),
    stoppable('cache', ['db']),
    comp('api', ['net'], { start: async () => { throw new Error('bind failed'); } }),
    stoppable('never', ['api']),
  ]);
  const err = await init.start().catch((e: unknown) => e);
  t.type(err, InitError);
  t.equal((err as InitError).component, 'api');
  t.same(stopped, ['cache', 'net', 'db'], 'reverse of start order');
  const never = init.status().find((s) => s.name === 'never')!;
  t.equal(never.state, 'skipped', 'nothing starts after a critical failure');
  t.match(never.error, /start halted: critical component api/);
  t.equal(never.attempts, 0);

});

t.test('a non-critical failure leaves the node degraded; its dependents are skipped', async (t) => {
  const init = new Initializer([
    comp('core'),
    comp('metrics', [], { critical: false, start: async () => { throw new Error('exporter down'); } }),
    comp('dashboards', ['metrics'], { critical: false }),
    comp('api', ['core']),
  ]);
  await init.start();
  t.ok(init.degraded);
  const st = Object.fromEntries(init.status().map((s) => [s.name, s.state]));
  t.same(st, { core: 'running', metrics: 'failed', api: 'running', dashboards: 'skipped' });
  const health = await init.health();
  t.same(health.map((h) => [h.name, h.ok]), [['core', true], ['metrics', false], ['dashboards', false], ['api', true]]);
  // A critical component whose dependency failed fails the start.
  const strict = new Initializer([comp('metrics', [], { critical: false, start: async () => { throw new Error('x'); } }), comp('needs', ['metrics'])]);
  await t.rejects(strict.start(), { code: 'ERR_INIT_CRITICAL', message: /dependency metrics is not running/ });
});

t.test('health asks running components, and survives one that throws', async (t) => {
  const init = new Initializer([
    comp('good', [], { health: () => ({ ok: true, detail: { n: 1 } }) }),
    comp('sick', [], { health: async () => ({ ok: false }) }),
    comp('odd', [], { health: () => { throw new Error('probe crashed'); } }),
  ]);
  await init.start();
  const h = await init.health();
  t.same(h.map((x) => [x.name, x.ok]), [['good', true], ['sick', false], ['odd', false]]);
  t.same(h[0]!.detail, { n: 1 });
  t.equal(h[2]!.error, 'probe crashed');
  await init.stop();
  t.ok(init.status().every((s) => s.state === 'stopped'));
});
