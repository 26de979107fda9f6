// The encode benchmark runs end to end on a small working set and prints the
// documented JSON summary last. This checks its output, not its speed.
import t from 'tap';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { fileURLToPath } from 'node:url';

const run = promisify(execFile);
const cli = fileURLToPath(new URL('../../dist/cli/main.js', import.meta.url));

t.test('bench encode prints a JSON summary line last', async (t) => {
  const { stdout } = await run(process.execPath, [cli, 'bench', 'encode', '--size-mib', '4', '--max-time', '0.01', '--simd', 'scalar'], {
    maxBuffer: 1 << 24,
  });
  const last = stdout.trim().split('\n').at(-1)!;
  const summary = JSON.parse(last) as {
    bench: string;
    simd: string;
    memcpy_gbps: number;
    workloads: Record<string, { encode_gbps: number; decode_gbps: number; ratio: number }>;
  };
  t.equal(summary.bench, 'encode');
  t.equal(summary.simd, 'scalar');
  t.ok(summary.memcpy_gbps > 0);
  for (const w of ['k1', 'k16', 'k128', 'region512', 'unchanged', 'random', 'zero']) {
    const r = summary.workloads[w];
    t.ok(r && r.encode_gbps > 0 && r.decode_gbps > 0, w);
  }
  // Sizes are deterministic properties of the format, unlike speeds.
  t.ok(summary.workloads.k1!.ratio < 0.0027, `k1 ratio ${summary.workloads.k1!.ratio}`);
  t.ok(summary.workloads.k16!.ratio < 0.041, `k16 ratio ${summary.workloads.k16!.ratio}`);
  t.ok(summary.workloads.k128!.ratio < 0.297, `k128 ratio ${summary.workloads.k128!.ratio}`);
  t.ok(summary.workloads.region512!.ratio < 0.126, `region512 ratio ${summary.workloads.region512!.ratio}`);
  t.ok(summary.workloads.random!.ratio >= 1);
});

t.test('bench rejects unknown suites and bad options', async (t) => {
  await t.rejects(run(process.execPath, [cli, 'bench', 'nothing']), { code: 2 });
  await t.rejects(run(process.execPath, [cli, 'bench', 'encode', '--size-mib=0']), { code: 2 });
});
