// Error classes with stable codes. Native calls report a status number; this
// file is the one mapping from those numbers to codes.
import { native } from './native.js';

/** Base class of every error the package throws on purpose. */
export class NovacronError extends Error {
  /** Stable machine-readable code, e.g. `ERR_HDE_CORRUPT`. */
  readonly code: string;
  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'NovacronError';
    this.code = code;
  }
}

/** Raised for bad arguments or options, before any native work starts. */
export class InvalidArgumentError extends NovacronError {
  constructor(message: string) {
    super('ERR_INVALID_ARGUMENT', message);
    this.name = 'InvalidArgumentError';
  }
}

/** Raised by the HDE encoder and decoder; `code` is `ERR_HDE_<STATUS>`. */
export class HdeError extends NovacronError {
  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(code, message, options);
    this.name = 'HdeError';
  }
}

const STATUS_NAMES: readonly string[] = native.statusNames();

const STATUS_MESSAGES: Readonly<Record<string, string>> = {
  INVALID_ARGUMENT: 'invalid argument',
  TRUNCATED: 'frame is truncated',
  BAD_MAGIC: 'not an HDE frame (bad magic)',
  UNSUPPORTED_VERSION: 'unsupported HDE frame version',
  HEADER_CHECKSUM: 'frame header checksum mismatch',
  PAYLOAD_CHECKSUM: 'record stream checksum mismatch',
  CORRUPT: 'frame is corrupt',
  PAGE_SIZE_MISMATCH: 'frame page size differs from the decoder page size',
  PAGE_OUT_OF_RANGE: 'frame refers to a page outside the region',
  LIMIT_EXCEEDED: 'frame exceeds a size limit',
  UNKNOWN_CODEC: 'unknown compression codec',
  OUTPUT_TOO_SMALL: 'output buffer too small',
  BUSY: 'object is busy with an asynchronous call',
  CLOSED: 'object is closed',
  CONNECTION_LOST: 'connection lost',
  PROTOCOL: 'peer broke the wire protocol',
  DEVICE_ERROR: 'an RDMA device call failed',
  UNAVAILABLE: 'not available here (no RDMA device, or the peer declined RDMA)',
};

/** Name of a native status number, e.g. 7 -> 'CORRUPT'. */
export function statusName(status: number): string {
  return STATUS_NAMES[status] ?? 'UNKNOWN';
}

/** Error for a native status number, with the caller's context in the message. */
export function hdeStatusError(status: number, context: string): HdeError {
  const name = statusName(status);
  return new HdeError(`ERR_HDE_${name}`, `${context}: ${STATUS_MESSAGES[name] ?? name.toLowerCase()}`);
}

/** Throws when a native call returned a negated status. */
export function checkNative(result: number, context: string): number {
  if (result < 0) {
    throw hdeStatusError(-result, context);
  }
  return result;
}

/**
 * Calls a caller-supplied callback so that, if it throws, the error is
 * thrown again on its own as an uncaught exception (as an EventEmitter
 * listener's would be) instead of breaking the loop that called it: the
 * rest of a batch of messages, the application of a log entry.
 */
export function callIsolated<A extends unknown[]>(fn: (...args: A) => void, ...args: A): void {
  try {
    fn(...args);
  } catch (error) {
    rethrowLater(error);
  }
}

/** Throws `error` again on its own, as an uncaught exception, once the current work is done. */
export function rethrowLater(error: unknown): void {
  process.nextTick(() => {
    throw error;
  });
}
