// HDE public API: an encoder/decoder pair per transfer. The encoder turns
// batches of pages into frames (records, then LZ4 or zstd); the decoder
// applies frames onto the receiver's memory region. Wire format:
// docs/hde-wire-format.md.
import { native, type NativeHdeDecoder, type NativeHdeEncoder } from '../../native.js';
import { HdeError, InvalidArgumentError, checkNative, hdeStatusError } from '../../errors.js';
import { CODEC_IDS, CODEC_NAMES, compress, decompress, type Compression } from './compression.js';
import { chooseCompression, type LinkView } from './policy.js';
import { NETWORK_MODES, type NetworkMode } from '../mode.js';

/** SIMD implementation of the page kernels; `auto` picks the best the CPU runs. */
export type SimdPath = 'auto' | 'scalar' | 'sse2' | 'avx2' | 'avx512';
export const SIMD_PATHS: readonly SimdPath[] = ['auto', 'scalar', 'sse2', 'avx2', 'avx512'];

export const HEADER_SIZE: number = native.hdeLimits.headerSize;
export const MAX_PAGES_PER_FRAME: number = native.hdeLimits.maxRecords;

export interface HdeEncoderOptions {
  /** Page size in bytes, a power of two from 512 to 65536. Default 4096. */
  pageSize?: number;
  /** Bytes of baseline pages kept to delta against (least recently used out). Default 256 MiB. */
  cacheBytes?: number;
  /** Send a delta only when it is at most this fraction of a page (0..1). Default 0.75. */
  deltaThreshold?: number;
  /** Send pages equal to one the receiver holds as references. Default true. */
  detectDuplicates?: boolean;
  /** Payload compression of each frame. Default: from `mode` when given, else `lz4`. */
  compression?: Compression;
  /**
   * Stop trying to compress while it does not pay (a frame shrinks by less
   * than 3 %, as random or encrypted pages do), probing again after 1, 2,
   * 4 ... 64 frames. Default true.
   */
  adaptiveCompression?: boolean;
  /** zstd level, 1 to 19, when `compression` is `zstd`. Default: from `mode`, else 3. */
  zstdLevel?: number;
  /** Link mode; picks compression and level by policy (`chooseCompression`) unless set explicitly. */
  mode?: NetworkMode;
  /** What is known of the link, for the policy. */
  link?: LinkView;
  /** Force a SIMD path (tests, benchmarks). Default `auto`. */
  simd?: SimdPath;
}

export interface HdeDecoderOptions {
  /** Page size in bytes; must match the encoder's. Default 4096. */
  pageSize?: number;
  /** The receiver's memory: page number n lives at byte n * pageSize. */
  region: Uint8Array;
  /** Force a SIMD path. Default `auto`. */
  simd?: SimdPath;
}

/** Counters of an encoder since it was created. */
export interface HdeEncoderStats {
  /** Frames produced. */
  batches: number;
  /** Pages encoded, of every kind. */
  pages: number;
  zero: number;
  dup: number;
  /** Delta records, including `unchanged`. */
  delta: number;
  /** Deltas of pages identical to their baseline. */
  unchanged: number;
  full: number;
  /** Page bytes in. */
  bytesIn: number;
  /** Frame bytes before compression. */
  bytesEncoded: number;
  /** Frame bytes after compression: what goes on the wire. */
  bytesOut: number;
  /** Baselines dropped to stay within `cacheBytes`. */
  cacheEvictions: number;
  /** Frames sent without trying compression because recent ones did not shrink (adaptiveCompression). */
  compressionSkipped: number;
}

/** What one decoded frame did to the region. */
export interface DecodeResult {
  pages: number;
  zero: number;
  dup: number;
  delta: number;
  full: number;
}

/** Counters of a decoder since it was created. */
export interface HdeDecoderStats extends DecodeResult {
  frames: number;
  /** Frame bytes consumed (compressed). */
  bytesIn: number;
}

/** Fields of a frame header. */
export interface FrameHeader {
  version: number;
  compression: Compression;
  pageSize: number;
  pages: number;
  /** Record stream bytes, uncompressed. */
  rawLength: number;
  /** Bytes after the header. */
  payloadLength: number;
  rawCrc32c: number;
}

export interface OperationOptions {
  /** Rejects the returned promise with an AbortError when aborted. */
  signal?: AbortSignal;
}

/** Totals over every encoder and decoder of this thread, for metrics. */
export interface HdeTotals {
  framesEncoded: number;
  bytesEncoded: number;
  framesDecoded: number;
  bytesDecoded: number;
  pagesDecoded: number;
}

const TOTALS: HdeTotals = { framesEncoded: 0, bytesEncoded: 0, framesDecoded: 0, bytesDecoded: 0, pagesDecoded: 0 };

/** A copy of this thread's HDE totals since start. */
export function hdeTotals(): HdeTotals {
  return { ...TOTALS };
}

const DEFAULTS = {
  pageSize: 4096,
  cacheBytes: 256 * 1024 * 1024,
  deltaThreshold: 0.75,
  detectDuplicates: true,
  compression: 'lz4' as Compression,
  zstdLevel: 3,
  simd: 'auto' as SimdPath,
};

function checkPageSize(v: unknown): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 512 || v > 65536 || (v & (v - 1)) !== 0) {
    throw new InvalidArgumentError(`pageSize must be a power of two from 512 to 65536, got ${String(v)}`);
  }
  return v;
}

function checkSimd(v: unknown): SimdPath {
  if (typeof v !== 'string' || !SIMD_PATHS.includes(v as SimdPath)) {
    throw new InvalidArgumentError(`simd must be one of ${SIMD_PATHS.join(', ')}, got ${String(v)}`);
  }
  if (v !== 'auto' && !native.simdPaths().supported.includes(v)) {
    throw new InvalidArgumentError(`simd path ${v} is not supported by this CPU`);
  }
  return v as SimdPath;
}

function checkBytes(v: unknown, what: string): Uint8Array {
  if (!(v instanceof Uint8Array)) throw new InvalidArgumentError(`${what} must be a Buffer or Uint8Array`);
  return v;
}

function toPageNumbers(v: BigUint64Array | readonly (number | bigint)[], count: number): BigUint64Array {
  if (v instanceof BigUint64Array) {
    if (v.length !== count) throw new InvalidArgumentError(`expected ${count} page numbers, got ${v.length}`);
    return v;
  }
  if (!Array.isArray(v)) throw new InvalidArgumentError('pageNumbers must be a BigUint64Array or an array');
  if (v.length !== count) throw new InvalidArgumentError(`expected ${count} page numbers, got ${v.length}`);
  const out = new BigUint64Array(count);
  for (let i = 0; i < count; i++) {
    const n: unknown = v[i];
    if (typeof n === 'bigint' && n >= 0n && n < 1n << 64n) out[i] = n;
    else if (typeof n === 'number' && Number.isSafeInteger(n) && n >= 0) out[i] = BigInt(n);
    else throw new InvalidArgumentError(`page number at index ${i} is not a non-negative integer: ${String(n)}`);
  }
  return out;
}

function abortError(signal: AbortSignal): Error {
  const reason: unknown = signal.reason;
  return reason instanceof Error ? reason : new DOMException('The operation was aborted', 'AbortError');
}

// Reused by every decode: [version, codec, pageShift, flags, pages, rawLen, payloadLen, rawCrc].
const headerFields = new Float64Array(8);

function readHeader(frame: Uint8Array): Float64Array {
  checkNative(native.hdeParseHeader(frame, headerFields, true), 'HDE frame header');
  return headerFields;
}

/** Reads and validates a frame header (and that `frame` holds exactly one frame). */
export function parseFrameHeader(frame: Uint8Array): FrameHeader {
  checkBytes(frame, 'frame');
  const out = readHeader(frame);
  return {
    version: out[0]!,
    compression: CODEC_NAMES[out[1]!]!,
    pageSize: 2 ** out[2]!,
    pages: out[4]!,
    rawLength: out[5]!,
    payloadLength: out[6]!,
    rawCrc32c: out[7]!,
  };
}

/** Result of `findZeroPages`. */
export interface ZeroPageMap {
  /** Number of all-zero pages. */
  count: number;
  /** Bit i (of byte i >> 3, least significant first) is set when page i is all zeros. */
  bitmap: Uint8Array;
}

/**
 * Finds the all-zero pages of `region` (a first migration pass can skip
 * them). Runs the same SIMD kernel as the encoder's zero-page check.
 */
export function findZeroPages(region: Uint8Array, options: { pageSize?: number; simd?: SimdPath } = {}): ZeroPageMap {
  checkBytes(region, 'region');
  const pageSize = checkPageSize(options.pageSize ?? DEFAULTS.pageSize);
  const simd = checkSimd(options.simd ?? 'auto');
  if (region.length % pageSize !== 0) {
    throw new InvalidArgumentError(`region length ${region.length} is not a multiple of the page size ${pageSize}`);
  }
  const bitmap = new Uint8Array(Math.ceil(region.length / pageSize / 8));
  const count = checkNative(native.hdeZeroPages(region, pageSize, simd, bitmap), 'HDE zero-page scan');
  return { count, bitmap };
}

/** Encodes pages into frames against a cache of what the receiver holds. */
export class HdeEncoder {
  readonly pageSize: number;
  /** Payload compression of new frames (see setCompression). */
  compression: Compression;
  zstdLevel: number;
  #native: NativeHdeEncoder | null;
  #scratch: Buffer = Buffer.alloc(0);
  #bytesOut = 0;
  #dirtyResult = new Float64Array(2);
  #busy = false;
  #adaptive: boolean;
  #skipLeft = 0;
  #backoff = 1;
  #skipped = 0;

  constructor(options: HdeEncoderOptions = {}) {
    if (typeof options !== 'object' || options === null) throw new InvalidArgumentError('options must be an object');
    if (options.mode !== undefined && !NETWORK_MODES.includes(options.mode)) {
      throw new InvalidArgumentError(`mode must be one of ${NETWORK_MODES.join(', ')}, got ${String(options.mode)}`);
    }
    const policy = options.mode === undefined ? undefined : chooseCompression(options.mode, options.link ?? {});
    const o = {
      ...DEFAULTS,
      ...(policy ? { compression: policy.codec, zstdLevel: policy.level || DEFAULTS.zstdLevel } : {}),
      ...options,
    };
    this.pageSize = checkPageSize(o.pageSize);
    if (typeof o.cacheBytes !== 'number' || !Number.isSafeInteger(o.cacheBytes) || o.cacheBytes < 0) {
      throw new InvalidArgumentError(`cacheBytes must be a non-negative integer, got ${String(o.cacheBytes)}`);
    }
    if (typeof o.deltaThreshold !== 'number' || !(o.deltaThreshold >= 0 && o.deltaThreshold <= 1)) {
      throw new InvalidArgumentError(`deltaThreshold must be between 0 and 1, got ${String(o.deltaThreshold)}`);
    }
    if (typeof o.detectDuplicates !== 'boolean') throw new InvalidArgumentError('detectDuplicates must be a boolean');
    if (!CODEC_NAMES.includes(o.compression)) {
      throw new InvalidArgumentError(`compression must be one of ${CODEC_NAMES.join(', ')}, got ${String(o.compression)}`);
    }
    if (!Number.isInteger(o.zstdLevel) || o.zstdLevel < 1 || o.zstdLevel > 19) {
      throw new InvalidArgumentError(`zstdLevel must be an integer from 1 to 19, got ${String(o.zstdLevel)}`);
    }
    if (o.adaptiveCompression !== undefined && typeof o.adaptiveCompression !== 'boolean') {
      throw new InvalidArgumentError('adaptiveCompression must be a boolean');
    }
    this.#adaptive = o.adaptiveCompression ?? true;
    this.compression = o.compression;
    this.zstdLevel = o.zstdLevel;
    const simd = checkSimd(o.simd);
    this.#native = new native.HdeEncoder({
      pageSize: this.pageSize,
      cacheBytes: o.cacheBytes,
      deltaThreshold: o.deltaThreshold,
      detectDuplicates: o.detectDuplicates,
      simd,
    });
  }

  /**
   * Changes the compression of frames from now on (a link changed mode, say).
   * The receiver needs no notice: each frame's header names its codec.
   */
  setCompression(compression: Compression, zstdLevel: number = this.zstdLevel): void {
    if (!CODEC_NAMES.includes(compression)) throw new InvalidArgumentError(`compression must be one of ${CODEC_NAMES.join(', ')}, got ${String(compression)}`);
    if (!Number.isInteger(zstdLevel) || zstdLevel < 1 || zstdLevel > 19) throw new InvalidArgumentError(`zstdLevel must be an integer from 1 to 19, got ${String(zstdLevel)}`);
    this.compression = compression;
    this.zstdLevel = zstdLevel;
    this.#skipLeft = 0;
    this.#backoff = 1;
  }

  /** The SIMD path in use, e.g. `avx512`. */
  get simd(): string {
    return this.#open().simd ?? 'closed';
  }

  /** Largest frame a batch of `pages` pages can produce before compression. */
  maxEncodedSize(pages: number): number {
    if (!Number.isSafeInteger(pages) || pages < 0) throw new InvalidArgumentError('pages must be a non-negative integer');
    return this.#open().maxEncodedSize(pages);
  }

  /**
   * Encodes `pages` (whole pages back to back) whose page numbers are
   * `pageNumbers`, returning one compressed frame.
   */
  encode(pages: Uint8Array, pageNumbers: BigUint64Array | readonly (number | bigint)[]): Buffer {
    const pns = this.#checkBatch(pages, pageNumbers);
    const enc = this.#open();
    const out = this.#scratchFor(pns.length);
    const n = checkNative(enc.encode(out, pages, pns), 'HDE encode');
    return this.#finish(out, n);
  }

  /**
   * Hot path: encodes into a caller-provided buffer of at least
   * `maxEncodedSize(pages)` bytes and returns the frame length. The frame is
   * not compressed (its header says so); `decode` accepts it as it is.
   */
  encodeInto(out: Uint8Array, pages: Uint8Array, pageNumbers: BigUint64Array | readonly (number | bigint)[]): number {
    checkBytes(out, 'out');
    const pns = this.#checkBatch(pages, pageNumbers);
    const enc = this.#open();
    const n = checkNative(enc.encode(out, pages, pns), 'HDE encode');
    this.#bytesOut += n;
    TOTALS.framesEncoded++;
    TOTALS.bytesEncoded += n;
    return n;
  }

  /**
   * Encodes the pages of `region` whose bit is set in `dirty` (bit i of byte
   * i >> 3, least significant first, is page i; its page number is
   * firstPage + i). Returns null when no bit is set.
   */
  encodeDirty(region: Uint8Array, dirty: Uint8Array, options: { firstPage?: number | bigint } = {}): Buffer | null {
    checkBytes(region, 'region');
    checkBytes(dirty, 'dirty');
    if (region.length % this.pageSize !== 0) {
      throw new InvalidArgumentError(`region length ${region.length} is not a multiple of the page size ${this.pageSize}`);
    }
    const pages = region.length / this.pageSize;
    if (dirty.length !== Math.ceil(pages / 8)) {
      throw new InvalidArgumentError(`dirty bitmap must be ${Math.ceil(pages / 8)} bytes for ${pages} pages, got ${dirty.length}`);
    }
    const first = BigInt(options.firstPage ?? 0);
    if (first < 0n) throw new InvalidArgumentError('firstPage must be non-negative');
    let count = 0;
    for (const b of dirty) count += POPCOUNT[b]!;
    if (count === 0) return null;
    if (count > MAX_PAGES_PER_FRAME) throw new InvalidArgumentError(`at most ${MAX_PAGES_PER_FRAME} dirty pages per frame`);
    const enc = this.#open();
    const out = this.#scratchFor(count);
    checkNative(enc.encodeDirty(out, region, dirty, first, this.#dirtyResult), 'HDE encode');
    return this.#finish(out, this.#dirtyResult[0]!);
  }

  /**
   * Like `encode`, off the main thread. `pages` must not change until the
   * promise settles; the encoder rejects other calls (ERR_HDE_BUSY) meanwhile.
   */
  encodeAsync(
    pages: Uint8Array,
    pageNumbers: BigUint64Array | readonly (number | bigint)[],
    options: OperationOptions = {},
  ): Promise<Buffer> {
    const pns = this.#checkBatch(pages, pageNumbers);
    const enc = this.#open();
    const { signal } = options;
    if (signal?.aborted) return Promise.reject(abortError(signal));
    // A private output buffer: the shared scratch could be in use by a sync
    // call once the worker has finished but before its callback runs.
    const out = Buffer.allocUnsafe(enc.maxEncodedSize(pns.length));
    return new Promise<Buffer>((resolve, reject) => {
      this.#busy = true;
      const started = enc.encodeAsync(out, pages, pns, (result) => {
        this.#busy = false;
        if (signal?.aborted) return reject(abortError(signal));
        if (result < 0) return reject(hdeStatusError(-result, 'HDE encode'));
        try {
          resolve(this.#finish(out, result));
        } catch (err) {
          reject(err);
        }
      });
      if (started < 0) {
        this.#busy = false;
        reject(hdeStatusError(-started, 'HDE encode'));
      }
    });
  }

  /** Counters since creation. */
  stats(): HdeEncoderStats {
    if (!this.#native) throw new HdeError('ERR_HDE_CLOSED', 'HDE encoder is closed');
    const s = this.#native.stats();
    if (!s) throw new HdeError('ERR_HDE_CLOSED', 'HDE encoder is closed');
    return {
      batches: s.batches,
      pages: s.pages,
      zero: s.zero,
      dup: s.dup,
      delta: s.delta,
      unchanged: s.unchanged,
      full: s.full,
      bytesIn: s.bytesIn,
      bytesEncoded: s.bytesOut,
      bytesOut: this.#bytesOut,
      cacheEvictions: s.cacheEvictions,
      compressionSkipped: this.#skipped,
    };
  }

  /** Forgets every baseline (for a receiver that lost its memory). */
  reset(): void {
    checkNative(this.#open().reset(), 'HDE reset');
  }

  /** Frees native memory now rather than at garbage collection. */
  close(): void {
    if (!this.#native) return;
    if (this.#busy) throw new HdeError('ERR_HDE_BUSY', 'HDE close: an asynchronous call is in flight');
    checkNative(this.#native.close(), 'HDE close');
    this.#native = null;
  }

  // Every call but stats() needs the encoder to itself: an asynchronous
  // encode owns it until its promise settles.
  #open(): NativeHdeEncoder {
    if (!this.#native) throw new HdeError('ERR_HDE_CLOSED', 'HDE encoder is closed');
    if (this.#busy) throw new HdeError('ERR_HDE_BUSY', 'HDE encoder is busy with an asynchronous encode');
    return this.#native;
  }

  #checkBatch(pages: Uint8Array, pageNumbers: BigUint64Array | readonly (number | bigint)[]): BigUint64Array {
    checkBytes(pages, 'pages');
    if (pages.length % this.pageSize !== 0) {
      throw new InvalidArgumentError(`pages length ${pages.length} is not a multiple of the page size ${this.pageSize}`);
    }
    const count = pages.length / this.pageSize;
    if (count > MAX_PAGES_PER_FRAME) throw new InvalidArgumentError(`at most ${MAX_PAGES_PER_FRAME} pages per frame`);
    return toPageNumbers(pageNumbers, count);
  }

  #scratchFor(pages: number): Buffer {
    const need = this.#open().maxEncodedSize(pages);
    if (this.#scratch.length < need) this.#scratch = Buffer.allocUnsafe(need);
    return this.#scratch;
  }

  // Compresses the record stream of a raw frame in `out` and returns the
  // frame in a buffer of its own.
  #finish(out: Buffer, length: number): Buffer {
    let frame: Buffer | undefined;
    if (this.compression !== 'none' && length > HEADER_SIZE && this.#skipLeft > 0) {
      this.#skipLeft--;
      this.#skipped++;
    } else if (this.compression !== 'none' && length > HEADER_SIZE) {
      const raw = length - HEADER_SIZE;
      const payload = compress(this.compression, out.subarray(HEADER_SIZE, length), this.zstdLevel);
      if (this.#adaptive && payload.length > raw * 0.97) {
        this.#skipLeft = this.#backoff;
        this.#backoff = Math.min(64, this.#backoff * 2);
      } else {
        this.#backoff = 1;
      }
      if (payload.length < raw) {
        frame = Buffer.allocUnsafe(HEADER_SIZE + payload.length);
        out.copy(frame, 0, 0, HEADER_SIZE);
        payload.copy(frame, HEADER_SIZE);
        checkNative(native.hdeSealHeader(frame, CODEC_IDS[this.compression], payload.length), 'HDE seal');
      }
    }
    frame ??= Buffer.from(out.subarray(0, length));
    this.#bytesOut += frame.length;
    TOTALS.framesEncoded++;
    TOTALS.bytesEncoded += frame.length;
    return frame;
  }
}

/** Applies frames onto the receiver's memory region. */
export class HdeDecoder {
  readonly pageSize: number;
  readonly region: Uint8Array;
  #native: NativeHdeDecoder | null;
  #counts = new Uint32Array(5);
  #busy = false;
  #stats: HdeDecoderStats = { frames: 0, bytesIn: 0, pages: 0, zero: 0, dup: 0, delta: 0, full: 0 };

  constructor(options: HdeDecoderOptions) {
    if (typeof options !== 'object' || options === null) throw new InvalidArgumentError('options must be an object');
    this.pageSize = checkPageSize(options.pageSize ?? DEFAULTS.pageSize);
    this.region = checkBytes(options.region, 'region');
    const simd = checkSimd(options.simd ?? 'auto');
    this.#native = new native.HdeDecoder({ pageSize: this.pageSize, simd });
  }

  get simd(): string {
    return this.#open().simd ?? 'closed';
  }

  /**
   * Validates `frame` whole, then applies it to the region. On any error the
   * region is left exactly as it was.
   */
  decode(frame: Uint8Array): DecodeResult {
    const { header, raw } = this.#unpack(frame);
    checkNative(this.#open().apply(header, raw, this.region, this.#counts), 'HDE decode');
    return this.#account(frame.length);
  }

  /** Like `decode`, off the main thread. The region must not be touched until it settles. */
  decodeAsync(frame: Uint8Array, options: OperationOptions = {}): Promise<DecodeResult> {
    const { signal } = options;
    if (signal?.aborted) return Promise.reject(abortError(signal));
    let parts: { header: Uint8Array; raw: Uint8Array };
    let dec: NativeHdeDecoder;
    try {
      dec = this.#open();
      parts = this.#unpack(frame);
    } catch (err) {
      return Promise.reject(err);
    }
    const counts = new Uint32Array(5);
    return new Promise<DecodeResult>((resolve, reject) => {
      this.#busy = true;
      const started = dec.applyAsync(parts.header, parts.raw, this.region, counts, (result) => {
        this.#busy = false;
        if (result < 0) return reject(hdeStatusError(-result, 'HDE decode'));
        this.#counts.set(counts);
        resolve(this.#account(frame.length));
      });
      if (started < 0) {
        this.#busy = false;
        reject(hdeStatusError(-started, 'HDE decode'));
      }
    });
  }

  stats(): HdeDecoderStats {
    return { ...this.#stats };
  }

  close(): void {
    if (!this.#native) return;
    if (this.#busy) throw new HdeError('ERR_HDE_BUSY', 'HDE close: an asynchronous call is in flight');
    checkNative(this.#native.close(), 'HDE close');
    this.#native = null;
  }

  #open(): NativeHdeDecoder {
    if (!this.#native) throw new HdeError('ERR_HDE_CLOSED', 'HDE decoder is closed');
    if (this.#busy) throw new HdeError('ERR_HDE_BUSY', 'HDE decoder is busy with an asynchronous decode');
    return this.#native;
  }

  #unpack(frame: Uint8Array): { header: Uint8Array; raw: Uint8Array } {
    checkBytes(frame, 'frame');
    const h = readHeader(frame);
    const pageSize = 2 ** h[2]!;
    if (pageSize !== this.pageSize) {
      throw new HdeError('ERR_HDE_PAGE_SIZE_MISMATCH', `HDE decode: frame page size ${pageSize}, decoder ${this.pageSize}`);
    }
    const header = frame.subarray(0, HEADER_SIZE);
    const payload = frame.subarray(HEADER_SIZE);
    const codec = CODEC_NAMES[h[1]!]!;
    const raw = codec === 'none' ? payload : decompress(codec, payload, h[5]!);
    return { header, raw };
  }

  #account(frameBytes: number): DecodeResult {
    const c = this.#counts;
    const r: DecodeResult = { pages: c[0]!, zero: c[1]!, dup: c[2]!, delta: c[3]!, full: c[4]! };
    const s = this.#stats;
    s.frames++;
    s.bytesIn += frameBytes;
    TOTALS.framesDecoded++;
    TOTALS.bytesDecoded += frameBytes;
    TOTALS.pagesDecoded += r.pages;
    s.pages += r.pages;
    s.zero += r.zero;
    s.dup += r.dup;
    s.delta += r.delta;
    s.full += r.full;
    return r;
  }
}

const POPCOUNT = new Uint8Array(256);
for (let i = 1; i < 256; i++) POPCOUNT[i] = (i & 1) + POPCOUNT[i >> 1]!;
