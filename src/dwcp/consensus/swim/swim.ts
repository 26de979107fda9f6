// SWIM membership (Das, Gupta, Motivala), with the Lifeguard-style
// suspicion timeout: a deterministic state machine (tick/step/ready) that
// knows which members are alive. Each protocol period a member pings one
// other (round-robin over a shuffled list); without an ack it asks k others
// to ping on its behalf; without any ack by the period's end it suspects the
// target. A suspect that does not refute within a timeout growing with
// log(cluster size) is declared dead. Membership changes travel piggybacked
// on pings and acks, each sent about lambda * log(n) times. A member that
// hears itself suspected raises its incarnation number, which overrides the
// suspicion everywhere.

export type MemberId = string;
export type MemberState = 'alive' | 'suspect' | 'dead';

export interface Member {
  id: MemberId;
  state: MemberState;
  incarnation: number;
  /** What the member says about itself (e.g. where its other services listen), spread with its updates. */
  meta?: string;
}

export interface Update {
  id: MemberId;
  state: MemberState;
  incarnation: number;
  meta?: string;
}

export type SwimMessage =
  | { type: 'ping'; from: MemberId; to: MemberId; seq: number; updates: Update[] }
  | { type: 'pingReq'; from: MemberId; to: MemberId; target: MemberId; seq: number; updates: Update[] }
  | { type: 'ack'; from: MemberId; to: MemberId; seq: number; /** For an indirect ack, who asked. */ origin?: MemberId; updates: Update[] };

export interface SwimOptions {
  id: MemberId;
  /** Spread to every member with this one's updates. */
  meta?: string;
  /** Members known at start (seeds); more are learned from updates. */
  seeds: MemberId[];
  /** Ticks per protocol period. Default 5. */
  periodTicks?: number;
  /** Ticks to wait for a direct ack before asking others. Default 2. */
  pingTimeoutTicks?: number;
  /** Members asked to ping indirectly. Default 3. */
  indirect?: number;
  /** Suspicion lasts suspicionMult * log2(n + 1) periods. Default 4. */
  suspicionMult?: number;
  /** Each update is piggybacked about lambda * log2(n + 1) times. Default 3. */
  lambda?: number;
  /** Updates carried per message. Default 8. */
  maxPiggyback?: number;
  random: () => number;
}

export interface SwimReady {
  messages: SwimMessage[];
  /** Membership changes this member has come to believe, in order. */
  changes: Update[];
}

// Precedence of updates about one member (the SWIM paper's rules): a higher
// incarnation wins; at equal incarnation suspect beats alive; dead beats all
// but a member coming back with a newer incarnation (a restart that refuted).
function overrides(u: Update, cur: Member | undefined): boolean {
  if (!cur) return true;
  if (cur.state === 'dead') return u.state === 'alive' && u.incarnation > cur.incarnation;
  if (u.state === 'dead') return true;
  if (u.incarnation !== cur.incarnation) return u.incarnation > cur.incarnation;
  return u.state === 'suspect' && cur.state === 'alive';
}

export class SwimMember {
  readonly id: MemberId;
  incarnation = 0;
  #members = new Map<MemberId, Member>();
  #o: Required<Omit<SwimOptions, 'seeds' | 'id' | 'random' | 'meta'>>;
  #meta: string | undefined;
  #random: () => number;
  #order: MemberId[] = [];
  #tick = 0;
  #seq = 0;
  // The probe of this period: target, when it started, whether acked.
  #probe: { target: MemberId; seq: number; at: number; acked: boolean; indirectSent: boolean } | undefined;
  // Indirect probes run for others: our seq -> who asked and their seq.
  #relays = new Map<number, { origin: MemberId; originSeq: number; at: number }>();
  #suspectSince = new Map<MemberId, number>();
  // Updates to gossip, with how many more times each goes out.
  #gossip = new Map<MemberId, { u: Update; left: number }>();
  #out: SwimMessage[] = [];
  #changes: Update[] = [];

  constructor(o: SwimOptions) {
    this.id = o.id;
    this.#random = o.random;
    this.#o = { periodTicks: o.periodTicks ?? 5, pingTimeoutTicks: o.pingTimeoutTicks ?? 2, indirect: o.indirect ?? 3, suspicionMult: o.suspicionMult ?? 4, lambda: o.lambda ?? 3, maxPiggyback: o.maxPiggyback ?? 8 };
    this.#meta = o.meta;
    const me: Member = { id: this.id, state: 'alive', incarnation: 0, ...(o.meta !== undefined ? { meta: o.meta } : {}) };
    this.#members.set(this.id, me);
    for (const s of o.seeds) if (s !== this.id) this.#members.set(s, { id: s, state: 'alive', incarnation: 0 });
    // Tell the seeds this member exists.
    this.#queue({ ...me });
  }

  /** Every member this one knows of, itself included. */
  members(): Member[] {
    return [...this.#members.values()].map((m) => ({ ...m })).sort((a, b) => (a.id < b.id ? -1 : 1));
  }

  /** Members believed alive or suspect (suspects still count until declared dead). */
  live(): MemberId[] {
    return this.members()
      .filter((m) => m.state !== 'dead')
      .map((m) => m.id);
  }

  #n(): number {
    return this.live().length;
  }

  #queue(u: Update): void {
    this.#gossip.set(u.id, { u, left: Math.ceil(this.#o.lambda * Math.log2(this.#n() + 1)) });
  }

  #piggyback(): Update[] {
    // This member's own entry rides along when it has meta, so that a
    // member that first heard of it from a ping learns its meta too.
    const out: Update[] = this.#meta !== undefined ? [{ id: this.id, state: 'alive', incarnation: this.incarnation, meta: this.#meta }] : [];
    // The least-sent first: fresh news travels fastest.
    const items = [...this.#gossip.values()].sort((a, b) => b.left - a.left);
    for (const g of items.slice(0, this.#o.maxPiggyback)) {
      out.push(g.u);
      if (--g.left <= 0) this.#gossip.delete(g.u.id);
    }
    return out;
  }

  #apply(updates: readonly Update[]): void {
    for (const u of updates) {
      if (u.id === this.id) {
        // Someone thinks this member is suspect or dead: refute with a newer incarnation.
        if (u.state !== 'alive' && u.incarnation >= this.incarnation) {
          this.incarnation = u.incarnation + 1;
          const me: Member = { id: this.id, state: 'alive', incarnation: this.incarnation, ...(this.#meta !== undefined ? { meta: this.#meta } : {}) };
          this.#members.set(this.id, me);
          this.#queue(me);
        }
        continue;
      }
      const cur = this.#members.get(u.id);
      if (!overrides(u, cur)) {
        // A member first known only by its address (a seed) tells its meta at the same incarnation.
        if (cur && cur.meta === undefined && u.meta !== undefined && u.incarnation === cur.incarnation && cur.state !== 'dead') {
          cur.meta = u.meta;
          this.#changes.push({ ...cur });
        }
        continue;
      }
      // Suspicions raised by others do not repeat a member's meta: keep what is known.
      const meta = u.meta ?? cur?.meta;
      this.#members.set(u.id, { ...u, ...(meta !== undefined ? { meta } : {}) });
      if (u.state === 'suspect') this.#suspectSince.set(u.id, this.#tick);
      else this.#suspectSince.delete(u.id);
      this.#queue(u);
      this.#changes.push({ ...u });
    }
  }

  #send(m: SwimMessage): void {
    this.#out.push(m);
  }

  #nextTarget(): MemberId | undefined {
    for (let tries = 0; tries < 2; tries++) {
      while (this.#order.length) {
        const id = this.#order.pop()!;
        const m = this.#members.get(id);
        if (m && m.state !== 'dead' && id !== this.id) return id;
      }
      // A new round: every other live member once, in a fresh random order.
      this.#order = this.live().filter((x) => x !== this.id);
      for (let i = this.#order.length - 1; i > 0; i--) {
        const j = Math.floor(this.#random() * (i + 1));
        [this.#order[i], this.#order[j]] = [this.#order[j]!, this.#order[i]!];
      }
    }
    return undefined;
  }

  tick(): void {
    this.#tick++;
    const p = this.#probe;
    if (p && !p.acked) {
      const age = this.#tick - p.at;
      if (age >= this.#o.pingTimeoutTicks && !p.indirectSent) {
        p.indirectSent = true;
        const helpers = this.live().filter((x) => x !== this.id && x !== p.target);
        for (let i = 0; i < this.#o.indirect && helpers.length; i++) {
          const h = helpers.splice(Math.floor(this.#random() * helpers.length), 1)[0]!;
          this.#send({ type: 'pingReq', from: this.id, to: h, target: p.target, seq: p.seq, updates: this.#piggyback() });
        }
      }
      if (age >= this.#o.periodTicks) {
        // No ack in a whole period: suspect it.
        const m = this.#members.get(p.target);
        if (m && m.state === 'alive') this.#apply([{ id: m.id, state: 'suspect', incarnation: m.incarnation }]);
        this.#probe = undefined;
      }
    }
    // Suspects not refuted in time are dead.
    const limit = this.#o.suspicionMult * Math.max(1, Math.log2(this.#n() + 1)) * this.#o.periodTicks;
    for (const [id, since] of this.#suspectSince) {
      if (this.#tick - since >= limit) {
        const m = this.#members.get(id)!;
        this.#apply([{ id, state: 'dead', incarnation: m.incarnation }]);
      }
    }
    for (const [s, r] of this.#relays) if (this.#tick - r.at > this.#o.periodTicks) this.#relays.delete(s);
    if (this.#tick % this.#o.periodTicks === 0 && (!this.#probe || this.#probe.acked)) {
      const target = this.#nextTarget();
      if (target) {
        this.#probe = { target, seq: ++this.#seq, at: this.#tick, acked: false, indirectSent: false };
        this.#send({ type: 'ping', from: this.id, to: target, seq: this.#seq, updates: this.#piggyback() });
      }
    }
  }

  step(m: SwimMessage): void {
    if (m.to !== this.id) return;
    // Whoever talks to us is alive, if we had not heard of it. One we
    // think dead hears so (in the piggyback of our answer), so that a
    // restarted member can refute it with a newer incarnation.
    const sender = this.#members.get(m.from);
    if (!sender) this.#apply([{ id: m.from, state: 'alive', incarnation: 0 }]);
    else if (sender.state === 'dead') this.#queue({ ...sender });
    this.#apply(m.updates);
    switch (m.type) {
      case 'ping':
        this.#send({ type: 'ack', from: this.id, to: m.from, seq: m.seq, updates: this.#piggyback() });
        return;
      case 'pingReq': {
        const seq = ++this.#seq;
        this.#relays.set(seq, { origin: m.from, originSeq: m.seq, at: this.#tick });
        this.#send({ type: 'ping', from: this.id, to: m.target, seq, updates: this.#piggyback() });
        return;
      }
      case 'ack': {
        const relay = this.#relays.get(m.seq);
        if (relay) {
          this.#relays.delete(m.seq);
          this.#send({ type: 'ack', from: this.id, to: relay.origin, seq: relay.originSeq, origin: m.from, updates: this.#piggyback() });
          return;
        }
        const p = this.#probe;
        if (p && p.seq === m.seq && (m.from === p.target || m.origin === p.target)) p.acked = true;
        return;
      }
    }
  }

  /** Leaves: tells others this member is dead (at its current incarnation + 1, so it overrides). */
  leave(): void {
    this.incarnation++;
    this.#queue({ id: this.id, state: 'dead', incarnation: this.incarnation, ...(this.#meta !== undefined ? { meta: this.#meta } : {}) });
    for (const id of this.live().filter((x) => x !== this.id).slice(0, 3)) this.#send({ type: 'ping', from: this.id, to: id, seq: ++this.#seq, updates: this.#piggyback() });
  }

  ready(): SwimReady {
    return { messages: this.#out.splice(0), changes: this.#changes.splice(0) };
  }
}
