// The node's read cache: in-process (bounded LRU with expiry) by default,
// Redis when `cache.redisUrl` is set (cache-redis.ts, loaded only then), so
// nodes share what they cached. The cache is never the source of truth: a
// failing Redis makes reads go to the database (and the cache component
// report unhealthy), never fail them.
import type { ComponentHealth } from './initializer.js';

export interface Cache {
  readonly backend: 'memory' | 'redis';
  get(key: string): Promise<string | undefined>;
  /** ttlMs 0: not cached at all. */
  set(key: string, value: string, ttlMs: number): Promise<void>;
  delete(key: string): Promise<void>;
  health(): Promise<ComponentHealth>;
  close(): Promise<void>;
}

export class MemoryCache implements Cache {
  readonly backend = 'memory';
  // Map order is insertion order: re-inserting on a hit keeps the least
  // recently used entry first.
  #entries = new Map<string, { value: string; expires: number }>();
  #max: number;
  #now: () => number;
  hits = 0;
  misses = 0;

  constructor(maxEntries: number, now: () => number = Date.now) {
    this.#max = maxEntries;
    this.#now = now;
  }

  get size(): number {
    return this.#entries.size;
  }

  setMaxEntries(n: number): void {
    this.#max = n;
    this.#evict();
  }

  async get(key: string): Promise<string | undefined> {
    const e = this.#entries.get(key);
    if (!e || e.expires <= this.#now()) {
      if (e) this.#entries.delete(key);
      this.misses++;
      return undefined;
    }
    this.#entries.delete(key);
    this.#entries.set(key, e);
    this.hits++;
    return e.value;
  }

  async set(key: string, value: string, ttlMs: number): Promise<void> {
    this.#entries.delete(key);
    if (ttlMs <= 0) return;
    this.#entries.set(key, { value, expires: this.#now() + ttlMs });
    this.#evict();
  }

  async delete(key: string): Promise<void> {
    this.#entries.delete(key);
  }

  #evict(): void {
    for (const k of this.#entries.keys()) {
      if (this.#entries.size <= this.#max) break;
      this.#entries.delete(k);
    }
  }

  async health(): Promise<ComponentHealth> {
    return { ok: true, detail: { backend: 'memory', entries: this.#entries.size, maxEntries: this.#max, hits: this.hits, misses: this.misses } };
  }

  async close(): Promise<void> {
    this.#entries.clear();
  }
}
