// A real 3-node Raft cluster on loopback: three processes (`novacron
// consensus node`), each with its log in a temp directory and fsync on.
// (1) 2,000 sequential puts from one client, (2) 10,000 puts from 16
// concurrent clients; 256-byte values. Prints a table, then one JSON line:
// {"bench":"consensus","seq_p50_ms":..,"seq_p99_ms":..,"conc16_puts_per_s":..,"conc16_p50_ms":..,"conc16_p99_ms":..}
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { freePort } from '../dist/control/ports.js';
import { RaftKvClient } from '../dist/dwcp/consensus/raft/client.js';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const cli = fileURLToPath(new URL('../dist/cli/main.js', import.meta.url));

const pct = (xs, q) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(q * s.length))];
};

async function startCluster(dir) {
  const raftPorts = [await freePort(), await freePort(), await freePort()];
  const clientPorts = [await freePort(), await freePort(), await freePort()];
  const peers = raftPorts.map((p, i) => `${i + 1}=127.0.0.1:${p}`).join(',');
  const procs = [];
  for (let i = 0; i < 3; i++) {
    const child = spawn(process.execPath, [cli, 'consensus', 'node', '--id', String(i + 1), '--peers', peers, '--client-port', String(clientPorts[i]), '--data-dir', join(dir, `n${i + 1}`)], { stdio: ['ignore', 'pipe', 'inherit'] });
    procs.push(child);
    await new Promise((resolve, reject) => {
      child.stdout.once('data', resolve);
      child.once('exit', (code) => reject(new Error(`raft node ${i + 1} exited with ${code}`)));
    });
  }
  // Wait for a leader; clients then go straight to it (RaftKvClient follows
  // the not-leader hints, and the warm-up puts below settle it).
  const clientAddrs = new Map(clientPorts.map((port, i) => [i + 1, { host: '127.0.0.1', port }]));
  const deadline = Date.now() + 20000;
  const probe = new RaftKvClient(clientAddrs);
  try {
    while (!(await probe.call({ op: 'status' })).leader) {
      if (Date.now() > deadline) throw new Error('no leader within 20 s');
      await new Promise((r) => setTimeout(r, 50));
    }
  } finally {
    probe.close();
  }
  return { procs, clientAddrs };
}

export async function run(opts = {}) {
  const log = (s) => process.stdout.write(`${s}\n`);
  const sequential = opts.sequential ?? 2000;
  const concurrent = opts.concurrent ?? 10000;
  const clients = opts.clients ?? 16;
  const dir = mkdtempSync(join(tmpdir(), 'novacron-raft-'));
  let cluster;
  try {
    cluster = await startCluster(dir);
    const value = 'v'.repeat(256);
    const put = async (c, key) => {
      const t0 = process.hrtime.bigint();
      await c.call({ op: 'put', key, value });
      return Number(process.hrtime.bigint() - t0) / 1e6;
    };
    // Warm up connections and the leader's first entries.
    const one = new RaftKvClient(cluster.clientAddrs);
    for (let i = 0; i < 50; i++) await put(one, `warm${i}`);
    const seq = [];
    for (let i = 0; i < sequential; i++) seq.push(await put(one, `seq${i}`));
    one.close();
    log(`${sequential} sequential puts (256-byte values): p50 ${pct(seq, 0.5).toFixed(2)} ms, p99 ${pct(seq, 0.99).toFixed(2)} ms`);

    const conns = Array.from({ length: clients }, () => new RaftKvClient(cluster.clientAddrs));
    // Each finds the leader before the clock starts.
    await Promise.all(conns.map((c, i) => put(c, `warm-conn${i}`)));
    const lat = [];
    let issued = 0;
    const t0 = process.hrtime.bigint();
    await Promise.all(conns.map(async (c, ci) => {
      while (issued < concurrent) {
        issued++;
        lat.push(await put(c, `c${ci}-${issued}`));
      }
    }));
    const secs = Number(process.hrtime.bigint() - t0) / 1e9;
    for (const c of conns) c.close();
    const rate = concurrent / secs;
    log(`${concurrent} puts from ${clients} concurrent clients: ${rate.toFixed(0)} puts/s, p50 ${pct(lat, 0.5).toFixed(2)} ms, p99 ${pct(lat, 0.99).toFixed(2)} ms`);
    log(JSON.stringify({
      bench: 'consensus',
      seq_p50_ms: Number(pct(seq, 0.5).toFixed(2)),
      seq_p99_ms: Number(pct(seq, 0.99).toFixed(2)),
      conc16_puts_per_s: Math.round(rate),
      conc16_p50_ms: Number(pct(lat, 0.5).toFixed(2)),
      conc16_p99_ms: Number(pct(lat, 0.99).toFixed(2)),
    }));
  } finally {
    for (const p of cluster?.procs ?? []) p.kill('SIGTERM');
    await Promise.all((cluster?.procs ?? []).map((p) => new Promise((r) => (p.exitCode !== null ? r() : p.once('exit', r)))));
    rmSync(dir, { recursive: true, force: true });
  }
}
