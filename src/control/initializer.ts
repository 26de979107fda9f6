// The component initializer. Components declare their dependencies; they are
// ordered into levels (a component's level is one past its deepest
// dependency, for reporting), each component starts as soon as its own
// dependencies run, retriable failures are retried
// with exponential back-off and jitter, a critical failure stops what already
// started (in reverse) and fails the start, a non-critical one leaves the
// node running degraded. Stop runs in reverse start order.
import { NovacronError } from '../errors.js';

/** Errors of the initializer; `code` is `ERR_INIT_<WHAT>`. */
export class InitError extends NovacronError {
  readonly component: string | undefined;
  constructor(code: string, message: string, component?: string, options?: { cause?: unknown }) {
    super(code, message, options);
    this.name = 'InitError';
    this.component = component;
  }
}

/** Thrown by a component's start() for a failure worth another attempt (a port still held, a peer not up yet). */
export class RetriableError extends NovacronError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_INIT_RETRIABLE', message, options);
    this.name = 'RetriableError';
  }
}

export type ComponentState = 'pending' | 'starting' | 'running' | 'degraded' | 'failed' | 'skipped' | 'stopped';

export interface ComponentHealth {
  /** false: the component is up but not doing its job. */
  ok: boolean;
  detail?: Record<string, unknown>;
}

export interface Component {
  readonly name: string;
  readonly dependsOn?: readonly string[];
  /** A critical component that cannot start fails the whole start. Default true. */
  readonly critical?: boolean;
  start(): Promise<void>;
  stop?(): Promise<void>;
  health?(): ComponentHealth | Promise<ComponentHealth>;
}

export interface ComponentStatus {
  name: string;
  state: ComponentState;
  critical: boolean;
  level: number;
  attempts: number;
  /** Time spent starting, all attempts included. */
  startMs: number;
  error?: string;
}

/** A component's state with its own health answer. */
export type ComponentReport = ComponentStatus & { ok: boolean; detail?: Record<string, unknown> };

/** What the initializer reports as it goes (structured logs, metrics). */
export interface InitObserver {
  componentStarted?(name: string, ms: number, attempts: number): void;
  componentFailed?(name: string, error: Error, attempt: number, willRetry: boolean): void;
  levelDone?(level: number, names: readonly string[], ms: number): void;
  componentStopped?(name: string, ms: number, error?: Error): void;
}

export interface InitOptions {
  /** Attempts for retriable failures. Default 3. */
  attempts?: number;
  /** First retry delay; doubled per attempt, times a jitter factor in [0.5, 1.5). Default 100. */
  backoffMs?: number;
  observer?: InitObserver;
  /** Start components one after another, level by level, instead of together (the baseline of `bench boot`). */
  sequential?: boolean;
  /** For tests: randomness of the jitter and the clock to sleep on. */
  random?: () => number;
  sleep?: (ms: number) => Promise<void>;
}

/** Orders components into start levels. Throws on unknown dependencies and on cycles (naming one). */
export function planLevels(components: readonly Component[]): string[][] {
  const byName = new Map<string, Component>();
  for (const c of components) {
    if (byName.has(c.name)) throw new InitError('ERR_INIT_DUPLICATE', `two components are named ${c.name}`, c.name);
    byName.set(c.name, c);
  }
  for (const c of components) {
    for (const d of c.dependsOn ?? []) {
      if (!byName.has(d)) throw new InitError('ERR_INIT_MISSING_DEPENDENCY', `${c.name} depends on ${d}, which is not a component`, c.name);
    }
  }
  const level = new Map<string, number>();
  const visiting: string[] = [];
  const visit = (name: string): number => {
    const known = level.get(name);
    if (known !== undefined) return known;
    const at = visiting.indexOf(name);
    if (at >= 0) throw new InitError('ERR_INIT_CYCLE', `dependency cycle: ${[...visiting.slice(at), name].join(' -> ')}`, name);
    visiting.push(name);
    let l = 0;
    for (const d of byName.get(name)!.dependsOn ?? []) l = Math.max(l, visit(d) + 1);
    visiting.pop();
    level.set(name, l);
    return l;
  };
  const levels: string[][] = [];
  for (const c of components) {
    const l = visit(c.name);
    (levels[l] ??= []).push(c.name);
  }
  // Levels follow from dependencies; within one, keep declaration order.
  const order = new Map(components.map((c, i) => [c.name, i]));
  return levels.map((names) => names.sort((a, b) => order.get(a)! - order.get(b)!));
}

const realSleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export class Initializer {
  readonly levels: string[][];
  #components: Map<string, Component>;
  #status = new Map<string, ComponentStatus>();
  #started: string[] = [];
  #opts: Required<Omit<InitOptions, 'observer'>> & { observer: InitObserver };

  constructor(components: readonly Component[], options: InitOptions = {}) {
    this.levels = planLevels(components);
    this.#components = new Map(components.map((c) => [c.name, c]));
    this.#opts = {
      attempts: options.attempts ?? 3,
      backoffMs: options.backoffMs ?? 100,
      observer: options.observer ?? {},
      random: options.random ?? Math.random,
      sleep: options.sleep ?? realSleep,
      sequential: options.sequential ?? false,
    };
    this.levels.forEach((names, level) => {
      for (const name of names) {
        this.#status.set(name, { name, state: 'pending', critical: this.#components.get(name)!.critical ?? true, level, attempts: 0, startMs: 0 });
      }
    });
  }

  /** Per-component state, in start order. */
  status(): ComponentStatus[] {
    return this.levels.flat().map((n) => ({ ...this.#status.get(n)! }));
  }

  /** Some non-critical component is not running. */
  get degraded(): boolean {
    return [...this.#status.values()].some((s) => !s.critical && (s.state === 'failed' || s.state === 'skipped'));
  }

  /**
   * Starts every component, each as soon as its own dependencies run (levels
   * are not barriers: a slow component holds back only what depends on it).
   * Rejects with InitError (ERR_INIT_CRITICAL) after stopping what started.
   */
  async start(): Promise<void> {
    let fatal: ComponentStatus | undefined;
    const check = (names: readonly string[]): void => {
      fatal ??= names.map((n) => this.#status.get(n)!).find((s) => s.critical && s.state !== 'running' && s.state !== 'pending');
    };
    if (this.#opts.sequential) {
      for (const [level, names] of this.levels.entries()) {
        const t0 = performance.now();
        for (const n of names) await this.#startOne(n);
        this.#opts.observer.levelDone?.(level, names, performance.now() - t0);
        check(names);
        if (fatal) break;
      }
    } else {
      const t0 = performance.now();
      const left = this.levels.map((names) => names.length);
      const started = new Map<string, Promise<void>>();
      const launch = (name: string): Promise<void> => {
        let p = started.get(name);
        if (p) return p;
        const deps = this.#components.get(name)!.dependsOn ?? [];
        p = Promise.all(deps.map(launch)).then(async () => {
          const st = this.#status.get(name)!;
          if (fatal) {
            st.state = 'skipped';
            st.error = `start halted: critical component ${fatal.name} did not start`;
          } else {
            await this.#startOne(name);
            check([name]);
          }
          left[st.level]! -= 1;
          if (left[st.level] === 0) this.#opts.observer.levelDone?.(st.level, this.levels[st.level]!, performance.now() - t0);
        });
        started.set(name, p);
        return p;
      };
      await Promise.all(this.levels.flat().map(launch));
    }
    if (fatal) {
      await this.stop();
      throw new InitError('ERR_INIT_CRITICAL', `critical component ${fatal.name} did not start: ${fatal.error ?? fatal.state}`, fatal.name);
    }
  }

  async #startOne(name: string): Promise<void> {
    const st = this.#status.get(name)!;
    const c = this.#components.get(name)!;
    const down = (c.dependsOn ?? []).find((d) => this.#status.get(d)!.state !== 'running');
    if (down) {
      st.state = 'skipped';
      st.error = `dependency ${down} is not running`;
      return;
    }
    st.state = 'starting';
    const t0 = performance.now();
    for (;;) {
      st.attempts++;
      try {
        await c.start();
        st.state = 'running';
        st.startMs = performance.now() - t0;
        delete st.error;
        this.#started.push(name);
        this.#opts.observer.componentStarted?.(name, st.startMs, st.attempts);
        return;
      } catch (err) {
        const e = err instanceof Error ? err : new Error(String(err));
        const retry = e instanceof RetriableError && st.attempts < this.#opts.attempts;
        st.error = e.message;
        this.#opts.observer.componentFailed?.(name, e, st.attempts, retry);
        if (!retry) {
          st.state = 'failed';
          st.startMs = performance.now() - t0;
          return;
        }
        const delay = this.#opts.backoffMs * 2 ** (st.attempts - 1) * (0.5 + this.#opts.random());
        await this.#opts.sleep(delay);
      }
    }
  }

  /** Stops started components in reverse order; errors are reported, not thrown. */
  async stop(): Promise<void> {
    while (this.#started.length > 0) {
      const name = this.#started.pop()!;
      const st = this.#status.get(name)!;
      const t0 = performance.now();
      try {
        await this.#components.get(name)!.stop?.();
        st.state = 'stopped';
        this.#opts.observer.componentStopped?.(name, performance.now() - t0);
      } catch (err) {
        st.state = 'stopped';
        this.#opts.observer.componentStopped?.(name, performance.now() - t0, err instanceof Error ? err : new Error(String(err)));
      }
    }
  }

  /** Health of every component: running ones are asked, the rest report their state. */
  async health(): Promise<ComponentReport[]> {
    return Promise.all(
      this.status().map(async (s) => {
        if (s.state !== 'running') return { ...s, ok: false };
        try {
          const h = (await this.#components.get(s.name)!.health?.()) ?? { ok: true };
          return { ...s, ok: h.ok, ...(h.detail ? { detail: h.detail } : {}) };
        } catch (err) {
          return { ...s, ok: false, error: (err as Error).message };
        }
      }),
    );
  }
}
