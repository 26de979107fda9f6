// A WAN link between two network namespaces, for tests and benchmarks of
// internet mode on a kernel without netem. `wanUp` makes namespaces
// `<name>-a` and `<name>-b`, starts the forwarder (native/wan/wanem.cc) with a
// TUN device for each, moves the devices in and addresses them
// (10.213.N.1 in a, 10.213.N.2 in b); every packet between them then goes
// through the forwarder's delay, jitter, loss, rate and queue. `down()`
// (or `wanDown(name)` from another process) removes all of it. Needs root.
import { spawn, spawnSync, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { NovacronError, InvalidArgumentError } from '../errors.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const forwarderDir = join(root, 'native', 'wan');
const forwarderPath = join(forwarderDir, 'out', 'novacron-wanem');
const stateRoot = '/run/novacron-wan';

/** One direction's treatment (a → b or b → a). */
export interface WanDirection {
  /** One-way propagation delay, ms. */
  delayMs?: number;
  /** Uniform jitter, ± ms (delivery stays in order unless `reorder`). */
  jitterMs?: number;
  /** Random loss, a fraction (0.005 is 0.5 %). */
  loss?: number;
  /** Bursty loss instead: a Gilbert-Elliott chain stepped per packet. */
  gilbertElliott?: { p: number; r: number; badLoss?: number; goodLoss?: number };
  /** Link rate in Mbit/s (IP bytes); unlimited when absent. */
  rateMbit?: number;
  /** Bytes waiting to be serialized before tail drop. Default: 1 MiB, or 100 ms at the rate if more. */
  queueBytes?: number;
  /** Fraction of packets that skip the delay (and so overtake others). */
  reorder?: number;
}

export interface WanOptions extends WanDirection {
  /** Round-trip time: half of it is each direction's delay (unless `delayMs`). */
  rttMs?: number;
  /** Overrides for a → b and b → a. */
  ab?: WanDirection;
  ba?: WanDirection;
  /**
   * A schedule replayed in a loop, both directions alike: a Pantheon
   * datalink JSON (`timestamps`, `bandwidths` Mbit/s, `delays` ms, `loss`),
   * a cooked throughput trace (`time_s Mbit/s` lines; delay and loss from
   * these options), or lines `t_s rate_mbit delay_ms loss`.
   */
  trace?: string;
  /** Seed of the loss and jitter draws. */
  seed?: number;
}

export interface WanDirectionStats {
  in: number;
  lost: number;
  queueDropped: number;
  out: number;
  bytesOut: number;
  reordered: number;
  queued: number;
}

export interface WanStats {
  ab: WanDirectionStats;
  ba: WanDirectionStats;
}

interface WanState {
  name: string;
  pid: number;
  nsA: string;
  nsB: string;
  devA: string;
  devB: string;
  addrA: string;
  addrB: string;
  options: WanOptions;
}

export class WanError extends NovacronError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_WAN', message, options);
    this.name = 'WanError';
  }
}

function sh(args: string[], check = true): string {
  const r = spawnSync(args[0]!, args.slice(1), { encoding: 'utf8' });
  if (check && r.status !== 0) {
    throw new WanError(`${args.join(' ')}: ${(r.stderr || r.stdout || '').trim() || (r.error?.message ?? `exit ${String(r.status)}`)}`);
  }
  return r.stdout ?? '';
}

/** What stops a link from coming up on this host, or null when nothing does. */
export function wanUnavailable(): string | null {
  if (process.getuid?.() !== 0) return 'needs root (network namespaces, TUN devices)';
  if (!existsSync('/dev/net/tun')) return 'no /dev/net/tun';
  if (spawnSync('ip', ['-V']).error) return 'no `ip` command (iproute2)';
  if (!existsSync(forwarderPath) && spawnSync('make', ['--version']).error) return 'no `make` to build the forwarder';
  return null;
}

/** Builds the forwarder when it is missing or older than its source. */
export function buildForwarder(): string {
  const r = spawnSync('make', ['-s', '-C', forwarderDir], { encoding: 'utf8' });
  if (r.status !== 0) throw new WanError(`building the WAN forwarder failed: ${(r.stderr || r.stdout || '').trim()}`);
  return forwarderPath;
}

function checkName(name: string): string {
  // Devices are `<name>a`/`<name>b`: IFNAMSIZ allows 15 characters.
  if (!/^[a-z][a-z0-9]{0,11}$/.test(name)) throw new InvalidArgumentError(`WAN link name must be 1-12 lower-case letters and digits, starting with a letter: ${name}`);
  return name;
}

// 10.213.N.0/24, N from the name, so links of different names can coexist.
function subnet(name: string): number {
  let h = 0;
  for (const ch of name) h = (h * 31 + ch.charCodeAt(0)) >>> 0;
  return h % 250 + 1;
}

function checkFraction(v: number | undefined, what: string): void {
  if (v !== undefined && !(Number.isFinite(v) && v >= 0 && v <= 1)) throw new InvalidArgumentError(`${what} must be a fraction from 0 to 1, got ${String(v)}`);
}

function checkNonNegative(v: number | undefined, what: string): void {
  if (v !== undefined && !(Number.isFinite(v) && v >= 0)) throw new InvalidArgumentError(`${what} must be a number >= 0, got ${String(v)}`);
}

function directionFlags(d: WanDirection, prefix: string): string[] {
  const f: string[] = [];
  const add = (k: string, v: number | undefined): void => {
    if (v !== undefined) f.push(`--${prefix}${k}`, String(v));
  };
  checkNonNegative(d.delayMs, 'delayMs');
  checkNonNegative(d.jitterMs, 'jitterMs');
  checkFraction(d.loss, 'loss');
  checkFraction(d.reorder, 'reorder');
  if (d.rateMbit !== undefined && !(Number.isFinite(d.rateMbit) && d.rateMbit > 0)) throw new InvalidArgumentError(`rateMbit must be > 0, got ${String(d.rateMbit)}`);
  checkNonNegative(d.queueBytes, 'queueBytes');
  add('delay-ms', d.delayMs);
  add('jitter-ms', d.jitterMs);
  add('loss', d.loss);
  add('rate-bps', d.rateMbit === undefined ? undefined : d.rateMbit * 1e6);
  add('queue-bytes', d.queueBytes);
  add('reorder', d.reorder);
  if (d.gilbertElliott) {
    const g = d.gilbertElliott;
    for (const [k, v] of Object.entries(g)) checkFraction(v as number, `gilbertElliott.${k}`);
    f.push(`--${prefix}ge`, [g.p, g.r, g.badLoss ?? 1, g.goodLoss ?? 0].join(','));
  }
  return f;
}

/**
 * The schedule lines (`t_s rate_mbit delay_ms loss`) of a trace file: a
 * Pantheon datalink JSON, a cooked `time_s Mbit/s` trace, or a schedule
 * already.
 */
export function traceSchedule(path: string, defaults: { delayMs?: number; loss?: number } = {}): string {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new InvalidArgumentError(`cannot read trace ${path}: ${(err as Error).message}`);
  }
  const delay = defaults.delayMs ?? 0;
  const loss = defaults.loss ?? 0;
  const lines: string[] = [];
  if (text.trimStart().startsWith('{')) {
    let j: { timestamps?: unknown; bandwidths?: unknown; delays?: unknown; loss?: unknown };
    try {
      j = JSON.parse(text) as typeof j;
    } catch {
      throw new InvalidArgumentError(`trace ${path} is not valid JSON`);
    }
    const ts = j.timestamps;
    const bw = j.bandwidths;
    if (!Array.isArray(ts) || !Array.isArray(bw) || ts.length !== bw.length || ts.length === 0) {
      throw new InvalidArgumentError(`trace ${path}: needs equal-length timestamps and bandwidths`);
    }
    const delays = Array.isArray(j.delays) ? (j.delays as number[]) : [];
    const l = typeof j.loss === 'number' ? j.loss : loss;
    for (let i = 0; i < ts.length; i++) {
      // Pantheon's delay is the one-way propagation delay of the path.
      const d = delays.length === ts.length ? delays[i]! : (delays[0] ?? delay);
      lines.push(`${Number(ts[i])} ${Math.max(0.01, Number(bw[i]))} ${Number(d)} ${l}`);
    }
  } else {
    for (const raw of text.split('\n')) {
      const line = raw.trim();
      if (!line || line.startsWith('#')) continue;
      const f = line.split(/\s+/).map(Number);
      if (f.some((x) => !Number.isFinite(x))) throw new InvalidArgumentError(`trace ${path}: bad line: ${line}`);
      if (f.length === 2) lines.push(`${f[0]} ${Math.max(0.01, f[1]!)} ${delay} ${loss}`);
      else if (f.length === 4) lines.push(f.join(' '));
      else throw new InvalidArgumentError(`trace ${path}: lines need 2 or 4 numbers: ${line}`);
    }
  }
  if (lines.length === 0) throw new InvalidArgumentError(`trace ${path} is empty`);
  // A schedule starts at 0 whatever the trace's first timestamp.
  const t0 = Number(lines[0]!.split(' ')[0]);
  return lines.map((l) => {
    const [t, ...rest] = l.split(' ');
    return [Number(t) - t0, ...rest].join(' ');
  }).join('\n') + '\n';
}

/** A link that is up. */
export class WanLink {
  readonly name: string;
  readonly nsA: string;
  readonly nsB: string;
  /** Address of namespace a's end, and of b's. */
  readonly addrA: string;
  readonly addrB: string;
  readonly pid: number;
  /** The settings it was brought up with. */
  readonly options: WanOptions;
  readonly #dir: string;

  /** @internal */
  constructor(s: WanState) {
    this.name = s.name;
    this.nsA = s.nsA;
    this.nsB = s.nsB;
    this.addrA = s.addrA;
    this.addrB = s.addrB;
    this.pid = s.pid;
    this.options = s.options;
    this.#dir = join(stateRoot, s.name);
  }

  /** Runs `cmd` inside namespace `a` or `b`. */
  spawn(side: 'a' | 'b', cmd: string, args: string[], options: SpawnOptions = {}): ChildProcess {
    return spawn('ip', ['netns', 'exec', side === 'a' ? this.nsA : this.nsB, cmd, ...args], options);
  }

  /** The forwarder's counters now. */
  async stats(): Promise<WanStats> {
    const file = join(this.#dir, 'stats.json');
    rmSync(file, { force: true });
    process.kill(this.pid, 'SIGUSR1');
    for (let i = 0; i < 200; i++) {
      if (existsSync(file)) return JSON.parse(readFileSync(file, 'utf8')) as WanStats;
      await new Promise((r) => setTimeout(r, 10));
    }
    throw new WanError(`the forwarder of ${this.name} did not report its counters`);
  }

  /** Removes the namespaces and stops the forwarder. */
  down(): Promise<void> {
    return wanDown(this.name);
  }
}

function readState(name: string): WanState | null {
  try {
    return JSON.parse(readFileSync(join(stateRoot, name, 'state.json'), 'utf8')) as WanState;
  } catch {
    return null;
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Takes down link `name` (whatever is left of it). */
export async function wanDown(name = 'nvwan'): Promise<void> {
  checkName(name);
  const s = readState(name);
  if (s && alive(s.pid)) {
    process.kill(s.pid, 'SIGTERM');
    for (let i = 0; i < 200 && alive(s.pid); i++) await new Promise((r) => setTimeout(r, 10));
    if (alive(s.pid)) process.kill(s.pid, 'SIGKILL');
  }
  // The TUN devices go with the forwarder; the namespaces by hand.
  sh(['ip', 'netns', 'del', `${name}-a`], false);
  sh(['ip', 'netns', 'del', `${name}-b`], false);
  rmSync(join(stateRoot, name), { recursive: true, force: true });
}

/** The link `name` if it is up (from its state file). */
export function wanLink(name = 'nvwan'): WanLink | null {
  const s = readState(checkName(name));
  return s && alive(s.pid) ? new WanLink(s) : null;
}

/** Brings link `name` up (replacing one of that name). */
export async function wanUp(options: WanOptions = {}, name = 'nvwan'): Promise<WanLink> {
  // Every setting is checked before anything is touched, root or not.
  checkName(name);
  checkNonNegative(options.rttMs, 'rttMs');
  const both: WanDirection = { ...options };
  if (options.delayMs === undefined && options.rttMs !== undefined) both.delayMs = options.rttMs / 2;
  const flags = [...directionFlags(both, ''), ...directionFlags(options.ab ?? {}, 'ab-'), ...directionFlags(options.ba ?? {}, 'ba-')];
  let schedule: string | undefined;
  if (options.trace) {
    const defaults: { delayMs?: number; loss?: number } = {};
    if (both.delayMs !== undefined) defaults.delayMs = both.delayMs;
    if (both.loss !== undefined) defaults.loss = both.loss;
    schedule = traceSchedule(options.trace, defaults);
  }
  const why = wanUnavailable();
  if (why) throw new WanError(`cannot emulate a WAN link here: ${why}`);
  await wanDown(name);
  const dir = join(stateRoot, name);
  mkdirSync(dir, { recursive: true });
  if (schedule !== undefined) {
    writeFileSync(join(dir, 'schedule.txt'), schedule);
    flags.push('--trace', join(dir, 'schedule.txt'));
  }
  if (options.seed !== undefined) flags.push('--seed', String(options.seed));
  const exe = buildForwarder();
  const n = subnet(name);
  const s: WanState = {
    name,
    pid: 0,
    nsA: `${name}-a`,
    nsB: `${name}-b`,
    devA: `${name}a`,
    devB: `${name}b`,
    addrA: `10.213.${n}.1`,
    addrB: `10.213.${n}.2`,
    options,
  };
  try {
    sh(['ip', 'netns', 'add', s.nsA]);
    sh(['ip', 'netns', 'add', s.nsB]);
    const child = spawn(exe, ['--tun-a', s.devA, '--tun-b', s.devB, '--stats', join(dir, 'stats.json'), ...flags], {
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true,
    });
    s.pid = child.pid ?? 0;
    await new Promise<void>((resolve, reject) => {
      let out = '';
      let err = '';
      child.stdout!.on('data', (d: Buffer) => {
        out += d.toString();
        if (out.includes('ready')) resolve();
      });
      child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
      child.on('exit', (code) => reject(new WanError(`the WAN forwarder exited (${String(code)}): ${err.trim()}`)));
    });
    child.stdout!.destroy();
    child.stderr!.destroy();
    child.removeAllListeners('exit');
    child.unref();
    writeFileSync(join(dir, 'state.json'), JSON.stringify(s));
    for (const [ns, dev, addr] of [[s.nsA, s.devA, s.addrA], [s.nsB, s.devB, s.addrB]] as const) {
      sh(['ip', 'link', 'set', dev, 'netns', ns]);
      sh(['ip', '-n', ns, 'addr', 'add', `${addr}/24`, 'dev', dev]);
      sh(['ip', '-n', ns, 'link', 'set', dev, 'mtu', '1500', 'up']);
      sh(['ip', '-n', ns, 'link', 'set', 'lo', 'up']);
    }
  } catch (err) {
    await wanDown(name);
    throw err;
  }
  return new WanLink(s);
}

/** `60ms`, `0.5s`, `60` (ms) -> milliseconds. */
export function parseDuration(v: string): number {
  const m = /^(\d+(?:\.\d+)?)(us|ms|s)?$/.exec(v.trim());
  if (!m) throw new InvalidArgumentError(`not a duration: ${v} (try 60ms)`);
  const x = Number(m[1]);
  return m[2] === 's' ? x * 1000 : m[2] === 'us' ? x / 1000 : x;
}

/** `500mbit`, `1gbit`, `800kbit` -> Mbit/s. */
export function parseRate(v: string): number {
  const m = /^(\d+(?:\.\d+)?)(kbit|mbit|gbit)?$/i.exec(v.trim());
  if (!m) throw new InvalidArgumentError(`not a rate: ${v} (try 500mbit)`);
  const x = Number(m[1]);
  const unit = (m[2] ?? 'mbit').toLowerCase();
  return unit === 'gbit' ? x * 1000 : unit === 'kbit' ? x / 1000 : x;
}

/** `0.5%` or `0.005` -> 0.005. */
export function parseFraction(v: string): number {
  const m = /^(\d+(?:\.\d+)?)(%)?$/.exec(v.trim());
  if (!m) throw new InvalidArgumentError(`not a fraction or percentage: ${v}`);
  const x = m[2] ? Number(m[1]) / 100 : Number(m[1]);
  if (x > 1) throw new InvalidArgumentError(`${v} is more than 100 %`);
  return x;
}
