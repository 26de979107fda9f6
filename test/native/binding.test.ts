// The addon's life cycle: worker threads, garbage collection, teardown,
// receivers of the wrong class, and the status table shared with TypeScript.
import t from 'tap';
import { Worker } from 'node:worker_threads';
import { setImmediate as tick } from 'node:timers/promises';
import { native } from '../../src/native.js';
import { hdeStatusError, statusName } from '../../src/errors.js';

const workerSource = (mode: 'roundtrip' | 'exit-busy'): string => `
const { parentPort, workerData } = require('node:worker_threads');
const a = require(workerData.addon);
const enc = new a.HdeEncoder({ pageSize: 4096, cacheBytes: 1 << 22, deltaThreshold: 0.75, detectDuplicates: true });
const dec = new a.HdeDecoder({ pageSize: 4096 });
const pages = Buffer.alloc(4096 * 256);
for (let i = 0; i < pages.length; i += 64) pages[i] = (i * 7) & 255;
const pns = new BigUint64Array(256).map((_, i) => BigInt(i));
const out = Buffer.alloc(enc.maxEncodedSize(256));
if (${JSON.stringify(mode)} === 'roundtrip') {
  const n = enc.encode(out, pages, pns);
  const region = Buffer.alloc(pages.length);
  const rc = dec.apply(out.subarray(0, 32), out.subarray(32, n), region, new Uint32Array(5));
  parentPort.postMessage({ n, rc, equal: region.equals(pages), simd: enc.simd });
} else {
  // Leave an asynchronous encode in flight and objects unclosed at exit.
  enc.encodeAsync(out, pages, pns, () => {});
  parentPort.postMessage({ started: true });
  process.exit(0);
}
`;

const addonPath = (): string => {
  // Resolved the same way src/native.ts does.
  return new URL('../../build/Release/dwcp.node', import.meta.url).pathname;
};

function runWorker(mode: 'roundtrip' | 'exit-busy'): Promise<{ messages: unknown[]; code: number }> {
  return new Promise((resolve, reject) => {
    const w = new Worker(workerSource(mode), { eval: true, workerData: { addon: addonPath() } });
    const messages: unknown[] = [];
    w.on('message', (m) => messages.push(m));
    w.on('error', reject);
    w.on('exit', (code) => resolve({ messages, code }));
  });
}

t.test('loads and works in worker threads, in parallel', async (t) => {
  const results = await Promise.all([runWorker('roundtrip'), runWorker('roundtrip'), runWorker('roundtrip')]);
  for (const r of results) {
    t.equal(r.code, 0);
    const m = r.messages[0] as { n: number; rc: number; equal: boolean; simd: string };
    t.ok(m.n > 32 && m.rc === 0 && m.equal, JSON.stringify(m));
    t.equal(m.simd, native.simdPaths().selected);
  }
});

t.test('a worker exiting with work in flight and objects open tears down cleanly', async (t) => {
  for (let i = 0; i < 5; i++) {
    const r = await runWorker('exit-busy');
    t.equal(r.code, 0);
  }
  // The main thread's copy of the addon is unaffected.
  const enc = new native.HdeEncoder({ pageSize: 4096, cacheBytes: 0, deltaThreshold: 0.5, detectDuplicates: false });
  t.ok(enc.maxEncodedSize(1) > 4096);
});

t.test('objects left to the garbage collector are finalized', async (t) => {
  const gc = (globalThis as { gc?: () => void }).gc;
  for (let i = 0; i < 200; i++) {
    // 8 MiB caches: leaking them would show in RSS quickly.
    new native.HdeEncoder({ pageSize: 4096, cacheBytes: 8 << 20, deltaThreshold: 0.75, detectDuplicates: true });
    new native.HdeDecoder({ pageSize: 4096 });
  }
  if (gc) {
    for (let i = 0; i < 5; i++) {
      gc();
      await tick();
    }
  }
  t.pass(gc ? 'collected' : 'run with --expose-gc to force collection');
});

t.test('methods refuse receivers of another class', async (t) => {
  const enc = new native.HdeEncoder({ pageSize: 4096, cacheBytes: 0, deltaThreshold: 0.5, detectDuplicates: false });
  const dec = new native.HdeDecoder({ pageSize: 4096 });
  const encodeFn = enc.encode as unknown as (this: unknown, ...a: unknown[]) => number;
  t.throws(() => encodeFn.call(dec, Buffer.alloc(64), Buffer.alloc(0), new BigUint64Array(0)), TypeError);
  t.throws(() => encodeFn.call({}, Buffer.alloc(64), Buffer.alloc(0), new BigUint64Array(0)), TypeError);
  t.throws(() => enc.encode('x' as never, Buffer.alloc(0), new BigUint64Array(0)), TypeError);
  t.throws(() => new native.HdeEncoder({ pageSize: 1000, cacheBytes: 0, deltaThreshold: 0.5, detectDuplicates: false }), {
    code: 'ERR_HDE_INVALID_ARGUMENT',
  });
});

t.test('status names are shared with TypeScript', async (t) => {
  // The codes are API: appending is fine, renumbering or renaming is not.
  t.same(native.statusNames(), [
    'OK',
    'INVALID_ARGUMENT',
    'TRUNCATED',
    'BAD_MAGIC',
    'UNSUPPORTED_VERSION',
    'HEADER_CHECKSUM',
    'PAYLOAD_CHECKSUM',
    'CORRUPT',
    'PAGE_SIZE_MISMATCH',
    'PAGE_OUT_OF_RANGE',
    'LIMIT_EXCEEDED',
    'UNKNOWN_CODEC',
    'OUTPUT_TOO_SMALL',
    'BUSY',
    'CLOSED',
    'CONNECTION_LOST',
    'PROTOCOL',
    'DEVICE_ERROR',
    'UNAVAILABLE',
  ]);
  t.equal(statusName(7), 'CORRUPT');
  for (let i = 1; i < native.statusNames().length; i++) {
    const err = hdeStatusError(i, 'ctx');
    t.equal(err.code, `ERR_HDE_${statusName(i)}`);
    t.notMatch(err.message, /_/, 'every status has a written message');
  }
});

t.test('crc32c matches the standard check value', async (t) => {
  t.equal(native.crc32c(Buffer.from('123456789')), 0xe3069283);
  t.equal(native.crc32c(Buffer.from('6789'), native.crc32c(Buffer.from('12345'))), 0xe3069283);
});
