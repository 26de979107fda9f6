// sendPages: HDE in front of AMST. A region of memory is encoded batch by
// batch (zero, duplicate, delta and full records, then LZ4/zstd) and each
// frame goes out as one message while the next batch is encoded; the peer
// applies frames with an HdeDecoder over its copy of the region.
import { InvalidArgumentError } from '../../errors.js';
import { MAX_PAGES_PER_FRAME, type HdeEncoder } from '../encoding/hde.js';
import type { AmstConnection } from '../transport/amst.js';

export interface SendPagesOptions {
  /** Page number of the region's first page. Default 0. */
  firstPage?: number;
  /** Only pages whose bit is set (bit i of byte i >> 3 is page i). Default: every page. */
  dirty?: Uint8Array;
  /** Pages per frame, a multiple of 8 up to MAX_PAGES_PER_FRAME. Default 256. */
  batchPages?: number;
  /** Frames sent but not yet acknowledged before encoding waits. Default 8. */
  window?: number;
  /** Stops between frames; the returned promise rejects with the signal's reason. */
  signal?: AbortSignal;
  /** Pages the peer has acknowledged, of those selected. */
  onProgress?: (pagesDone: number, pagesTotal: number) => void;
}

export interface SendPagesResult {
  /** Pages encoded and acknowledged. */
  pages: number;
  frames: number;
  /** Page bytes covered. */
  logicalBytes: number;
  /** Frame bytes sent (what the transport carried, before its own framing). */
  wireBytes: number;
}

function popcount(bits: Uint8Array): number {
  let n = 0;
  for (let b of bits) {
    while (b) {
      b &= b - 1;
      n++;
    }
  }
  return n;
}

/** Encodes `region` with `encoder` and sends it over `conn`, `window` frames in flight. */
export async function sendPages(
  conn: AmstConnection,
  encoder: HdeEncoder,
  region: Uint8Array,
  options: SendPagesOptions = {},
): Promise<SendPagesResult> {
  const ps = encoder.pageSize;
  if (!(region instanceof Uint8Array) || region.length % ps !== 0) {
    throw new InvalidArgumentError(`region must be a Uint8Array whose length is a multiple of the page size ${ps}`);
  }
  const pages = region.length / ps;
  const first = options.firstPage ?? 0;
  const batch = options.batchPages ?? 256;
  const window = options.window ?? 8;
  if (!Number.isSafeInteger(first) || first < 0) throw new InvalidArgumentError('firstPage must be a non-negative integer');
  if (!Number.isInteger(batch) || batch < 8 || batch % 8 !== 0 || batch > MAX_PAGES_PER_FRAME) {
    throw new InvalidArgumentError(`batchPages must be a multiple of 8 from 8 to ${MAX_PAGES_PER_FRAME}`);
  }
  if (!Number.isInteger(window) || window < 1) throw new InvalidArgumentError('window must be a positive integer');
  const dirty = options.dirty;
  if (dirty !== undefined && (!(dirty instanceof Uint8Array) || dirty.length !== Math.ceil(pages / 8))) {
    throw new InvalidArgumentError(`dirty must be a bitmap of ${Math.ceil(pages / 8)} bytes`);
  }
  const total = dirty ? popcount(dirty) : pages;
  const result: SendPagesResult = { pages: 0, frames: 0, logicalBytes: 0, wireBytes: 0 };
  const inflight: Array<Promise<void>> = [];
  let failure: unknown;
  for (let start = 0; start < pages; start += batch) {
    options.signal?.throwIfAborted();
    if (failure !== undefined) break;
    const end = Math.min(pages, start + batch);
    let frame: Buffer | null;
    let count: number;
    if (dirty) {
      const bits = dirty.subarray(start / 8, Math.ceil(end / 8));
      count = popcount(bits);
      frame = encoder.encodeDirty(region.subarray(start * ps, end * ps), bits, { firstPage: first + start });
    } else {
      count = end - start;
      const pns = new BigUint64Array(count);
      for (let i = 0; i < count; i++) pns[i] = BigInt(first + start + i);
      frame = encoder.encode(region.subarray(start * ps, end * ps), pns);
    }
    if (frame === null) continue;
    result.frames++;
    result.wireBytes += frame.length;
    const sent = conn.send(frame).then(
      () => {
        result.pages += count;
        result.logicalBytes += count * ps;
        options.onProgress?.(result.pages, total);
      },
      (err: unknown) => {
        failure ??= err;
      },
    );
    inflight.push(sent);
    if (inflight.length >= window) await inflight.shift();
  }
  await Promise.all(inflight);
  if (failure !== undefined) throw failure;
  options.signal?.throwIfAborted();
  return result;
}
