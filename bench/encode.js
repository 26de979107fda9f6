// HDE encode/decode throughput against memcpy of the same buffers, per
// workload and per SIMD path, in one run. Prints a table, then one JSON line.
//   npx novacron bench encode [--size-mib 256] [--simd avx512,scalar] [--max-time 0.5]
import Benchmark from 'benchmark';
import { randomFillSync } from 'node:crypto';
import { HdeDecoder, HdeEncoder, HEADER_SIZE, findZeroPages } from '../dist/index.js';
import { native } from '../dist/native.js';
import { compress } from '../dist/dwcp/encoding/compression.js';

// Benchmark.js would otherwise rebuild `fn` from its source text, losing closures.
Benchmark.support.decompilation = false;

const PAGE = 4096;
const BATCH_PAGES = 64; // 256 KiB frames: a frame stays in L2 between checksum and apply
const WORKLOADS = ['k1', 'k16', 'k128', 'region512', 'unchanged', 'random', 'zero'];

function xorshift(seed) {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    return (s >>>= 0);
  };
}

// Builds the baseline (`old`) and the new version of every page.
function makeWorkload(name, bytes) {
  const pages = bytes / PAGE;
  const rand = xorshift(0x9e3779b9);
  // fill(0) rather than alloc(): calloc'd memory maps one shared zero page,
  // which would turn the scan into L1 cache hits.
  if (name === 'zero') return { old: Buffer.allocUnsafe(bytes).fill(0), neu: Buffer.allocUnsafe(bytes).fill(0) };
  const old = randomFillSync(Buffer.allocUnsafe(bytes));
  if (name === 'random') return { old, neu: randomFillSync(Buffer.allocUnsafe(bytes)) };
  const neu = Buffer.from(old);
  if (name === 'unchanged') return { old, neu };
  const words = PAGE / 8;
  const slots = new Uint16Array(words);
  for (let p = 0; p < pages; p++) {
    const base = p * PAGE;
    if (name === 'region512') {
      const off = (rand() % ((PAGE - 512) / 8 + 1)) * 8; // word-aligned, as stores are
      randomFillSync(neu, base + off, 512);
      continue;
    }
    const k = name === 'k1' ? 1 : name === 'k16' ? 16 : 128;
    // k distinct words, each given a new random value.
    for (let i = 0; i < words; i++) slots[i] = i;
    for (let i = 0; i < k; i++) {
      const j = i + (rand() % (words - i));
      const w = slots[j];
      slots[j] = slots[i];
      slots[i] = w;
      neu.writeUInt32LE(rand(), base + w * 8);
      neu.writeUInt32LE((rand() | 1) >>> 0, base + w * 8 + 4);
    }
  }
  return { old, neu };
}

function pageNumberBatches(pages) {
  const batches = [];
  for (let first = 0; first < pages; first += BATCH_PAGES) {
    const n = Math.min(BATCH_PAGES, pages - first);
    const a = new BigUint64Array(n);
    for (let i = 0; i < n; i++) a[i] = BigInt(first + i);
    batches.push(a);
  }
  return batches;
}

// Runs fn (one op = `bytes` processed) under Benchmark.js and returns GB/s
// from the median sample, with the range over samples.
function measure(name, fn, bytes, maxTime) {
  const bench = new Benchmark(name, fn, { minSamples: 5, maxTime, initCount: 1, minTime: 0 });
  bench.run({ async: false });
  if (bench.error) throw bench.error;
  const sample = [...bench.stats.sample].sort((a, b) => a - b);
  const median = sample[Math.floor(sample.length / 2)];
  const gbps = (t) => bytes / t / 1e9;
  return { gbps: gbps(median), min: gbps(sample[sample.length - 1]), max: gbps(sample[0]), samples: sample.length };
}

function encodePass(enc, src, batches, out) {
  let total = 0;
  for (let b = 0; b < batches.length; b++) {
    const pns = batches[b];
    const start = b * BATCH_PAGES * PAGE;
    total += enc.encodeInto(out, src.subarray(start, start + pns.length * PAGE), pns);
  }
  return total;
}

function collectFrames(enc, src, batches) {
  const out = Buffer.allocUnsafe(enc.maxEncodedSize(BATCH_PAGES));
  return batches.map((pns, b) => {
    const start = b * BATCH_PAGES * PAGE;
    const n = enc.encodeInto(out, src.subarray(start, start + pns.length * PAGE), pns);
    return Buffer.from(out.subarray(0, n));
  });
}

const fmt = (x, d = 2) => Number(x.toFixed(d));

export async function run(opts = {}) {
  const sizeMiB = opts.sizeMiB ?? 256;
  const maxTime = opts.maxTime ?? 0.5;
  const bytes = Math.floor((sizeMiB * 1024 * 1024) / PAGE) * PAGE;
  const pages = bytes / PAGE;
  const { supported, selected } = native.simdPaths();
  const paths = opts.simd ?? supported;
  for (const p of paths) if (!supported.includes(p)) throw new Error(`SIMD path ${p} is not supported here`);
  const batches = pageNumberBatches(pages);

  const log = (s) => process.stdout.write(`${s}\n`);
  log(`HDE encode benchmark: ${sizeMiB} MiB of ${PAGE} B pages, frames of ${BATCH_PAGES} pages, paths ${paths.join(', ')}`);

  // memcpy of the same amount, measured in this run.
  const src = randomFillSync(Buffer.allocUnsafe(bytes));
  const dst = Buffer.allocUnsafe(bytes).fill(0);
  const memcpy = measure('memcpy', () => src.copy(dst), bytes, maxTime);
  log(`memcpy ${fmt(memcpy.gbps)} GB/s (range ${fmt(memcpy.min)}-${fmt(memcpy.max)})`);
  // The ceiling of any exact delta encoder: it must read both versions.
  src.copy(dst);
  const memcmp = measure('memcmp', () => {
    if (Buffer.compare(src, dst) !== 0) throw new Error('copies differ');
  }, bytes, maxTime);
  log(`memcmp of equal buffers ${fmt(memcmp.gbps)} GB/s (${(memcmp.gbps / memcpy.gbps).toFixed(2)}x memcpy)`);
  dst.fill(0);
  const zeroScan = {};
  for (const p of paths) {
    zeroScan[p] = measure(`zero scan ${p}`, () => {
      if (findZeroPages(dst, { simd: p }).count !== pages) throw new Error('zero scan miscounted');
    }, bytes, maxTime);
    log(`zero-page scan ${p} ${fmt(zeroScan[p].gbps)} GB/s (${(zeroScan[p].gbps / memcpy.gbps).toFixed(2)}x memcpy)`);
  }

  const results = {}; // path -> workload -> figures
  for (const p of paths) results[p] = {};
  log('');
  log('workload    path      memcpy  encode GB/s (x memcpy)     decode GB/s (x memcpy)     ratio      lz4 ratio');
  const workloadsToRun = opts.workloads ?? WORKLOADS;
  for (const w of workloadsToRun) if (!WORKLOADS.includes(w)) throw new Error(`unknown workload ${w}; one of ${WORKLOADS.join(', ')}`);
  for (const w of workloadsToRun) {
    const { old, neu } = makeWorkload(w, bytes);
    for (const p of paths) {
      // memcpy again right before each pair of measurements: on a shared VM
      // memory bandwidth drifts during a run, and ratios should compare like
      // with like.
      const local = measure(`${w} ${p} memcpy`, () => src.copy(dst), bytes, maxTime);
      // Encoder primed with the baseline, as after a first migration pass.
      const enc = new HdeEncoder({ cacheBytes: bytes, compression: 'none', simd: p });
      const out = Buffer.allocUnsafe(enc.maxEncodedSize(BATCH_PAGES));
      encodePass(enc, old, batches, out);
      // The change is symmetric, so alternating new/old keeps the workload
      // the same on every repetition while the cache follows.
      let flip = false;
      const encoded = encodePass(enc, neu, batches, out);
      const e = measure(`${w} ${p} encode`, () => {
        encodePass(enc, flip ? neu : old, batches, out);
        flip = !flip;
      }, bytes, maxTime);
      enc.close();

      const enc2 = new HdeEncoder({ cacheBytes: bytes, compression: 'none', simd: p });
      const region = Buffer.from(old);
      collectFrames(enc2, old, batches);
      const forward = collectFrames(enc2, neu, batches);
      const backward = collectFrames(enc2, old, batches);
      enc2.close();
      const dec = new HdeDecoder({ region, simd: p });
      for (const f of forward) dec.decode(f);
      if (!region.equals(neu)) throw new Error(`${w}/${p}: decoded memory differs from the source`);
      for (const f of backward) dec.decode(f);
      let dflip = false;
      const d = measure(`${w} ${p} decode`, () => {
        for (const f of dflip ? backward : forward) dec.decode(f);
        dflip = !dflip;
      }, bytes, maxTime);
      dec.close();

      const ratio = encoded / bytes;
      let lz4Bytes = 0;
      if (p === paths[0]) for (const f of forward) lz4Bytes += HEADER_SIZE + lz4Size(f);
      results[p][w] = {
        memcpy_gbps: fmt(local.gbps),
        encode_x_memcpy: Number((e.gbps / local.gbps).toFixed(2)),
        decode_x_memcpy: Number((d.gbps / local.gbps).toFixed(2)),
        encode_gbps: fmt(e.gbps),
        encode_range: [fmt(e.min), fmt(e.max)],
        decode_gbps: fmt(d.gbps),
        decode_range: [fmt(d.min), fmt(d.max)],
        ratio: Number(ratio.toPrecision(4)),
        ...(lz4Bytes ? { lz4_ratio: Number((lz4Bytes / bytes).toPrecision(4)) } : {}),
      };
      const r = results[p][w];
      log(
        `${w.padEnd(11)} ${p.padEnd(9)} ${String(r.memcpy_gbps).padStart(6)} ${String(r.encode_gbps).padStart(7)} (${r.encode_x_memcpy.toFixed(2)}x) ` +
          `[${r.encode_range.join('-')}]`.padEnd(14) +
          ` ${String(r.decode_gbps).padStart(7)} (${r.decode_x_memcpy.toFixed(2)}x) ` +
          `[${r.decode_range.join('-')}]`.padEnd(14) +
          ` ${(ratio * 100).toFixed(3).padStart(7)} %` +
          (r.lz4_ratio !== undefined ? ` ${(r.lz4_ratio * 100).toFixed(3).padStart(8)} %` : ''),
      );
    }
  }
  const best = paths.includes(selected) ? selected : paths[paths.length - 1];
  const workloads = {};
  for (const w of workloadsToRun) {
    const r = results[best][w];
    workloads[w] = {
      encode_gbps: r.encode_gbps,
      decode_gbps: r.decode_gbps,
      ratio: r.ratio,
      memcpy_gbps: r.memcpy_gbps,
      encode_x_memcpy: r.encode_x_memcpy,
      decode_x_memcpy: r.decode_x_memcpy,
    };
  }
  // The path with the best geometric mean of encode and decode speed here;
  // the JSON reports the dispatched path, which is what users get.
  let bestMeasured = best;
  let bestScore = 0;
  for (const p of paths) {
    let logSum = 0;
    for (const w of workloadsToRun) logSum += Math.log(results[p][w].encode_gbps) + Math.log(results[p][w].decode_gbps);
    if (logSum > bestScore || bestScore === 0) {
      bestScore = logSum;
      bestMeasured = p;
    }
  }
  const perPath = {};
  for (const p of paths) {
    perPath[p] = {};
    for (const w of workloadsToRun) perPath[p][w] = { encode_gbps: results[p][w].encode_gbps, decode_gbps: results[p][w].decode_gbps };
  }
  log('');
  log(JSON.stringify({
    bench: 'encode',
    simd: best,
    best_measured_simd: bestMeasured,
    size_mib: sizeMiB,
    memcpy_gbps: fmt(memcpy.gbps),
    memcpy_range: [fmt(memcpy.min), fmt(memcpy.max)],
    memcmp_gbps: fmt(memcmp.gbps),
    zero_scan_gbps: fmt(zeroScan[best].gbps),
    workloads,
    paths: perPath,
  }));
}

// LZ4 size of a frame's record stream, as the encoder's lz4 option would send it.
function lz4Size(frame) {
  return compress('lz4', frame.subarray(HEADER_SIZE), 0).length;
}
