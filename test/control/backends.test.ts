// The node's storage backends and the VM API on top of them: embedded
// SQLite and the in-process cache always; PostgreSQL and Redis against real
// servers started for the test (skipped, with the reason, when not installed).
import t from 'tap';
import { Writable } from 'node:stream';
import { request } from 'node:http';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { NovacronNode } from '../../src/control/node.js';
import { MemoryCache } from '../../src/control/cache.js';
import { RedisCache } from '../../src/control/cache-redis.js';
import { LATEST_SCHEMA, SqliteStore } from '../../src/control/store.js';
import { PostgresStore } from '../../src/control/store-postgres.js';
import { postgresMissing, refusedPort, redisMissing, startPostgres, startRedis, PG_PASSWORD, REDIS_PASSWORD } from '../services.js';

const quiet = (): Writable => new Writable({ write: (_c, _e, cb) => cb() });
const freshDir = (): string => mkdtempSync(join(tmpdir(), 'novacron-backend-'));
const flags = (dir: string, more: Record<string, string> = {}): Record<string, string> => ({ 'node.dataDir': dir, 'api.port': '0', 'data.port': '0', 'data.host': '127.0.0.1', 'init.backoffMs': '10', ...more });

function api(node: NovacronNode, method: string, path: string, body?: unknown, token: string | null = node.apiToken): Promise<{ status: number; json: Record<string, unknown> | undefined }> {
  return new Promise((resolve, reject) => {
    const data = body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body);
    const req = request({ host: '127.0.0.1', port: node.apiPort, path, method, headers: { ...(token ? { authorization: `Bearer ${token}` } : {}), ...(data ? { 'content-type': 'application/json' } : {}) } }, (res) => {
      let text = '';
      res.on('data', (d: Buffer) => (text += d.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, json: text ? (JSON.parse(text) as Record<string, unknown>) : undefined }));
    });
    req.on('error', reject);
    req.end(data);
  });
}

async function metric(node: NovacronNode, name: string): Promise<number> {
  const text = await node.registry.metrics();
  const line = text.split('\n').find((l) => l.startsWith(name));
  return line ? Number(line.split(' ').at(-1)) : 0;
}

t.test('memory cache: LRU order, expiry, resizing, TTL 0', async (t) => {
  let now = 1000;
  const c = new MemoryCache(2, () => now);
  await c.set('a', '1', 100);
  await c.set('b', '2', 100);
  t.equal(await c.get('a'), '1', 'a is now the most recent');
  await c.set('c', '3', 100);
  t.equal(await c.get('b'), undefined, 'b was least recently used and went');
  t.same([await c.get('a'), await c.get('c')], ['1', '3']);
  now += 100;
  t.equal(await c.get('a'), undefined, 'expired at its TTL');
  await c.set('x', '1', 100);
  await c.set('y', '2', 100);
  c.setMaxEntries(1);
  t.equal(c.size, 1);
  t.equal(await c.get('y'), '2');
  await c.set('y', 'new', 0);
  t.equal(await c.get('y'), undefined, 'TTL 0 stores nothing and drops the old value');
  const h = await c.health();
  t.match(h, { ok: true, detail: { backend: 'memory', maxEntries: 1 } });
});

t.test('sqlite store: migrations once, records round-trip', async (t) => {
  const dir = freshDir();
  const a = new SqliteStore(join(dir, 'db'));
  t.same(await a.migrate(), [1, 2]);
  t.same(await a.migrate(), [], 'nothing pending the second time');
  t.equal(await a.schemaVersion(), LATEST_SCHEMA);
  await a.putVm({ id: 'vm1', name: 'web', state: 'running', host: 'n1', updatedAt: 5 });
  await a.putVm({ id: 'vm1', name: 'web', state: 'paused', host: null, updatedAt: 6 });
  t.same(await a.getVm('vm1'), { id: 'vm1', name: 'web', state: 'paused', host: null, updatedAt: 6 });
  t.equal(await a.deleteVm('vm1'), true);
  t.equal(await a.deleteVm('vm1'), false);
  await a.close();
});

t.test('VM API on the embedded backends', async (t) => {
  const node = new NovacronNode({ env: {}, flags: flags(freshDir()), logStream: quiet() });
  await node.start();
  t.teardown(() => node.stop());
  t.equal((await api(node, 'GET', '/v1/vms', undefined, null)).status, 401, 'a token is required');
  t.equal((await api(node, 'GET', '/v1/vms', undefined, 'wrong')).status, 401);
  t.same((await api(node, 'GET', '/v1/vms')).json, { vms: [] });
  const put = await api(node, 'PUT', '/v1/vms/vm-1', { name: 'db', state: 'running', host: 'node-a' });
  t.equal(put.status, 200);
  t.match(put.json, { id: 'vm-1', name: 'db', state: 'running', host: 'node-a', updatedAt: Number });
  t.match((await api(node, 'GET', '/v1/vms/vm-1')).json, { name: 'db', state: 'running' });
  await api(node, 'GET', '/v1/vms/vm-1');
  t.ok((await metric(node, 'novacron_cache_lookups_total{result="hit"}')) >= 1, 'the second read came from the cache');
  t.equal((await api(node, 'PUT', '/v1/vms/vm-1', { name: 'db', state: 'migrating' })).status, 200);
  t.match((await api(node, 'GET', '/v1/vms/vm-1')).json, { state: 'migrating', host: null }, 'a write is never hidden by a cached copy');
  t.equal((await api(node, 'GET', '/v1/vms')).json!.vms instanceof Array, true);
  // Every way a request can be wrong has its own code.
  const cases: Array<[string, string, unknown, number, string]> = [
    ['PUT', '/v1/vms/vm-2', '{not json', 400, 'ERR_API_BAD_JSON'],
    ['PUT', '/v1/vms/vm-2', [], 400, 'ERR_API_INVALID'],
    ['PUT', '/v1/vms/vm-2', { name: 'x', state: 'flying' }, 400, 'ERR_API_INVALID'],
    ['PUT', '/v1/vms/vm-2', { name: '', state: 'running' }, 400, 'ERR_API_INVALID'],
    ['PUT', '/v1/vms/vm-2', { name: 'x', state: 'running', host: 7 }, 400, 'ERR_API_INVALID'],
    ['PUT', '/v1/vms/vm-2', { name: 'x', state: 'running', owner: 'me' }, 400, 'ERR_API_INVALID'],
    ['PUT', '/v1/vms/vm-2', { name: 'x'.repeat(70000), state: 'running' }, 413, 'ERR_API_TOO_LARGE'],
    ['PUT', '/v1/vms/..%2Fetc', { name: 'x', state: 'running' }, 400, 'ERR_API_INVALID'],
    ['GET', '/v1/vms/%E0%A4%A', undefined, 400, 'ERR_API_INVALID'],
    ['GET', '/v1/vms/nope', undefined, 404, 'ERR_API_NOT_FOUND'],
    ['DELETE', '/v1/vms/nope', undefined, 404, 'ERR_API_NOT_FOUND'],
    ['POST', '/v1/vms', {}, 405, 'ERR_API_METHOD'],
    ['PATCH', '/v1/vms/vm-1', {}, 405, 'ERR_API_METHOD'],
  ];
  for (const [method, path, body, status, code] of cases) {
    const r = await api(node, method, path, body);
    t.equal(r.status, status, `${method} ${path} -> ${status}`);
    t.equal(r.json?.code, code, `${method} ${path} -> ${code}`);
  }
  t.equal((await api(node, 'GET', '/v1/vms/vm-2')).status, 404, 'nothing was stored by the bad requests');
  t.equal((await api(node, 'DELETE', '/v1/vms/vm-1')).status, 204);
  t.equal((await api(node, 'GET', '/v1/vms/vm-1')).status, 404, 'deleted, and not served from the cache');
});

const pgSkip = postgresMissing();
t.test('PostgreSQL backend', { skip: pgSkip ?? false }, async (t) => {
  const pg = await startPostgres();
  t.teardown(() => pg.stop());

  t.test('two stores migrating at once: one applies, both end at the latest schema', async (t) => {
    const opts = { url: pg.url, poolSize: 2, connectTimeoutMs: 5000 };
    const [a, b] = [new PostgresStore(opts), new PostgresStore(opts)];
    const [ra, rb] = await Promise.all([a.migrate(), b.migrate()]);
    t.same([...ra, ...rb].sort(), [1, 2], `each migration applied once (${JSON.stringify([ra, rb])})`);
    t.equal(await b.schemaVersion(), LATEST_SCHEMA);
    await a.putVm({ id: 'p1', name: 'n', state: 'defined', host: null, updatedAt: 2 ** 45 });
    t.same(await b.getVm('p1'), { id: 'p1', name: 'n', state: 'defined', host: null, updatedAt: 2 ** 45 }, 'BIGINT times come back as numbers');
    t.equal(await b.deleteVm('p1'), true);
    await Promise.all([a.close(), b.close()]);
  });

  t.test('a node on PostgreSQL: VM API, health, redacted URL, survives a database restart', async (t) => {
    const node = new NovacronNode({ env: {}, flags: flags(freshDir(), { 'database.url': pg.url }), logStream: quiet() });
    await node.start();
    t.teardown(() => node.stop());
    t.equal((await api(node, 'PUT', '/v1/vms/pg-vm', { name: 'pg', state: 'running' })).status, 200);
    t.match((await api(node, 'GET', '/v1/vms')).json, { vms: [{ id: 'pg-vm' }] });
    const db = (await node.health()).components.find((c) => c.name === 'database');
    t.match(db, { ok: true, detail: { backend: 'postgres', schemaVersion: LATEST_SCHEMA } });
    t.notMatch(String(db?.detail?.url), PG_PASSWORD, 'the password is not shown');
    const status = await api(node, 'GET', '/status');
    t.notMatch(JSON.stringify(status.json), PG_PASSWORD, '/status hides it too');

    const restart = await pg.pause();
    const down = await api(node, 'GET', '/v1/vms');
    t.ok(down.status >= 500 && typeof down.json?.code === 'string', `database down: ${down.status} ${String(down.json?.code)}`);
    t.equal((await node.health()).status, 'failed', 'health says so');
    await restart();
    t.match((await api(node, 'GET', '/v1/vms')).json, { vms: [{ id: 'pg-vm' }] }, 'the pool reconnects when the server is back');
    t.equal((await node.health()).status, 'ok');
  });

  t.test('start fails with a clear code: wrong password at once, unreachable after retries', async (t) => {
    const bad = pg.url.replace(PG_PASSWORD, 'wrong');
    const n1 = new NovacronNode({ env: {}, flags: flags(freshDir(), { 'database.url': bad }), logStream: quiet() });
    await t.rejects(n1.start(), { code: 'ERR_INIT_CRITICAL', message: /database did not start: .*password authentication failed/ });
    t.equal((await n1.health()).components.find((c) => c.name === 'database')!.attempts, 1, 'an authentication failure is not retried');
    const port = await refusedPort();
    const n2 = new NovacronNode({ env: {}, flags: flags(freshDir(), { 'database.url': `postgres://novacron:x@127.0.0.1:${port}/postgres` }), logStream: quiet() });
    await t.rejects(n2.start(), { code: 'ERR_INIT_CRITICAL', message: /ECONNREFUSED/ });
    t.equal((await n2.health()).components.find((c) => c.name === 'database')!.attempts, 3, 'a refused connection is retried');
  });
});

const redisSkip = redisMissing();
t.test('Redis cache', { skip: redisSkip ?? false }, async (t) => {
  const redis = await startRedis();
  t.teardown(() => redis.stop());

  t.test('set, get, expiry, delete, prefix', async (t) => {
    const c = await RedisCache.connect({ url: redis.url, keyPrefix: 'test:', connectTimeoutMs: 2000 });
    const other = await RedisCache.connect({ url: redis.url, keyPrefix: 'other:', connectTimeoutMs: 2000 });
    await c.set('k', 'v', 60000);
    t.equal(await c.get('k'), 'v');
    t.equal(await other.get('k'), undefined, 'keys are prefixed');
    await c.set('short', 'v', 50);
    await new Promise((r) => setTimeout(r, 120));
    t.equal(await c.get('short'), undefined, 'expired on the server');
    await c.delete('k');
    t.equal(await c.get('k'), undefined);
    t.match(await c.health(), { ok: true, detail: { backend: 'redis' } });
    await Promise.all([c.close(), other.close()]);
  });

  t.test('a node shares its cache through Redis and keeps serving when Redis goes away', async (t) => {
    const node = new NovacronNode({ env: {}, flags: flags(freshDir(), { 'cache.redisUrl': redis.url }), logStream: quiet() });
    await node.start();
    t.teardown(() => node.stop());
    await api(node, 'PUT', '/v1/vms/r1', { name: 'cached', state: 'running' });
    await api(node, 'GET', '/v1/vms/r1');
    await api(node, 'GET', '/v1/vms/r1');
    t.equal(await metric(node, 'novacron_cache_lookups_total{result="hit"}'), 1, 'second read hit Redis');
    const restart = await redis.pause();
    const r = await api(node, 'GET', '/v1/vms/r1');
    t.match(r, { status: 200, json: { name: 'cached' } }, 'read from the database instead');
    t.ok((await metric(node, 'novacron_cache_lookups_total{result="error"}')) >= 1);
    t.equal((await node.health()).status, 'degraded', 'cache is not critical');
    t.equal((await api(node, 'PUT', '/v1/vms/r1', { name: 'renamed', state: 'running' })).status, 200, 'writes still work');
    await restart();
    // Reconnected within its back-off; the write above could not invalidate,
    // so the stale entry lives at most one TTL. Here there was none (the
    // server lost its memory), so the new value shows at once.
    const t0 = Date.now();
    while ((await node.health()).status !== 'ok') {
      if (Date.now() - t0 > 10000) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    t.equal((await node.health()).status, 'ok', 'healthy again once Redis is back');
    t.match((await api(node, 'GET', '/v1/vms/r1')).json, { name: 'renamed' });
  });

  t.test('a wrong password leaves the node running degraded, with the in-process cache not pretending', async (t) => {
    const node = new NovacronNode({ env: {}, flags: flags(freshDir(), { 'cache.redisUrl': redis.url.replace(REDIS_PASSWORD, 'wrong') }), logStream: quiet() });
    await node.start();
    t.teardown(() => node.stop());
    const h = await node.health();
    t.equal(h.status, 'degraded');
    const cache = h.components.find((c) => c.name === 'cache');
    t.match(cache, { state: 'failed', error: /WRONGPASS|invalid|password/i, attempts: 1 });
    t.equal((await api(node, 'PUT', '/v1/vms/x', { name: 'x', state: 'stopped' })).status, 200, 'the API works without a cache');
    t.equal((await api(node, 'GET', '/v1/vms/x')).status, 200);
  });
});
