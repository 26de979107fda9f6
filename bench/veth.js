// AMST through a rate-limited link: a veth pair between this network
// namespace and a new one, the sending side shaped by a tbf qdisc (1 Gbit/s
// by default). The receiver runs inside the namespace; iperf3 is measured
// through the same link when installed. Needs root (ip netns, tc); removes
// everything it made, also on failure. Prints a table, then one JSON line:
// {"bench":"veth","rate_mbit":..,"amst_mbit":{"1":..,"4":..},"iperf3_mbit":..,"amst_fraction":..}
import { spawn, spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { connect } from '../dist/index.js';
import { peerPort } from './peer-port.js';

const peerScript = fileURLToPath(new URL('./transport-peer.js', import.meta.url));
const NS = 'novacron-bench';
const HOST_IF = 'ncb-host';
const NS_IF = 'ncb-ns';
const HOST_IP = '10.231.0.1';
const NS_IP = '10.231.0.2';

function sh(args, { check = true } = {}) {
  const r = spawnSync(args[0], args.slice(1), { encoding: 'utf8' });
  if (check && r.status !== 0) throw new Error(`${args.join(' ')}: ${(r.stderr || r.stdout || '').trim() || `exit ${r.status}`}`);
  return r;
}

function teardown() {
  sh(['ip', 'link', 'del', HOST_IF], { check: false });
  sh(['ip', 'netns', 'del', NS], { check: false });
}

function setup(rateMbit) {
  teardown();
  sh(['ip', 'netns', 'add', NS]);
  sh(['ip', 'link', 'add', HOST_IF, 'type', 'veth', 'peer', 'name', NS_IF]);
  sh(['ip', 'link', 'set', NS_IF, 'netns', NS]);
  sh(['ip', 'addr', 'add', `${HOST_IP}/30`, 'dev', HOST_IF]);
  sh(['ip', 'link', 'set', HOST_IF, 'up']);
  sh(['ip', '-n', NS, 'addr', 'add', `${NS_IP}/30`, 'dev', NS_IF]);
  sh(['ip', '-n', NS, 'link', 'set', NS_IF, 'up']);
  sh(['ip', '-n', NS, 'link', 'set', 'lo', 'up']);
  // Shape what this side sends. The burst must cover a timer tick at this
  // rate or tbf itself caps throughput below the rate.
  sh(['tc', 'qdisc', 'add', 'dev', HOST_IF, 'root', 'tbf', 'rate', `${rateMbit}mbit`, 'burst', `${Math.max(32, rateMbit / 4) | 0}kb`, 'latency', '20ms']);
}

function inNs(cmd, args) {
  return spawn('ip', ['netns', 'exec', NS, cmd, ...args], { stdio: ['ignore', 'pipe', 'inherit'] });
}

async function amst(streams, bytes) {
  const child = inNs(process.execPath, [peerScript, 'amst-sink', 'thread', NS_IP]);
  const port = await peerPort(child, 'receiver').port;
  try {
    const conn = await connect({ host: NS_IP, port, streams, congestion: 'cubic' });
    const msg = Buffer.alloc(4 << 20, 0x3c);
    const count = Math.max(1, Math.round(bytes / msg.length));
    const t0 = process.hrtime.bigint();
    const inflight = [];
    for (let i = 0; i < count; i++) {
      inflight.push(conn.send(msg));
      if (inflight.length >= 8) await inflight.shift();
    }
    await Promise.all(inflight);
    const s = Number(process.hrtime.bigint() - t0) / 1e9;
    conn.destroy();
    return (count * msg.length * 8) / s / 1e6;
  } finally {
    child.kill('SIGTERM');
  }
}

async function iperf3(seconds) {
  if (spawnSync('iperf3', ['--version']).error) return null;
  const server = inNs('iperf3', ['-s', '-1', '-B', NS_IP, '-p', '5298']);
  await new Promise((r) => setTimeout(r, 500));
  const r = spawnSync('iperf3', ['-c', NS_IP, '-p', '5298', '-t', String(seconds), '-C', 'cubic', '-J'], { encoding: 'utf8' });
  server.kill();
  try {
    return JSON.parse(r.stdout).end.sum_received.bits_per_second / 1e6;
  } catch {
    return null;
  }
}

export async function run(opts = {}) {
  const rate = opts.rateMbit ?? 1000;
  const seconds = opts.seconds ?? 5;
  const bytes = (rate * 1e6 * seconds) / 8;
  const log = (s) => process.stdout.write(`${s}\n`);
  if (process.getuid?.() !== 0) throw new Error('bench veth needs root (ip netns, tc)');
  setup(rate);
  const onSignal = () => {
    teardown();
    process.exit(130);
  };
  process.once('SIGINT', onSignal);
  try {
    log(`AMST through a veth pair shaped by tbf to ${rate} Mbit/s, about ${seconds} s per run`);
    const amstMbit = {};
    for (const streams of opts.streams ?? [1, 4]) {
      amstMbit[streams] = Number((await amst(streams, bytes)).toFixed(1));
      log(`  amst ${String(streams).padStart(2)} stream(s): ${amstMbit[streams]} Mbit/s (${((100 * amstMbit[streams]) / rate).toFixed(1)} % of the link)`);
    }
    const ip = await iperf3(seconds);
    log(ip === null ? '  iperf3: not installed, skipped' : `  iperf3 one stream: ${ip.toFixed(1)} Mbit/s (${((100 * ip) / rate).toFixed(1)} %)`);
    const best = Math.max(...Object.values(amstMbit));
    log(JSON.stringify({ bench: 'veth', rate_mbit: rate, amst_mbit: amstMbit, iperf3_mbit: ip === null ? null : Number(ip.toFixed(1)), amst_fraction: Number((best / rate).toFixed(3)) }));
  } finally {
    process.off('SIGINT', onSignal);
    teardown();
  }
}
