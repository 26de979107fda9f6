// Applies link-mode changes to a live connection: it samples the
// connection's TCP_INFO, classifies the link (ModeDetector, with
// hysteresis), and when the mode changes sets the streams' congestion
// control, the stream count (on the side that dialled) and the compression
// of the given HDE encoders.
import { InvalidArgumentError } from '../errors.js';
import type { HdeEncoder } from './encoding/hde.js';
import { chooseCompression, type CompressionChoice } from './encoding/policy.js';
import type { NetworkMode } from './mode.js';
import { ModeDetector, transportForMode, type LinkSample, type ModeChange } from './mode-detector.js';
import type { AmstConnection } from './transport/amst.js';

export interface ModeControlOptions {
  /** Sampling period. Default 2000 ms; 0: no timer (call sample() yourself). */
  intervalMs?: number;
  /** Consecutive agreeing classifications before a change. Default 3. */
  samples?: number;
  /** A fixed mode instead of detection, or `auto`. Default `auto`. */
  override?: NetworkMode | 'auto';
  /** Encoders whose compression follows the mode. */
  encoders?: readonly HdeEncoder[];
  /** Change the stream count too (only where this end dialled). Default true. */
  adjustStreams?: boolean;
  /** Called after a change was applied. */
  onChange?: (change: AppliedModeChange) => void;
}

export interface AppliedModeChange extends ModeChange {
  congestion: string;
  /** Stream count set, when it was changed. */
  streams?: number;
  compression: CompressionChoice;
  /** What could not be applied (e.g. a congestion control the kernel lacks). */
  errors: string[];
}

/** RTT and a bandwidth estimate (congestion window over RTT, summed) of a connection's live streams. */
export function sampleConnection(conn: AmstConnection): LinkSample | undefined {
  const live = conn.stats()?.streams.filter((s) => s.alive && s.rttUs > 0) ?? [];
  if (live.length === 0) return undefined;
  const rttMs = live.reduce((a, s) => a + s.rttUs, 0) / live.length / 1000;
  const bandwidthBps = live.reduce((a, s) => a + (s.cwnd * 1448 * 8) / (s.rttUs / 1e6), 0);
  return { rttMs, bandwidthBps };
}

export class ModeController {
  readonly detector: ModeDetector;
  #conn: AmstConnection;
  #opts: ModeControlOptions;
  #timer: NodeJS.Timeout | undefined;
  #last: LinkSample | undefined;

  constructor(conn: AmstConnection, options: ModeControlOptions = {}) {
    const interval = options.intervalMs ?? 2000;
    if (!Number.isFinite(interval) || interval < 0) throw new InvalidArgumentError('intervalMs must be a non-negative number');
    this.#conn = conn;
    this.#opts = options;
    this.detector = new ModeDetector({ samples: options.samples ?? 3, override: options.override ?? 'auto' });
    if (options.override && options.override !== 'auto') this.#apply({ from: undefined, to: options.override, reason: 'override' });
    if (interval > 0) {
      this.#timer = setInterval(() => this.sample(), interval);
      this.#timer.unref();
    }
    conn.once('close', () => this.stop());
  }

  get mode(): NetworkMode | undefined {
    return this.detector.mode;
  }

  /** Takes one measurement from the connection (or the given one) and applies a resulting change. */
  sample(sample?: LinkSample): AppliedModeChange | undefined {
    const s = sample ?? sampleConnection(this.#conn);
    if (!s) return undefined;
    this.#last = s;
    const change = this.detector.observe(s);
    return change ? this.#apply(change) : undefined;
  }

  /** A new override from config (`auto` returns to detection). */
  setOverride(mode: NetworkMode | 'auto'): AppliedModeChange | undefined {
    const change = this.detector.setOverride(mode);
    return change ? this.#apply(change) : undefined;
  }

  stop(): void {
    clearInterval(this.#timer);
    this.#timer = undefined;
  }

  #apply(change: ModeChange): AppliedModeChange {
    const t = transportForMode(change.to);
    const compression = chooseCompression(change.to, this.#last ? { bandwidthBps: this.#last.bandwidthBps } : {});
    const errors: string[] = [];
    const applied: AppliedModeChange = { ...change, congestion: t.congestion, compression, errors };
    try {
      this.#conn.setCongestion(t.congestion);
    } catch (err) {
      errors.push((err as Error).message);
    }
    if ((this.#opts.adjustStreams ?? true) && this.#conn.isClient && this.#conn.streams !== t.streams) {
      try {
        this.#conn.setStreams(t.streams);
        applied.streams = t.streams;
      } catch (err) {
        errors.push((err as Error).message);
      }
    }
    for (const enc of this.#opts.encoders ?? []) enc.setCompression(compression.codec, compression.level || enc.zstdLevel);
    this.#opts.onChange?.(applied);
    return applied;
  }
}
