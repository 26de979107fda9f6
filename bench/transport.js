// AMST throughput, message rate and round trip over loopback, each against
// Node's `net` measured in the same run, and against iperf3 and sockperf
// when installed. The receiver runs in its own process. Message rate and
// round trip are measured with both I/O modes (`thread`, `loop`), and how
// busy each thread was during the AMST and Node runs (thread-cpu.js). Prints
// a table, then one JSON line:
// {"bench":"transport","bulk_gbps":{"1":..,"8":..},"node_net_gbps":..,"iperf3_gbps":..,"msg_rate":..,
//  "node_msg_rate":..,"rtt_p50_us":..,"sockperf_p50_us":..,"thread_cpu":{"bulk":{"sender_js":..,..},..},..}
import { spawn, spawnSync } from 'node:child_process';
import net from 'node:net';
import { once } from 'node:events';
import { fileURLToPath } from 'node:url';
import { connect } from '../dist/index.js';
import { peerPort } from './peer-port.js';
import { cpuShare, threadCpu } from './thread-cpu.js';

const peerScript = fileURLToPath(new URL('./transport-peer.js', import.meta.url));

async function startPeer(mode, io = 'thread', busyPollMicros = 0) {
  const child = spawn(process.execPath, [peerScript, mode, io, '127.0.0.1', String(busyPollMicros)], { stdio: ['ignore', 'pipe', 'inherit'] });
  const peer = peerPort(child, `peer ${mode}`);
  const port = await peer.port;
  return {
    port,
    pid: child.pid,
    async stop() {
      const rss = new Promise((resolve) => child.stdout.on('data', () => {
        const m = /rss (\d+)/.exec(peer.output());
        if (m) resolve(Number(m[1]));
      }));
      child.kill('SIGTERM');
      return rss;
    },
  };
}

const hrSeconds = (t0) => Number(process.hrtime.bigint() - t0) / 1e9;

// Starts measuring both processes' thread CPU; the function it returns gives
// the vCPUs each role kept busy since (see thread-cpu.js).
function cpuMeter(peerPid) {
  const self0 = threadCpu(process.pid);
  const peer0 = threadCpu(peerPid);
  const t0 = process.hrtime.bigint();
  return () => {
    const s = hrSeconds(t0);
    const self = cpuShare(self0, threadCpu(process.pid), s);
    const peer = cpuShare(peer0, threadCpu(peerPid), s);
    return { sender_js: self.js, sender_io: self.io, receiver_js: peer.js, receiver_io: peer.io };
  };
}
// Ratios as `median 1.52x (1.31-1.96x)`.
const ratios = (xs) => `median ${median(xs).toFixed(2)}x (${Math.min(...xs).toFixed(2)}-${Math.max(...xs).toFixed(2)}x)`;

// A graceful close that does not finish within 5 s is reported and forced,
// so one stuck close cannot stall the whole benchmark.
async function closeOrDestroy(conn, what) {
  let timer;
  const timedOut = new Promise((resolve) => (timer = setTimeout(() => resolve(true), 5000)));
  const late = await Promise.race([conn.close().then(() => false), timedOut]);
  clearTimeout(timer);
  if (late) {
    process.stderr.write(`note: ${what}: graceful close did not finish in 5 s; destroyed\n`);
    conn.destroy();
  }
}

// The receiver borrows messages (`lendBuffers`) unless `owned`.
async function amstBulk(streams, totalBytes, msgBytes, window, { zeroCopy = false, owned = false } = {}) {
  const peer = await startPeer(owned ? 'amst-sink' : 'amst-lend-sink');
  const conn = await connect({ host: '127.0.0.1', port: peer.port, streams, congestion: 'cubic', zeroCopy });
  const msg = Buffer.alloc(msgBytes, 0xa5);
  const count = Math.floor(totalBytes / msgBytes);
  const meter = cpuMeter(peer.pid);
  const t0 = process.hrtime.bigint();
  let inflight = [];
  for (let i = 0; i < count; i++) {
    inflight.push(conn.send(msg));
    if (inflight.length >= window) {
      await inflight.shift();
    }
  }
  await Promise.all(inflight);
  const s = hrSeconds(t0);
  const cpu = meter();
  await closeOrDestroy(conn, `bulk ${streams} streams`);
  const peerRss = await peer.stop();
  return { gbps: (count * msgBytes * 8) / s / 1e9, peerRss, cpu };
}

async function netBulk(totalBytes, writeBytes) {
  const peer = await startPeer('net-sink');
  const sock = net.connect(peer.port, '127.0.0.1');
  sock.setNoDelay(true);
  await once(sock, 'connect');
  const buf = Buffer.alloc(writeBytes, 0x5a);
  const count = Math.floor(totalBytes / writeBytes);
  const meter = cpuMeter(peer.pid);
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < count; i++) {
    if (!sock.write(buf)) await once(sock, 'drain');
  }
  await new Promise((resolve) => sock.end(resolve));
  const s = hrSeconds(t0);
  const cpu = meter();
  sock.destroy();
  await peer.stop();
  return { gbps: (count * writeBytes * 8) / s / 1e9, cpu };
}

// Each message-rate run first sends a fifth of its count on the same
// connection, untimed (AMST and Node alike): a fresh peer process and
// connection take a few million messages to reach their steady rate, and a
// user's long-lived connection runs at that rate.
const warmCount = (count) => Math.floor(count / 5);

async function amstMessages(conn, msg, count, window, batched) {
  let pending = [];
  if (batched) {
    // sendMany: one promise per `window` messages, eight batches in flight.
    const batch = Array.from({ length: window }, () => msg);
    for (let i = 0; i < count; i += window) {
      pending.push(conn.sendMany(batch));
      if (pending.length >= 8) await pending.shift();
    }
  }
  for (let i = 0; !batched && i < count; i++) {
    pending.push(conn.send(msg));
    if (pending.length >= window) {
      await Promise.all(pending);
      pending = [];
    }
  }
  await Promise.all(pending);
}

async function amstMsgRate(count, window, io, batched = false, sink = 'amst-sink') {
  const peer = await startPeer(sink, io);
  const conn = await connect({ host: '127.0.0.1', port: peer.port, streams: 1, congestion: 'cubic', io });
  const msg = Buffer.alloc(64, 1);
  await amstMessages(conn, msg, warmCount(count), window, batched);
  const meter = cpuMeter(peer.pid);
  const t0 = process.hrtime.bigint();
  await amstMessages(conn, msg, count, window, batched);
  const rate = count / hrSeconds(t0);
  const cpu = meter();
  await closeOrDestroy(conn, 'message rate');
  await peer.stop();
  return { rate, cpu };
}

// 64-byte messages copied into 64 KiB writes; resolves once the last write
// is handed to the kernel (`end`: the timed run's last, which closes).
async function netMessages(sock, msg, batch, count, end) {
  let off = 0;
  for (let i = 0; i < count; i++) {
    msg.copy(batch, off);
    off += 64;
    if (off === batch.length) {
      if (!sock.write(Buffer.from(batch))) await once(sock, 'drain');
      off = 0;
    }
  }
  const last = Buffer.from(batch.subarray(0, off));
  await new Promise((resolve) => (end ? sock.end(last, resolve) : sock.write(last, resolve)));
}

async function netMsgRate(count) {
  const peer = await startPeer('net-sink');
  const sock = net.connect(peer.port, '127.0.0.1');
  await once(sock, 'connect');
  const msg = Buffer.alloc(64, 1);
  const batch = Buffer.allocUnsafe(64 * 1024);
  await netMessages(sock, msg, batch, warmCount(count), false);
  const meter = cpuMeter(peer.pid);
  const t0 = process.hrtime.bigint();
  await netMessages(sock, msg, batch, count, true);
  const rate = count / hrSeconds(t0);
  const cpu = meter();
  sock.destroy();
  await peer.stop();
  return { rate, cpu };
}

function percentiles(samples) {
  samples.sort((a, b) => a - b);
  const at = (q) => samples[Math.min(samples.length - 1, Math.floor(q * samples.length))];
  return { p50: at(0.5), p99: at(0.99) };
}

async function amstPingPong(rounds, io, busyPollMicros = 0) {
  const peer = await startPeer('amst-echo', io, busyPollMicros);
  const conn = await connect({ host: '127.0.0.1', port: peer.port, streams: 1, congestion: 'cubic', io, busyPollMicros });
  const msg = Buffer.alloc(64, 2);
  let waiter;
  conn.on('message', () => waiter());
  const samples = [];
  for (let i = 0; i < rounds; i++) {
    const t0 = process.hrtime.bigint();
    const back = new Promise((r) => (waiter = r));
    conn.send(msg).catch(() => {});
    await back;
    samples.push(Number(process.hrtime.bigint() - t0) / 1e3);
  }
  await closeOrDestroy(conn, 'ping-pong');
  await peer.stop();
  return percentiles(samples.slice(Math.floor(rounds / 10)));
}

async function netPingPong(rounds) {
  const peer = await startPeer('net-echo');
  const sock = net.connect(peer.port, '127.0.0.1');
  sock.setNoDelay(true);
  await once(sock, 'connect');
  const msg = Buffer.alloc(64, 2);
  let waiter;
  let got = 0;
  sock.on('data', (d) => {
    got += d.length;
    if (got >= 64) {
      got -= 64;
      waiter();
    }
  });
  const samples = [];
  for (let i = 0; i < rounds; i++) {
    const t0 = process.hrtime.bigint();
    const back = new Promise((r) => (waiter = r));
    sock.write(msg);
    await back;
    samples.push(Number(process.hrtime.bigint() - t0) / 1e3);
  }
  sock.destroy();
  await peer.stop();
  return percentiles(samples.slice(Math.floor(rounds / 10)));
}

function iperf3(seconds) {
  // -1: the server exits after one test, so each measurement starts its own.
  const has = spawnSync('iperf3', ['--version']);
  if (has.error) return null;
  const server = spawn('iperf3', ['-s', '-1', '-p', '5299'], { stdio: 'ignore' });
  spawnSync('sleep', ['0.5']);
  const r = spawnSync('iperf3', ['-c', '127.0.0.1', '-p', '5299', '-t', String(seconds), '-C', 'cubic', '-J']);
  server.kill();
  try {
    return JSON.parse(r.stdout.toString()).end.sum_received.bits_per_second / 1e9;
  } catch {
    return null;
  }
}

// sockperf ping-pong, 64-byte TCP messages. sockperf prints one-way latency
// (half the round trip); both are returned.
async function sockperf(seconds) {
  if (spawnSync('sockperf', ['--version']).error) return null;
  const port = '5399';
  const server = spawn('sockperf', ['sr', '--tcp', '-i', '127.0.0.1', '-p', port], { stdio: 'ignore' });
  await new Promise((r) => setTimeout(r, 500));
  const r = spawnSync('sockperf', ['pp', '--tcp', '-i', '127.0.0.1', '-p', port, '-m', '64', '-t', String(seconds)], { timeout: (seconds + 10) * 1000 });
  server.kill();
  const m = /percentile 50\.000 =\s*([\d.]+)/.exec(r.stdout?.toString() ?? '');
  return m ? { oneWayP50: Number(m[1]), rttP50: 2 * Number(m[1]) } : null;
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const fmt = (x, d = 2) => (x === null ? null : Number(x.toFixed(d)));

export async function run(opts = {}) {
  const totalBytes = Math.round((opts.gib ?? 4) * 2 ** 30);
  const log = (s) => process.stdout.write(`${s}\n`);
  log(`AMST transport benchmark over loopback: bulk ${(totalBytes / 2 ** 30).toFixed(2)} GiB in 4 MiB messages`);
  // Rounds interleave every contender, so each sees the same state of this
  // noisy VM; medians and ranges are reported.
  const streamCounts = opts.streams ?? [1, 2, 4, 8];
  const bulkRounds = opts.bulkRounds ?? 3;
  const runsOf = { owned: [], node: [], iperf3: [] };
  const cpuOf = { bulk: [], nodeBulk: [], msg: [], nodeMsg: [] };  // thread CPU per run
  for (const n of streamCounts) runsOf[n] = [];
  let peakPeerRss = 0;
  for (let round = 0; round < bulkRounds; round++) {
    for (const n of streamCounts) {
      const r = await amstBulk(n, totalBytes, 4 << 20, 16);
      runsOf[n].push(r.gbps);
      if (n === streamCounts[0]) cpuOf.bulk.push(r.cpu);
      peakPeerRss = Math.max(peakPeerRss, r.peerRss);
    }
    const owned = await amstBulk(4, totalBytes, 4 << 20, 16, { owned: true });
    runsOf.owned.push(owned.gbps);
    peakPeerRss = Math.max(peakPeerRss, owned.peerRss);
    const nb = await netBulk(totalBytes, 1 << 20);
    runsOf.node.push(nb.gbps);
    cpuOf.nodeBulk.push(nb.cpu);
    const ip = iperf3(3);
    if (ip !== null) runsOf.iperf3.push(ip);
  }
  const range = (xs) => `median ${median(xs).toFixed(2)} (${Math.min(...xs).toFixed(2)}-${Math.max(...xs).toFixed(2)})`;
  const bulk = {};
  for (const n of streamCounts) {
    bulk[n] = fmt(median(runsOf[n]));
    log(`  amst ${String(n).padStart(2)} stream(s), receiver lending: ${range(runsOf[n])} Gbit/s`);
  }
  log(`  amst  4 streams, receiver given a Buffer per message: ${range(runsOf.owned)} Gbit/s`);
  // MSG_ZEROCOPY, for comparison: loopback copies anyway, so this measures its cost here.
  const zc = await amstBulk(4, totalBytes, 4 << 20, 16, { zeroCopy: true });
  log(`  amst  4 streams, MSG_ZEROCOPY: ${zc.gbps.toFixed(2)} Gbit/s`);
  const nodeNet = median(runsOf.node);
  log(`  node net, one socket, 1 MiB writes: ${range(runsOf.node)} Gbit/s`);
  const ip = runsOf.iperf3.length ? median(runsOf.iperf3) : null;
  log(ip === null ? '  iperf3: not installed, skipped' : `  iperf3 one stream (cubic): ${range(runsOf.iperf3)} Gbit/s`);
  const best = Math.max(...streamCounts.map((n) => bulk[n]));
  // Also paired: each round's best AMST run over that round's Node run,
  // measured within a minute of each other (this VM's speed drifts 2-3x from
  // one minute to the next); the median and range of those ratios.
  const bulkPaired = runsOf.node.map((nodeGbps, i) => Math.max(...streamCounts.map((n) => runsOf[n][i])) / nodeGbps);
  log(`  best amst median ${best.toFixed(2)} Gbit/s: ${(best / nodeNet).toFixed(2)}x node net` +
      (ip === null ? '' : `, ${(best / ip).toFixed(2)}x iperf3`) + `; round by round ${ratios(bulkPaired)} node net`);

  // 64-byte messages. sendMany packs them (a few per-message JS operations
  // and a copy); the receiver takes them in `batch` events (no object per
  // message) or as one `message` event each. One send() per message is the
  // slow path, for comparison. Medians of `msgRounds` (3) runs each, Node's alike.
  const msgCount = opts.messages ?? 200000;
  const manyCount = msgCount * 50;
  // Interleaved, so that all three see the same state of this noisy VM.
  const runs = { batch: [], events: [], node: [] };
  for (let i = 0; i < (opts.msgRounds ?? 3); i++) {
    const b = await amstMsgRate(manyCount, 4096, 'thread', true, 'amst-batch-sink');
    runs.batch.push(b.rate);
    cpuOf.msg.push(b.cpu);
    runs.events.push((await amstMsgRate(manyCount, 4096, 'thread', true, 'amst-sink')).rate);
    const nm = await netMsgRate(manyCount);
    runs.node.push(nm.rate);
    cpuOf.nodeMsg.push(nm.cpu);
  }
  const [rate, rateEvents, nodeRate] = [runs.batch, runs.events, runs.node].map(median);
  const msgPaired = runs.batch.map((r, i) => r / runs.node[i]);
  const rateSend = (await amstMsgRate(msgCount, 4096, 'thread')).rate;
  const rateSendLoop = (await amstMsgRate(msgCount, 4096, 'loop')).rate;
  const m = (r) => `${(r / 1e6).toFixed(2)} M msg/s`;
  log(`64-byte messages: amst sendMany ${m(rate)} into batch events, ${m(rateEvents)} into one message event each; ` +
      `node net batched into 64 KiB writes ${m(nodeRate)} (${(rate / nodeRate).toFixed(2)}x, ${(rateEvents / nodeRate).toFixed(2)}x; ` +
      `batch events round by round ${ratios(msgPaired)}); ` +
      `one send() each ${m(rateSend)} (io thread), ${m(rateSendLoop)} (io loop)`);

  const rounds = opts.rounds ?? 5000;
  const rttThread = await amstPingPong(rounds, 'thread');
  const rtt = await amstPingPong(rounds, 'loop');
  const busyPoll = opts.busyPoll ?? 50;
  const rttBusy = await amstPingPong(rounds, 'loop', busyPoll);
  const nrtt = await netPingPong(rounds);
  const sp = await sockperf(3);
  const us = (r) => `p50 ${r.p50.toFixed(1)} us p99 ${r.p99.toFixed(1)} us`;
  log(`64-byte ping-pong round trip: amst io loop ${us(rtt)}, busy-polling ${busyPoll} us ${us(rttBusy)}, io thread ${us(rttThread)}; node net ${us(nrtt)}`);
  log(sp === null ? '  sockperf: not installed, skipped'
    : `  sockperf ping-pong: one-way p50 ${sp.oneWayP50.toFixed(1)} us, so round trip p50 ${sp.rttP50.toFixed(1)} us; ` +
      `amst busy-polling ${(rttBusy.p50 / sp.rttP50).toFixed(2)}x, without ${(rtt.p50 / sp.rttP50).toFixed(2)}x`);
  // Which threads each contender kept busy (vCPUs, medians over the rounds):
  // the one near 1.0 bounds the run; this VM has two vCPUs for all of them.
  const medianCpu = (list) => Object.fromEntries(Object.keys(list[0]).map((k) => [k, fmt(median(list.map((c) => c[k])))]));
  const threadCpuOf = {
    bulk: medianCpu(cpuOf.bulk),
    node_bulk: medianCpu(cpuOf.nodeBulk),
    msg_rate: medianCpu(cpuOf.msg),
    node_msg_rate: medianCpu(cpuOf.nodeMsg),
  };
  const amstCpu = (c) => `sender JS ${c.sender_js} + amst-io ${c.sender_io}, receiver JS ${c.receiver_js} + amst-io ${c.receiver_io}`;
  const nodeCpu = (c) => `sender ${c.sender_js}, receiver ${c.receiver_js}`;
  log(`thread CPU, vCPUs busy (medians): bulk ${streamCounts[0]} stream(s) ${amstCpu(threadCpuOf.bulk)}; node net bulk ${nodeCpu(threadCpuOf.node_bulk)}; ` +
      `64-byte sendMany ${amstCpu(threadCpuOf.msg_rate)}; node net messages ${nodeCpu(threadCpuOf.node_msg_rate)}`);
  const rss = process.resourceUsage().maxRSS * 1024;
  log(`peak RSS: sender ${(rss / 2 ** 20).toFixed(0)} MiB, receiver ${(peakPeerRss / 2 ** 20).toFixed(0)} MiB`);
  log(JSON.stringify({
    bench: 'transport',
    bulk_gbps: bulk,
    bulk_owned_gbps: fmt(median(runsOf.owned)),
    bulk_zerocopy_gbps: fmt(zc.gbps),
    node_net_gbps: fmt(nodeNet),
    iperf3_gbps: fmt(ip),
    bulk_vs_node: fmt(best / nodeNet),
    bulk_vs_iperf3: ip === null ? null : fmt(best / ip),
    bulk_vs_node_paired: fmt(median(bulkPaired)),
    msg_rate: Math.round(rate),
    msg_rate_events: Math.round(rateEvents),
    msg_rate_send: Math.round(rateSend),
    msg_rate_send_loop: Math.round(rateSendLoop),
    node_msg_rate: Math.round(nodeRate),
    msg_rate_vs_node_paired: fmt(median(msgPaired)),
    rtt_p50_us: fmt(rtt.p50, 1),
    rtt_p99_us: fmt(rtt.p99, 1),
    rtt_busy_poll_p50_us: fmt(rttBusy.p50, 1),
    rtt_busy_poll_p99_us: fmt(rttBusy.p99, 1),
    rtt_thread_p50_us: fmt(rttThread.p50, 1),
    node_rtt_p50_us: fmt(nrtt.p50, 1),
    node_rtt_p99_us: fmt(nrtt.p99, 1),
    sockperf_p50_us: sp === null ? null : fmt(sp.oneWayP50, 1),
    sockperf_rtt_p50_us: sp === null ? null : fmt(sp.rttP50, 1),
    thread_cpu: threadCpuOf,
    sender_peak_rss_mib: Math.round(rss / 2 ** 20),
    receiver_peak_rss_mib: Math.round(peakPeerRss / 2 ** 20),
  }));
}
