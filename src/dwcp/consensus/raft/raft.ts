// The Raft core: a deterministic state machine with no timers, sockets,
// disk, clock or global randomness. The driver calls tick() at a fixed
// interval, step() with each message that arrives, propose() and readIndex()
// for clients; then takes ready(), persists, sends, applies, and calls
// advance(). Pre-vote keeps a partitioned node from disrupting a healthy
// leader; check-quorum makes a leader that lost its majority step down, which
// read-index relies on; a leader commits an empty entry of its own term
// before it serves reads; appends are pipelined per follower up to a window;
// membership changes one voter at a time; leader transfer via timeoutNow.
import type { ConfChange, Entry, HardState, Message, NodeId, ReadState, Ready, Role, Snapshot, StoredState } from './types.js';

/**
 * Whether the driver may send `m` before persisting the Ready it came in:
 * a leader's appends and heartbeats may go out while it writes the same
 * entries to its own disk (it counts them toward a quorum only once they are
 * persisted); votes and acknowledgements must wait for the fsync.
 */
export function sendableBeforePersist(m: Message): boolean {
  return m.type === 'app' || m.type === 'heartbeat' || m.type === 'snap' || m.type === 'timeoutNow';
}
import { message } from './types.js';

export interface RaftOptions {
  id: NodeId;
  /** Voters at the start of time (ignored when the stored state has a snapshot or conf entries say otherwise). */
  voters: NodeId[];
  stored?: StoredState;
  /** Ticks a follower waits for a leader before campaigning: randomised in [electionTicks, 2 * electionTicks). */
  electionTicks?: number;
  heartbeatTicks?: number;
  /** Entries per append message. */
  maxEntriesPerMessage?: number;
  /** Append messages in flight per follower. */
  maxInflight?: number;
  /** Injected randomness in [0, 1): the only source the core uses. */
  random: () => number;
}

type ProgressState = 'probe' | 'replicate' | 'snapshot';

interface Progress {
  match: number;
  next: number;
  state: ProgressState;
  /** Last index of each append in flight (replicate state). */
  inflight: number[];
  /** Probe state: an append is out; wait for its answer or a heartbeat round. */
  paused: boolean;
  /** Heard from since the last check-quorum round. */
  active: boolean;
}

interface PendingRead {
  index: number;
  context: string;
  acks: Set<NodeId>;
}

const enc = new TextEncoder();
const dec = new TextDecoder();
export const encodeConfChange = (c: ConfChange): Uint8Array => enc.encode(JSON.stringify(c));
export function decodeConfChange(data: Uint8Array): ConfChange {
  const c = JSON.parse(dec.decode(data)) as ConfChange;
  if ((c.type !== 'add' && c.type !== 'remove') || !Number.isInteger(c.node) || c.node <= 0 || (c.address !== undefined && typeof c.address !== 'string')) throw new Error(`bad conf change ${dec.decode(data)}`);
  return c;
}

export class Raft {
  readonly id: NodeId;
  term = 0;
  vote: NodeId = 0;
  leader: NodeId = 0;
  role: Role = 'follower';
  voters = new Set<NodeId>();

  // The log: entries after the snapshot point, in memory; `stabled` is the
  // last index the driver has persisted.
  #snapIndex = 0;
  #snapTerm = 0;
  #snapshot: Snapshot | undefined;
  #ents: Entry[] = [];
  committed = 0;
  applied = 0;
  #stabled = 0;
  // Snapshot received from the leader, to hand to the driver.
  #pendingSnapshot: Snapshot | undefined;

  #electionTicks: number;
  #heartbeatTicks: number;
  #randomizedTimeout = 0;
  #electionElapsed = 0;
  #heartbeatElapsed = 0;
  #maxEntries: number;
  #maxInflight: number;
  #random: () => number;

  #votes = new Map<NodeId, boolean>();
  #progress = new Map<NodeId, Progress>();
  #msgs: Message[] = [];
  #readStates: ReadState[] = [];
  #pendingReads: PendingRead[] = [];
  // Read requests that arrived before this leader committed in its term.
  #deferredReads: string[] = [];
  #pendingConfIndex = 0;
  #leadTransferee: NodeId = 0;
  #prevHard: HardState;
  #prevSoft: { leader: NodeId; role: Role };

  constructor(o: RaftOptions) {
    this.id = o.id;
    this.#electionTicks = o.electionTicks ?? 10;
    this.#heartbeatTicks = o.heartbeatTicks ?? 1;
    this.#maxEntries = o.maxEntriesPerMessage ?? 64;
    this.#maxInflight = o.maxInflight ?? 64;
    this.#random = o.random;
    const st = o.stored;
    let voters = [...o.voters];
    if (st) {
      this.term = st.hardState.term;
      this.vote = st.hardState.vote;
      if (st.snapshot) {
        this.#snapshot = st.snapshot;
        this.#snapIndex = st.snapshot.meta.index;
        this.#snapTerm = st.snapshot.meta.term;
        voters = [...st.snapshot.meta.voters];
      }
      this.#ents = st.entries.filter((e) => e.index > this.#snapIndex);
      this.committed = Math.max(st.hardState.commit, this.#snapIndex);
      this.applied = this.#snapIndex;
      this.#stabled = this.lastIndex();
    }
    this.voters = new Set(voters);
    // Membership as of the commit point: committed conf entries replayed.
    for (const e of this.#ents) if (e.index <= this.committed && e.type === 'conf') this.#applyConf(decodeConfChange(e.data));
    this.#prevHard = this.hardState();
    this.#prevSoft = { leader: 0, role: 'follower' };
    this.#resetRandomizedTimeout();
  }

  // --- log -----------------------------------------------------------------

  lastIndex(): number {
    return this.#ents.length ? this.#ents[this.#ents.length - 1]!.index : this.#snapIndex;
  }

  firstIndex(): number {
    return this.#snapIndex + 1;
  }

  /** Term of entry `i`; undefined when it is compacted away or beyond the end. */
  termAt(i: number): number | undefined {
    if (i === this.#snapIndex) return this.#snapTerm;
    if (i < this.#snapIndex || i > this.lastIndex()) return undefined;
    return this.#ents[i - this.#snapIndex - 1]!.term;
  }

  /** Entries from `lo` to the end of the log (for inspection; the log keeps them). */
  entriesFrom(lo: number): readonly Entry[] {
    return this.#entriesFrom(Math.max(lo, this.firstIndex()), Infinity);
  }

  #lastTerm(): number {
    return this.termAt(this.lastIndex())!;
  }

  #entriesFrom(lo: number, max: number): Entry[] {
    return this.#ents.slice(lo - this.#snapIndex - 1, lo - this.#snapIndex - 1 + max);
  }

  #upToDate(index: number, term: number): boolean {
    return term > this.#lastTerm() || (term === this.#lastTerm() && index >= this.lastIndex());
  }

  // Appends after `index` (whose term the leader said is `logTerm`),
  // truncating a conflicting suffix. False when the logs do not match there.
  #maybeAppend(index: number, logTerm: number, entries: Entry[]): boolean {
    if (this.termAt(index) !== logTerm) return false;
    for (const e of entries) {
      if (e.index <= this.#snapIndex) continue;
      const t = this.termAt(e.index);
      if (t === e.term) continue;
      if (t !== undefined) {
        if (e.index <= this.committed) throw new Error(`raft ${this.id}: conflict at committed index ${e.index}`);
        this.#ents.length = e.index - this.#snapIndex - 1;
        this.#stabled = Math.min(this.#stabled, e.index - 1);
      }
      this.#ents.push(e);
    }
    return true;
  }

  #commitTo(index: number): void {
    if (index <= this.committed) return;
    const from = this.committed + 1;
    // Set first: applying a change may commit further (a smaller quorum).
    this.committed = index;
    for (let i = from; i <= index; i++) {
      const e = this.#ents[i - this.#snapIndex - 1];
      if (e?.type === 'conf') this.#applyConf(decodeConfChange(e.data));
    }
  }

  #applyConf(c: ConfChange): void {
    if (c.type === 'add') {
      this.voters.add(c.node);
      if (this.role === 'leader' && !this.#progress.has(c.node)) this.#progress.set(c.node, this.#newProgress());
    } else {
      this.voters.delete(c.node);
      this.#progress.delete(c.node);
      if (c.node === this.id && this.role === 'leader') this.#becomeFollower(this.term, 0);
    }
    if (this.role === 'leader') this.#maybeCommit();
  }

  // --- the driver's interface ---------------------------------------------

  hardState(): HardState {
    return { term: this.term, vote: this.vote, commit: this.committed };
  }

  tick(): void {
    if (this.role === 'leader') {
      this.#heartbeatElapsed++;
      this.#electionElapsed++;
      if (this.#electionElapsed >= this.#electionTicks) {
        this.#electionElapsed = 0;
        // Check quorum: a leader that has not heard from a majority in an
        // election timeout may be cut off; it steps down rather than serve.
        let active = 1;
        for (const [id, p] of this.#progress) {
          if (id !== this.id && p.active && this.voters.has(id)) active++;
          p.active = false;
        }
        if (this.voters.has(this.id) && active < this.#quorum()) {
          this.#becomeFollower(this.term, 0);
          return;
        }
        if (this.#leadTransferee) this.#leadTransferee = 0;  // transfer timed out
      }
      if (this.#heartbeatElapsed >= this.#heartbeatTicks) {
        this.#heartbeatElapsed = 0;
        this.#broadcastHeartbeat('');
      }
      return;
    }
    this.#electionElapsed++;
    if (this.#electionElapsed >= this.#randomizedTimeout && this.voters.has(this.id)) {
      this.#electionElapsed = 0;
      this.#campaign('pre', false);
    }
  }

  /** Starts an election now rather than at the next timeout (a lone member at start, an operator's request). */
  campaign(): void {
    if (this.voters.has(this.id) && this.role !== 'leader') this.#campaign('pre', false);
  }

  /** Appends a command (leader only). False when this node cannot take proposals now. */
  propose(data: Uint8Array): boolean {
    if (this.role !== 'leader' || this.#leadTransferee) return false;
    this.#appendEntries([{ term: this.term, index: 0, type: 'normal', data }]);
    return true;
  }

  /** Proposes adding or removing one voter. False while another change is pending or when not leader. */
  proposeConfChange(c: ConfChange): boolean {
    if (this.role !== 'leader' || this.#leadTransferee || this.#pendingConfIndex > this.committed) return false;
    this.#appendEntries([{ term: this.term, index: 0, type: 'conf', data: encodeConfChange(c) }]);
    this.#pendingConfIndex = this.lastIndex();
    return true;
  }

  /**
   * Asks for a linearizable read point (leader only): a ReadState with this
   * context comes out of ready() once a majority has confirmed this node is
   * still the leader. False when not leader.
   */
  readIndex(context: string): boolean {
    if (this.role !== 'leader') return false;
    if (this.termAt(this.committed) !== this.term) {
      this.#deferredReads.push(context);  // nothing committed in this term yet
      return true;
    }
    this.#startRead(context);
    return true;
  }

  /** Hands leadership to `to` once its log is current. */
  transferLeader(to: NodeId): boolean {
    if (this.role !== 'leader' || to === this.id || !this.voters.has(to)) return false;
    this.#leadTransferee = to;
    this.#electionElapsed = 0;
    const p = this.#progress.get(to)!;
    if (p.match === this.lastIndex()) this.#send(message('timeoutNow', this.id, to, this.term));
    else this.#sendAppend(to);
    return true;
  }

  /** Tells the core the state machine's snapshot up to `index` exists, so the log before it can go. */
  compact(index: number, data: Uint8Array): Snapshot {
    if (index > this.applied || index <= this.#snapIndex) throw new Error(`raft ${this.id}: cannot compact to ${index} (applied ${this.applied}, snapshot ${this.#snapIndex})`);
    const term = this.termAt(index)!;
    // Voters as of `index`: today's, minus conf changes after it, undone.
    const voters = new Set(this.voters);
    for (let i = this.committed; i > index; i--) {
      const e = this.#ents[i - this.#snapIndex - 1]!;
      if (e.type !== 'conf') continue;
      const c = decodeConfChange(e.data);
      if (c.type === 'add') voters.delete(c.node);
      else voters.add(c.node);
    }
    const snap: Snapshot = { meta: { index, term, voters: [...voters].sort((a, b) => a - b) }, data };
    this.#ents = this.#ents.slice(index - this.#snapIndex);
    this.#snapIndex = index;
    this.#snapTerm = term;
    this.#snapshot = snap;
    return snap;
  }

  hasReady(): boolean {
    const h = this.hardState();
    return (
      this.#msgs.length > 0 ||
      this.lastIndex() > this.#stabled ||
      this.committed > this.applied ||
      this.#readStates.length > 0 ||
      this.#pendingSnapshot !== undefined ||
      h.term !== this.#prevHard.term ||
      h.vote !== this.#prevHard.vote ||
      h.commit !== this.#prevHard.commit ||
      this.leader !== this.#prevSoft.leader ||
      this.role !== this.#prevSoft.role
    );
  }

  ready(): Ready {
    const h = this.hardState();
    const hardChanged = h.term !== this.#prevHard.term || h.vote !== this.#prevHard.vote || h.commit !== this.#prevHard.commit;
    const softChanged = this.leader !== this.#prevSoft.leader || this.role !== this.#prevSoft.role;
    const from = Math.max(this.applied, this.#snapIndex) + 1;
    return {
      hardState: hardChanged ? h : undefined,
      entries: this.#ents.slice(Math.max(0, this.#stabled - this.#snapIndex)),
      snapshot: this.#pendingSnapshot,
      committed: this.committed >= from ? this.#entriesFrom(from, this.committed - from + 1) : [],
      messages: this.#msgs.splice(0),
      readStates: this.#readStates.splice(0),
      soft: softChanged ? { leader: this.leader, role: this.role } : undefined,
    };
  }

  /** The driver has done everything `rd` asked. */
  advance(rd: Ready): void {
    if (rd.hardState) this.#prevHard = rd.hardState;
    if (rd.soft) this.#prevSoft = rd.soft;
    if (rd.snapshot) {
      this.applied = Math.max(this.applied, rd.snapshot.meta.index);
      this.#stabled = Math.max(this.#stabled, rd.snapshot.meta.index);
      if (this.#pendingSnapshot === rd.snapshot) this.#pendingSnapshot = undefined;
    }
    const lastEnt = rd.entries.at(-1);
    if (lastEnt && this.termAt(lastEnt.index) === lastEnt.term) this.#stabled = Math.max(this.#stabled, lastEnt.index);
    const self = this.role === 'leader' ? this.#progress.get(this.id) : undefined;
    if (self && this.#stabled > self.match) {
      self.match = this.#stabled;
      if (this.#maybeCommit()) this.#broadcastAppend();
    }
    const lastApplied = rd.committed.at(-1);
    if (lastApplied) this.applied = Math.max(this.applied, lastApplied.index);
  }

  /** The snapshot the core sends to followers that fell behind the log's start. */
  get snapshot(): Snapshot | undefined {
    return this.#snapshot;
  }

  // --- messages ------------------------------------------------------------

  step(m: Message): void {
    if (m.term > this.term) {
      if ((m.type === 'vote' || m.type === 'preVote') && !m.force && this.leader !== 0 && this.#electionElapsed < this.#electionTicks) {
        // A leader was heard from within the election timeout: this
        // candidate is likely cut off, not the leader dead. Ignore it.
        return;
      }
      if (m.type === 'preVote') {
        // Pre-votes do not change the term.
      } else if (m.type === 'preVoteResp' && !m.reject) {
        // Granted pre-votes carry the term the candidate would campaign at.
      } else {
        const lead = m.type === 'app' || m.type === 'heartbeat' || m.type === 'snap' ? m.from : 0;
        this.#becomeFollower(m.term, lead);
      }
    } else if (m.term < this.term) {
      if (m.type === 'app' || m.type === 'heartbeat') {
        // An old leader (perhaps cut off, its pre-votes refused): tell it
        // the term so it steps down.
        this.#send(message('appResp', this.id, m.from, this.term));
      } else if (m.type === 'preVote') {
        this.#send(message('preVoteResp', this.id, m.from, this.term, { reject: true }));
      }
      return;
    }

    switch (m.type) {
      case 'vote':
      case 'preVote': {
        const canVote = this.vote === m.from || (this.vote === 0 && this.leader === 0) || (m.type === 'preVote' && m.term > this.term);
        const grant = canVote && this.#upToDate(m.index, m.logTerm);
        const respType = m.type === 'vote' ? 'voteResp' : 'preVoteResp';
        this.#send(message(respType, this.id, m.from, grant ? m.term : this.term, { reject: !grant }));
        if (grant && m.type === 'vote') {
          this.#electionElapsed = 0;
          this.vote = m.from;
        }
        return;
      }
      case 'voteResp':
      case 'preVoteResp':
        if ((m.type === 'voteResp' && this.role === 'candidate') || (m.type === 'preVoteResp' && this.role === 'preCandidate')) this.#tally(m);
        return;
      case 'timeoutNow':
        if (this.voters.has(this.id)) this.#campaign('real', true);
        return;
    }

    if (this.role === 'leader') this.#stepLeader(m);
    else this.#stepFollower(m);
  }

  #stepFollower(m: Message): void {
    switch (m.type) {
      case 'app':
        this.#electionElapsed = 0;
        this.leader = m.from;
        if (this.role !== 'follower') this.#becomeFollower(m.term, m.from);
        this.#handleAppend(m);
        return;
      case 'heartbeat':
        this.#electionElapsed = 0;
        this.leader = m.from;
        if (this.role !== 'follower') this.#becomeFollower(m.term, m.from);
        // Commit only what is known to match the leader's log.
        this.#commitTo(Math.min(m.commit, this.#matchedUpTo));
        this.#send(message('heartbeatResp', this.id, m.from, this.term, { context: m.context }));
        return;
      case 'snap':
        this.#electionElapsed = 0;
        this.leader = m.from;
        this.#handleSnapshot(m);
        return;
    }
  }

  // Last index known to agree with the current leader's log (set by appends).
  #matchedUpTo = 0;

  #handleAppend(m: Message): void {
    if (m.index < this.committed) {
      this.#send(message('appResp', this.id, m.from, this.term, { index: this.committed }));
      return;
    }
    if (this.#maybeAppend(m.index, m.logTerm, m.entries)) {
      const last = m.index + m.entries.length;
      this.#matchedUpTo = last;
      this.#commitTo(Math.min(m.commit, last));
      this.#send(message('appResp', this.id, m.from, this.term, { index: last }));
    } else {
      this.#send(message('appResp', this.id, m.from, this.term, { index: m.index, reject: true, rejectHint: Math.min(m.index - 1, this.lastIndex()) }));
    }
  }

  #handleSnapshot(m: Message): void {
    const s = m.snapshot!;
    if (s.meta.index <= this.committed) {
      this.#send(message('appResp', this.id, m.from, this.term, { index: this.committed }));
      return;
    }
    // If the log already holds the snapshot's last entry, keep what follows.
    if (this.termAt(s.meta.index) === s.meta.term) {
      this.#commitTo(s.meta.index);
      this.#matchedUpTo = s.meta.index;
      this.#send(message('appResp', this.id, m.from, this.term, { index: s.meta.index }));
      return;
    }
    this.#ents = [];
    this.#snapIndex = s.meta.index;
    this.#snapTerm = s.meta.term;
    this.#snapshot = s;
    this.#pendingSnapshot = s;
    this.committed = s.meta.index;
    this.#matchedUpTo = s.meta.index;
    this.#stabled = Math.min(this.#stabled, s.meta.index);
    this.voters = new Set(s.meta.voters);
    this.#send(message('appResp', this.id, m.from, this.term, { index: s.meta.index }));
  }

  #stepLeader(m: Message): void {
    const p = this.#progress.get(m.from);
    if (!p) return;
    p.active = true;
    switch (m.type) {
      case 'appResp': {
        if (m.reject) {
          if (p.state === 'replicate') {
            if (m.index <= p.match) return;  // an answer to an append already superseded
            this.#becomeProbe(p);
          } else {
            if (p.next - 1 !== m.index) return;  // not the probe in flight
            p.next = Math.max(1, Math.min(m.index, m.rejectHint + 1));
            p.paused = false;
          }
          this.#sendAppend(m.from);
          return;
        }
        if (m.index > p.match) {
          p.match = m.index;
          p.next = Math.max(p.next, m.index + 1);
          p.paused = false;
          if (p.state === 'probe' || p.state === 'snapshot') this.#becomeReplicate(p);
          while (p.inflight.length && p.inflight[0]! <= m.index) p.inflight.shift();
          if (this.#maybeCommit()) this.#broadcastAppend();
          else this.#sendAppend(m.from);
          if (m.from === this.#leadTransferee && p.match === this.lastIndex()) this.#send(message('timeoutNow', this.id, m.from, this.term));
        } else if (p.state === 'snapshot' && m.index >= p.match) {
          this.#becomeProbe(p);
          this.#sendAppend(m.from);
        }
        return;
      }
      case 'heartbeatResp': {
        p.paused = false;
        // A snapshot may have been lost: try again from where the follower is.
        if (p.state === 'snapshot') this.#becomeProbe(p);
        if (p.match < this.lastIndex()) this.#sendAppend(m.from);
        if (m.context) this.#ackRead(m.context, m.from);
        return;
      }
    }
  }

  // --- elections -----------------------------------------------------------

  // A pre-vote first (term unchanged); a real election once a majority would
  // vote, or at once when a leader transfer asks (`force`).
  #campaign(kind: 'pre' | 'real', force: boolean): void {
    if (kind === 'pre') this.#becomePreCandidate();
    else this.#becomeCandidate();
    const term = kind === 'pre' ? this.term + 1 : this.term;
    this.#votes.clear();
    this.#votes.set(this.id, true);
    if (this.#wonElection()) {
      if (kind === 'pre') this.#campaign('real', force);
      else this.#becomeLeader();
      return;
    }
    for (const v of this.voters) {
      if (v === this.id) continue;
      this.#send(message(kind === 'pre' ? 'preVote' : 'vote', this.id, v, term, { index: this.lastIndex(), logTerm: this.#lastTerm(), force }));
    }
  }

  #tally(m: Message): void {
    if (!this.voters.has(m.from)) return;
    this.#votes.set(m.from, !m.reject);
    let granted = 0;
    let rejected = 0;
    for (const [id, g] of this.#votes) {
      if (!this.voters.has(id)) continue;
      if (g) granted++;
      else rejected++;
    }
    if (granted >= this.#quorum()) {
      if (this.role === 'preCandidate') this.#campaign('real', false);
      else this.#becomeLeader();
    } else if (rejected >= this.#quorum()) {
      this.#becomeFollower(this.term, 0);
    }
  }

  #wonElection(): boolean {
    let granted = 0;
    for (const [id, g] of this.#votes) if (g && this.voters.has(id)) granted++;
    return granted >= this.#quorum();
  }

  #quorum(): number {
    return Math.floor(this.voters.size / 2) + 1;
  }

  #resetRandomizedTimeout(): void {
    this.#randomizedTimeout = this.#electionTicks + Math.floor(this.#random() * this.#electionTicks);
  }

  #reset(term: number): void {
    if (this.term !== term) {
      this.term = term;
      this.vote = 0;
    }
    this.leader = 0;
    this.#electionElapsed = 0;
    this.#heartbeatElapsed = 0;
    this.#resetRandomizedTimeout();
    this.#votes.clear();
    this.#progress.clear();
    this.#pendingReads = [];
    this.#deferredReads = [];
    this.#leadTransferee = 0;
    this.#matchedUpTo = 0;
  }

  #becomeFollower(term: number, leader: NodeId): void {
    this.#reset(term);
    this.role = 'follower';
    this.leader = leader;
  }

  #becomePreCandidate(): void {
    // Term and vote stay: a pre-vote that fails changes nothing.
    this.#votes.clear();
    this.leader = 0;
    this.role = 'preCandidate';
  }

  #becomeCandidate(): void {
    this.#reset(this.term + 1);
    this.vote = this.id;
    this.role = 'candidate';
  }

  #newProgress(): Progress {
    return { match: 0, next: this.lastIndex() + 1, state: 'probe', inflight: [], paused: false, active: true };
  }

  #becomeLeader(): void {
    this.#reset(this.term);
    this.role = 'leader';
    this.leader = this.id;
    for (const v of this.voters) this.#progress.set(v, this.#newProgress());
    // The leader counts toward a quorum only what it has on disk.
    this.#progress.get(this.id)!.match = this.#stabled;
    // Conf entries not yet committed may still be pending.
    this.#pendingConfIndex = this.lastIndex();
    // An entry of its own term: committing it commits everything before it
    // and lets read-index requests be served.
    this.#appendEntries([{ term: this.term, index: 0, type: 'normal', data: new Uint8Array(0) }]);
  }

  // --- replication -----------------------------------------------------------

  #appendEntries(ents: Entry[]): void {
    let i = this.lastIndex();
    for (const e of ents) {
      e.index = ++i;
      e.term = this.term;
      this.#ents.push(e);
    }
    const self = this.#progress.get(this.id);
    if (self) self.next = this.lastIndex() + 1;
    this.#maybeCommit();
    this.#broadcastAppend();
  }

  #maybeCommit(): boolean {
    const matches = [...this.voters].map((v) => this.#progress.get(v)?.match ?? 0).sort((a, b) => b - a);
    const idx = matches[this.#quorum() - 1] ?? 0;
    // Only entries of the leader's own term are committed by counting.
    if (idx > this.committed && this.termAt(idx) === this.term) {
      this.#commitTo(idx);
      if (this.role === 'leader' && this.#deferredReads.length) {
        for (const ctx of this.#deferredReads.splice(0)) this.#startRead(ctx);
      }
      return true;
    }
    return false;
  }

  #broadcastAppend(): void {
    for (const id of this.#progress.keys()) if (id !== this.id) this.#sendAppend(id);
  }

  #sendAppend(to: NodeId): void {
    const p = this.#progress.get(to);
    if (!p) return;
    if (p.state === 'snapshot') return;
    if (p.state === 'probe' && p.paused) return;
    if (p.state === 'replicate' && p.inflight.length >= this.#maxInflight) return;
    const prev = p.next - 1;
    const prevTerm = this.termAt(prev);
    if (prevTerm === undefined) {
      // Compacted away: the follower needs the snapshot.
      if (!this.#snapshot) return;
      p.state = 'snapshot';
      p.inflight = [];
      this.#send(message('snap', this.id, to, this.term, { snapshot: this.#snapshot }));
      return;
    }
    const entries = this.#entriesFrom(p.next, this.#maxEntries);
    this.#send(message('app', this.id, to, this.term, { index: prev, logTerm: prevTerm, entries, commit: this.committed }));
    if (entries.length === 0) {
      if (p.state === 'probe') p.paused = true;
      return;
    }
    const last = entries[entries.length - 1]!.index;
    if (p.state === 'replicate') {
      p.next = last + 1;
      p.inflight.push(last);
    } else {
      p.paused = true;
    }
  }

  #becomeProbe(p: Progress): void {
    p.state = 'probe';
    p.next = p.match + 1;
    p.inflight = [];
    p.paused = false;
  }

  #becomeReplicate(p: Progress): void {
    p.state = 'replicate';
    p.next = p.match + 1;
    p.inflight = [];
    p.paused = false;
  }

  #broadcastHeartbeat(context: string): void {
    for (const [id, p] of this.#progress) {
      if (id === this.id) continue;
      // A follower gets the commit index only as far as it matches.
      this.#send(message('heartbeat', this.id, id, this.term, { commit: Math.min(p.match, this.committed), context }));
    }
  }

  // --- read index ------------------------------------------------------------

  #startRead(context: string): void {
    const r: PendingRead = { index: this.committed, context, acks: new Set([this.id]) };
    if (r.acks.size >= this.#quorum()) {
      this.#readStates.push({ index: r.index, context });
      return;
    }
    this.#pendingReads.push(r);
    this.#broadcastHeartbeat(context);
  }

  #ackRead(context: string, from: NodeId): void {
    const at = this.#pendingReads.findIndex((r) => r.context === context);
    if (at < 0) return;
    const r = this.#pendingReads[at]!;
    if (this.voters.has(from)) r.acks.add(from);
    if (r.acks.size < this.#quorum()) return;
    // Reads asked earlier are confirmed too: a later round proves leadership at an earlier point.
    for (const done of this.#pendingReads.splice(0, at + 1)) this.#readStates.push({ index: done.index, context: done.context });
  }

  #send(m: Message): void {
    this.#msgs.push(m);
  }
}
