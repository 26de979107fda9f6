// SWIM over UDP: a member's id is the address it listens on ("host:port"),
// so a message needs no directory to reach it. One JSON datagram per
// message; a datagram that is not one of ours is dropped. Subscribers hear
// of every membership change (the cluster's other parts take their peer
// lists from here).
import { createSocket, type Socket } from 'node:dgram';
import { EventEmitter } from 'node:events';
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

function valid(m: unknown): m is SwimMessage {
  const x = m as Partial<SwimMessage> | null;
  return !!x && typeof x === 'object' && (x.type === 'ping' || x.type === 'pingReq' || x.type === 'ack') && typeof x.from === 'string' && typeof x.to === 'string' && typeof x.seq === 'number' && Array.isArray(x.updates);
}

export class SwimNode extends EventEmitter {
  member!: SwimMember;
  #sock: Socket;
  #timer: NodeJS.Timeout | undefined;
  #o: SwimNodeOptions;

  constructor(o: SwimNodeOptions) {
    super();
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
      if (at < 0 || !(port > 0) || buf.length > MAX_DATAGRAM) continue;
      this.#sock.send(buf, port, m.to.slice(0, at));
    }
    for (const u of rd.changes) this.emit('change', u as Update);
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
