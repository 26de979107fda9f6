// Raft's data: log entries, persistent state, messages, and the storage
// contract a driver implements. Node ids are positive integers (0 is "none").

export type NodeId = number;

export type EntryType = 'normal' | 'conf';

/** One log entry. `conf` entries carry a ConfChange as JSON. */
export interface Entry {
  term: number;
  index: number;
  type: EntryType;
  data: Uint8Array;
}

/** A single-server membership change. */
export interface ConfChange {
  type: 'add' | 'remove';
  node: NodeId;
  /** add: where the new member's Raft port is (host:port), for drivers that dial members. */
  address?: string;
}

/** What must be on disk (fsynced) before the messages of the same Ready go out. */
export interface HardState {
  term: number;
  /** Who this node voted for in `term`; 0: nobody. */
  vote: NodeId;
  commit: number;
}

export interface SnapshotMeta {
  /** Last entry the snapshot covers, and its term. */
  index: number;
  term: number;
  /** Voters as of `index`. */
  voters: NodeId[];
}

export interface Snapshot {
  meta: SnapshotMeta;
  data: Uint8Array;
}

export type MessageType =
  | 'app'
  | 'appResp'
  | 'vote'
  | 'voteResp'
  | 'preVote'
  | 'preVoteResp'
  | 'heartbeat'
  | 'heartbeatResp'
  | 'snap'
  | 'timeoutNow';

/** A message between nodes. Fields a type does not use are 0, empty or false. */
export interface Message {
  type: MessageType;
  from: NodeId;
  to: NodeId;
  term: number;
  /** app: term of the entry at `index`; vote: term of the candidate's last entry. */
  logTerm: number;
  /** app: index before `entries`; appResp: last index matched (or rejected); vote: candidate's last index. */
  index: number;
  entries: Entry[];
  commit: number;
  reject: boolean;
  /** appResp rejection: the follower's last index, where the leader should probe next. */
  rejectHint: number;
  /** heartbeat / heartbeatResp: read-index request this round answers ("" for none). */
  context: string;
  snapshot: Snapshot | undefined;
  /** vote: a leader transfer asked for this election, so voters need not wait out a leader's lease. */
  force: boolean;
}

/** A linearizable read may be served once the state machine has applied `index`. */
export interface ReadState {
  index: number;
  context: string;
}

export type Role = 'follower' | 'preCandidate' | 'candidate' | 'leader';

/**
 * What the driver does next, in this order: persist `hardState`, `snapshot`
 * and `entries` (fsync); send `messages` (those for which
 * `sendableBeforePersist` holds may go before the fsync); apply `snapshot`
 * then `committed` to the state machine; serve `readStates` once applied;
 * then call `advance(ready)`.
 */
export interface Ready {
  hardState: HardState | undefined;
  /** Entries to append to the log on disk, replacing any there from the first one's index on. */
  entries: Entry[];
  snapshot: Snapshot | undefined;
  committed: Entry[];
  messages: Message[];
  readStates: ReadState[];
  /** Changes of leader or role since the last Ready. */
  soft: { leader: NodeId; role: Role } | undefined;
}

/**
 * The persisted state a node starts from (after a restart: what was
 * fsynced). The driver owns writing it; the core only reads it at start.
 */
export interface StoredState {
  hardState: HardState;
  snapshot: Snapshot | undefined;
  /** Entries after the snapshot, consecutive. */
  entries: Entry[];
}

export function message(type: MessageType, from: NodeId, to: NodeId, term: number, fields: Partial<Message> = {}): Message {
  return { type, from, to, term, logTerm: 0, index: 0, entries: [], commit: 0, reject: false, rejectHint: 0, context: '', snapshot: undefined, force: false, ...fields };
}
