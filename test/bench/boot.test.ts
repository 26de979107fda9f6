// The boot benchmark runs end to end and prints its JSON summary last.
import t from 'tap';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { fileURLToPath } from 'node:url';

const run = promisify(execFile);
const cli = fileURLToPath(new URL('../../dist/cli/main.js', import.meta.url));

t.test('bench boot prints a JSON summary line last', async (t) => {
  const { stdout } = await run(process.execPath, [cli, 'bench', 'boot', '--runs', '1'], { timeout: 120000, env: { ...process.env, NODE_OPTIONS: '' } });
  const summary = JSON.parse(stdout.trim().split('\n').at(-1)!) as { bench: string; ready_ms: number; parallel_speedup: number };
  t.equal(summary.bench, 'boot');
  t.ok(summary.ready_ms > 0 && summary.ready_ms < 30000);
  t.ok(summary.parallel_speedup > 1.5, `parallel start is faster (${summary.parallel_speedup}x)`);
});
