// Public API: re-exports only.
export { NovacronError, InvalidArgumentError, HdeError } from './errors.js';
export type { NetworkMode } from './dwcp/mode.js';
export {
  HdeEncoder,
  HdeDecoder,
  hdeTotals,
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
  HdeTotals,
} from './dwcp/encoding/hde.js';
export type { Compression } from './dwcp/encoding/compression.js';
export { chooseCompression } from './dwcp/encoding/policy.js';
export type { CompressionChoice, LinkView } from './dwcp/encoding/policy.js';
export { doctor } from './sys/doctor.js';
export type { DoctorReport } from './sys/doctor.js';
export { wanUp, wanDown, wanLink, wanUnavailable, traceSchedule, WanLink, WanError } from './sys/wan.js';
export type { WanOptions, WanDirection, WanStats, WanDirectionStats } from './sys/wan.js';
export { listen, connect, AmstConnection, AmstServer, MessageBatch, TransportError } from './dwcp/transport/amst.js';
export type { IoMode, ListenOptions, ConnectOptions, SendOptions, ConnectionStats, StreamStats, Transport, AmstConnectionEvents } from './dwcp/transport/amst.js';
export { sendPages } from './dwcp/transfer/pages.js';
export type { SendPagesOptions, SendPagesResult } from './dwcp/transfer/pages.js';
export { sendFile, receiveFiles, FileReceiver, TransferError } from './dwcp/transfer/file.js';
export type { SendFileOptions, ReceiveOptions, ReceivedFile, TransferSummary } from './dwcp/transfer/file.js';
export { ModeDetector, classifyLink, transportForMode } from './dwcp/mode-detector.js';
export type { LinkSample, ModeChange } from './dwcp/mode-detector.js';
export { ModeController, sampleConnection } from './dwcp/mode-controller.js';
export type { ModeControlOptions, AppliedModeChange } from './dwcp/mode-controller.js';
export { NovacronNode } from './control/node.js';
export type { NodeOptions } from './control/node.js';
export { loadConfig, ConfigError, SCHEMA as CONFIG_SCHEMA } from './control/config.js';
export type { Config, LoadOptions, LoadedConfig } from './control/config.js';
export { Initializer, InitError, RetriableError, planLevels } from './control/initializer.js';
export type { Component, ComponentHealth, ComponentStatus, InitOptions } from './control/initializer.js';
