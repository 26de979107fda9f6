// The one place the addon is loaded. Everything native goes through the
// typed interface below; nothing else requires the .node file.
import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';

/** Options passed to the native encoder after TypeScript has validated them. */
export interface NativeEncoderOptions {
  pageSize: number;
  cacheBytes: number;
  deltaThreshold: number;
  detectDuplicates: boolean;
  simd?: string;
}

/** Counters kept by the native encoder. */
export interface NativeEncoderStats {
  batches: number;
  pages: number;
  zero: number;
  dup: number;
  delta: number;
  unchanged: number;
  full: number;
  bytesIn: number;
  bytesOut: number;
  cacheEvictions: number;
}

/** Methods return a non-negative result or a negated status number. */
export interface NativeHdeEncoder {
  readonly simd: string | null;
  maxEncodedSize(pages: number): number;
  encode(out: Uint8Array, pages: Uint8Array, pageNumbers: BigUint64Array): number;
  encodeDirty(out: Uint8Array, region: Uint8Array, bitmap: Uint8Array, firstPage: bigint, result: Float64Array): number;
  encodeAsync(out: Uint8Array, pages: Uint8Array, pageNumbers: BigUint64Array, done: (result: number) => void): number;
  stats(): NativeEncoderStats | null;
  reset(): number;
  close(): number;
}

export interface NativeHdeDecoder {
  readonly simd: string | null;
  apply(header: Uint8Array, raw: Uint8Array, region: Uint8Array, counts: Uint32Array): number;
  applyAsync(header: Uint8Array, raw: Uint8Array, region: Uint8Array, counts: Uint32Array, done: (result: number) => void): number;
  close(): number;
}

/**
 * Events from the transport's I/O thread, packed: `fields` holds 7 numbers
 * per event (type code, id, value, listener, status code, os error, extra).
 * A message's listener slot is its offset in `arena`, or -1 when its bytes
 * are the next entry of `buffers`; its extra slot is its length; its os
 * error slot the slab it is lent from (the `buffers` entry is then that
 * slab's ArrayBuffer, to give back with `release`), else -1.
 */
export type NativeAmstEventHandler = (fields: Float64Array, buffers: Array<Buffer | ArrayBuffer>, arena: Buffer | null) => void;

export interface NativeAmstStreamStats {
  alive: boolean;
  bytesSent: number;
  bytesReceived: number;
  /** Bytes per second written to / read from the socket over the last second (1.0-1.1 s), chunk headers included. */
  sendBytesPerSec: number;
  receiveBytesPerSec: number;
  rttUs: number;
  rttVarUs: number;
  retransmits: number;
  cwnd: number;
  congestion: string;
  /** SO_SNDBUF / SO_RCVBUF as the kernel reports them: twice what was asked (its bookkeeping), or as autotuning has grown them. */
  sendBufferBytes: number;
  recvBufferBytes: number;
}

export interface NativeAmstStats {
  messagesSent: number;
  messagesReceived: number;
  bytesSent: number;
  bytesReceived: number;
  chunksResent: number;
  zeroCopySends: number;
  zeroCopyCopied: number;
  splicedBytes: number;
  /** What carries the data now. */
  transport: 'tcp' | 'rdma';
  /** RDMA queue pairs ("lanes") alive. */
  rdmaLanes: number;
  /** Bytes posted to and received from RDMA lanes, chunk headers included. */
  laneBytesSent: number;
  laneBytesReceived: number;
  /** Bytes per second all streams and lanes wrote / read over the last second (1.0-1.1 s), chunk headers included. */
  sendBytesPerSec: number;
  receiveBytesPerSec: number;
  streams: NativeAmstStreamStats[];
}

export interface NativeAmstConnectOptions {
  host: string;
  port: number;
  streams: number;
  chunkShift: number;
  congestion: string;
  sendBuffer: number;
  recvBuffer: number;
  redial: boolean;
  zeroCopy: boolean;
  splice: boolean;
  lendBuffers: boolean;
  /** 0 tcp, 1 auto, 2 rdma. */
  transport: number;
  /** 0: one per stream (at most 16). */
  rdmaLanes: number;
  rdmaRingBytes: number;
  /** Empty: the first device with an active port. */
  rdmaDevice: string;
  /** -1: picked (RoCE: the first RoCE v2 IPv4 GID). */
  rdmaGidIndex: number;
  /** Per dial; 0: the kernel's SYN retries. */
  connectTimeoutMs: number;
  /** TCP_USER_TIMEOUT and keepalive; 0: the kernel's defaults. */
  peerTimeoutMs: number;
}

export interface NativeAmstEngine {
  /** `transport`: 0 tcp (decline RDMA offers), 1 auto; then the RDMA device, GID index (-1: picked) and ring bytes of accepted connections. */
  listen(host: string, port: number, lendBuffers: boolean, transport: number, rdmaDevice: string, rdmaGidIndex: number, rdmaRingBytes: number, handshakeTimeoutMs: number, peerTimeoutMs: number,
    congestion: string, sendBuffer: number, recvBuffer: number): number;
  connect(options: NativeAmstConnectOptions): number;
  send(conn: number, messageId: number, data: Uint8Array): void;
  /** `packed[i]` non-zero: `data[i]` is a pack of small messages (see amst.ts). */
  sendMany(conn: number, firstId: number, data: readonly Uint8Array[], packed?: Uint8Array): void;
  close(id: number): void;
  destroy(id: number): void;
  killStream(conn: number, index: number): void;
  setStreams(conn: number, streams: number): void;
  pauseReading(conn: number, pause: boolean): void;
  setCongestion(conn: number, name: string): number;
  stats(conn: number): NativeAmstStats | null;
  addresses(conn: number): { localAddress: string; localPort: number; remoteAddress: string; remotePort: number } | null;
  release(slab: number): void;
  setBusyPoll(microseconds: number): void;
  ref(): void;
  unref(): void;
  shutdown(): void;
}

export interface NativeRdmaPort {
  device: string;
  port: number;
  state: string;
  /** `InfiniBand`, or `Ethernet` for RoCE. */
  linkLayer: string;
  mtu: number;
  /** GID index 0. */
  gid: string;
  /** The GID index the transport uses on this port (RoCE: the first RoCE v2 IPv4 entry). */
  gidIndex: number;
}

export interface NativeCpuFeatures {
  sse2: boolean;
  sse42: boolean;
  avx2: boolean;
  bmi2: boolean;
  avx512f: boolean;
  avx512bw: boolean;
  avx512vl: boolean;
  vpclmulqdq: boolean;
  crc32c: 'vpclmul' | 'sse4.2' | 'table';
}

export interface NativeBinding {
  HdeEncoder: new (options: NativeEncoderOptions) => NativeHdeEncoder;
  HdeDecoder: new (options: { pageSize: number; simd?: string }) => NativeHdeDecoder;
  AmstEngine: new (onEvents: NativeAmstEventHandler, io?: 'thread' | 'loop') => NativeAmstEngine;
  hdeParseHeader(frame: Uint8Array, out: Float64Array, exact: boolean): number;
  hdeSealHeader(header: Uint8Array, codec: number, payloadLen: number): number;
  hdeZeroPages(region: Uint8Array, pageSize: number, simd: string, bitmap: Uint8Array): number;
  statusNames(): string[];
  hdeLimits: { headerSize: number; maxRecords: number; maxRawLen: number };
  cpuFeatures(): NativeCpuFeatures;
  simdPaths(): { supported: string[]; selected: string };
  crc32c(data: Uint8Array, seed?: number): number;
  systemPageSize(): number;
  probeIoUring(): { available: boolean; features?: number; error?: string };
  probeRdma(): { library: string | null; devices: string[]; ports: NativeRdmaPort[]; error?: string };
}

function locate(): string {
  const root = join(dirname(fileURLToPath(import.meta.url)), '..');
  for (const kind of ['Release', 'Debug']) {
    const p = join(root, 'build', kind, 'dwcp.node');
    if (existsSync(p)) return p;
  }
  throw new Error(
    `novacron: native addon not built (looked in ${join(root, 'build')}); run \`npm install\` or \`npm run build\``,
  );
}

const require = createRequire(import.meta.url);

/** The loaded addon, one instance per thread (it is context-aware). */
export const native: NativeBinding = require(locate()) as NativeBinding;
