// The PostgreSQL metadata store (see store.ts). A module of its own so that
// the PostgreSQL client loads only on nodes configured to use it.
import pg from 'pg';
import { NovacronError } from '../errors.js';
import { RetriableError } from './initializer.js';
import { MIGRATIONS, toVm, type MetadataStore, type VmRecord, type VmRow } from './store.js';

// Errors worth another start attempt: the server is not there yet, or is
// starting, or out of connections.
const RETRIABLE_NET = new Set(['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENETUNREACH', 'EAI_AGAIN']);
const RETRIABLE_SQL = new Set(['57P03', '53300', '08006', '08001']);

/** Maps a PostgreSQL client error to a node error with a stable code. */
export function postgresError(err: unknown, what: string): NovacronError {
  const e = err as { code?: string; message?: string };
  const msg = `${what}: ${e.message ?? String(err)}`;
  if ((e.code && (RETRIABLE_NET.has(e.code) || RETRIABLE_SQL.has(e.code))) || /timeout/i.test(e.message ?? '')) return new RetriableError(msg, { cause: err });
  if (e.code === '28P01' || e.code === '28000') return new NovacronError('ERR_DATABASE_AUTH', msg, { cause: err });
  if (e.code === '3D000') return new NovacronError('ERR_DATABASE_MISSING', msg, { cause: err });
  return new NovacronError('ERR_DATABASE', msg, { cause: err });
}

// Any 64-bit number would do; this one spells "novacron" in ASCII.
const MIGRATION_LOCK = '7957092179233534318';

export interface PostgresOptions {
  url: string;
  poolSize: number;
  connectTimeoutMs: number;
  /** Connection errors after start (a restarted server), for the log. */
  onError?: (err: Error) => void;
}

export class PostgresStore implements MetadataStore {
  readonly backend = 'postgres';
  #pool: pg.Pool;

  constructor(o: PostgresOptions) {
    this.#pool = new pg.Pool({ connectionString: o.url, max: o.poolSize, connectionTimeoutMillis: o.connectTimeoutMs, query_timeout: Math.max(o.connectTimeoutMs, 30000), idleTimeoutMillis: 30000 });
    // An idle client whose server went away emits here; unhandled it would
    // take the process down.
    this.#pool.on('error', (err) => o.onError?.(err));
  }

  // Every statement here is idempotent (upserts, reads, deletes), so one
  // that fails on a connection the server dropped (a restart leaves the
  // pool's idle connections dead until used) is sent once more, on a fresh one.
  async #query<R extends pg.QueryResultRow>(what: string, text: string, values: unknown[] = []): Promise<pg.QueryResult<R>> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await this.#pool.query<R>(text, values);
      } catch (err) {
        const e = postgresError(err, what);
        const dropped = /terminat|ECONNRESET|EPIPE|57P0[123]|Connection ended/i.test(`${(err as { code?: string }).code ?? ''} ${(err as Error).message}`);
        if (attempt >= 2 || !dropped) throw e;
      }
    }
  }

  async migrate(): Promise<number[]> {
    let client: pg.PoolClient;
    try {
      client = await this.#pool.connect();
    } catch (err) {
      throw postgresError(err, 'cannot connect to PostgreSQL');
    }
    const applied: number[] = [];
    try {
      await client.query('BEGIN');
      await client.query('SELECT pg_advisory_xact_lock($1)', [MIGRATION_LOCK]);
      await client.query('CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)');
      const have = new Set((await client.query<{ version: number }>('SELECT version FROM schema_migrations')).rows.map((r) => r.version));
      for (const m of MIGRATIONS) {
        if (have.has(m.version)) continue;
        await client.query(m.postgres);
        await client.query('INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)', [m.version, m.name, Date.now()]);
        applied.push(m.version);
      }
      await client.query('COMMIT');
    } catch (err) {
      await client.query('ROLLBACK').catch(() => undefined);
      throw postgresError(err, 'PostgreSQL migration failed');
    } finally {
      client.release();
    }
    return applied;
  }

  async schemaVersion(): Promise<number> {
    const r = await this.#query<{ v: number | null }>('reading the schema version', 'SELECT MAX(version) AS v FROM schema_migrations');
    return r.rows[0]?.v ?? 0;
  }

  async putVm(vm: VmRecord): Promise<void> {
    await this.#query(
      'storing a VM',
      'INSERT INTO vms (id, name, state, host, updated_at) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, state = EXCLUDED.state, host = EXCLUDED.host, updated_at = EXCLUDED.updated_at',
      [vm.id, vm.name, vm.state, vm.host, vm.updatedAt],
    );
  }

  async getVm(id: string): Promise<VmRecord | undefined> {
    const r = await this.#query<VmRow>('reading a VM', 'SELECT id, name, state, host, updated_at FROM vms WHERE id = $1', [id]);
    return r.rows[0] && toVm(r.rows[0]);
  }

  async listVms(): Promise<VmRecord[]> {
    return (await this.#query<VmRow>('listing VMs', 'SELECT id, name, state, host, updated_at FROM vms ORDER BY id')).rows.map(toVm);
  }

  async deleteVm(id: string): Promise<boolean> {
    return ((await this.#query('deleting a VM', 'DELETE FROM vms WHERE id = $1', [id])).rowCount ?? 0) > 0;
  }

  async close(): Promise<void> {
    await this.#pool.end();
  }
}
