// SWIM over UDP: a member's id is the address it listens on ("host:port"),
// so a message needs no directory to reach it. One JSON datagram per
// message; a datagram that is not one of ours is dropped. Subscribers hear
// of every membership change (the cluster's other parts take their peer
// lists from here).
import { createSocket, type Socket } from 'node:dgram';
import { EventEmitter } from 'node:events';
import { InvalidArgumentError, rethrowLater } from '../../../errors.js';
import { SwimMember, type Member, type SwimMessage, type Update } from './swim.js';

export interface SwimNodeOptions {
  host?: string;
  /** UDP port to bind (0: any); the member id is host:port. */
  port: number;
  /** Ids (host:port) of members to introduce this one to. */
  seeds: string[];
  meta?: string;
  /** Milliseconds per tick. Default 100 (a protocol period of 500 ms). */
  tickMs?: number;
}

const MAX_DATAGRAM = 60_000;

// A member id as the protocol uses it: host (address or name) and port.
const HOST = /^[A-Za-z0-9.:-]{1,253}$/;
function memberId(v: unknown): v is string {
  if (typeof v !== 'string') return false;
  const at = v.lastIndexOf(':');
  const port = Number(v.slice(at + 1));
  return at > 0 && HOST.test(v.slice(0, at)) && Number.isInteger(port) && port >= 1 && port <= 65535 && String(port) === v.slice(at + 1);
}

const count = (v: unknown): boolean => Number.isSafeInteger(v) && (v as number) >= 0;
const STATES: ReadonlySet<unknown> = new Set(['alive', 'suspect', 'dead']);
const MAX_UPDATES = 1000;
const MAX_META = 4096;

function validUpdate(u: unknown): u is Update {
  const x = u as Partial<Update> | null;
  return !!x && typeof x === 'object' && memberId(x.id) && STATES.has(x.state) && count(x.incarnation) &&
    (x.meta === undefined || (typeof x.meta === 'string' && x.meta.length <= MAX_META));
}

// Every field of a datagram, checked: one from a stranger or a broken peer
// is dropped whole, never let into the member table or the next send.
function valid(m: unknown): m is SwimMessage {
  const x = m as { type?: unknown; from?: unknown; to?: unknown; seq?: unknown; updates?: unknown; target?: unknown; origin?: unknown } | null;
  if (!x || typeof x !== 'object' || !memberId(x.from) || !memberId(x.to) || !count(x.seq)) return false;
  if (!Array.isArray(x.updates) || x.updates.length > MAX_UPDATES || !x.updates.every(validUpdate)) return false;
  if (x.type === 'ping') return true;
  if (x.type === 'pingReq') return memberId(x.target);
  if (x.type === 'ack') return x.origin === undefined || memberId(x.origin);
  return false;
}

/** Events: `change` (Update) for each member whose state changed. */
export interface SwimNode {
  on(event: 'change', listener: (update: Update) => void): this;
  once(event: 'change', listener: (update: Update) => void): this;
}
export class SwimNode extends EventEmitter {
  member!: SwimMember;
  #sock: Socket;
  #timer: NodeJS.Timeout | undefined;
  #o: SwimNodeOptions;

  constructor(o: SwimNodeOptions) {
    super();
    // Peers drop updates with more meta than this, so a node could not join.
    if (o.meta !== undefined && (typeof o.meta !== 'string' || o.meta.length > MAX_META)) {
      throw new InvalidArgumentError(`meta must be a string of at most ${MAX_META} characters`);
    }
    this.#o = o;
    this.#sock = createSocket('udp4');
  }

  /** Binds, then joins through the seeds. */
  async start(): Promise<void> {
    const host = this.#o.host ?? '127.0.0.1';
    await new Promise<void>((resolve, reject) => {
      this.#sock.once('error', reject);
      this.#sock.bind(this.#o.port, host, () => resolve());
    });
    this.#sock.on('error', () => undefined);
    const id = `${host}:${this.#sock.address().port}`;
    this.member = new SwimMember({ id, seeds: this.#o.seeds, random: Math.random, ...(this.#o.meta !== undefined ? { meta: this.#o.meta } : {}) });
    this.#sock.on('message', (buf) => {
      let m: unknown;
      try {
        m = JSON.parse(buf.toString());
      } catch {
        return;
      }
      if (!valid(m)) return;
      this.member.step(m);
      this.#flush();
    });
    this.#timer = setInterval(() => {
      this.member.tick();
      this.#flush();
    }, this.#o.tickMs ?? 100);
    this.#flush();
  }

  get id(): string {
    return this.member.id;
  }

  /** Members believed alive (or suspect), with their meta. */
  alive(): Member[] {
    return this.member.members().filter((m) => m.state !== 'dead');
  }

  #flush(): void {
    const rd = this.member.ready();
    for (const m of rd.messages) {
      const at = m.to.lastIndexOf(':');
      const port = Number(m.to.slice(at + 1));
      const buf = Buffer.from(JSON.stringify(m));
      if (at < 0 || !Number.isInteger(port) || port < 1 || port > 65535 || buf.length > MAX_DATAGRAM) continue;
      try {
        this.#sock.send(buf, port, m.to.slice(0, at));
      } catch {
        // An address the socket refuses (one of the seeds given, say) is
        // like an unreachable member: SWIM's timeouts take care of it.
      }
    }
    // A listener that throws must not cost the others the flush's later changes.
    for (const u of rd.changes) {
      try {
        this.emit('change', u as Update);
      } catch (error) {
        rethrowLater(error);
      }
    }
  }

  /** Tells the others this member leaves, then closes. */
  async close(leave = true): Promise<void> {
    if (this.#timer === undefined) return;
    clearInterval(this.#timer);
    this.#timer = undefined;
    if (leave) {
      this.member.leave();
      this.#flush();
      await new Promise((r) => setTimeout(r, 20));
    }
    await new Promise<void>((r) => this.#sock.close(() => r()));
  }
}
