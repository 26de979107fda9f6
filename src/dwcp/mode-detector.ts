// Link mode detection. Each peer link is classified from what the transport
// measures: datacenter (RTT < 10 ms and > 1 Gbit/s), internet (RTT > 50 ms,
// or < 1 Gbit/s, or loss above 1 %), hybrid in between. A link changes mode
// only after `samples` consecutive classifications agree (hysteresis), so a
// noisy measurement cannot make it flap; an override from config wins.
import { InvalidArgumentError } from '../errors.js';
import { NETWORK_MODES, type NetworkMode } from './mode.js';

export interface LinkSample {
  /** Smoothed round-trip time, ms (TCP_INFO rtt / 1000). */
  rttMs: number;
  /** Measured or predicted throughput, bit/s. */
  bandwidthBps: number;
  /** Fraction of segments retransmitted, 0..1. Default 0. */
  loss?: number;
}

export const DATACENTER_MAX_RTT_MS = 10;
export const INTERNET_MIN_RTT_MS = 50;
export const GIGABIT = 1e9;
export const INTERNET_MIN_LOSS = 0.01;

/** The mode one sample alone points to. */
export function classifyLink(s: LinkSample): NetworkMode {
  if (typeof s !== 'object' || s === null) throw new InvalidArgumentError('a link sample must be an object with rttMs and bandwidthBps');
  if (!(Number.isFinite(s.rttMs) && s.rttMs >= 0) || !(Number.isFinite(s.bandwidthBps) && s.bandwidthBps >= 0)) {
    throw new InvalidArgumentError('rttMs and bandwidthBps must be non-negative numbers');
  }
  const loss = s.loss ?? 0;
  if (s.rttMs > INTERNET_MIN_RTT_MS || s.bandwidthBps < GIGABIT || loss > INTERNET_MIN_LOSS) return 'internet';
  if (s.rttMs < DATACENTER_MAX_RTT_MS && s.bandwidthBps > GIGABIT) return 'datacenter';
  return 'hybrid';
}

export interface ModeChange {
  from: NetworkMode | undefined;
  to: NetworkMode;
  /** `detected`, or `override` when set from config. */
  reason: 'detected' | 'override';
}

/** One link's mode over time. */
export class ModeDetector {
  #mode: NetworkMode | undefined;
  #candidate: NetworkMode | undefined;
  #streak = 0;
  #samples: number;
  #override: NetworkMode | undefined;
  /** Mode changes so far (the first classification included). */
  changes = 0;

  constructor(options: { samples?: number; override?: NetworkMode | 'auto' } = {}) {
    this.#samples = options.samples ?? 3;
    if (!Number.isInteger(this.#samples) || this.#samples < 1) throw new InvalidArgumentError('samples must be a positive integer');
    this.setOverride(options.override ?? 'auto');
  }

  get mode(): NetworkMode | undefined {
    return this.#override ?? this.#mode;
  }

  /** A config override (or `auto` to go back to detection). Returns the change it makes, if any. */
  setOverride(mode: NetworkMode | 'auto'): ModeChange | undefined {
    if (mode !== 'auto' && !NETWORK_MODES.includes(mode)) throw new InvalidArgumentError(`mode must be auto or one of ${NETWORK_MODES.join(', ')}`);
    const before = this.mode;
    this.#override = mode === 'auto' ? undefined : mode;
    const after = this.mode;
    if (after === undefined || after === before) return undefined;
    this.changes++;
    return { from: before, to: after, reason: mode === 'auto' ? 'detected' : 'override' };
  }

  /** Adds a measurement; returns the change when the link's mode changes. */
  observe(sample: LinkSample): ModeChange | undefined {
    const m = classifyLink(sample);
    if (this.#mode === undefined) {
      // The first measurement decides; there is nothing to flap from.
      this.#mode = m;
      if (this.#override) return undefined;
      this.changes++;
      return { from: undefined, to: m, reason: 'detected' };
    }
    if (m === this.#mode) {
      this.#candidate = undefined;
      this.#streak = 0;
      return undefined;
    }
    if (m !== this.#candidate) {
      this.#candidate = m;
      this.#streak = 0;
    }
    if (++this.#streak < this.#samples) return undefined;
    const from = this.#mode;
    this.#mode = m;
    this.#candidate = undefined;
    this.#streak = 0;
    if (this.#override) return undefined;
    this.changes++;
    return { from, to: m, reason: 'detected' };
  }
}

/** Transport settings for a mode (what a mode change applies to live connections). */
export function transportForMode(mode: NetworkMode): { streams: number; congestion: string } {
  switch (mode) {
    case 'datacenter':
      return { streams: 16, congestion: 'cubic' };
    case 'internet':
      return { streams: 8, congestion: 'bbr' };
    case 'hybrid':
      return { streams: 12, congestion: 'cubic' };
  }
}
