import t from 'tap';
import { HdeDecoder, HdeEncoder, HdeError, InvalidArgumentError, findZeroPages, parseFrameHeader, HEADER_SIZE } from '../../../src/index.js';
import { native } from '../../../src/native.js';
import type { Compression, SimdPath } from '../../../src/index.js';
import { mutate, pageNumbers, randomBytes, rng } from '../../helpers.js';

const supported = native.simdPaths().supported as SimdPath[];

t.test('round trip over many passes, every codec and SIMD path', async (t) => {
  for (const pageSize of [512, 4096, 65536]) {
    for (const compression of ['none', 'lz4', 'zstd'] as Compression[]) {
      const pages = pageSize === 65536 ? 8 : 64;
      const mem = randomBytes(pages * pageSize);
      const pairs = supported.map((simd) => {
        const region = Buffer.alloc(mem.length);
        return {
          simd,
          enc: new HdeEncoder({ pageSize, cacheBytes: mem.length, compression, simd }),
          dec: new HdeDecoder({ pageSize, region, simd }),
          region,
        };
      });
      const rand = rng(pageSize + compression.length);
      for (let pass = 0; pass < 8; pass++) {
        if (pass > 0) mutate(mem, pageSize, rand);
        const frames = pairs.map((p) => p.enc.encode(mem, pageNumbers(pages)));
        for (const [i, p] of pairs.entries()) {
          t.ok(frames[i]!.equals(frames[0]!), `${p.simd} writes the same frame as ${pairs[0]!.simd}`);
          const r = p.dec.decode(frames[i]!);
          t.equal(r.pages, pages);
          if (!p.region.equals(mem)) t.fail(`${p.simd} page ${pageSize} ${compression} pass ${pass}: region differs`);
        }
      }
      const s = pairs[0]!.enc.stats();
      t.equal(s.pages, pages * 8);
      t.equal(s.zero + s.dup + s.delta + s.full, s.pages, 'every page has one record kind');
      t.ok(s.delta > 0 && s.full > 0 && s.zero > 0, `kinds used: ${JSON.stringify(s)}`);
      if (compression !== 'none') t.ok(s.bytesOut <= s.bytesEncoded, `${compression} never expands frames`);
      else t.equal(s.bytesOut, s.bytesEncoded);
      for (const p of pairs) p.enc.close();
    }
  }
});

t.test('sparse changes encode to a tiny fraction of the page', async (t) => {
  const pageSize = 4096;
  const pages = 256;
  const mem = randomBytes(pages * pageSize);
  const enc = new HdeEncoder({ compression: 'none' });
  const region = Buffer.alloc(mem.length);
  const dec = new HdeDecoder({ region });
  dec.decode(enc.encode(mem, pageNumbers(pages)));
  // Every byte of one word per page changes (its complement), so each page
  // costs exactly one word record whatever the random contents.
  for (let p = 0; p < pages; p++) {
    const at = p * pageSize + 8 * ((p * 37) % 512);
    mem.writeBigUInt64LE(~mem.readBigUInt64LE(at) & 0xffffffffffffffffn, at);
  }
  const frame = enc.encode(mem, pageNumbers(pages));
  t.equal(frame.length, HEADER_SIZE + pages * 10, 'one changed word costs 10 bytes');
  dec.decode(frame);
  t.ok(region.equals(mem));
  const again = enc.encode(mem, pageNumbers(pages));
  t.equal(again.length, HEADER_SIZE + pages, 'unchanged pages cost one byte');
  t.equal(enc.stats().unchanged, pages);
});

t.test('duplicates and zero pages', async (t) => {
  const pageSize = 4096;
  const a = randomBytes(pageSize);
  const batch = Buffer.concat([a, Buffer.alloc(pageSize), a, a]);
  const enc = new HdeEncoder({ compression: 'none' });
  const region = Buffer.alloc(16 * pageSize, 0xee);
  const dec = new HdeDecoder({ region });
  const r = dec.decode(enc.encode(batch, [3n, 4n, 9n, 15n]));
  t.same(r, { pages: 4, zero: 1, dup: 2, delta: 0, full: 1 });
  for (const [i, pn] of [3, 4, 9, 15].entries()) {
    t.ok(region.subarray(pn * pageSize, (pn + 1) * pageSize).equals(batch.subarray(i * pageSize, (i + 1) * pageSize)));
  }
  t.equal(region[0], 0xee, 'pages not in the frame are untouched');
});

t.test('baselines beyond the cache are sent in full', async (t) => {
  const pageSize = 4096;
  const mem = randomBytes(8 * pageSize);
  const enc = new HdeEncoder({ compression: 'none', cacheBytes: 2 * pageSize });
  const region = Buffer.alloc(mem.length);
  const dec = new HdeDecoder({ region });
  dec.decode(enc.encode(mem, pageNumbers(8)));
  t.equal(enc.stats().cacheEvictions, 6);
  mem[100] = mem[100]! ^ 1;
  mem[7 * pageSize + 100] = mem[7 * pageSize + 100]! ^ 1;
  const r = dec.decode(enc.encode(Buffer.concat([mem.subarray(0, pageSize), mem.subarray(7 * pageSize)]), [0, 7]));
  t.same(r, { pages: 2, zero: 0, dup: 0, delta: 1, full: 1 });
  t.ok(region.equals(mem));
});

t.test('compression stops being tried while it does not pay, and resumes', async (t) => {
  const pageSize = 4096;
  const batch = 16;
  for (const compression of ['lz4', 'zstd'] as const) {
    const enc = new HdeEncoder({ compression, detectDuplicates: false });
    const region = Buffer.alloc(200 * batch * pageSize);
    const dec = new HdeDecoder({ region });
    let pn = 0;
    const send = (pages: Buffer): void => {
      const f = enc.encode(pages, pageNumbers(batch, pn));
      dec.decode(f);
      t.ok(region.subarray(pn * pageSize, (pn + batch) * pageSize).equals(pages));
      pn += batch;
    };
    for (let i = 0; i < 100; i++) send(randomBytes(batch * pageSize));
    const skipped = enc.stats().compressionSkipped;
    t.ok(skipped > 80, `${compression}: ${skipped} of 100 incompressible frames not tried`);
    // Text-like pages compress well: after the next probe, every frame is compressed again.
    const text = Buffer.alloc(batch * pageSize);
    for (let i = 0; i < text.length; i++) text[i] = 97 + ((i * 7) % 13);
    for (let i = 0; i < 100; i++) {
      text.writeUInt32LE(i, (i % batch) * pageSize);
      send(Buffer.from(text));
    }
    const st = enc.stats();
    t.ok(st.compressionSkipped - skipped <= 64, 'at most one back-off window of compressible frames went uncompressed');
    t.ok(st.bytesOut < st.bytesEncoded * 0.7, 'compressible frames were compressed');
    const off = new HdeEncoder({ compression, adaptiveCompression: false });
    off.encode(randomBytes(batch * pageSize), pageNumbers(batch));
    off.encode(randomBytes(batch * pageSize), pageNumbers(batch, batch));
    t.equal(off.stats().compressionSkipped, 0, 'adaptiveCompression: false always tries');
  }
  t.throws(() => new HdeEncoder({ adaptiveCompression: 'yes' as never }), InvalidArgumentError);
});

t.test('dirty bitmap over a region', async (t) => {
  const pageSize = 4096;
  const pages = 20;
  const mem = randomBytes(pages * pageSize);
  const enc = new HdeEncoder({ compression: 'lz4' });
  const region = Buffer.alloc((pages + 100) * pageSize);
  const dec = new HdeDecoder({ region });
  const dirty = new Uint8Array(3);
  t.equal(enc.encodeDirty(mem, dirty), null, 'nothing dirty, nothing to send');
  dirty.fill(0xff);
  dirty[2] = 0x0f;
  dec.decode(enc.encodeDirty(mem, dirty, { firstPage: 100 })!);
  t.ok(region.subarray(100 * pageSize).equals(mem));
  mem[5 * pageSize] = mem[5 * pageSize]! ^ 1;
  mem[19 * pageSize + 7] = mem[19 * pageSize + 7]! ^ 1;
  dirty.fill(0);
  dirty[0] = 1 << 5;
  dirty[2] = 1 << 3;
  const r = dec.decode(enc.encodeDirty(mem, dirty, { firstPage: 100 })!);
  t.same(r, { pages: 2, zero: 0, dup: 0, delta: 2, full: 0 });
  t.ok(region.subarray(100 * pageSize).equals(mem));
  t.throws(() => enc.encodeDirty(mem, new Uint8Array(2)), { code: 'ERR_INVALID_ARGUMENT' });
  dirty[2] = 0x10; // page 20 does not exist
  t.throws(() => enc.encodeDirty(mem, dirty), { code: 'ERR_HDE_INVALID_ARGUMENT' });
});

t.test('options and arguments are validated with stable codes', async (t) => {
  const bad: object[] = [
    { pageSize: 1000 },
    { pageSize: 256 },
    { pageSize: 131072 },
    { cacheBytes: -1 },
    { deltaThreshold: 2 },
    { compression: 'gzip' },
    { zstdLevel: 0 },
    { simd: 'neon' },
  ];
  for (const o of bad) t.throws(() => new HdeEncoder(o as never), InvalidArgumentError, JSON.stringify(o));
  const enc = new HdeEncoder();
  t.throws(() => enc.encode(Buffer.alloc(100), [0]), { code: 'ERR_INVALID_ARGUMENT' });
  t.throws(() => enc.encode(Buffer.alloc(4096), [0, 1]), { code: 'ERR_INVALID_ARGUMENT' });
  t.throws(() => enc.encode(Buffer.alloc(4096), [-1]), { code: 'ERR_INVALID_ARGUMENT' });
  t.throws(() => enc.encode('x' as never, [0]), { code: 'ERR_INVALID_ARGUMENT' });
  t.throws(() => new HdeDecoder({ region: null as never }), { code: 'ERR_INVALID_ARGUMENT' });
  enc.close();
  enc.close();
  t.throws(() => enc.encode(Buffer.alloc(4096), [0]), { code: 'ERR_HDE_CLOSED' });
});

t.test('hostile frames: clear codes, region untouched', async (t) => {
  const pageSize = 4096;
  const pages = 32;
  const mem = randomBytes(pages * pageSize);
  const seedEnc = new HdeEncoder({ compression: 'none' });
  const region = Buffer.alloc(mem.length);
  const dec = new HdeDecoder({ region });
  dec.decode(seedEnc.encode(mem, pageNumbers(pages)));
  mutate(mem, pageSize, rng(7));
  for (const compression of ['none', 'lz4', 'zstd'] as Compression[]) {
    const enc = new HdeEncoder({ compression });
    const frame = enc.encode(mem, pageNumbers(pages));
    const snapshot = Buffer.from(region);
    const codes = new Set<string>();
    const expectRejected = (f: Uint8Array, what: string): void => {
      try {
        dec.decode(f);
        t.fail(`${compression} ${what}: accepted`);
      } catch (err) {
        if (!(err instanceof HdeError)) throw err;
        codes.add(err.code);
      }
      if (!region.equals(snapshot)) t.fail(`${compression} ${what}: region changed`);
    };
    for (let len = 0; len < frame.length; len += len < 64 ? 1 : 97) expectRejected(frame.subarray(0, len), `truncated to ${len}`);
    const rand = rng(frame.length);
    for (let i = 0; i < 300; i++) {
      const f = Buffer.from(frame);
      const at = Math.floor(rand() * f.length);
      f[at] = f[at]! ^ (1 << Math.floor(rand() * 8));
      expectRejected(f, `bit flip at ${at}`);
    }
    expectRejected(Buffer.concat([frame, Buffer.alloc(1)]), 'trailing byte');
    t.ok([...codes].every((c) => /^ERR_HDE_[A-Z_]+$/.test(c)), `${compression}: ${[...codes].join(' ')}`);
  }
  t.throws(() => new HdeDecoder({ region, pageSize: 8192 }).decode(seedEnc.encode(mem.subarray(0, pageSize), [0])), {
    code: 'ERR_HDE_PAGE_SIZE_MISMATCH',
  });
  const small = new HdeDecoder({ region: Buffer.alloc(pageSize) });
  t.throws(() => small.decode(seedEnc.encode(mem.subarray(0, 2 * pageSize), [0, 1])), { code: 'ERR_HDE_PAGE_OUT_OF_RANGE' });
});

t.test('compressed payloads that lie about their size are rejected before allocation', async (t) => {
  const enc = new HdeEncoder({ compression: 'lz4' });
  const frame = enc.encode(Buffer.alloc(4096 * 4, 7), pageNumbers(4));
  const h = parseFrameHeader(frame);
  t.equal(h.compression, 'lz4');
  const region = Buffer.alloc(4096 * 4);
  const dec = new HdeDecoder({ region });
  // Claim 4 GiB - 1 in the LZ4 size prefix (the header CRC does not cover it).
  const evil = Buffer.from(frame);
  evil.writeUInt32LE(0xffffffff, HEADER_SIZE);
  t.throws(() => dec.decode(evil), { code: 'ERR_HDE_DECOMPRESS' });
  const z = new HdeEncoder({ compression: 'zstd' }).encode(Buffer.alloc(4096 * 4, 7), pageNumbers(4));
  const zevil = Buffer.from(z);
  zevil[zevil.length - 3] = zevil[zevil.length - 3]! ^ 0xff;
  t.throws(() => dec.decode(zevil), HdeError);
  t.ok(region.every((b) => b === 0));
});

t.test('header parser survives random input', async (t) => {
  const rand = rng(99);
  let rejected = 0;
  for (let i = 0; i < 5000; i++) {
    const b = Buffer.alloc(Math.floor(rand() * 80));
    for (let j = 0; j < b.length; j++) b[j] = Math.floor(rand() * 256);
    if (b.length >= 4 && rand() < 0.5) b.writeUInt32LE(0x31454448, 0);
    try {
      parseFrameHeader(b);
    } catch (err) {
      if (!(err instanceof HdeError)) throw err;
      rejected++;
    }
  }
  t.equal(rejected, 5000);
});

t.test('async encode and decode, busy and abort', async (t) => {
  const pageSize = 4096;
  const mem = randomBytes(512 * pageSize);
  const enc = new HdeEncoder({ compression: 'none' });
  const region = Buffer.alloc(mem.length);
  const dec = new HdeDecoder({ region });
  const pending = enc.encodeAsync(mem, pageNumbers(512));
  t.throws(() => enc.encode(mem.subarray(0, pageSize), [0]), { code: 'ERR_HDE_BUSY' });
  const frame = await pending;
  const r = await dec.decodeAsync(frame);
  t.equal(r.pages, 512);
  t.ok(region.equals(mem));
  const ac = new AbortController();
  ac.abort();
  await t.rejects(enc.encodeAsync(mem, pageNumbers(512), { signal: ac.signal }), { name: 'AbortError' });
  await t.rejects(dec.decodeAsync(Buffer.alloc(10)), { code: 'ERR_HDE_TRUNCATED' });
  t.same(dec.stats().frames, 1);
});

t.test('findZeroPages marks exactly the all-zero pages on every SIMD path', async (t) => {
  const pageSize = 4096;
  const region = Buffer.alloc(37 * pageSize);
  const rand = rng(5);
  const nonZero = new Set<number>();
  for (let i = 0; i < 20; i++) {
    const p = Math.floor(rand() * 37);
    nonZero.add(p);
    region[p * pageSize + Math.floor(rand() * pageSize)] = 1 + Math.floor(rand() * 255);
  }
  for (const simd of supported) {
    const { count, bitmap } = findZeroPages(region, { simd });
    t.equal(count, 37 - nonZero.size, simd);
    for (let p = 0; p < 37; p++) t.equal(((bitmap[p >> 3]! >> (p & 7)) & 1) === 1, !nonZero.has(p));
  }
  t.throws(() => findZeroPages(Buffer.alloc(100)), { code: 'ERR_INVALID_ARGUMENT' });
});

t.test('mode picks compression by policy unless set explicitly', async (t) => {
  t.equal(new HdeEncoder({ mode: 'datacenter' }).compression, 'lz4');
  const slow = new HdeEncoder({ mode: 'internet', link: { bandwidthBps: 20e6 } });
  t.equal(slow.compression, 'zstd');
  t.equal(slow.zstdLevel, 9);
  t.equal(new HdeEncoder({ mode: 'internet', compression: 'none' }).compression, 'none');
  t.throws(() => new HdeEncoder({ mode: 'lan' as never }), { code: 'ERR_INVALID_ARGUMENT' });
});
