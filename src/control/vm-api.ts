// The VM records API under /v1/vms (bearer token required):
//   GET    /v1/vms        every VM, by id
//   GET    /v1/vms/:id    one VM (read through the cache)
//   PUT    /v1/vms/:id    create or replace: {"name", "state", "host"?}
//   DELETE /v1/vms/:id
// Errors are JSON {"code", "error"} with a stable code.
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Logger } from 'pino';
import type { Cache } from './cache.js';
import { VM_STATES, type MetadataStore, type VmRecord, type VmState } from './store.js';

const MAX_BODY = 64 * 1024;
const ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

async function readJson(req: IncomingMessage): Promise<unknown> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const c of req as AsyncIterable<Buffer>) {
    size += c.length;
    if (size > MAX_BODY) throw new ApiError(413, 'ERR_API_TOO_LARGE', `request body over ${MAX_BODY} bytes`);
    chunks.push(c);
  }
  try {
    return JSON.parse(Buffer.concat(chunks).toString('utf8'));
  } catch (err) {
    throw new ApiError(400, 'ERR_API_BAD_JSON', `request body is not JSON: ${(err as Error).message}`);
  }
}

/** Checks a PUT body; returns the record to store. */
export function parseVm(id: string, body: unknown, now: number): VmRecord {
  const bad = (field: string, why: string): never => {
    throw new ApiError(400, 'ERR_API_INVALID', `${field}: ${why}`);
  };
  if (typeof body !== 'object' || body === null || Array.isArray(body)) return bad('body', 'expected a JSON object');
  const b = body as Record<string, unknown>;
  for (const k of Object.keys(b)) if (!['name', 'state', 'host'].includes(k)) bad(k, 'unknown field (expected name, state, host)');
  if (typeof b.name !== 'string' || b.name.length === 0 || b.name.length > 256) bad('name', 'expected a string of 1 to 256 characters');
  if (typeof b.state !== 'string' || !(VM_STATES as readonly string[]).includes(b.state)) bad('state', `expected one of ${VM_STATES.join(', ')}`);
  const host = b.host ?? null;
  if (host !== null && (typeof host !== 'string' || host.length === 0 || host.length > 256)) bad('host', 'expected null or a string of 1 to 256 characters');
  return { id, name: b.name as string, state: b.state as VmState, host: host as string | null, updatedAt: now };
}

export interface VmApiDeps {
  store(): MetadataStore | undefined;
  cache(): Cache | undefined;
  ttlMs(): number;
  log: Logger;
  /** Counts cache lookups by result. */
  cacheResult?(result: 'hit' | 'miss' | 'error'): void;
}

export class VmApi {
  #d: VmApiDeps;
  constructor(deps: VmApiDeps) {
    this.#d = deps;
  }

  /** Serves a /v1/vms request (the caller has checked the token). */
  async handle(req: IncomingMessage, res: ServerResponse, path: string): Promise<void> {
    const send = (status: number, body?: unknown): void => {
      res.writeHead(status, body === undefined ? {} : { 'content-type': 'application/json' });
      res.end(body === undefined ? undefined : `${JSON.stringify(body)}\n`);
    };
    try {
      const store = this.#d.store();
      if (!store) throw new ApiError(503, 'ERR_API_NOT_READY', 'the database is not running');
      const rest = path.slice('/v1/vms'.length);
      if (rest === '' || rest === '/') {
        if (req.method !== 'GET') throw new ApiError(405, 'ERR_API_METHOD', `${req.method} is not allowed on /v1/vms`);
        return send(200, { vms: await store.listVms() });
      }
      let id: string;
      try {
        id = decodeURIComponent(rest.slice(1));
      } catch {
        throw new ApiError(400, 'ERR_API_INVALID', 'id: not valid percent-encoding');
      }
      if (!ID.test(id)) throw new ApiError(400, 'ERR_API_INVALID', 'id: 1 to 128 of A-Z a-z 0-9 . _ -, starting with a letter or digit');
      switch (req.method) {
        case 'GET': {
          const vm = await this.#get(store, id);
          return vm ? send(200, vm) : send(404, { code: 'ERR_API_NOT_FOUND', error: `no VM ${id}` });
        }
        case 'PUT': {
          const vm = parseVm(id, await readJson(req), Date.now());
          await store.putVm(vm);
          await this.#forget(id);
          return send(200, vm);
        }
        case 'DELETE': {
          const existed = await store.deleteVm(id);
          await this.#forget(id);
          return existed ? send(204) : send(404, { code: 'ERR_API_NOT_FOUND', error: `no VM ${id}` });
        }
        default:
          throw new ApiError(405, 'ERR_API_METHOD', `${req.method} is not allowed on /v1/vms/:id`);
      }
    } catch (err) {
      if (err instanceof ApiError) return send(err.status, { code: err.code, error: err.message });
      const code = (err as { code?: string }).code ?? 'ERR_API_INTERNAL';
      this.#d.log.error({ err: (err as Error).message, code, path }, 'VM API request failed');
      return send(code === 'ERR_INIT_RETRIABLE' ? 503 : 500, { code, error: (err as Error).message });
    }
  }

  async #get(store: MetadataStore, id: string): Promise<VmRecord | undefined> {
    const cache = this.#d.cache();
    const key = `vm:${id}`;
    if (cache) {
      try {
        const hit = await cache.get(key);
        this.#d.cacheResult?.(hit === undefined ? 'miss' : 'hit');
        if (hit !== undefined) return JSON.parse(hit) as VmRecord;
      } catch (err) {
        this.#d.cacheResult?.('error');
        this.#d.log.warn({ err: (err as Error).message }, 'cache read failed; reading the database');
      }
    }
    const vm = await store.getVm(id);
    if (vm && cache) await cache.set(key, JSON.stringify(vm), this.#d.ttlMs()).catch(() => undefined);
    return vm;
  }

  // A write must not leave a stale copy behind. If the cache cannot be
  // reached the entry expires within the TTL.
  async #forget(id: string): Promise<void> {
    await this.#d.cache()?.delete(`vm:${id}`).catch((err: Error) => this.#d.log.warn({ err: err.message, vm: id }, 'cache invalidation failed; the entry expires with its TTL'));
  }
}
