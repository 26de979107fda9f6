// The node's metadata store: embedded SQLite (better-sqlite3, WAL, full
// fsync) by default, PostgreSQL when `database.url` is set (store-postgres.ts,
// loaded only then). Both run the same
// numbered migrations, recorded in schema_migrations; on PostgreSQL they run
// in one transaction under an advisory lock, so nodes sharing a database can
// start together.
import Database from 'better-sqlite3';

export const VM_STATES = ['defined', 'running', 'paused', 'migrating', 'stopped'] as const;
export type VmState = (typeof VM_STATES)[number];

export interface VmRecord {
  id: string;
  name: string;
  state: VmState;
  /** Node the VM runs on; null while it has none. */
  host: string | null;
  /** Milliseconds since the epoch. */
  updatedAt: number;
}

export interface MetadataStore {
  readonly backend: 'sqlite' | 'postgres';
  /** Applies pending migrations; returns the versions it applied. */
  migrate(): Promise<number[]>;
  /** Highest applied migration. */
  schemaVersion(): Promise<number>;
  putVm(vm: VmRecord): Promise<void>;
  getVm(id: string): Promise<VmRecord | undefined>;
  listVms(): Promise<VmRecord[]>;
  /** false: there was no such VM. */
  deleteVm(id: string): Promise<boolean>;
  close(): Promise<void>;
}

interface Migration {
  version: number;
  name: string;
  sqlite: string;
  postgres: string;
}

export const MIGRATIONS: readonly Migration[] = [
  {
    version: 1,
    name: 'nodes',
    sqlite: 'CREATE TABLE nodes (id TEXT PRIMARY KEY, address TEXT NOT NULL, mode TEXT, updated_at INTEGER NOT NULL)',
    postgres: 'CREATE TABLE nodes (id TEXT PRIMARY KEY, address TEXT NOT NULL, mode TEXT, updated_at BIGINT NOT NULL)',
  },
  {
    version: 2,
    name: 'vms',
    sqlite: 'CREATE TABLE vms (id TEXT PRIMARY KEY, name TEXT NOT NULL, state TEXT NOT NULL, host TEXT, updated_at INTEGER NOT NULL)',
    postgres: 'CREATE TABLE vms (id TEXT PRIMARY KEY, name TEXT NOT NULL, state TEXT NOT NULL, host TEXT, updated_at BIGINT NOT NULL)',
  },
];

export const LATEST_SCHEMA = MIGRATIONS.at(-1)!.version;

export interface VmRow {
  id: string;
  name: string;
  state: string;
  host: string | null;
  updated_at: number | string;
}

export const toVm = (r: VmRow): VmRecord => ({ id: r.id, name: r.name, state: r.state as VmState, host: r.host, updatedAt: Number(r.updated_at) });

export class SqliteStore implements MetadataStore {
  readonly backend = 'sqlite';
  #db: Database.Database;

  constructor(path: string) {
    this.#db = new Database(path);
    this.#db.pragma('journal_mode = WAL');
    this.#db.pragma('synchronous = FULL');
    this.#db.pragma('busy_timeout = 5000');
  }

  async migrate(): Promise<number[]> {
    const db = this.#db;
    db.exec('CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)');
    const applied: number[] = [];
    // IMMEDIATE takes the write lock first, so two processes cannot both
    // decide a migration is pending.
    db.transaction(() => {
      const have = new Set((db.prepare('SELECT version FROM schema_migrations').all() as Array<{ version: number }>).map((r) => r.version));
      const record = db.prepare('INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)');
      for (const m of MIGRATIONS) {
        if (have.has(m.version)) continue;
        db.exec(m.sqlite);
        record.run(m.version, m.name, Date.now());
        applied.push(m.version);
      }
    }).immediate();
    return applied;
  }

  async schemaVersion(): Promise<number> {
    return (this.#db.prepare('SELECT COALESCE(MAX(version), 0) AS v FROM schema_migrations').get() as { v: number }).v;
  }

  async putVm(vm: VmRecord): Promise<void> {
    this.#db
      .prepare('INSERT INTO vms (id, name, state, host, updated_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET name = excluded.name, state = excluded.state, host = excluded.host, updated_at = excluded.updated_at')
      .run(vm.id, vm.name, vm.state, vm.host, vm.updatedAt);
  }

  async getVm(id: string): Promise<VmRecord | undefined> {
    const r = this.#db.prepare('SELECT id, name, state, host, updated_at FROM vms WHERE id = ?').get(id) as VmRow | undefined;
    return r && toVm(r);
  }

  async listVms(): Promise<VmRecord[]> {
    return (this.#db.prepare('SELECT id, name, state, host, updated_at FROM vms ORDER BY id').all() as VmRow[]).map(toVm);
  }

  async deleteVm(id: string): Promise<boolean> {
    return this.#db.prepare('DELETE FROM vms WHERE id = ?').run(id).changes > 0;
  }

  async close(): Promise<void> {
    this.#db.close();
  }
}
