// AMST over RDMA, in the style of perftest's ib_write_bw and ib_write_lat:
// bulk bandwidth for a range of message sizes with a window of messages in
// flight, and the 64-byte round trip (with the one-way latency, half of it,
// as ib_write_lat reports), each against AMST over TCP to the same peer in
// the same run. For RDMA-capable hosts: with no device, or a peer that
// declines RDMA, it stops with ERR_AMST_UNAVAILABLE. Not yet run on RDMA
// hardware (none where it was written).
//
// One host (the HCA loops back):   novacron bench transport --transport rdma
// Two hosts:  on B  novacron bench transport --transport rdma --serve --host 0.0.0.0 --port 7711
//             on A  novacron bench transport --transport rdma --peer B:7711
// Prints a table, then one JSON line:
// {"bench":"transport-rdma","bulk_gbps":{"65536":..,..},"tcp_bulk_gbps":{..},"rtt_p50_us":..,"lat_p50_us":..,"tcp_rtt_p50_us":..}
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { connect } from '../dist/index.js';
import { peerPort } from './peer-port.js';

const peerScript = fileURLToPath(new URL('./transport-peer.js', import.meta.url));
const log = (s) => process.stdout.write(`${s}\n`);
const fmt = (x, d = 2) => Number(x.toFixed(d));

function percentiles(samples) {
  samples.sort((a, b) => a - b);
  const at = (q) => samples[Math.min(samples.length - 1, Math.floor(q * samples.length))];
  return { p50: at(0.5), p99: at(0.99) };
}

// Runs the peer in this process's stead until killed (`--serve`).
function serve(host, port, gid) {
  const child = spawn(process.execPath, [peerScript, 'amst-mixed', 'thread', host, '0', String(port), gid ?? ''], { stdio: 'inherit' });
  return new Promise((resolve) => child.once('exit', resolve));
}

async function localPeer(gid) {
  const child = spawn(process.execPath, [peerScript, 'amst-mixed', 'thread', '127.0.0.1', '0', '0', gid ?? ''], { stdio: ['ignore', 'pipe', 'inherit'] });
  const port = await peerPort(child, 'rdma bench peer').port;
  return { host: '127.0.0.1', port, stop: () => child.kill('SIGTERM') };
}

async function bulk(conn, msgBytes, totalBytes, window) {
  const msg = Buffer.alloc(msgBytes, 0xa5);
  const count = Math.max(window, Math.floor(totalBytes / msgBytes));
  const inflight = [];
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < count; i++) {
    inflight.push(conn.send(msg));
    if (inflight.length >= window) await inflight.shift();
  }
  await Promise.all(inflight);
  const s = Number(process.hrtime.bigint() - t0) / 1e9;
  return (count * msgBytes * 8) / s / 1e9;
}

async function pingPong(conn, rounds) {
  const msg = Buffer.alloc(64, 2);
  let waiter;
  conn.on('message', () => waiter?.());
  const samples = [];
  for (let i = 0; i < rounds; i++) {
    const back = new Promise((r) => (waiter = r));
    const t0 = process.hrtime.bigint();
    conn.send(msg).catch(() => {});
    await back;
    samples.push(Number(process.hrtime.bigint() - t0) / 1e3);
  }
  return percentiles(samples.slice(Math.floor(rounds / 10)));
}

export async function run(opts = {}) {
  if (opts.serve) {
    log(`serving the RDMA benchmark on ${opts.host ?? '0.0.0.0'}:${opts.port ?? 7711} (Ctrl-C to stop)`);
    await serve(opts.host ?? '0.0.0.0', opts.port ?? 7711, opts.gidIndex === undefined ? undefined : String(opts.gidIndex));
    return;
  }
  const sizes = opts.sizes ?? [65536, 1 << 20, 4 << 20];
  const totalBytes = Math.round((opts.gib ?? 2) * 2 ** 30);
  const lanes = opts.lanes ?? 4;
  const rounds = opts.rounds ?? 10000;
  let peer;
  if (opts.peer) {
    const m = /^(.+):(\d+)$/.exec(opts.peer);
    if (!m) throw new Error(`--peer must be host:port, got ${opts.peer}`);
    peer = { host: m[1], port: Number(m[2]), stop: () => {} };
  } else {
    peer = await localPeer(opts.gidIndex === undefined ? undefined : String(opts.gidIndex));
  }
  try {
    const gid = opts.gidIndex === undefined ? {} : { rdmaGidIndex: opts.gidIndex };
    const dial = (transport) => connect({ host: peer.host, port: peer.port, streams: lanes, rdmaLanes: lanes, transport, congestion: 'cubic', ...gid });
    let rdma;
    try {
      rdma = await dial('rdma');
    } catch (err) {
      log(`RDMA unavailable: ${err.message} (${err.code}). \`novacron doctor\` lists this host's RDMA devices; ` +
          'the peer needs one too (and must not listen with transport: tcp).');
      log(JSON.stringify({ bench: 'transport-rdma', error: err.code }));
      process.exitCode = 2;
      return;
    }
    const tcp = await dial('tcp');
    log(`AMST over RDMA to ${peer.host}:${peer.port}: ${lanes} lane(s), ${(totalBytes / 2 ** 30).toFixed(2)} GiB per size, 16 messages in flight; TCP (${lanes} streams, cubic) alongside`);
    const bw = {};
    const tcpBw = {};
    for (const size of sizes) {
      bw[size] = fmt(await bulk(rdma, size, totalBytes, 16));
      tcpBw[size] = fmt(await bulk(tcp, size, totalBytes, 16));
      log(`  ${String(size).padStart(8)} B messages: rdma ${bw[size].toFixed(2)} Gbit/s, tcp ${tcpBw[size].toFixed(2)} Gbit/s (${(bw[size] / tcpBw[size]).toFixed(2)}x)`);
    }
    const lat = await pingPong(rdma, rounds);
    const tlat = await pingPong(tcp, rounds);
    log(`  64 B round trip: rdma p50 ${lat.p50.toFixed(1)} us p99 ${lat.p99.toFixed(1)} us (one-way ${(lat.p50 / 2).toFixed(1)} us); ` +
        `tcp p50 ${tlat.p50.toFixed(1)} us p99 ${tlat.p99.toFixed(1)} us`);
    const st = rdma.stats();
    log(`  still on RDMA at the end: ${st.transport === 'rdma' ? 'yes' : 'no (fell back to TCP)'}; lanes ${st.rdmaLanes}, resent chunks ${st.chunksResent}`);
    rdma.destroy();
    tcp.destroy();
    log(JSON.stringify({
      bench: 'transport-rdma',
      lanes,
      bulk_gbps: bw,
      tcp_bulk_gbps: tcpBw,
      rtt_p50_us: fmt(lat.p50, 1),
      rtt_p99_us: fmt(lat.p99, 1),
      lat_p50_us: fmt(lat.p50 / 2, 1),
      tcp_rtt_p50_us: fmt(tlat.p50, 1),
      stayed_on_rdma: st.transport === 'rdma',
    }));
  } finally {
    peer.stop();
  }
}
