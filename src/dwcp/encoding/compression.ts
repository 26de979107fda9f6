// Frame payload compression through lz4-napi and zstd-napi, one call per
// frame. Decompression is bounded by the length the (checksummed) frame
// header declares, so a hostile payload cannot make us allocate more.
import { createRequire } from 'node:module';
import { HdeError } from '../../errors.js';

/** Payload codec of a frame, as recorded in its header. */
export type Compression = 'none' | 'lz4' | 'zstd';

export const CODEC_IDS: Readonly<Record<Compression, number>> = { none: 0, lz4: 1, zstd: 2 };
export const CODEC_NAMES: readonly Compression[] = ['none', 'lz4', 'zstd'];

interface Lz4Napi {
  compressSync(data: Buffer): Buffer;
  uncompressSync(data: Uint8Array): Buffer;
}
interface ZstdNapi {
  compress(data: Uint8Array, parameters?: { compressionLevel?: number }): Buffer;
}
interface ZstdBinding {
  decompress(dst: Uint8Array, src: Uint8Array): number;
}

const require = createRequire(import.meta.url);
const lz4 = require('lz4-napi') as Lz4Napi;
const zstd = require('zstd-napi') as ZstdNapi;
const zstdBinding = require('zstd-napi/binding') as ZstdBinding;

/** Compresses `data`; the result is only useful when shorter than the input. */
export function compress(codec: Exclude<Compression, 'none'>, data: Buffer, zstdLevel: number): Buffer {
  return codec === 'lz4' ? lz4.compressSync(data) : zstd.compress(data, { compressionLevel: zstdLevel });
}

/** Decompresses a payload that must expand to exactly `rawLen` bytes. */
export function decompress(codec: Exclude<Compression, 'none'>, payload: Uint8Array, rawLen: number): Buffer {
  const fail = (why: string, cause?: unknown): HdeError =>
    new HdeError('ERR_HDE_DECOMPRESS', `${codec} payload: ${why}`, cause === undefined ? undefined : { cause });
  if (codec === 'lz4') {
    // lz4-napi prefixes the block with its decompressed size (u32 LE); check
    // it before the library allocates that much.
    if (payload.length < 4) throw fail('truncated');
    const declared = payload[0]! | (payload[1]! << 8) | (payload[2]! << 16) | (payload[3]! << 24);
    if (declared >>> 0 !== rawLen) throw fail(`declares ${declared >>> 0} bytes, header says ${rawLen}`);
    let out: Buffer;
    try {
      out = lz4.uncompressSync(payload);
    } catch (err) {
      throw fail('invalid block', err);
    }
    if (out.length !== rawLen) throw fail(`expanded to ${out.length} bytes, header says ${rawLen}`);
    return out;
  }
  const out = Buffer.allocUnsafe(rawLen);
  let n: number;
  try {
    n = zstdBinding.decompress(out, payload);
  } catch (err) {
    throw fail('invalid frame', err);
  }
  if (n !== rawLen) throw fail(`expanded to ${n} bytes, header says ${rawLen}`);
  return out;
}
