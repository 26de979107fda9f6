// Configuration: one schema, four sources. Precedence, highest first: CLI
// flags, environment (NOVACRON_ prefix, `__` between levels, e.g.
// NOVACRON_API__PORT), files (JSON or YAML, merged in the order given),
// defaults. The result is validated once and frozen; every value remembers
// the source it came from, and every error names the field, the value and
// that source.
import { readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { extname, resolve } from 'node:path';
import { parse as parseYaml } from 'yaml';
import { NovacronError } from '../errors.js';

/** Errors of configuration; `code` is `ERR_CONFIG_<WHAT>`. */
export class ConfigError extends NovacronError {
  /** Dotted field name, when one field is at fault. */
  readonly field: string | undefined;
  /** Where the bad value came from: `default`, `file <path>`, `env <NAME>`, `flag --<name>`. */
  readonly source: string | undefined;
  constructor(code: string, message: string, field?: string, source?: string) {
    super(code, message);
    this.name = 'ConfigError';
    this.field = field;
    this.source = source;
  }
}

type Kind = 'string' | 'integer' | 'enum' | 'list';

interface Field {
  kind: Kind;
  default: string | number | boolean | readonly string[];
  doc: string;
  unit?: string;
  min?: number;
  max?: number;
  values?: readonly string[];
  /** Applied to a running node by a reload; others need a restart. */
  reloadable?: boolean;
}

const f = <const T extends Field>(spec: T): T => spec;

/** Every setting, with its default, unit and meaning. */
export const SCHEMA = {
  node: {
    id: f({ kind: 'string', default: '', doc: 'Node identity; empty: generated once and kept in the data directory' }),
    dataDir: f({ kind: 'string', default: '~/.novacron', doc: 'Where the node keeps its database, keys and state' }),
  },
  api: {
    host: f({ kind: 'string', default: '127.0.0.1', doc: 'Address of the HTTP API (health, metrics, status)' }),
    port: f({ kind: 'integer', default: 7700, min: 0, max: 65535, doc: 'Port of the HTTP API; 0 picks a free one' }),
  },
  data: {
    host: f({ kind: 'string', default: '0.0.0.0', doc: 'Address the data plane (AMST) listens on' }),
    port: f({ kind: 'integer', default: 7701, min: 0, max: 65535, doc: 'Port of the data plane; 0 picks a free one' }),
    streams: f({ kind: 'integer', default: 0, min: 0, max: 512, doc: 'TCP streams per connection; 0: from the link mode' }),
    io: f({ kind: 'enum', default: 'thread', values: ['thread', 'loop'], doc: 'Where socket I/O runs (see the transport docs)' }),
    transport: f({ kind: 'enum', default: 'auto', values: ['auto', 'tcp'], doc: "RDMA: auto takes peers' RDMA offers when this host has an RDMA device; tcp declines them" }),
    peerTimeoutMs: f({ kind: 'integer', default: 30000, min: 0, max: 3600000, unit: 'ms', doc: 'A peer that acknowledges nothing for this long is taken for gone and its connection fails; 0: the kernel decides (minutes)' }),
    handshakeTimeoutMs: f({ kind: 'integer', default: 10000, min: 10, max: 3600000, unit: 'ms', doc: 'An accepted socket that has not opened its stream by then is closed' }),
    sendBufferBytes: f({ kind: 'integer', default: 0, min: 0, max: 1073741824, unit: 'bytes', doc: "SO_SNDBUF of accepted data-plane sockets; 0: the kernel's autotuning" }),
    recvBufferBytes: f({ kind: 'integer', default: 0, min: 0, max: 1073741824, unit: 'bytes', doc: "SO_RCVBUF of accepted data-plane sockets (set before the handshake, so the window scale fits); 0: the kernel's autotuning" }),
  },
  dwcp: {
    mode: f({ kind: 'enum', default: 'auto', values: ['auto', 'datacenter', 'internet', 'hybrid'], reloadable: true, doc: 'Link mode; auto: detected per peer from RTT, bandwidth and loss' }),
    modeSamples: f({ kind: 'integer', default: 3, min: 1, max: 100, reloadable: true, doc: 'Consecutive classifications needed before a link changes mode' }),
  },
  hde: {
    compression: f({ kind: 'enum', default: 'auto', values: ['auto', 'lz4', 'zstd', 'none'], reloadable: true, doc: 'Frame compression; auto: by link mode' }),
    cacheMiB: f({ kind: 'integer', default: 256, min: 0, max: 1 << 20, unit: 'MiB', doc: 'Baseline cache per encoder' }),
  },
  database: {
    url: f({ kind: 'string', default: '', doc: 'PostgreSQL URL (postgres://user:password@host:5432/db); empty: embedded SQLite in the data directory' }),
    poolSize: f({ kind: 'integer', default: 10, min: 1, max: 1000, doc: 'PostgreSQL connections kept open' }),
    connectTimeoutMs: f({ kind: 'integer', default: 5000, min: 100, max: 600000, unit: 'ms', doc: 'Give up on a PostgreSQL or Redis connection attempt after this long' }),
  },
  cache: {
    redisUrl: f({ kind: 'string', default: '', doc: 'Redis URL (redis://[:password@]host:6379[/db], rediss:// for TLS); empty: in-process cache' }),
    maxEntries: f({ kind: 'integer', default: 100000, min: 1, max: 1e9, reloadable: true, doc: 'In-process cache size' }),
    ttlMs: f({ kind: 'integer', default: 30000, min: 0, max: 86400000, unit: 'ms', reloadable: true, doc: 'How long a cached record is served before it is read again; 0: no caching' }),
    keyPrefix: f({ kind: 'string', default: 'novacron:', doc: 'Prefix of every key this node writes to Redis' }),
  },
  cluster: {
    protocol: f({ kind: 'enum', default: 'auto', values: ['auto', 'raft', 'crdt', 'hybrid'], doc: "Cluster state protocol; auto: by dwcp.mode (datacenter raft, internet crdt, hybrid hybrid), else by the detector's link mode, else hybrid with Raft peers, crdt with only gossip peers, raft for a lone node" }),
    raftId: f({ kind: 'integer', default: 1, min: 1, max: 65535, doc: "This node's id among cluster.raftPeers" }),
    raftPeers: f({ kind: 'list', default: [], doc: "Every Raft member's id=host:port, this node's included; empty: a one-member cluster on this node" }),
    raftClientPeers: f({ kind: 'list', default: [], doc: "Every Raft member's id=host:port client port, matching raftPeers" }),
    gossipPeers: f({ kind: 'list', default: [], doc: 'Every CRDT replica name=host:port, this node\'s included' }),
    replica: f({ kind: 'string', default: '', doc: 'This node\'s CRDT replica name; empty: the node id' }),
    swimPort: f({ kind: 'integer', default: 0, min: 0, max: 65535, doc: 'UDP port of SWIM membership; 0: off. On, the CRDT gossip peers are the live members' }),
    swimSeeds: f({ kind: 'list', default: [], doc: 'SWIM members (host:port) to join through' }),
  },
  security: {
    tlsCert: f({ kind: 'string', default: '', doc: 'PEM certificate of this node; empty: generated into the data directory' }),
    tlsKey: f({ kind: 'string', default: '', doc: 'PEM private key matching tlsCert' }),
    tlsCa: f({ kind: 'string', default: '', doc: 'PEM CA that signed every member\'s certificate; set (with tlsCert/tlsKey): cluster traffic uses mutual TLS' }),
    apiTokens: f({ kind: 'list', default: [], reloadable: true, doc: 'Bearer tokens accepted by the API besides the generated one (comma-separated in env and flags)' }),
  },
  init: {
    attempts: f({ kind: 'integer', default: 3, min: 1, max: 20, doc: 'Start attempts of a component whose failure is retriable' }),
    backoffMs: f({ kind: 'integer', default: 100, min: 0, max: 60000, unit: 'ms', doc: 'First retry delay; doubled each attempt, with jitter' }),
  },
  log: {
    level: f({ kind: 'enum', default: 'info', values: ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'], reloadable: true, doc: 'Least severe log level written (JSON lines on stdout)' }),
  },
} as const;

type Schema = typeof SCHEMA;
type ValueOf<F> = F extends { kind: 'integer' }
  ? number
  : F extends { kind: 'list' }
    ? readonly string[]
    : F extends { kind: 'enum'; values: readonly (infer V)[] }
      ? V
      : string;

/** The effective configuration, frozen. */
export type Config = { readonly [S in keyof Schema]: { readonly [K in keyof Schema[S]]: ValueOf<Schema[S][K]> } };

/** Where each dotted field's value came from. */
export type Sources = Readonly<Record<string, string>>;

export interface LoadOptions {
  /** Config files, lowest precedence first. */
  files?: readonly string[];
  /** Environment to read NOVACRON_* from. Default process.env. */
  env?: Readonly<Record<string, string | undefined>>;
  /** Settings from command-line flags, by dotted field name (`api.port`), as given. */
  flags?: Readonly<Record<string, string>>;
}

// The shape of what loadConfig is given; the values themselves are checked field by field.
function checkLoadOptions(o: LoadOptions): void {
  const bad = (what: string): never => {
    throw new ConfigError('ERR_CONFIG_INVALID', `loadConfig: ${what}`, undefined, 'options');
  };
  if (typeof o !== 'object' || o === null) bad('options must be an object');
  if (o.files !== undefined && (!Array.isArray(o.files) || !o.files.every((f) => typeof f === 'string'))) bad('files must be an array of paths');
  for (const key of ['env', 'flags'] as const) {
    const v: unknown = o[key];
    if (v !== undefined && (typeof v !== 'object' || v === null || Array.isArray(v))) bad(`${key} must be an object of strings`);
  }
}

export interface LoadedConfig {
  config: Config;
  sources: Sources;
}

function fields(): Array<[string, Field]> {
  const out: Array<[string, Field]> = [];
  for (const [section, entries] of Object.entries(SCHEMA)) {
    for (const [key, spec] of Object.entries(entries as Record<string, Field>)) out.push([`${section}.${key}`, spec]);
  }
  return out;
}

const FIELDS = new Map(fields());

/** `DATA_DIR` -> `dataDir`. */
function camel(s: string): string {
  return s.toLowerCase().replace(/_([a-z0-9])/g, (_, c: string) => c.toUpperCase());
}

function describe(v: unknown): string {
  return typeof v === 'string' ? JSON.stringify(v) : Array.isArray(v) ? JSON.stringify(v) : String(v);
}

// Text (env, flags) or a typed file value, checked against the field.
function coerce(name: string, spec: Field, raw: unknown, source: string, fromText: boolean): unknown {
  const bad = (why: string): never => {
    throw new ConfigError('ERR_CONFIG_INVALID', `${name} = ${describe(raw)} from ${source}: ${why}`, name, source);
  };
  switch (spec.kind) {
    case 'integer': {
      const n = fromText && typeof raw === 'string' && raw.trim() !== '' ? Number(raw) : raw;
      if (typeof n !== 'number' || !Number.isFinite(n)) return bad(`expected a number${spec.unit ? ` (${spec.unit})` : ''}`);
      if (!Number.isInteger(n)) return bad('expected an integer');
      if ((spec.min !== undefined && n < spec.min) || (spec.max !== undefined && n > spec.max)) return bad(`must be from ${spec.min} to ${spec.max}`);
      return n;
    }
    case 'enum':
      if (typeof raw !== 'string' || !spec.values!.includes(raw)) return bad(`expected one of ${spec.values!.join(', ')}`);
      return raw;
    case 'list': {
      const l = fromText && typeof raw === 'string' ? raw.split(',').map((x) => x.trim()).filter(Boolean) : raw;
      if (!Array.isArray(l) || !l.every((x) => typeof x === 'string')) return bad('expected a list of strings');
      return Object.freeze([...(l as string[])]);
    }
    case 'string':
      if (typeof raw !== 'string') return bad('expected a string');
      return raw;
  }
}

function readFile(path: string): Record<string, unknown> {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new ConfigError('ERR_CONFIG_FILE', `cannot read config file ${path}: ${(err as Error).message}`, undefined, `file ${path}`);
  }
  let v: unknown;
  try {
    v = extname(path) === '.json' ? JSON.parse(text) : parseYaml(text);
  } catch (err) {
    throw new ConfigError('ERR_CONFIG_FILE', `config file ${path} is not valid ${extname(path) === '.json' ? 'JSON' : 'YAML'}: ${(err as Error).message}`, undefined, `file ${path}`);
  }
  if (v === null || v === undefined) return {};
  if (typeof v !== 'object' || Array.isArray(v)) throw new ConfigError('ERR_CONFIG_FILE', `config file ${path} must hold a mapping of sections`, undefined, `file ${path}`);
  return v as Record<string, unknown>;
}

/** Reads, merges and validates the configuration. Throws ConfigError. */
export function loadConfig(options: LoadOptions = {}): LoadedConfig {
  checkLoadOptions(options);
  const values = new Map<string, unknown>();
  const sources: Record<string, string> = {};
  for (const [name, spec] of FIELDS) {
    values.set(name, spec.kind === 'list' ? Object.freeze([...(spec.default as string[])]) : spec.default);
    sources[name] = 'default';
  }
  const set = (name: string, raw: unknown, source: string, fromText: boolean): void => {
    const spec = FIELDS.get(name);
    if (!spec) throw new ConfigError('ERR_CONFIG_UNKNOWN', `unknown setting ${name} from ${source}`, name, source);
    values.set(name, coerce(name, spec, raw, source, fromText));
    sources[name] = source;
  };
  for (const file of options.files ?? []) {
    const source = `file ${file}`;
    for (const [section, entries] of Object.entries(readFile(file))) {
      if (typeof entries !== 'object' || entries === null || Array.isArray(entries)) {
        throw new ConfigError('ERR_CONFIG_UNKNOWN', `${section} from ${source} must be a section (a mapping)`, section, source);
      }
      for (const [key, v] of Object.entries(entries as Record<string, unknown>)) set(`${section}.${key}`, v, source, false);
    }
  }
  const env = options.env ?? process.env;
  for (const [name, v] of Object.entries(env)) {
    if (!name.startsWith('NOVACRON_') || v === undefined) continue;
    const parts = name.slice('NOVACRON_'.length).split('__');
    if (parts.length !== 2) throw new ConfigError('ERR_CONFIG_UNKNOWN', `environment variable ${name} does not name a setting (NOVACRON_<SECTION>__<KEY>)`, undefined, `env ${name}`);
    set(`${camel(parts[0]!)}.${camel(parts[1]!)}`, v, `env ${name}`, true);
  }
  for (const [name, v] of Object.entries(options.flags ?? {})) set(name, v, `flag ${name}`, true);
  // Cross-field checks.
  const tlsCert = values.get('security.tlsCert') as string;
  const tlsKey = values.get('security.tlsKey') as string;
  if ((tlsCert === '') !== (tlsKey === '')) {
    const which = tlsCert === '' ? 'security.tlsCert' : 'security.tlsKey';
    throw new ConfigError('ERR_CONFIG_INVALID', `security.tlsCert and security.tlsKey go together; ${which} is missing`, which, sources[tlsCert === '' ? 'security.tlsKey' : 'security.tlsCert']);
  }
  for (const [name, schemes] of [['database.url', ['postgres:', 'postgresql:']], ['cache.redisUrl', ['redis:', 'rediss:']]] as const) {
    const raw = values.get(name) as string;
    if (raw === '') continue;
    let url: URL | undefined;
    try {
      url = new URL(raw);
    } catch {
      url = undefined;
    }
    if (!url || !(schemes as readonly string[]).includes(url.protocol) || url.hostname === '') {
      throw new ConfigError('ERR_CONFIG_INVALID', `${name} = ${JSON.stringify(redactUrl(raw))} from ${sources[name]}: expected a URL like ${schemes[0]}//host:port/...`, name, sources[name]);
    }
  }
  if (values.get('security.tlsCa') !== '' && values.get('security.tlsCert') === '') {
    throw new ConfigError('ERR_CONFIG_INVALID', 'security.tlsCa needs security.tlsCert and security.tlsKey (this node\'s certificate, signed by that CA)', 'security.tlsCa', sources['security.tlsCa']);
  }
  // Peer lists: id=host:port, ids unique, Raft and client lists matching.
  const peerList = (name: string, numeric: boolean): Map<string, { host: string; port: number }> => {
    const out = new Map<string, { host: string; port: number }>();
    for (const item of values.get(name) as string[]) {
      const m = /^([^=]+)=(.+):(\d+)$/.exec(item);
      const port = m ? Number(m[3]) : NaN;
      if (!m || (numeric && !/^\d+$/.test(m[1]!)) || port < 1 || port > 65535 || out.has(m[1]!)) {
        throw new ConfigError('ERR_CONFIG_INVALID', `${name} from ${sources[name]}: ${JSON.stringify(item)} is not ${numeric ? 'id' : 'name'}=host:port (or repeats one)`, name, sources[name]);
      }
      out.set(m[1]!, { host: m[2]!, port });
    }
    return out;
  };
  const raftPeers = peerList('cluster.raftPeers', true);
  const clientPeers = peerList('cluster.raftClientPeers', true);
  peerList('cluster.gossipPeers', false);
  if (raftPeers.size && (!raftPeers.has(String(values.get('cluster.raftId'))) || [...raftPeers.keys()].sort().join() !== [...clientPeers.keys()].sort().join())) {
    throw new ConfigError('ERR_CONFIG_INVALID', `cluster.raftPeers must include cluster.raftId (${String(values.get('cluster.raftId'))}) and cluster.raftClientPeers must name the same members`, 'cluster.raftPeers', sources['cluster.raftPeers']);
  }
  const dataDir = values.get('node.dataDir') as string;
  values.set('node.dataDir', resolve(dataDir.startsWith('~') ? homedir() + dataDir.slice(1) : dataDir));
  const config: Record<string, Record<string, unknown>> = {};
  for (const [name, v] of values) {
    const [section, key] = name.split('.') as [string, string];
    (config[section] ??= {})[key] = v;
  }
  for (const s of Object.values(config)) Object.freeze(s);
  return { config: Object.freeze(config) as unknown as Config, sources: Object.freeze(sources) };
}

/** A URL with its password replaced by `***`, for printing. Non-URLs come back unchanged. */
export function redactUrl(s: string): string {
  return s.replace(/^([a-z][a-z0-9+.-]*:\/\/[^:/@]*):[^@/]*@/i, '$1:***@');
}

/** The config as it may be shown (status endpoint, `config print`): URL passwords hidden. */
export function redactConfig(c: Config): Config {
  return { ...c, database: { ...c.database, url: redactUrl(c.database.url) }, cache: { ...c.cache, redisUrl: redactUrl(c.cache.redisUrl) } };
}

/** Fields that differ between two configs, split by whether a running node can apply them. */
export function diffConfig(a: Config, b: Config): { reloadable: string[]; restart: string[] } {
  const out = { reloadable: [] as string[], restart: [] as string[] };
  for (const [name, spec] of FIELDS) {
    const [section, key] = name.split('.') as [keyof Config, string];
    const x = (a[section] as Record<string, unknown>)[key];
    const y = (b[section] as Record<string, unknown>)[key];
    if (JSON.stringify(x) !== JSON.stringify(y)) (spec.reloadable ? out.reloadable : out.restart).push(name);
  }
  return out;
}

/** Lines of `novacron config print`: field, value, source, and the doc line. */
export function formatConfig(loaded: LoadedConfig): string {
  const rows: string[] = [];
  for (const [name, spec] of FIELDS) {
    const [section, key] = name.split('.') as [keyof Config, string];
    const v = (redactConfig(loaded.config)[section] as Record<string, unknown>)[key];
    rows.push(`${name.padEnd(22)} ${describe(v).padEnd(28)} ${loaded.sources[name]!.padEnd(24)} # ${spec.doc}${spec.unit ? ` (${spec.unit})` : ''}`);
  }
  return rows.join('\n');
}
