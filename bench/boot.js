// Boot time of a node and what level-parallel start buys. Prints a table,
// then one JSON line: {"bench":"boot","ready_ms":..,"parallel_speedup":..}
//  ready_ms: `novacron start` with embedded defaults (a fresh data directory,
//    so first-start key and certificate generation included), from spawning
//    the process to /ready answering 200; median of the runs.
//  parallel_speedup: the initializer on a component graph shaped like a full
//    node's (20 components, 5 levels on the longest path, start delays of
//    5-95 ms standing in for key generation, database migration, model
//    loading...), sequential start time over parallel start time (each
//    component as soon as its dependencies run), same run. The graph's own
//    bound is the sum of its delays over its critical path: 880/315 = 2.79x.
import { spawn } from 'node:child_process';
import { get } from 'node:http';
import { mkdtempSync, rmSync } from 'node:fs';
import { freePort } from '../dist/control/ports.js';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Initializer } from '../dist/control/initializer.js';

const cli = fileURLToPath(new URL('../dist/cli/main.js', import.meta.url));

function ready(port) {
  return new Promise((resolve) => {
    const req = get({ host: '127.0.0.1', port, path: '/ready', timeout: 200 }, (res) => {
      res.resume();
      resolve(res.statusCode === 200);
    });
    req.on('error', () => resolve(false));
    req.on('timeout', () => req.destroy());
  });
}

async function bootOnce(dataDir) {
  const [api, data] = [await freePort(), await freePort()];
  const t0 = process.hrtime.bigint();
  const child = spawn(process.execPath, [cli, 'start', '--data-dir', dataDir, '--api-port', String(api), '--data-port', String(data), '--log-level', 'warn'], { stdio: 'ignore' });
  let exited = false;
  child.on('exit', () => (exited = true));
  try {
    for (;;) {
      if (exited) throw new Error('node exited before it was ready');
      if (await ready(api)) return Number(process.hrtime.bigint() - t0) / 1e6;
      if (Number(process.hrtime.bigint() - t0) > 30e9) throw new Error('not ready within 30 s');
      await new Promise((r) => setTimeout(r, 2));
    }
  } finally {
    child.kill('SIGTERM');
    await new Promise((r) => (exited ? r() : child.on('exit', r)));
  }
}

// name: [start ms, dependencies]
const GRAPH = {
  environment: [15, []], configWatch: [5, []], metrics: [20, []], api: [30, []], cache: [10, []], logger: [5, []], tracing: [25, []],
  security: [70, ['environment']], database: [90, ['environment']], network: [40, ['environment']], telemetry: [35, ['metrics']],
  amst: [50, ['network']], hde: [45, ['environment']], consensus: [95, ['network', 'database']], stateSync: [60, ['database', 'network']], gossip: [55, ['network']],
  pba: [80, ['amst']], itp: [75, ['consensus']], vmApi: [35, ['api', 'database', 'consensus']], scheduler: [40, ['itp', 'gossip']],
};

// Sum of all delays over the longest dependency chain.
function bound() {
  const memo = new Map();
  const path = (n) => memo.get(n) ?? (memo.set(n, GRAPH[n][0] + Math.max(0, ...GRAPH[n][1].map(path))), memo.get(n));
  const names = Object.keys(GRAPH);
  return names.reduce((a, n) => a + GRAPH[n][0], 0) / Math.max(...names.map(path));
}

async function graphStart(sequential) {
  const components = Object.entries(GRAPH).map(([name, [ms, deps]]) => ({
    name,
    dependsOn: deps,
    start: () => new Promise((r) => setTimeout(r, ms)),
  }));
  const init = new Initializer(components, { sequential });
  const t0 = performance.now();
  await init.start();
  return { ms: performance.now() - t0, levels: init.levels.length };
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

export async function run(opts = {}) {
  const runs = opts.runs ?? 5;
  const log = (s) => process.stdout.write(`${s}\n`);
  const times = [];
  for (let i = 0; i < runs; i++) {
    const dir = mkdtempSync(join(tmpdir(), 'novacron-boot-'));
    try {
      times.push(await bootOnce(dir));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }
  log(`novacron start to /ready, fresh data directory: median ${median(times).toFixed(0)} ms (${Math.min(...times).toFixed(0)}-${Math.max(...times).toFixed(0)}, ${runs} runs)`);
  const seq = [], par = [];
  let levels = 0;
  for (let i = 0; i < 3; i++) {
    seq.push((await graphStart(true)).ms);
    const p = await graphStart(false);
    par.push(p.ms);
    levels = p.levels;
  }
  const speedup = median(seq) / median(par);
  log(`initializer, ${Object.keys(GRAPH).length} components in ${levels} levels: sequential ${median(seq).toFixed(0)} ms, parallel ${median(par).toFixed(0)} ms, ${speedup.toFixed(2)}x (the graph allows ${bound().toFixed(2)}x)`);
  log(JSON.stringify({ bench: 'boot', ready_ms: Math.round(median(times)), ready_ms_range: [Math.round(Math.min(...times)), Math.round(Math.max(...times))], parallel_speedup: Number(speedup.toFixed(2)) }));
}
