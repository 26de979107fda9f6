// AMST over emulated WAN links (src/sys/wan.ts): (a) 1 Gbit/s, 50 ms RTT,
// 0.5 % loss; (b) 200 Mbit/s, 120 ms, 1 % loss; (c) a replayed Pantheon
// cellular trace (bench/traces/, or any Pantheon JSON or schedule given as
// `trace`, e.g. from ../shared/data/traces/pantheon-datalink/cellular/).
// For each: one CUBIC stream and one BBR
// stream (iperf3), and AMST with the streams and congestion control its mode
// controller picks for the link. Needs root and iperf3. Prints a table, then
// one JSON line:
// {"bench":"wan","links":{"a":{"cubic1_mbps":..,"bbr1_mbps":..,"amst_mbps":..,"amst_streams":..,"utilization":..},...}}
import { spawnSync } from 'node:child_process';
import { basename, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { wanUp, wanDown, wanUnavailable, traceSchedule } from '../dist/sys/wan.js';
import { peerPort } from './peer-port.js';

const peerScript = fileURLToPath(new URL('./transport-peer.js', import.meta.url));
const senderScript = fileURLToPath(new URL('./wan-send.js', import.meta.url));
const cellular = fileURLToPath(new URL('./traces/pantheon-aws-india2-stanford-cellular.txt', import.meta.url));
const NAME = 'nvbench';

// The mean rate of a trace from `from` seconds on, for utilization.
function meanRate(path, from = 0) {
  const steps = traceSchedule(path).split('\n').filter((l) => l && !l.startsWith('#')).map((l) => l.split(/\s+/).map(Number));
  const rates = steps.filter((s) => s[0] >= from).map((s) => s[1]);
  return rates.reduce((a, b) => a + b, 0) / rates.length;
}

function iperf3(link, congestion, seconds, omit) {
  const server = link.spawn('b', 'iperf3', ['-s', '-1', '-B', link.addrB], { stdio: 'ignore' });
  spawnSync('sleep', ['0.4']);
  const r = spawnSync('ip', ['netns', 'exec', link.nsA, 'iperf3', '-c', link.addrB, '-t', String(seconds), '-O', String(omit), '-C', congestion, '-J'],
    { encoding: 'utf8', timeout: (seconds + omit + 30) * 1000 });
  server.kill();
  try {
    return JSON.parse(r.stdout).end.sum_received.bits_per_second / 1e6;
  } catch {
    throw new Error(`iperf3 -C ${congestion} failed: ${(r.stderr || r.stdout || '').slice(0, 300)}`);
  }
}

async function amst(link, seconds, omit) {
  const sink = link.spawn('b', process.execPath, [peerScript, 'amst-lend-sink', 'thread', link.addrB], { stdio: ['ignore', 'pipe', 'inherit'] });
  const port = await peerPort(sink, 'AMST receiver').port;
  try {
    const r = spawnSync('ip', ['netns', 'exec', link.nsA, process.execPath, senderScript, link.addrB, String(port), String(seconds + omit), String(omit)],
      { encoding: 'utf8', timeout: (seconds + omit + 60) * 1000 });
    const line = r.stdout.split('\n').find((l) => l.startsWith('{'));
    if (!line) throw new Error(`AMST sender failed: ${(r.stderr || r.stdout || '').slice(0, 300)}`);
    return JSON.parse(line);
  } finally {
    sink.removeAllListeners('exit');
    sink.kill();
  }
}

export async function run(opts = {}) {
  const why = wanUnavailable();
  if (why) throw new Error(`bench wan: ${why}`);
  if (spawnSync('iperf3', ['--version']).error) throw new Error('bench wan needs iperf3 (apt install iperf3)');
  const seconds = opts.seconds ?? 10;
  const omit = opts.omit ?? 3;
  const links = {
    a: { what: '1 Gbit/s, 50 ms RTT, 0.5 % loss', options: { rateMbit: 1000, rttMs: 50, loss: 0.005 }, rate: 1000 },
    b: { what: '200 Mbit/s, 120 ms RTT, 1 % loss', options: { rateMbit: 200, rttMs: 120, loss: 0.01 }, rate: 200 },
    // Pantheon's queue for this trace is 10 packets.
    // The whole trace (31 s) once, measured after its first second.
    c: { what: 'Pantheon cellular trace (AWS India-2 to Stanford), replayed', options: { trace: cellular, queueBytes: 15000 }, rate: meanRate(cellular, 1), seconds: 30, omit: 1 },
  };
  if (opts.trace) {
    // Another trace for (c), with Pantheon's 10-packet queue.
    const name = `${basename(dirname(opts.trace))}/${basename(opts.trace)}`;
    links.c = { ...links.c, what: `trace ${name}, replayed`, options: { trace: opts.trace, queueBytes: 15000 }, rate: meanRate(opts.trace, 1) };
  }
  const which = opts.links ?? Object.keys(links);
  const log = (s) => process.stdout.write(`${s}\n`);
  log(`AMST over emulated WAN links (user-space forwarder between network namespaces), ${seconds} s each after ${omit} s of warm-up`);
  const results = {};
  for (const key of which) {
    const l = links[key];
    if (!l) throw new Error(`unknown link ${key} (a, b or c)`);
    // A fresh link for each contender: each sees the same loss draws and,
    // on (c), the same stretch of the trace from its start.
    const measure = async (fn) => {
      const link = await wanUp({ ...l.options, seed: 1 }, NAME);
      try {
        return await fn(link);
      } finally {
        await wanDown(NAME);
      }
    };
    const secs = l.seconds ?? seconds;
    const warm = l.omit ?? omit;
    const cubic = await measure((link) => iperf3(link, 'cubic', secs, warm));
    const bbr = await measure((link) => iperf3(link, 'bbr', secs, warm));
    const a = await measure((link) => amst(link, secs, warm));
    const r = {
      cubic1_mbps: Number(cubic.toFixed(2)),
      bbr1_mbps: Number(bbr.toFixed(2)),
      amst_mbps: Number(a.mbps.toFixed(2)),
      amst_streams: a.liveStreams,
      amst_congestion: a.congestion,
      amst_mode: a.mode,
      utilization: Number((a.mbps / l.rate).toFixed(3)),
      amst_vs_cubic1: Number((a.mbps / cubic).toFixed(2)),
      amst_vs_bbr1: Number((a.mbps / bbr).toFixed(2)),
      amst_retransmits: a.retransmits,
    };
    results[key] = r;
    log(`  (${key}) ${l.what}: one CUBIC stream ${r.cubic1_mbps} Mbit/s, one BBR stream ${r.bbr1_mbps}; ` +
        `AMST ${r.amst_mbps} (${r.amst_mode ?? 'no mode'} mode: ${r.amst_streams} streams, ${r.amst_congestion}, ${r.amst_retransmits} retransmitted segments), ` +
        `${(r.utilization * 100).toFixed(1)} % of ${l.rate.toFixed(1)} Mbit/s, ${r.amst_vs_cubic1}x CUBIC, ${r.amst_vs_bbr1}x BBR`);
  }
  log(JSON.stringify({ bench: 'wan', links: results }));
}

// Always leave nothing behind, even when interrupted.
for (const sig of ['SIGINT', 'SIGTERM']) {
  process.once(sig, () => {
    void wanDown(NAME).finally(() => process.exit(130));
  });
}

