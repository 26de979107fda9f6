// Public API: re-exports only.
export { NovacronError, InvalidArgumentError, HdeError } from './errors.js';
export type { NetworkMode } from './dwcp/mode.js';
export {
  HdeEncoder,
  HdeDecoder,
  parseFrameHeader,
  findZeroPages,
  HEADER_SIZE,
  MAX_PAGES_PER_FRAME,
  SIMD_PATHS,
} from './dwcp/encoding/hde.js';
export type {
  HdeEncoderOptions,
  HdeDecoderOptions,
  HdeEncoderStats,
  HdeDecoderStats,
  DecodeResult,
  FrameHeader,
  OperationOptions,
  SimdPath,
  ZeroPageMap,
} from './dwcp/encoding/hde.js';
export type { Compression } from './dwcp/encoding/compression.js';
export { chooseCompression } from './dwcp/encoding/policy.js';
export type { CompressionChoice, LinkView } from './dwcp/encoding/policy.js';
export { doctor } from './sys/doctor.js';
export type { DoctorReport } from './sys/doctor.js';
export { listen, connect, AmstConnection, AmstServer, TransportError } from './dwcp/transport/amst.js';
export type { IoMode, ListenOptions, ConnectOptions, SendOptions, ConnectionStats, StreamStats } from './dwcp/transport/amst.js';
export { sendPages } from './dwcp/transfer/pages.js';
export type { SendPagesOptions, SendPagesResult } from './dwcp/transfer/pages.js';
export { sendFile, receiveFiles, FileReceiver, TransferError } from './dwcp/transfer/file.js';
export type { SendFileOptions, ReceiveOptions, ReceivedFile, TransferSummary } from './dwcp/transfer/file.js';
export { ModeDetector, classifyLink, transportForMode } from './dwcp/mode-detector.js';
export type { LinkSample, ModeChange } from './dwcp/mode-detector.js';
export { ModeController, sampleConnection } from './dwcp/mode-controller.js';
export type { ModeControlOptions, AppliedModeChange } from './dwcp/mode-controller.js';
