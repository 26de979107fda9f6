// The Redis cache (see cache.ts). A module of its own so that the Redis
// client, a large import, loads only on nodes configured to use it.
import { createClient } from 'redis';
import { NovacronError } from '../errors.js';
import type { Cache } from './cache.js';
import type { ComponentHealth } from './initializer.js';
import { RetriableError } from './initializer.js';

export interface RedisOptions {
  url: string;
  keyPrefix: string;
  connectTimeoutMs: number;
  /** Errors after start (server gone, reconnecting), for the log. */
  onError?: (err: Error) => void;
}

function newClient(o: RedisOptions, started: () => boolean) {
  return createClient({
    url: o.url,
    // Commands fail at once while disconnected instead of queueing: the
    // caller then reads the database.
    disableOfflineQueue: true,
    socket: {
      connectTimeout: o.connectTimeoutMs,
      // The first connection is the initializer's to retry; once up, the
      // client reconnects by itself with capped back-off.
      reconnectStrategy: (retries: number, cause: Error) => (started() ? Math.min(50 * 2 ** retries, 5000) : cause),
    },
  });
}

type RedisClient = ReturnType<typeof newClient>;

export class RedisCache implements Cache {
  readonly backend = 'redis';
  #client: RedisClient;
  #prefix: string;
  #timeoutMs: number;
  #lastError: string | undefined;

  private constructor(client: RedisClient, o: RedisOptions) {
    this.#client = client;
    this.#prefix = o.keyPrefix;
    this.#timeoutMs = o.connectTimeoutMs;
  }

  /** Connects, or throws RetriableError (server not reachable) / NovacronError ERR_CACHE (refused: auth, bad db). */
  static async connect(o: RedisOptions): Promise<RedisCache> {
    let started = false;
    const client = newClient(o, () => started);
    const cache = new RedisCache(client, o);
    client.on('error', (err: Error) => {
      cache.#lastError = err.message;
      if (started) o.onError?.(err);
    });
    try {
      await client.connect();
      await client.ping();
    } catch (err) {
      client.destroy();
      const e = err as { code?: string; message?: string };
      const msg = `cannot connect to Redis: ${e.message ?? String(err)}`;
      if (/NOAUTH|WRONGPASS|invalid password|DB index/i.test(e.message ?? '')) throw new NovacronError('ERR_CACHE', msg, { cause: err });
      throw new RetriableError(msg, { cause: err });
    }
    started = true;
    return cache;
  }

  async #guard<T>(op: Promise<T>): Promise<T> {
    let timer: NodeJS.Timeout | undefined;
    try {
      return await Promise.race([
        op,
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new NovacronError('ERR_CACHE_TIMEOUT', `Redis did not answer within ${this.#timeoutMs} ms`)), this.#timeoutMs);
        }),
      ]);
    } catch (err) {
      this.#lastError = (err as Error).message;
      throw err instanceof NovacronError ? err : new NovacronError('ERR_CACHE', `Redis: ${(err as Error).message}`, { cause: err });
    } finally {
      clearTimeout(timer);
    }
  }

  async get(key: string): Promise<string | undefined> {
    const v = await this.#guard(this.#client.get(this.#prefix + key));
    return v ?? undefined;
  }

  async set(key: string, value: string, ttlMs: number): Promise<void> {
    if (ttlMs <= 0) {
      await this.delete(key);
      return;
    }
    await this.#guard(this.#client.set(this.#prefix + key, value, { expiration: { type: 'PX', value: ttlMs } }));
  }

  async delete(key: string): Promise<void> {
    await this.#guard(this.#client.del(this.#prefix + key));
  }

  async health(): Promise<ComponentHealth> {
    const t0 = performance.now();
    try {
      await this.#guard(this.#client.ping());
      return { ok: true, detail: { backend: 'redis', pingMs: Math.round((performance.now() - t0) * 100) / 100 } };
    } catch (err) {
      return { ok: false, detail: { backend: 'redis', error: (err as Error).message, lastError: this.#lastError } };
    }
  }

  async close(): Promise<void> {
    if (this.#client.isOpen) await this.#client.close().catch(() => this.#client.destroy());
  }
}
