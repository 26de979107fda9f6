// PBFT over the network: a replica process's driver (peer port for replica
// messages, client port for requests and replies), and a client that talks
// to every replica. Frames are [u32 length][JSON of a signed message]; the
// signatures inside are what is trusted, so a frame from anyone is only
// ever a claim the replica checks. Mutual TLS can wrap it as well.
import type { KeyObject } from 'node:crypto';
import type { Server, Socket } from 'node:net';
import { NovacronError } from '../../../errors.js';
import { clusterConnect, clusterServer, type ClusterTls } from '../secure.js';
import { corked, jsonFrame as frame, readFrames, type PeerAddress } from '../raft/transport.js';
import { PbftClient, PbftReplica, verifySigned, type Outbound, type ReplicaId, type Signed } from './pbft.js';

function parse(body: Buffer): Signed | undefined {
  try {
    const m = JSON.parse(body.toString()) as Signed;
    return m && typeof m === 'object' && m.body && typeof m.body === 'object' && typeof m.sig === 'string' ? m : undefined;
  } catch {
    return undefined;
  }
}

export interface PbftNodeOptions {
  id: ReplicaId;
  /** Every replica's peer address, by id (0..n-1). */
  peers: ReadonlyMap<ReplicaId, PeerAddress>;
  clientPort: number;
  host?: string;
  privateKey: KeyObject;
  publicKeys: ReadonlyMap<ReplicaId | string, KeyObject>;
  tickMs?: number;
  checkpointInterval?: number;
  viewTimeoutTicks?: number;
  execute?: (op: string, seq: number) => string;
  tls?: ClusterTls;
}

export class PbftNode {
  readonly replica: PbftReplica;
  #o: PbftNodeOptions;
  #peerServer: Server | undefined;
  #clientServer: Server | undefined;
  #out = new Map<ReplicaId, Socket>();
  #clients = new Map<string, { sock: Socket; ts: number }>(); // client id -> its connection (learned from its signed requests)
  #sockets = new Set<Socket>();
  #timer: NodeJS.Timeout | undefined;
  #closed = false;

  constructor(o: PbftNodeOptions) {
    this.#o = o;
    this.replica = new PbftReplica({
      id: o.id,
      n: o.peers.size,
      privateKey: o.privateKey,
      publicKeys: o.publicKeys,
      ...(o.checkpointInterval ? { checkpointInterval: o.checkpointInterval } : {}),
      ...(o.viewTimeoutTicks ? { viewTimeoutTicks: o.viewTimeoutTicks } : {}),
      ...(o.execute ? { execute: o.execute } : {}),
    });
  }

  async start(): Promise<void> {
    const self = this.#o.peers.get(this.#o.id);
    if (!self) throw new NovacronError('ERR_PBFT_CONFIG', `replica ${this.#o.id} is not among the peers`);
    this.#peerServer = clusterServer(this.#o.tls, (s) => this.#accept(s, false));
    this.#clientServer = clusterServer(this.#o.tls, (s) => this.#accept(s, true));
    await listen(this.#peerServer, self.port, self.host);
    await listen(this.#clientServer, this.#o.clientPort, this.#o.host ?? '127.0.0.1');
    this.#timer = setInterval(() => {
      this.replica.tick();
      this.#flush();
    }, this.#o.tickMs ?? 20);
  }

  get clientPort(): number {
    const a = this.#clientServer?.address();
    return typeof a === 'object' && a ? a.port : 0;
  }

  #accept(sock: Socket, fromClient: boolean): void {
    this.#sockets.add(sock);
    sock.setNoDelay(true);
    readFrames(sock, (body) => {
      const m = parse(body);
      if (!m || this.#closed) return;
      // Replies go back on the connection a client's request came in on.
      if (fromClient && m.body.type === 'request') this.#learnClient(m, sock);
      this.replica.step(m);
      this.#flush();
    });
    sock.on('close', () => this.#sockets.delete(sock));
  }

  // Replies to a client go where its latest request came from; only a
  // request it signed, newer than the one that placed it (or with that
  // connection gone), may move them: a forged claim or a replayed copy
  // would otherwise take its replies to another socket.
  #learnClient(m: Signed, sock: Socket): void {
    const from = m.body.from;
    const r = m.body.request;
    if (typeof from !== 'string' || !r || r.client !== from || !Number.isSafeInteger(r.ts)) return;
    const known = this.#clients.get(from);
    if (known && known.sock !== sock && !known.sock.destroyed && r.ts <= known.ts) return;
    if (!verifySigned(m, this.#o.publicKeys)) return;
    this.#clients.set(from, { sock, ts: Math.max(r.ts, known?.ts ?? 0) });
  }

  #peer(id: ReplicaId): Socket | undefined {
    let s = this.#out.get(id);
    if (s && !s.destroyed) return s;
    const a = this.#o.peers.get(id);
    if (!a) return undefined;
    s = clusterConnect(a, this.#o.tls);
    s.setNoDelay(true);
    s.on('error', () => undefined);
    const sock = s;
    s.on('close', () => this.#out.get(id) === sock && this.#out.delete(id));
    this.#out.set(id, s);
    return s;
  }

  #send(o: Outbound): void {
    const bytes = frame(o.msg);
    if (o.to === 'all') {
      for (const id of this.#o.peers.keys()) if (id !== this.#o.id) this.#write(this.#peer(id), bytes);
    } else if (typeof o.to === 'number') {
      if (o.to !== this.#o.id) this.#write(this.#peer(o.to), bytes);
    } else {
      this.#write(this.#clients.get(o.to)?.sock, bytes);
    }
  }

  #write(s: Socket | undefined, bytes: Buffer): void {
    if (s && !s.destroyed && s.writableLength < 64 << 20) corked(s).write(bytes);
  }

  #flush(): void {
    for (const o of this.replica.ready().messages) this.#send(o);
  }

  async close(): Promise<void> {
    this.#closed = true;
    clearInterval(this.#timer);
    for (const s of [...this.#out.values(), ...this.#sockets]) s.destroy();
    await Promise.all([this.#peerServer, this.#clientServer].map((srv) => new Promise<void>((r) => (srv ? srv.close(() => r()) : r()))));
  }
}

function listen(server: Server, port: number, host: string): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve());
  });
}

/** A client of a PBFT cluster over the network: one request at a time, accepted at f + 1 matching replies. */
export class PbftNetClient {
  #c: PbftClient;
  #addrs: ReadonlyMap<ReplicaId, PeerAddress>;
  #socks = new Map<ReplicaId, Socket>();
  #tls: ClusterTls | undefined;
  #waiting: ((result: string) => void) | undefined;

  constructor(id: string, key: KeyObject, publicKeys: ReadonlyMap<ReplicaId | string, KeyObject>, clientAddrs: ReadonlyMap<ReplicaId, PeerAddress>, tls?: ClusterTls) {
    this.#c = new PbftClient(id, key, publicKeys, clientAddrs.size);
    this.#addrs = clientAddrs;
    this.#tls = tls;
  }

  #sock(id: ReplicaId): Socket | undefined {
    let s = this.#socks.get(id);
    if (s && !s.destroyed) return s;
    const a = this.#addrs.get(id);
    if (!a) return undefined;
    s = clusterConnect(a, this.#tls);
    s.setNoDelay(true);
    readFrames(s, (body) => {
      const m = parse(body);
      if (!m) return;
      const r = this.#c.onReply(m);
      if (r !== undefined && this.#waiting) {
        const w = this.#waiting;
        this.#waiting = undefined;
        w(r);
      }
    });
    const sock = s;
    s.on('close', () => this.#socks.get(id) === sock && this.#socks.delete(id));
    this.#socks.set(id, s);
    return s;
  }

  #send(o: Outbound): void {
    const targets = o.to === 'all' ? [...this.#addrs.keys()] : typeof o.to === 'number' ? [o.to] : [];
    for (const id of targets) {
      const s = this.#sock(id);
      if (s && !s.destroyed) s.write(frame(o.msg));
    }
  }

  /** Runs `op`; retransmits to every replica every `retryMs` until f + 1 agree, or rejects after `timeoutMs`. */
  async request(op: string, { retryMs = 300, timeoutMs = 15_000 } = {}): Promise<string> {
    if (this.#waiting) throw new NovacronError('ERR_PBFT_BUSY', 'one request at a time');
    const done = new Promise<string>((resolve) => (this.#waiting = resolve));
    this.#send(this.#c.request(op));
    const retry = setInterval(() => {
      const o = this.#c.retransmit();
      if (o) this.#send(o);
    }, retryMs);
    let timer: NodeJS.Timeout | undefined;
    try {
      return await Promise.race([
        done,
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new NovacronError('ERR_PBFT_TIMEOUT', `no f + 1 matching replies within ${timeoutMs} ms`)), timeoutMs);
        }),
      ]);
    } finally {
      clearInterval(retry);
      clearTimeout(timer);
      this.#waiting = undefined;
    }
  }

  close(): void {
    for (const s of this.#socks.values()) s.destroy();
  }
}
