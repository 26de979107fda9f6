// A client of a Raft key-value cluster's client ports: it finds the leader
// (following ERR_RAFT_NOT_LEADER hints, trying the others when a node is
// down) and retries there until its deadline.
import type { Socket } from 'node:net';
import { clusterConnect, type ClusterTls } from '../secure.js';
import { NovacronError } from '../../../errors.js';
import type { KvOk, KvRequest, KvResponse } from './kv-node.js';
import { jsonFrame, readFrames, type PeerAddress } from './transport.js';

type Op = KvRequest extends infer R ? (R extends { id: number } ? Omit<R, 'id'> : never) : never;

export class RaftKvClient {
  #addrs: ReadonlyMap<number, PeerAddress>;
  #leader: number;
  #conns = new Map<number, { sock: Socket; waiting: Map<number, (r: KvResponse) => void> }>();
  #next = 1;
  #timeoutMs: number;

  /** `clientAddrs`: each node's client port. */
  #tls: ClusterTls | undefined;

  constructor(clientAddrs: ReadonlyMap<number, PeerAddress>, options: { timeoutMs?: number; tls?: ClusterTls } = {}) {
    this.#addrs = clientAddrs;
    this.#tls = options.tls;
    this.#leader = [...clientAddrs.keys()][0]!;
    this.#timeoutMs = options.timeoutMs ?? 5000;
  }

  #conn(id: number): Promise<{ sock: Socket; waiting: Map<number, (r: KvResponse) => void> }> {
    const have = this.#conns.get(id);
    if (have && !have.sock.destroyed) return Promise.resolve(have);
    const a = this.#addrs.get(id)!;
    return new Promise((resolve, reject) => {
      const sock = clusterConnect(a, this.#tls, () => {
        this.#conns.set(id, c);
        resolve(c);
      });
      const c = { sock, waiting: new Map<number, (r: KvResponse) => void>() };
      readFrames(sock, (body) => {
        const r = JSON.parse(body.toString()) as KvResponse;
        c.waiting.get(r.id)?.(r);
        c.waiting.delete(r.id);
      });
      sock.setNoDelay(true);
      sock.on('error', (err) => reject(err));
      sock.on('close', () => {
        for (const w of c.waiting.values()) w({ id: -1, error: 'ERR_RAFT_CONNECTION_LOST' });
        c.waiting.clear();
        if (this.#conns.get(id) === c) this.#conns.delete(id);
      });
    });
  }

  async #once(id: number, op: Op): Promise<KvResponse> {
    const c = await this.#conn(id);
    const rid = this.#next++;
    return new Promise((resolve) => {
      c.waiting.set(rid, resolve);
      c.sock.write(jsonFrame({ ...op, id: rid }));
    });
  }

  /** Runs `op` at the leader; rejects with the cluster's error code, or ERR_RAFT_UNAVAILABLE after the timeout. */
  async call(op: Op, timeoutMs = this.#timeoutMs): Promise<KvOk> {
    const deadline = Date.now() + timeoutMs;
    let last = 'no node answered';
    for (let attempt = 0; Date.now() < deadline; attempt++) {
      let r: KvResponse;
      try {
        r = await Promise.race([this.#once(this.#leader, op), new Promise<KvResponse>((res) => setTimeout(() => res({ id: -1, error: 'ERR_RAFT_TIMEOUT' }), Math.max(1, deadline - Date.now())).unref())]);
      } catch (err) {
        last = (err as Error).message;
        r = { id: -1, error: 'ERR_RAFT_CONNECTION_LOST' };
      }
      if ('ok' in r) return r as KvOk;
      // A membership change asks for a state ("4 is a voter"), so one whose
      // outcome a lost leadership left unknown is simply asked again; other
      // writes are the caller's to judge.
      const idempotent = op.op === 'member' || op.op === 'get' || op.op === 'status';
      if (r.error === 'ERR_RAFT_BAD_REQUEST' || (r.error === 'ERR_RAFT_OUTCOME_UNKNOWN' && !idempotent)) throw new NovacronError(r.error, r.message ?? r.error);
      last = r.error;
      const ids = [...this.#addrs.keys()];
      // Follow the hint; with none (an election under way) try the next node after a pause.
      if (r.error === 'ERR_RAFT_NOT_LEADER' && r.leader && r.leader !== this.#leader) this.#leader = r.leader;
      else {
        this.#leader = ids[(ids.indexOf(this.#leader) + 1) % ids.length]!;
        await new Promise((res) => setTimeout(res, Math.min(200, 10 * 2 ** Math.min(attempt, 5))));
      }
    }
    throw new NovacronError('ERR_RAFT_UNAVAILABLE', `no leader answered within ${timeoutMs} ms (${last})`);
  }

  close(): void {
    for (const c of this.#conns.values()) c.sock.destroy();
    this.#conns.clear();
  }
}
