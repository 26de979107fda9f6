import t from 'tap';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { fileURLToPath } from 'node:url';
import { doctor } from '../../src/index.js';
import { formatDoctor } from '../../src/sys/doctor.js';

const run = promisify(execFile);
// The built CLI, as users run it (`npm test` builds it first).
const cli = fileURLToPath(new URL('../../dist/cli/main.js', import.meta.url));

t.test('doctor reports what the host offers', async (t) => {
  const r = await doctor();
  t.ok(['scalar', 'sse2', 'avx2', 'avx512'].includes(r.simd.selected));
  t.ok(r.simd.supported.includes('scalar'));
  t.ok(r.simd.supported.includes(r.simd.selected));
  t.ok(r.pageSize.system >= 4096);
  t.type(r.io_uring.available, 'boolean');
  t.ok(Array.isArray(r.rdma.devices));
  if (r.congestion.available.length) t.ok(r.congestion.available.includes('reno') || r.congestion.available.includes('cubic'));
  t.match(formatDoctor(r), /simd\s+\w+/);
});

t.test('novacron doctor --json prints one JSON object with the documented keys', async (t) => {
  const { stdout } = await run(process.execPath, [cli, 'doctor', '--json']);
  const lines = stdout.trim().split('\n');
  t.equal(lines.length, 1);
  const obj = JSON.parse(lines[0]!) as Record<string, unknown>;
  for (const k of ['simd', 'cpu', 'congestion', 'rdma', 'io_uring']) t.ok(k in obj, k);
});

t.test('the built CLI is executable, as npx runs it', async (t) => {
  const { statSync } = await import('node:fs');
  t.ok(statSync(cli).mode & 0o111, 'dist/cli/main.js has an execute bit');
  const { stdout } = await run(cli, ['--version']);
  t.match(stdout, /^\d+\.\d+\.\d+/);
});

t.test('unknown commands fail with usage and exit code 2', async (t) => {
  await t.rejects(run(process.execPath, [cli, 'frobnicate']), { code: 2 });
  await t.rejects(run(process.execPath, [cli, 'doctor', '--bogus']), { code: 2, stderr: /ERR_PARSE_ARGS_UNKNOWN_OPTION/ });
});
