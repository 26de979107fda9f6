// A NovaCron node: the components the initializer starts, the HTTP API
// (/live, /ready, /health, /metrics, /status), structured logs, and config
// reload. `novacron start` runs one.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { execFileSync } from 'node:child_process';
import { createPrivateKey, generateKeyPairSync, randomBytes, randomUUID, X509Certificate } from 'node:crypto';
import { closeSync, fsyncSync, mkdirSync, openSync, readFileSync, statfsSync, unlinkSync, watch, writeFileSync, existsSync, type FSWatcher } from 'node:fs';
import { join } from 'node:path';
import { pino, type Logger } from 'pino';
import { Counter, Gauge, Registry, collectDefaultMetrics } from 'prom-client';
import { NovacronError } from '../errors.js';
import { HdeDecoder, HdeEncoder, hdeTotals } from '../dwcp/encoding/hde.js';
import { listen, type AmstConnection, type AmstServer } from '../dwcp/transport/amst.js';
import { ModeController, type AppliedModeChange } from '../dwcp/mode-controller.js';
import type { NetworkMode } from '../dwcp/mode.js';
import { native } from '../native.js';
import { diffConfig, loadConfig, redactConfig, redactUrl, type Config, type LoadOptions } from './config.js';
import { MemoryCache, type Cache } from './cache.js';
import { LATEST_SCHEMA, SqliteStore, type MetadataStore } from './store.js';
import { VmApi } from './vm-api.js';
import { RaftKvNode } from '../dwcp/consensus/raft/kv-node.js';
import { RaftKvClient } from '../dwcp/consensus/raft/client.js';
import type { PeerAddress } from '../dwcp/consensus/raft/transport.js';
import { SwimNode } from '../dwcp/consensus/swim/node.js';
import { CrdtStateStore, HybridStateStore, RaftStateStore, TcpGossipTransport, protocolFor, type StateStore } from '../dwcp/sync/state-store.js';
import { Initializer, RetriableError, type Component, type ComponentHealth, type ComponentReport } from './initializer.js';

/** Files a node keeps in its data directory. */
function readOrCreate(path: string, make: () => string, mode = 0o600): string {
  if (existsSync(path)) return readFileSync(path, 'utf8').trim();
  const v = make();
  writeFileSync(path, `${v}\n`, { mode });
  return v;
}

export interface NodeOptions extends LoadOptions {
  /** Log destination; default stdout. */
  logStream?: NodeJS.WritableStream;
  /**
   * More components to start with the built-in ones (the DWCP parts that
   * come later plug in this way). They may depend on built-in names:
   * `api`, `environment`, `security`, `database`, `cache`, `network`,
   * `dwcp`, `monitoring`.
   */
  components?: readonly Component[];
}

export class NovacronNode {
  config: Config;
  readonly log: Logger;
  readonly registry = new Registry();
  readonly startedAt = performance.now();
  nodeId = '';
  apiToken = '';
  apiPort = 0;
  dataPort = 0;
  ready = false;
  #loadOptions: LoadOptions;
  #init: Initializer;
  #http: Server | undefined;
  #amst: AmstServer | undefined;
  #conns = new Set<AmstConnection>();
  #links = new Map<AmstConnection, ModeController>();
  #store: MetadataStore | undefined;
  #cache: Cache | undefined;
  #vmApi: VmApi;
  /** The cluster state store (ASS), once the `state` component runs. */
  state: StateStore | undefined;
  #stateParts: { raft?: RaftKvNode; crdt?: CrdtStateStore; gossip?: TcpGossipTransport; swim?: SwimNode } = {};
  #stateProtocolRunning: 'raft' | 'crdt' | 'hybrid' | undefined;
  #sampler: NodeJS.Timeout | undefined;
  #watchers: FSWatcher[] = [];
  #tls: { ok: boolean; certificate: string; fingerprint?: string } = { ok: false, certificate: 'none' };
  #metrics: {
    componentStart: Gauge;
    componentUp: Gauge;
    bootPhase: Gauge;
    reloads: Counter;
    modeChanges: Counter;
    cacheLookups: Counter;
  };

  constructor(options: NodeOptions = {}) {
    this.#loadOptions = { ...(options.files ? { files: options.files } : {}), ...(options.env ? { env: options.env } : {}), ...(options.flags ? { flags: options.flags } : {}) };
    this.config = loadConfig(this.#loadOptions).config;
    this.log = pino({ level: this.config.log.level, base: { service: 'novacron' } }, options.logStream ?? process.stdout);
    this.#metrics = {
      componentStart: new Gauge({ name: 'novacron_component_start_seconds', help: 'Time each component took to start, retries included', labelNames: ['component'], registers: [this.registry] }),
      componentUp: new Gauge({ name: 'novacron_component_up', help: '1 while a component is running', labelNames: ['component'], registers: [this.registry] }),
      bootPhase: new Gauge({ name: 'novacron_boot_phase_seconds', help: 'Duration of each start level, and of the whole start', labelNames: ['phase'], registers: [this.registry] }),
      reloads: new Counter({ name: 'novacron_config_reloads_total', help: 'Config reloads by outcome', labelNames: ['result'], registers: [this.registry] }),
      modeChanges: new Counter({ name: 'novacron_mode_changes_total', help: 'Link mode changes', labelNames: ['to', 'reason'], registers: [this.registry] }),
      cacheLookups: new Counter({ name: 'novacron_cache_lookups_total', help: 'Cache lookups of the API by result (hit, miss, error)', labelNames: ['result'], registers: [this.registry] }),
    };
    this.#vmApi = new VmApi({
      store: () => this.#store,
      cache: () => this.#cache,
      ttlMs: () => this.config.cache.ttlMs,
      log: this.log,
      cacheResult: (result) => this.#metrics.cacheLookups.inc({ result }),
    });
    this.#registerTransportMetrics();
    const components: Component[] = [
      { name: 'api', critical: true, start: () => this.#startApi(), stop: () => this.#stopApi() },
      { name: 'environment', critical: true, start: async () => this.#checkEnvironment(), health: () => this.#environmentHealth() },
      { name: 'security', dependsOn: ['environment'], start: async () => this.#startSecurity(), health: () => ({ ok: this.#tls.ok, detail: { certificate: this.#tls.certificate, fingerprint: this.#tls.fingerprint, nodeId: this.nodeId } }) },
      { name: 'database', dependsOn: ['environment'], start: () => this.#startDatabase(), stop: () => this.#stopDatabase(), health: () => this.#databaseHealth() },
      { name: 'cache', critical: false, start: () => this.#startCache(), stop: () => this.#stopCache(), health: () => this.#cache?.health() ?? { ok: false } },
      { name: 'network', dependsOn: ['environment'], start: () => this.#startNetwork(), stop: () => this.#stopNetwork(), health: () => ({ ok: true, detail: { port: this.dataPort, connections: this.#conns.size } }) },
      { name: 'dwcp', dependsOn: ['network'], start: async () => this.#startDwcp(), stop: async () => clearInterval(this.#sampler), health: () => this.#dwcpHealth() },
      { name: 'monitoring', critical: false, dependsOn: ['api'], start: async () => void collectDefaultMetrics({ register: this.registry }) },
      { name: 'state', critical: false, dependsOn: ['security'], start: () => this.#startState(), stop: () => this.#stopState(), health: () => this.#stateHealth() },
      ...(options.components ?? []),
    ];
    this.#init = new Initializer(components, {
      attempts: this.config.init.attempts,
      backoffMs: this.config.init.backoffMs,
      observer: {
        componentStarted: (name, ms, attempts) => {
          this.#metrics.componentStart.set({ component: name }, ms / 1000);
          this.#metrics.componentUp.set({ component: name }, 1);
          this.log.info({ component: name, ms: Math.round(ms * 10) / 10, attempts }, 'component started');
        },
        componentFailed: (name, error, attempt, willRetry) => {
          this.#metrics.componentUp.set({ component: name }, 0);
          this.log[willRetry ? 'warn' : 'error']({ component: name, attempt, err: error.message, code: (error as NovacronError).code }, willRetry ? 'component failed, retrying' : 'component failed');
        },
        levelDone: (level, names, ms) => {
          this.#metrics.bootPhase.set({ phase: `level${level}` }, ms / 1000);
          this.log.info({ startLevel: level, components: names, ms: Math.round(ms * 10) / 10 }, 'start level done');
        },
        componentStopped: (name, ms, error) => {
          this.#metrics.componentUp.set({ component: name }, 0);
          this.log.info({ component: name, ms: Math.round(ms * 10) / 10, ...(error ? { err: error.message } : {}) }, 'component stopped');
        },
      },
    });
  }

  /** Starts every component; rejects (after stopping what started) when a critical one fails. */
  async start(): Promise<void> {
    const t0 = performance.now();
    this.log.info({ levels: this.#init.levels, dataDir: this.config.node.dataDir }, 'starting');
    await this.#init.start();
    this.ready = true;
    const ms = performance.now() - t0;
    this.#metrics.bootPhase.set({ phase: 'total' }, ms / 1000);
    this.log.info({ ms: Math.round(ms), degraded: this.#init.degraded, api: this.apiPort, data: this.dataPort }, this.#init.degraded ? 'ready (degraded)' : 'ready');
  }

  /** Stops in reverse start order. */
  async stop(): Promise<void> {
    this.ready = false;
    for (const w of this.#watchers) w.close();
    this.log.info('stopping');
    await this.#init.stop();
    this.log.info('stopped');
  }

  /** Re-reads the config; applies what can change live, reports what needs a restart. An invalid config is rejected and the running one stays. */
  reload(): { applied: string[]; restart: string[] } | { error: string } {
    let next: Config;
    try {
      next = loadConfig(this.#loadOptions).config;
    } catch (err) {
      this.#metrics.reloads.inc({ result: 'rejected' });
      this.log.error({ err: (err as Error).message, code: (err as NovacronError).code }, 'config reload rejected; keeping the running config');
      return { error: (err as Error).message };
    }
    const diff = diffConfig(this.config, next);
    this.config = next;
    if (diff.reloadable.includes('log.level')) this.log.level = next.log.level;
    if (this.#cache instanceof MemoryCache) this.#cache.setMaxEntries(next.cache.maxEntries);
    if (diff.reloadable.includes('dwcp.mode')) {
      for (const [conn, ctl] of this.#links) {
        const change = ctl.setOverride(next.dwcp.mode);
        if (change) this.#modeChanged(conn, change);
      }
    }
    this.#metrics.reloads.inc({ result: 'applied' });
    this.log.info({ applied: diff.reloadable, needsRestart: diff.restart }, 'config reloaded');
    return { applied: diff.reloadable, restart: diff.restart };
  }

  /** Reloads when a config file changes (debounced). */
  watchConfigFiles(): void {
    let timer: NodeJS.Timeout | undefined;
    for (const file of this.#loadOptions.files ?? []) {
      this.#watchers.push(
        watch(file, () => {
          clearTimeout(timer);
          timer = setTimeout(() => this.reload(), 100);
        }),
      );
    }
  }

  async health(): Promise<{ status: 'ok' | 'degraded' | 'starting' | 'failed'; components: ComponentReport[] }> {
    const components = await this.#init.health();
    const criticalDown = components.some((c) => c.critical && !c.ok);
    const anyDown = components.some((c) => !c.ok);
    const status = !this.ready ? (components.some((c) => c.state === 'failed' && c.critical) ? 'failed' : 'starting') : criticalDown ? 'failed' : anyDown ? 'degraded' : 'ok';
    return { status, components };
  }

  // --- components ---------------------------------------------------------

  async #startApi(): Promise<void> {
    const server = createServer((req, res) => void this.#route(req, res));
    await new Promise<void>((resolve, reject) => {
      server.once('error', (err: NodeJS.ErrnoException) => reject(err.code === 'EADDRINUSE' ? new RetriableError(`API port ${this.config.api.port} is in use`, { cause: err }) : err));
      server.listen(this.config.api.port, this.config.api.host, () => resolve());
    });
    this.#http = server;
    const addr = server.address();
    this.apiPort = typeof addr === 'object' && addr ? addr.port : 0;
  }

  async #stopApi(): Promise<void> {
    const s = this.#http;
    if (!s) return;
    s.closeAllConnections();
    await new Promise<void>((r) => s.close(() => r()));
  }

  async #route(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const send = (code: number, body: unknown, type = 'application/json'): void => {
      res.writeHead(code, { 'content-type': type });
      res.end(typeof body === 'string' ? body : `${JSON.stringify(body)}\n`);
    };
    try {
      const path = (req.url ?? '/').split('?')[0]!;
      if (path === '/v1/vms' || path.startsWith('/v1/vms/')) {
        if (!this.#authorized(req)) return send(401, { code: 'ERR_API_UNAUTHORIZED', error: 'a bearer token is required' });
        return await this.#vmApi.handle(req, res, path);
      }
      if (req.method !== 'GET') return send(405, { error: 'method not allowed' });
      switch (path) {
        case '/live':
          return send(200, { status: 'alive' });
        case '/ready':
          return send(this.ready ? 200 : 503, { ready: this.ready });
        case '/health': {
          const h = await this.health();
          return send(h.status === 'ok' || h.status === 'degraded' ? 200 : 503, h);
        }
        case '/metrics':
          return send(200, await this.registry.metrics(), this.registry.contentType);
        case '/status': {
          if (!this.#authorized(req)) return send(401, { error: 'a bearer token is required' });
          const h = await this.health();
          return send(200, { nodeId: this.nodeId, ready: this.ready, status: h.status, apiPort: this.apiPort, dataPort: this.dataPort, config: redactConfig(this.config), components: h.components, uptimeS: Math.round((performance.now() - this.startedAt) / 1000) });
        }
        default:
          return send(404, { error: 'not found' });
      }
    } catch (err) {
      send(500, { error: (err as Error).message });
    }
  }

  #authorized(req: IncomingMessage): boolean {
    const h = req.headers.authorization ?? '';
    const token = h.startsWith('Bearer ') ? h.slice(7) : '';
    return token !== '' && (token === this.apiToken || this.config.security.apiTokens.includes(token));
  }

  #checkEnvironment(): void {
    const major = Number(process.versions.node.split('.')[0]);
    if (major < 20) throw new NovacronError('ERR_ENV_NODE', `Node.js 20 or later is required, this is ${process.versions.node}`);
    const dir = this.config.node.dataDir;
    try {
      mkdirSync(dir, { recursive: true, mode: 0o700 });
      const probe = join(dir, `.probe-${process.pid}`);
      const fd = openSync(probe, 'w');
      fsyncSync(fd);
      closeSync(fd);
      unlinkSync(probe);
    } catch (err) {
      throw new NovacronError('ERR_ENV_DATA_DIR', `data directory ${dir} is not writable: ${(err as Error).message}`);
    }
  }

  #environmentHealth(): ComponentHealth {
    const st = statfsSync(this.config.node.dataDir);
    const freeBytes = st.bavail * st.bsize;
    return { ok: freeBytes > 1 << 30, detail: { dataDir: this.config.node.dataDir, diskFreeBytes: freeBytes, node: process.versions.node, cpu: native.cpuFeatures().crc32c } };
  }

  #startSecurity(): void {
    const dir = this.config.node.dataDir;
    this.nodeId = this.config.node.id || readOrCreate(join(dir, 'node-id'), () => randomUUID(), 0o644);
    this.apiToken = readOrCreate(join(dir, 'api-token'), () => randomBytes(32).toString('hex'));
    let certPem: string;
    let keyPem: string;
    if (this.config.security.tlsCert) {
      certPem = readFileSync(this.config.security.tlsCert, 'utf8');
      keyPem = readFileSync(this.config.security.tlsKey, 'utf8');
    } else {
      const tls = join(dir, 'tls');
      mkdirSync(tls, { recursive: true, mode: 0o700 });
      const keyPath = join(tls, 'node.key');
      const certPath = join(tls, 'node.crt');
      keyPem = readOrCreate(keyPath, () => generateKeyPairSync('ec', { namedCurve: 'prime256v1' }).privateKey.export({ type: 'pkcs8', format: 'pem' }).toString().trim());
      if (!existsSync(certPath)) {
        try {
          execFileSync('openssl', ['req', '-x509', '-new', '-key', keyPath, '-subj', `/CN=novacron-${this.nodeId}`, '-days', '3650', '-out', certPath], { stdio: 'ignore' });
        } catch (err) {
          this.#tls = { ok: false, certificate: `none: generating one needs openssl (${(err as Error).message.split('\n')[0]})` };
          this.log.warn({ err: (err as Error).message }, 'no TLS certificate; configure security.tlsCert/tlsKey');
          return;
        }
      }
      certPem = readFileSync(certPath, 'utf8');
    }
    const cert = new X509Certificate(certPem);
    const key = createPrivateKey(keyPem);
    if (!cert.checkPrivateKey(key)) throw new NovacronError('ERR_SECURITY_KEY_MISMATCH', 'the TLS key does not match the certificate');
    this.#tls = { ok: true, certificate: cert.subject, fingerprint: cert.fingerprint256 };
  }

  async #startDatabase(): Promise<void> {
    const { url, poolSize, connectTimeoutMs } = this.config.database;
    const store = url
      ? new (await import('./store-postgres.js')).PostgresStore({ url, poolSize, connectTimeoutMs, onError: (err) => this.log.warn({ err: err.message }, 'PostgreSQL connection lost; the pool reconnects') })
      : new SqliteStore(join(this.config.node.dataDir, 'novacron.db'));
    try {
      for (const version of await store.migrate()) this.log.info({ backend: store.backend, migration: version }, 'database migrated');
    } catch (err) {
      await store.close().catch(() => undefined);
      throw err;
    }
    this.#store = store;
  }

  async #stopDatabase(): Promise<void> {
    const s = this.#store;
    this.#store = undefined;
    await s?.close();
  }

  async #databaseHealth(): Promise<ComponentHealth> {
    const store = this.#store;
    if (!store) return { ok: false };
    const where = store.backend === 'postgres' ? { url: redactUrl(this.config.database.url) } : { file: join(this.config.node.dataDir, 'novacron.db') };
    try {
      const v = await store.schemaVersion();
      return { ok: v === LATEST_SCHEMA, detail: { backend: store.backend, ...where, schemaVersion: v } };
    } catch (err) {
      return { ok: false, detail: { backend: store.backend, ...where, error: (err as Error).message } };
    }
  }

  async #startCache(): Promise<void> {
    const { redisUrl, keyPrefix, maxEntries } = this.config.cache;
    this.#cache = redisUrl
      ? await (await import('./cache-redis.js')).RedisCache.connect({ url: redisUrl, keyPrefix, connectTimeoutMs: this.config.database.connectTimeoutMs, onError: (err) => this.log.warn({ err: err.message }, 'Redis connection error; API reads go to the database') })
      : new MemoryCache(maxEntries);
  }

  async #stopCache(): Promise<void> {
    const c = this.#cache;
    this.#cache = undefined;
    await c?.close();
  }

  /**
   * The most wide-area mode among this node's classified data-plane links
   * (internet over hybrid over datacenter), as the mode detector sees them;
   * undefined until one is classified.
   */
  linkMode(): NetworkMode | undefined {
    const rank: Record<NetworkMode, number> = { datacenter: 0, hybrid: 1, internet: 2 };
    let worst: NetworkMode | undefined;
    for (const c of this.#links.values()) {
      const m = c.mode;
      if (m && (worst === undefined || rank[m] > rank[worst])) worst = m;
    }
    return worst;
  }

  /** The state protocol for this node: cluster.protocol, else the link mode (dwcp.mode, else the detector's), else by the peers configured. */
  stateProtocol(): 'raft' | 'crdt' | 'hybrid' {
    const c = this.config.cluster;
    if (c.protocol !== 'auto') return c.protocol;
    const mode = this.config.dwcp.mode !== 'auto' ? this.config.dwcp.mode : this.linkMode();
    if (mode) {
      const p = protocolFor(mode);
      return p === 'raft+crdt' ? 'hybrid' : p;
    }
    if (c.raftPeers.length) return 'hybrid';
    return c.gossipPeers.length ? 'crdt' : 'raft';
  }

  async #startState(): Promise<void> {
    const c = this.config.cluster;
    const protocol = this.stateProtocol();
    const parse = (items: readonly string[]): Map<string, PeerAddress> =>
      new Map(items.map((i) => {
        const m = /^([^=]+)=(.+):(\d+)$/.exec(i)!;
        return [m[1]!, { host: m[2]!, port: Number(m[3]) }];
      }));
    const numeric = (m: Map<string, PeerAddress>): Map<number, PeerAddress> => new Map([...m].map(([k, v]) => [Number(k), v]));
    const sec = this.config.security;
    const tls = sec.tlsCa ? { key: readFileSync(sec.tlsKey), cert: readFileSync(sec.tlsCert), ca: readFileSync(sec.tlsCa) } : undefined;
    let raft: RaftStateStore | undefined;
    if (protocol !== 'crdt') {
      let peers = numeric(parse(c.raftPeers));
      let clients = numeric(parse(c.raftClientPeers));
      if (peers.size === 0) {
        // A lone node: a one-member cluster on loopback, ports from the kernel.
        const { freePort } = await import('./ports.js');
        peers = new Map([[c.raftId, { host: '127.0.0.1', port: await freePort() }]]);
        clients = new Map([[c.raftId, { host: '127.0.0.1', port: await freePort() }]]);
      }
      const self = clients.get(c.raftId)!;
      const node = new RaftKvNode({ id: c.raftId, peers, dir: join(this.config.node.dataDir, 'raft'), clientPort: self.port, host: self.host, ...(tls ? { tls } : {}) });
      await node.start();
      this.#stateParts.raft = node;
      if (peers.size === 1) await node.waitForLeader();
      raft = new RaftStateStore(node, new RaftKvClient(clients, tls ? { tls } : {}));
    }
    let crdt: CrdtStateStore | undefined;
    if (protocol !== 'raft') {
      const replica = c.replica || this.nodeId;
      const addrs = parse(c.gossipPeers);
      if (!addrs.has(replica)) addrs.set(replica, { host: '127.0.0.1', port: 0 });
      const gossip = await TcpGossipTransport.listen(replica, addrs, tls);
      this.#stateParts.gossip = gossip;
      if (c.swimPort > 0) {
        // Membership from SWIM: each member says where its gossip listens.
        const me = addrs.get(replica)!;
        const swim = new SwimNode({ host: this.config.data.host, port: c.swimPort, seeds: [...c.swimSeeds], meta: JSON.stringify({ replica, host: me.host, port: gossip.port }) });
        await swim.start();
        this.#stateParts.swim = swim;
        const fromSwim = (): void => {
          const peers = new Map(addrs);
          for (const m of swim.alive()) {
            try {
              const x = JSON.parse(m.meta ?? '') as { replica: string; host: string; port: number };
              // What a member says of itself crosses the network: only a usable address gets in.
              if (typeof x.replica === 'string' && x.replica !== '' && typeof x.host === 'string' && x.host !== '' && Number.isInteger(x.port) && x.port >= 1 && x.port <= 65535) {
                peers.set(x.replica, { host: x.host, port: x.port });
              }
            } catch {
              // a member without gossip
            }
          }
          gossip.setPeers(peers);
        };
        swim.on('change', fromSwim);
        fromSwim();
      }
      crdt = new CrdtStateStore({ replica, transport: gossip });
      this.#stateParts.crdt = crdt;
    }
    this.state = protocol === 'raft' ? raft! : protocol === 'crdt' ? crdt! : new HybridStateStore({ raft: raft!, crdt: crdt! });
    this.#stateProtocolRunning = protocol;
    this.log.info({ protocol, raftId: raft ? c.raftId : undefined, replica: crdt?.replica }, 'cluster state store started');
  }

  async #stopState(): Promise<void> {
    await this.state?.close();
    this.state = undefined;
    this.#stateProtocolRunning = undefined;
    const { raft, crdt, gossip, swim } = this.#stateParts;
    this.#stateParts = {};
    await swim?.close();
    await crdt?.close();
    await gossip?.close();
    await raft?.close();
  }

  #stateHealth(): ComponentHealth {
    const s = this.state;
    if (!s) return { ok: false };
    const raft = this.#stateParts.raft?.raft;
    const staleness = s instanceof HybridStateStore ? s.staleness : 0;
    return {
      ok: !raft || raft.leader !== 0 || s.protocol === 'crdt',
      detail: { protocol: s.protocol, configured: this.stateProtocol(), ...(this.#stateParts.swim ? { swim: { id: this.#stateParts.swim.id, alive: this.#stateParts.swim.alive().length } } : {}), ...(raft ? { raft: { role: raft.role, leader: raft.leader, term: raft.term, commit: raft.committed } } : {}), ...(staleness ? { stalenessMs: staleness } : {}) },
    };
  }

  async #startNetwork(): Promise<void> {
    try {
      const d = this.config.data;
      this.#amst = await listen({ host: d.host, port: d.port, io: d.io, transport: d.transport, peerTimeoutMs: d.peerTimeoutMs, handshakeTimeoutMs: d.handshakeTimeoutMs,
        sendBufferBytes: d.sendBufferBytes, recvBufferBytes: d.recvBufferBytes });
    } catch (err) {
      if ((err as { syscallError?: string }).syscallError === 'EADDRINUSE') throw new RetriableError(`data port ${this.config.data.port} is in use`, { cause: err });
      throw err;
    }
    this.dataPort = this.#amst.port;
    this.#amst.on('connection', (c: AmstConnection) => {
      this.#conns.add(c);
      // Only the dialling side can change the stream count; this end sets
      // the congestion control of what it sends.
      this.#links.set(
        c,
        new ModeController(c, {
          intervalMs: 0,
          samples: this.config.dwcp.modeSamples,
          override: this.config.dwcp.mode,
          adjustStreams: false,
          onChange: (change) => this.#modeChanged(c, change),
        }),
      );
      c.on('message', () => undefined);
      c.once('close', () => {
        this.#conns.delete(c);
        this.#links.delete(c);
      });
    });
  }

  async #stopNetwork(): Promise<void> {
    for (const c of this.#conns) c.destroy();
    await this.#amst?.close();
  }

  #startDwcp(): void {
    // A self-test of the codec on this CPU before taking traffic.
    const enc = new HdeEncoder();
    const page = Buffer.alloc(4096, 0x5a);
    const region = Buffer.alloc(4096);
    new HdeDecoder({ region }).decode(enc.encode(page, [0]));
    if (!region.equals(page)) throw new NovacronError('ERR_DWCP_SELFTEST', 'HDE self-test failed');
    enc.close();
    // Link mode of each data-plane peer, from TCP_INFO every 2 s.
    this.#sampler = setInterval(() => this.#sampleLinks(), 2000);
    this.#sampler.unref();
  }

  #sampleLinks(): void {
    for (const ctl of this.#links.values()) ctl.sample();
  }

  #modeChanged(conn: AmstConnection, change: AppliedModeChange): void {
    this.#metrics.modeChanges.inc({ to: change.to, reason: change.reason });
    // The state store does not change protocol under its users' feet: say
    // when the links now call for another one (it applies at the next start).
    const want = this.stateProtocol();
    if (this.state && this.#stateProtocolRunning && want !== this.#stateProtocolRunning) {
      this.log.warn({ running: this.#stateProtocolRunning, linkMode: this.linkMode(), wanted: want }, "cluster state protocol no longer matches the links' mode; it changes at the next start");
    }
    this.log.info({ peer: conn.id, address: conn.remoteAddress, from: change.from, to: change.to, reason: change.reason, congestion: change.congestion, errors: change.errors }, 'link mode changed');
  }

  #dwcpHealth(): ComponentHealth {
    const modes: Record<string, number> = {};
    for (const det of this.#links.values()) {
      const m = det.mode ?? 'unknown';
      modes[m] = (modes[m] ?? 0) + 1;
    }
    return { ok: true, detail: { modeSetting: this.config.dwcp.mode, peers: modes, simd: native.simdPaths?.() ?? undefined, crc32c: native.cpuFeatures().crc32c } };
  }

  #registerTransportMetrics(): void {
    const conns = (): AmstConnection[] => [...this.#conns];
    new Gauge({
      name: 'novacron_transport_connections',
      help: 'Open data-plane connections',
      registers: [this.registry],
      collect() {
        this.set(conns().length);
      },
    });
    const sum = (key: 'bytesReceived' | 'messagesReceived' | 'chunksResent' | 'sendBytesPerSec' | 'receiveBytesPerSec'): number =>
      conns().reduce((a, c) => a + (c.stats()?.[key] ?? 0), 0);
    new Gauge({ name: 'novacron_transport_bytes_received', help: 'Payload bytes received on open data-plane connections', registers: [this.registry], collect() { this.set(sum('bytesReceived')); } });
    new Gauge({ name: 'novacron_transport_receive_bytes_per_second', help: 'Bytes read by open data-plane connections in the last second', registers: [this.registry], collect() { this.set(sum('receiveBytesPerSec')); } });
    new Gauge({ name: 'novacron_transport_send_bytes_per_second', help: 'Bytes written by open data-plane connections in the last second', registers: [this.registry], collect() { this.set(sum('sendBytesPerSec')); } });
    new Gauge({ name: 'novacron_transport_messages_received', help: 'Messages received on open data-plane connections', registers: [this.registry], collect() { this.set(sum('messagesReceived')); } });
    const hde = (key: keyof ReturnType<typeof hdeTotals>) => () => hdeTotals()[key];
    for (const [name, key, help] of [
      ['novacron_hde_frames_encoded_total', 'framesEncoded', 'HDE frames produced in this process'],
      ['novacron_hde_bytes_encoded_total', 'bytesEncoded', 'HDE frame bytes produced (after compression)'],
      ['novacron_hde_frames_decoded_total', 'framesDecoded', 'HDE frames applied in this process'],
      ['novacron_hde_bytes_decoded_total', 'bytesDecoded', 'HDE frame bytes applied'],
      ['novacron_hde_pages_decoded_total', 'pagesDecoded', 'Pages written by applied HDE frames'],
    ] as const) {
      const read = hde(key);
      new Counter({ name, help, registers: [this.registry], collect() { this.reset(); this.inc(read()); } });
    }
    new Gauge({ name: 'novacron_transport_chunks_resent', help: 'Chunks sent again after a lost stream, open connections', registers: [this.registry], collect() { this.set(sum('chunksResent')); } });
  }
}
