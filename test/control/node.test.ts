import t from 'tap';
import { Writable } from 'node:stream';
import { request } from 'node:http';
import net, { createServer } from 'node:net';
import { spawn, spawnSync, execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { once } from 'node:events';
import { fileURLToPath } from 'node:url';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { NovacronNode } from '../../src/control/node.js';
import { connect } from '../../src/index.js';

const cli = fileURLToPath(new URL('../../dist/cli/main.js', import.meta.url));
const run = promisify(execFile);

function logSink(): { stream: Writable; lines: Array<Record<string, unknown>> } {
  const lines: Array<Record<string, unknown>> = [];
  const stream = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const l of chunk.toString().split('\n')) if (l) lines.push(JSON.parse(l) as Record<string, unknown>);
      cb();
    },
  });
  return { stream, lines };
}

function http(port: number, path: string, token?: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path, headers: token ? { authorization: `Bearer ${token}` } : {} }, (res) => {
      let body = '';
      res.on('data', (d: Buffer) => (body += d.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

async function until(cond: () => boolean | Promise<boolean>, ms = 10000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 20));
  }
}

const freshDir = (): string => mkdtempSync(join(tmpdir(), 'novacron-node-'));
const flags = (dir: string): Record<string, string> => ({ 'node.dataDir': dir, 'api.port': '0', 'data.port': '0', 'data.host': '127.0.0.1' });

t.test('a node starts, serves health and metrics, carries data, and stops', async (t) => {
  const dir = freshDir();
  const { stream, lines } = logSink();
  const node = new NovacronNode({ env: {}, flags: { ...flags(dir), 'data.handshakeTimeoutMs': '200', 'data.recvBufferBytes': String(96 * 1024) }, logStream: stream });
  await node.start();
  t.equal((await http(node.apiPort, '/live')).status, 200);
  // data.handshakeTimeoutMs reaches the listener: a socket that says nothing is closed.
  const silent = net.connect(node.dataPort, '127.0.0.1');
  silent.on('error', () => {});
  const t0 = Date.now();
  await once(silent, 'close');
  t.ok(Date.now() - t0 < 5000, 'a silent socket on the data port is closed after data.handshakeTimeoutMs (not the 10 s default)');
  t.same(JSON.parse((await http(node.apiPort, '/ready')).body), { ready: true });
  const health = await http(node.apiPort, '/health');
  t.equal(health.status, 200);
  const h = JSON.parse(health.body) as { status: string; components: Array<{ name: string; ok: boolean; state: string }> };
  t.equal(h.status, 'ok');
  t.same(h.components.map((c) => c.name).sort(), ['api', 'cache', 'database', 'dwcp', 'environment', 'monitoring', 'network', 'security', 'state']);
  t.ok(h.components.every((c) => c.ok && c.state === 'running'));
  // The data plane takes AMST connections.
  const conn = await connect({ host: '127.0.0.1', port: node.dataPort, streams: 2 });
  await conn.send(Buffer.from('hello node'));
  // data.recvBufferBytes reaches the accepted sockets (the kernel reports twice the size asked).
  const ss = spawnSync('ss', ['-tmnH', 'state', 'established', `( sport = :${node.dataPort} )`], { encoding: 'utf8' });
  if (ss.error) t.comment('ss (iproute2) not installed: the data sockets\' buffer size is not checked');
  else t.same([...ss.stdout.matchAll(/rb(\d+)/g)].map((m) => Number(m[1])), [192 * 1024, 192 * 1024], 'both accepted streams have SO_RCVBUF 96 KiB');
  const metrics = (await http(node.apiPort, '/metrics')).body;
  t.match(metrics, /novacron_component_start_seconds\{component="database"\} \d/);
  t.match(metrics, /novacron_boot_phase_seconds\{phase="total"\} \d/);
  t.match(metrics, /novacron_transport_messages_received 1\b/);
  t.match(metrics, /novacron_transport_receive_bytes_per_second [1-9]/, 'the message is in the last second\'s throughput');
  t.match(metrics, /process_cpu_seconds_total/);
  conn.destroy();
  // /status needs the node's token (written to the data directory, mode 0600).
  t.equal((await http(node.apiPort, '/status')).status, 401);
  t.equal((await http(node.apiPort, '/status', 'wrong')).status, 401);
  const token = readFileSync(join(dir, 'api-token'), 'utf8').trim();
  const status = JSON.parse((await http(node.apiPort, '/status', token)).body) as { nodeId: string; ready: boolean };
  t.equal(status.nodeId, node.nodeId);
  t.equal((await http(node.apiPort, '/nope')).status, 404);
  // Structured logs: one line per component, with its duration.
  const started = lines.filter((l) => l.msg === 'component started');
  t.equal(started.length, 9);
  t.ok(started.every((l) => typeof l.ms === 'number'));
  t.ok(lines.some((l) => l.msg === 'ready'));
  const port = node.apiPort;
  await node.stop();
  await t.rejects(http(port, '/live'), 'API closed after stop');
  const stops = lines.filter((l) => l.msg === 'component stopped').map((l) => l.component);
  t.same(stops, started.map((l) => l.component).reverse(), 'stopped in reverse start order');
  // A second start keeps identity, token, certificate and schema.
  const again = new NovacronNode({ env: {}, flags: flags(dir), logStream: logSink().stream });
  await again.start();
  t.equal(again.nodeId, node.nodeId);
  t.equal(again.apiToken, token);
  const h2 = JSON.parse((await http(again.apiPort, '/health')).body) as { components: Array<{ name: string; detail?: { fingerprint?: string; schemaVersion?: number } }> };
  const sec = (x: typeof h.components) => (x as Array<{ name: string; detail?: { fingerprint?: string } }>).find((c) => c.name === 'security')!.detail!.fingerprint;
  t.equal(sec(h2.components as never), sec(h.components as never), 'same certificate');
  t.equal(h2.components.find((c) => c.name === 'database')!.detail!.schemaVersion, 2);
  await again.stop();
});

t.test('config reload: good changes apply, restart-only ones are reported, bad files are rejected', async (t) => {
  const dir = freshDir();
  const cfg = join(dir, 'node.yaml');
  writeFileSync(cfg, 'log:\n  level: info\n');
  const { stream, lines } = logSink();
  const node = new NovacronNode({ env: {}, files: [cfg], flags: flags(dir), logStream: stream });
  await node.start();
  writeFileSync(cfg, 'log:\n  level: debug\ndwcp:\n  mode: internet\nhde:\n  cacheMiB: 64\n');
  t.same(node.reload(), { applied: ['dwcp.mode', 'log.level'], restart: ['hde.cacheMiB'] });
  t.equal(node.log.level, 'debug');
  t.equal(node.config.dwcp.mode, 'internet');
  writeFileSync(cfg, 'log:\n  level: shouting\n');
  const bad = node.reload();
  t.match((bad as { error: string }).error, /log\.level = "shouting" from file/);
  t.equal(node.config.log.level, 'debug', 'the running config stays');
  t.ok(lines.some((l) => l.msg === 'config reload rejected; keeping the running config'));
  // A changed file is picked up without a signal.
  node.watchConfigFiles();
  writeFileSync(cfg, 'log:\n  level: warn\n');
  await until(() => node.config.log.level === 'warn');
  t.match((await http(node.apiPort, '/metrics')).body, /novacron_config_reloads_total\{result="rejected"\} 1/);
  await node.stop();
});

t.test('a critical component that cannot start fails the start and releases what started', async (t) => {
  const blocker = createServer().listen(0, '127.0.0.1');
  await once(blocker, 'listening');
  const busy = (blocker.address() as { port: number }).port;
  const dir = freshDir();
  const { stream, lines } = logSink();
  const node = new NovacronNode({ env: {}, flags: { ...flags(dir), 'data.port': String(busy), 'init.attempts': '2', 'init.backoffMs': '10' }, logStream: stream });
  await t.rejects(node.start(), { code: 'ERR_INIT_CRITICAL', component: 'network' });
  t.equal(lines.filter((l) => l.msg === 'component failed, retrying').length, 1, 'the busy port was retried once');
  t.ok(lines.some((l) => l.msg === 'component stopped' && l.component === 'database'));
  await t.rejects(http(node.apiPort, '/live'), 'API closed again');
  blocker.close();
});

t.test('novacron start / status / config print, SIGHUP and SIGTERM', async (t) => {
  const dir = freshDir();
  const cfg = join(dir, 'node.json');
  writeFileSync(cfg, JSON.stringify({ log: { level: 'info' } }));
  const free = async (): Promise<number> => {
    const s = createServer().listen(0, '127.0.0.1');
    await once(s, 'listening');
    const p = (s.address() as { port: number }).port;
    s.close();
    return p;
  };
  const api = await free();
  const args = ['--data-dir', dir, '--api-port', String(api), '--data-port', '0', '--config', cfg];
  const child = spawn(process.execPath, [cli, 'start', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  const exited = once(child, 'exit') as Promise<[number | null, string | null]>;
  let out = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  await until(() => out.includes('"msg":"ready"'), 20000);
  const { stdout } = await run(process.execPath, [cli, 'status', '--api-port', String(api)]);
  t.match(stdout, /node on 127\.0\.0\.1:\d+: ok/);
  t.match(stdout, /database\s+running\s+ok/);
  writeFileSync(cfg, JSON.stringify({ log: { level: 'debug' } }));
  child.kill('SIGHUP');
  await until(() => out.includes('"msg":"config reloaded"'));
  child.kill('SIGTERM');
  const [code] = await exited;
  t.equal(code, 0, 'clean exit on SIGTERM');
  t.match(out, /"msg":"stopped"/);
  await t.rejects(run(process.execPath, [cli, 'status', '--api-port', String(api)]), { code: 1 });
  const printed = (await run(process.execPath, [cli, 'config', 'print', '--config', cfg, '--api-port', '9999'], { env: { ...process.env, NOVACRON_DATA__STREAMS: '12' } })).stdout;
  t.match(printed, /api\.port\s+9999\s+flag api\.port/);
  t.match(printed, /data\.streams\s+12\s+env NOVACRON_DATA__STREAMS/);
  t.match(printed, new RegExp(`log\\.level\\s+"debug"\\s+file ${cfg.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`));
  // An invalid config fails before anything binds.
  const bad = await run(process.execPath, [cli, 'start', '--api-port', String(api), '--set', 'api.port=http'], { env: { ...process.env } }).catch((e: { code: number; stderr: string }) => e);
  t.equal((bad as { code: number }).code, 1);
  t.match((bad as { stderr: string }).stderr, /api\.port = "http" from flag api\.port: expected a number \(ERR_CONFIG_INVALID\)/);
});

t.test('plugged-in components: /ready and /health while one is still starting, degraded when a non-critical one fails', async (t) => {
  const dir = freshDir();
  let release!: () => void;
  const gate = new Promise<void>((r) => (release = r));
  const node = new NovacronNode({
    env: {},
    flags: flags(dir),
    logStream: logSink().stream,
    components: [
      { name: 'slowModel', dependsOn: ['dwcp'], start: () => gate },
      { name: 'optionalExporter', critical: false, start: async () => { throw new Error('collector unreachable'); } },
    ],
  });
  const started = node.start();
  await until(() => node.apiPort > 0);
  await until(async () => (await http(node.apiPort, '/live')).status === 200);
  t.equal((await http(node.apiPort, '/ready')).status, 503, 'not ready while a component starts');
  const during = await http(node.apiPort, '/health');
  t.equal(during.status, 503);
  t.equal((JSON.parse(during.body) as { status: string }).status, 'starting');
  release();
  await started;
  t.equal((await http(node.apiPort, '/ready')).status, 200);
  const after = await http(node.apiPort, '/health');
  t.equal(after.status, 200, 'degraded still serves');
  const h = JSON.parse(after.body) as { status: string; components: Array<{ name: string; state: string; ok: boolean; error?: string }> };
  t.equal(h.status, 'degraded');
  const exp = h.components.find((c) => c.name === 'optionalExporter')!;
  t.same([exp.state, exp.ok, exp.error], ['failed', false, 'collector unreachable']);
  t.match((await http(node.apiPort, '/metrics')).body, /novacron_hde_frames_decoded_total [1-9]/, 'the codec self-test shows in the HDE counters');
  await node.stop();
});
