import t from 'tap';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadConfig, diffConfig, formatConfig, redactUrl, ConfigError, SCHEMA } from '../../src/control/config.js';

const dir = mkdtempSync(join(tmpdir(), 'novacron-config-'));
const file = (name: string, text: string): string => {
  const p = join(dir, name);
  writeFileSync(p, text);
  return p;
};

t.test('defaults: every field has one, and a doc line', async (t) => {
  const { config, sources } = loadConfig({ env: {} });
  t.equal(config.api.port, 7700);
  t.equal(config.data.port, 7701);
  t.equal(config.api.host, '127.0.0.1');
  t.ok(config.node.dataDir.endsWith('.novacron') && !config.node.dataDir.startsWith('~'), 'home expanded');
  for (const [section, fields] of Object.entries(SCHEMA)) {
    for (const [key, spec] of Object.entries(fields)) {
      t.equal(sources[`${section}.${key}`], 'default');
      t.ok((spec as { doc: string }).doc.length > 10, `${section}.${key} is documented`);
    }
  }
  t.ok(Object.isFrozen(config) && Object.isFrozen(config.api), 'frozen');
  t.throws(() => {
    (config.api as { port: number }).port = 1;
  });
});

t.test('precedence: flag > env > later file > earlier file > default', async (t) => {
  const a = file('a.yaml', 'api:\n  port: 8001\n  host: 10.0.0.1\nlog:\n  level: debug\ndata:\n  streams: 4\n');
  const b = file('b.json', JSON.stringify({ api: { port: 8002 }, data: { streams: 6 } }));
  const env = { NOVACRON_API__PORT: '8003', NOVACRON_DATA__STREAMS: '10', NOVACRON_NODE__DATA_DIR: '/srv/nc', PATH: '/bin' };
  const flags = { 'api.port': '8004' };
  const cases: Array<[Parameters<typeof loadConfig>[0], number, string]> = [
    [{ env: {} }, 7700, 'default'],
    [{ env: {}, files: [a] }, 8001, `file ${a}`],
    [{ env: {}, files: [a, b] }, 8002, `file ${b}`],
    [{ env, files: [a, b] }, 8003, 'env NOVACRON_API__PORT'],
    [{ env, files: [a, b], flags }, 8004, 'flag api.port'],
  ];
  for (const [opts, port, source] of cases) {
    const { config, sources } = loadConfig(opts);
    t.equal(config.api.port, port, source);
    t.equal(sources['api.port'], source);
  }
  const { config, sources } = loadConfig({ env, files: [a, b], flags });
  t.equal(config.api.host, '10.0.0.1', 'a field set only in the first file survives the merge');
  t.equal(config.log.level, 'debug');
  t.equal(config.data.streams, 10);
  t.equal(config.node.dataDir, '/srv/nc');
  t.equal(sources['node.dataDir'], 'env NOVACRON_NODE__DATA_DIR');
});

t.test('every validation error names field, value and source', async (t) => {
  const bad: Array<[Parameters<typeof loadConfig>[0], string, string | undefined, RegExp]> = [
    [{ env: { NOVACRON_API__PORT: 'eighty' } }, 'ERR_CONFIG_INVALID', 'api.port', /api\.port = "eighty" from env NOVACRON_API__PORT: expected a number/],
    [{ env: { NOVACRON_API__PORT: '70000' } }, 'ERR_CONFIG_INVALID', 'api.port', /must be from 0 to 65535/],
    [{ env: {}, flags: { 'data.streams': '1.5' } }, 'ERR_CONFIG_INVALID', 'data.streams', /expected an integer/],
    [{ env: {}, flags: { 'log.level': 'loud' } }, 'ERR_CONFIG_INVALID', 'log.level', /expected one of trace, debug/],
    [{ env: { NOVACRON_DATA__TRANSPORT: 'rdma' } }, 'ERR_CONFIG_INVALID', 'data.transport', /expected one of auto, tcp/],
    [{ env: {}, files: [file('t.json', '{"api":{"port":"7700"}}')] }, 'ERR_CONFIG_INVALID', 'api.port', /from file .*t\.json: expected a number/],
    [{ env: {}, files: [file('l.json', '{"security":{"apiTokens":"abc"}}')] }, 'ERR_CONFIG_INVALID', 'security.apiTokens', /expected a list/],
    [{ env: {}, files: [file('u.yaml', 'api:\n  prot: 1\n')] }, 'ERR_CONFIG_UNKNOWN', 'api.prot', /unknown setting api\.prot from file/],
    [{ env: {}, files: [file('s.yaml', 'api: 5\n')] }, 'ERR_CONFIG_UNKNOWN', 'api', /must be a section/],
    [{ env: { NOVACRON_PORT: '1' } }, 'ERR_CONFIG_UNKNOWN', undefined, /NOVACRON_PORT does not name a setting/],
    [{ env: {}, flags: { 'nope.x': '1' } }, 'ERR_CONFIG_UNKNOWN', 'nope.x', /unknown setting nope\.x from flag nope\.x/],
    [{ env: {}, files: [file('broken.yaml', 'api: [1,\n')] }, 'ERR_CONFIG_FILE', undefined, /not valid YAML/],
    [{ env: {}, files: [file('broken.json', '{')] }, 'ERR_CONFIG_FILE', undefined, /not valid JSON/],
    [{ env: {}, files: [join(dir, 'missing.yaml')] }, 'ERR_CONFIG_FILE', undefined, /cannot read config file/],
    [{ env: {}, files: [file('list.yaml', '- 1\n')] }, 'ERR_CONFIG_FILE', undefined, /mapping of sections/],
    [{ env: {}, flags: { 'security.tlsCert': '/x.pem' } }, 'ERR_CONFIG_INVALID', 'security.tlsKey', /go together/],
    [{ env: { NOVACRON_DATABASE__URL: 'mysql://u:hunter2@db/nc' } }, 'ERR_CONFIG_INVALID', 'database.url', /"mysql:\/\/u:\*\*\*@db\/nc" from env NOVACRON_DATABASE__URL: expected a URL like postgres:/],
    [{ env: {}, flags: { 'database.url': 'localhost:5432' } }, 'ERR_CONFIG_INVALID', 'database.url', /expected a URL/],
    [{ env: {}, flags: { 'cache.redisUrl': 'http://cache:6379' } }, 'ERR_CONFIG_INVALID', 'cache.redisUrl', /expected a URL like redis:/],
    [{ env: {}, flags: { 'cache.redisUrl': 'redis://' } }, 'ERR_CONFIG_INVALID', 'cache.redisUrl', /expected a URL/],
    [{ env: {}, flags: { 'security.tlsCa': '/ca.pem' } }, 'ERR_CONFIG_INVALID', 'security.tlsCa', /needs security.tlsCert/],
  ];
  for (const [opts, code, field, message] of bad) {
    const err = (() => {
      try {
        loadConfig(opts);
        return undefined;
      } catch (e) {
        return e as ConfigError;
      }
    })();
    t.type(err, ConfigError, code);
    t.equal(err?.code, code);
    t.equal(err?.field, field);
    t.match(err?.message, message);
  }
});

t.test('options of the wrong shape are a ConfigError, not a TypeError', async (t) => {
  for (const bad of [{ files: 5 }, { files: ['a.yaml', 3] }, { env: 'NOVACRON_API__PORT=1' }, { flags: null }, { flags: ['api.port=1'] }]) {
    t.throws(() => loadConfig(bad as never), { name: 'ConfigError', code: 'ERR_CONFIG_INVALID', source: 'options' }, JSON.stringify(bad));
  }
  t.throws(() => loadConfig(null as never), { code: 'ERR_CONFIG_INVALID' });
});

t.test('backend URLs are accepted, and their passwords never printed', async (t) => {
  const loaded = loadConfig({ env: { NOVACRON_DATABASE__URL: 'postgresql://nc:s3cret@db.internal:5432/novacron', NOVACRON_CACHE__REDIS_URL: 'rediss://:p4ss@cache:6380/2' } });
  t.equal(loaded.config.database.url, 'postgresql://nc:s3cret@db.internal:5432/novacron', 'the node itself gets the real URL');
  const text = formatConfig(loaded);
  t.match(text, /database\.url\s+"postgresql:\/\/nc:\*\*\*@db\.internal:5432\/novacron"/);
  t.match(text, /cache\.redisUrl\s+"rediss:\/\/:\*\*\*@cache:6380\/2"/);
  t.notMatch(text, /s3cret|p4ss/);
  t.equal(redactUrl('redis://cache:6379'), 'redis://cache:6379', 'nothing to hide');
});

t.test('text values: lists and numbers from env and flags', async (t) => {
  const { config } = loadConfig({ env: { NOVACRON_SECURITY__API_TOKENS: 'a, b,,c' }, flags: { 'hde.cacheMiB': '64' } });
  t.same(config.security.apiTokens, ['a', 'b', 'c']);
  t.equal(config.hde.cacheMiB, 64);
});

t.test('diff splits reloadable from restart-only fields; print shows sources', async (t) => {
  const a = loadConfig({ env: {} });
  const b = loadConfig({ env: {}, flags: { 'log.level': 'debug', 'api.port': '9000', 'dwcp.mode': 'internet' } });
  t.same(diffConfig(a.config, b.config), { reloadable: ['dwcp.mode', 'log.level'], restart: ['api.port'] });
  const text = formatConfig(b);
  t.match(text, /api\.port\s+9000\s+flag api\.port/);
  t.match(text, /log\.level\s+"debug"\s+flag log\.level/);
  t.match(text, /hde\.cacheMiB\s+256\s+default\s+# Baseline cache per encoder \(MiB\)/);
});

t.test('the shipped presets are valid', async (t) => {
  const presets = new URL('../../config/', import.meta.url);
  for (const name of ['datacenter', 'internet', 'hybrid']) {
    const { config, sources } = loadConfig({ env: {}, files: [new URL(`${name}.yaml`, presets).pathname] });
    t.equal(sources['dwcp.mode']!.startsWith('file '), true, name);
    t.equal(config.dwcp.mode, name === 'hybrid' ? 'auto' : name);
  }
});
