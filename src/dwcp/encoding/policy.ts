// Which compression a frame gets: a pure function of the mode and what is
// known of the link, so it can be tested and swapped without state.
import type { NetworkMode } from '../mode.js';
import type { Compression } from './compression.js';

/** What the policy knows of the link; all fields optional. */
export interface LinkView {
  /** Measured or predicted bandwidth, bits per second. */
  bandwidthBps?: number;
  /** Spare CPU on the sender, 0..1 (1 = idle). */
  cpuHeadroom?: number;
}

/** Codec and level chosen for a frame. */
export interface CompressionChoice {
  codec: Compression;
  /** zstd level; 0 when the codec is not zstd. */
  level: number;
}

/**
 * Datacenter links are faster than any compressor but LZ4, so LZ4 it is.
 * Over the internet the link is the bottleneck: the slower it is, the more
 * CPU per byte is worth spending (zstd level rises as bandwidth falls), unless
 * the CPU is the scarcer resource. Hybrid links get a cheap zstd level.
 */
export function chooseCompression(mode: NetworkMode, link: LinkView = {}): CompressionChoice {
  if (mode === 'datacenter') return { codec: 'lz4', level: 0 };
  if (mode === 'hybrid') return { codec: 'zstd', level: 1 };
  const bw = link.bandwidthBps;
  let level = 3;
  if (bw !== undefined) {
    if (bw < 50e6) level = 9;
    else if (bw < 200e6) level = 6;
    else if (bw < 600e6) level = 3;
    else level = 1;
  }
  if (link.cpuHeadroom !== undefined && link.cpuHeadroom < 0.25) level = Math.min(level, 1);
  return { codec: 'zstd', level };
}
