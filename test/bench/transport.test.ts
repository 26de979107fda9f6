// The transport benchmark runs end to end with small volumes and prints the
// documented JSON summary last. This checks its output, not its speed.
import t from 'tap';
import { execFile, execFileSync } from 'node:child_process';
import { promisify } from 'node:util';
import { fileURLToPath } from 'node:url';

const run = promisify(execFile);
const cli = fileURLToPath(new URL('../../dist/cli/main.js', import.meta.url));

t.test('bench transport prints a JSON summary line last', async (t) => {
  const { stdout } = await run(
    process.execPath,
    [cli, 'bench', 'transport', '--gib', '0.05', '--streams', '1,4', '--messages', '2000', '--rounds', '100'],
    // Without tap's loader hooks, which would follow every child process the
    // benchmark starts.
    { timeout: 120000, env: { ...process.env, NODE_OPTIONS: '' } },
  );
  const summary = JSON.parse(stdout.trim().split('\n').at(-1)!) as Record<string, unknown>;
  t.equal(summary.bench, 'transport');
  const bulk = summary.bulk_gbps as Record<string, number>;
  t.ok(bulk['1']! > 0 && bulk['4']! > 0);
  for (const k of ['node_net_gbps', 'msg_rate', 'node_msg_rate', 'rtt_p50_us', 'bulk_vs_node_paired', 'msg_rate_vs_node_paired']) t.ok((summary[k] as number) > 0, k);
  t.ok('iperf3_gbps' in summary && 'sockperf_p50_us' in summary);
  // vCPUs each thread kept busy, per contender (too short a run here to say more than their shape).
  const cpu = summary.thread_cpu as Record<string, Record<string, number>>;
  t.same(Object.keys(cpu).sort(), ['bulk', 'msg_rate', 'node_bulk', 'node_msg_rate']);
  for (const [run, roles] of Object.entries(cpu)) {
    t.same(Object.keys(roles).sort(), ['receiver_io', 'receiver_js', 'sender_io', 'sender_js'], run);
    for (const v of Object.values(roles)) t.ok(Number.isFinite(v) && v >= 0, `${run}: ${v}`);
  }
});

// No RDMA device here: the RDMA benchmark says so clearly and exits 2. (On
// RDMA hosts it measures; it has not run on hardware yet.)
t.test('bench transport --transport rdma without a device stops with a clear error', async (t) => {
  const err = await run(process.execPath, [cli, 'bench', 'transport', '--transport', 'rdma'], {
    timeout: 60000,
    env: { ...process.env, NODE_OPTIONS: '' },
  }).catch((e: unknown) => e as { code: number; stdout: string });
  t.equal((err as { code: number }).code, 2);
  const out = (err as { stdout: string }).stdout.trim().split('\n');
  t.match(out[0], /RDMA unavailable.*ERR_AMST_UNAVAILABLE/);
  t.same(JSON.parse(out.at(-1)!), { bench: 'transport-rdma', error: 'ERR_AMST_UNAVAILABLE' });
  const usage = await run(process.execPath, [cli, 'bench', 'transport', '--peer', 'h:1'], { env: { ...process.env, NODE_OPTIONS: '' } }).catch(
    (e: unknown) => e as { code: number; stderr: string },
  );
  t.equal((usage as { code: number }).code, 2);
  t.match((usage as { stderr: string }).stderr, /--peer goes with --transport rdma/);
});

// Needs root and network namespaces; skipped where either is missing.
const canNetns = process.getuid?.() === 0 && (() => {
  try {
    execFileSync('ip', ['netns', 'list'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
})();

t.test('bench veth shapes a link, measures through it and cleans up', { skip: canNetns ? false : 'needs root and ip netns' }, async (t) => {
  const { stdout } = await run(process.execPath, [cli, 'bench', 'veth', '--rate-mbit', '200', '--seconds', '1', '--streams', '2'], {
    timeout: 120000,
    env: { ...process.env, NODE_OPTIONS: '' },
  });
  const summary = JSON.parse(stdout.trim().split('\n').at(-1)!) as { bench: string; rate_mbit: number; amst_mbit: Record<string, number> };
  t.equal(summary.bench, 'veth');
  const got = summary.amst_mbit['2']!;
  // The shaper is real: far below loopback speed, and not above its rate.
  t.ok(got > 20 && got <= 200 * 1.05, `${got} Mbit/s through a 200 Mbit/s link`);
  t.notMatch(execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' }), /novacron-bench/, 'namespace removed');
});

// `bench wan --trace` reads the trace before it sets up anything: a trace
// that is not there is a clear error, and no namespace is left behind.
t.test('bench wan --trace with a missing file fails clearly', { skip: canNetns ? false : 'needs root and ip netns' }, async (t) => {
  const err = await run(process.execPath, [cli, 'bench', 'wan', '--links', 'c', '--trace', '/nonexistent/trace.json'], {
    timeout: 60000,
    env: { ...process.env, NODE_OPTIONS: '' },
  }).catch((e: unknown) => e as { code: number; stderr: string });
  t.not((err as { code: number }).code, 0);
  t.match((err as { stderr: string }).stderr, /cannot read trace \/nonexistent\/trace\.json/);
  t.notMatch(execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' }), /nvbench/);
});
