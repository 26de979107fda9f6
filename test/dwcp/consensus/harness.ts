// A step-by-step Raft cluster for the scenario files: messages wait in one
// queue until delivered, writes are durable at once, and every change worth
// seeing is printed. Commands (one per block, in testdata/*.txt):
//   cluster <n>                 fresh nodes 1..n, all voters
//   tick <id> [count]           ticks one node (no delivery)
//   elect <id>                  ticks <id> until it campaigns, then stabilizes
//   stabilize                   delivers messages and processes until quiet
//   deliver                     one round: the messages queued now are delivered and processed
//   partition <ids> | <ids>     cuts every link between the two groups
//   heal                        restores all links
//   propose <id> <text>         a command at <id>
//   read <id> <context>         a read-index request at <id>
//   transfer <id> <to>          leader <id> hands over to <to>
//   add <id> <node> / remove <id> <node>   a membership change proposed at <id>
//   compact <id>                snapshot <id> at what it has applied
//   crash <id> / restart <id>   stop a node; start it from its stored state
//   status                      role, term, leader, commit and last index per node
//   log <id>                    a node's entries: index/term:text ('-' for a leader's empty entry)
import { Raft } from '../../../src/dwcp/consensus/raft/raft.js';
import { decodeConfChange } from '../../../src/dwcp/consensus/raft/raft.js';
import type { Entry, HardState, Message, NodeId, Snapshot } from '../../../src/dwcp/consensus/raft/types.js';
import { seeded } from './sim.js';

interface Node {
  raft: Raft;
  up: boolean;
  stored: { hard: HardState; snapshot: Snapshot | undefined; entries: Entry[] };
  applied: string[];
}

const text = (e: Entry): string => (e.type === 'conf' ? (({ type, node }) => `${type} ${node}`)(decodeConfChange(e.data)) : Buffer.from(e.data).toString() || '(empty)');

export class Harness {
  nodes = new Map<NodeId, Node>();
  #queue: Message[] = [];
  #cut = new Set<string>();
  #random = seeded(1);
  #voters: NodeId[] = [];
  #out: string[] = [];

  #start(id: NodeId, stored: Node['stored'], voters: NodeId[]): Node {
    const raft = new Raft({ id, voters, stored: { hardState: { ...stored.hard }, snapshot: stored.snapshot, entries: stored.entries.map((e) => ({ ...e })) }, electionTicks: 10, heartbeatTicks: 1, random: this.#random });
    return { raft, up: true, stored, applied: [] };
  }

  #node(id: string | undefined): Node {
    const n = this.nodes.get(Number(id));
    if (!n) throw new Error(`no node ${id}`);
    return n;
  }

  // Persist, queue messages, apply, advance: until the node has nothing to do.
  #process(id: NodeId): void {
    const n = this.nodes.get(id)!;
    while (n.up && n.raft.hasReady()) {
      const rd = n.raft.ready();
      if (rd.soft) this.#out.push(`${id} is ${rd.soft.role}${rd.soft.role === 'leader' ? '' : rd.soft.leader ? ` (leader ${rd.soft.leader})` : ''} at term ${n.raft.term}`);
      if (rd.snapshot) {
        n.stored.snapshot = rd.snapshot;
        n.stored.entries = [];
        n.applied = Buffer.from(rd.snapshot.data).toString().split(',').filter(Boolean);
        this.#out.push(`${id} installed snapshot at ${rd.snapshot.meta.index} (voters ${rd.snapshot.meta.voters.join(' ')})`);
      }
      if (rd.entries.length) {
        const first = rd.entries[0]!.index;
        n.stored.entries = n.stored.entries.filter((e) => e.index < first).concat(rd.entries.map((e) => ({ ...e })));
      }
      if (rd.hardState) n.stored.hard = { ...rd.hardState };
      this.#queue.push(...rd.messages);
      for (const e of rd.committed) if (e.data.length) n.applied.push(text(e));
      for (const r of rd.readStates) this.#out.push(`${id} read ${r.context} at index ${r.index}`);
      n.raft.advance(rd);
    }
  }

  #stabilize(): void {
    for (let rounds = 0; rounds < 1000; rounds++) {
      for (const id of this.nodes.keys()) this.#process(id);
      if (this.#queue.length === 0) return;
      this.#deliver();
    }
    throw new Error('did not stabilize in 1000 rounds');
  }

  #deliver(): void {
    for (const m of this.#queue.splice(0)) {
      const to = this.nodes.get(m.to);
      if (!to?.up || this.#cut.has(`${m.from}-${m.to}`)) continue;
      to.raft.step(m);
    }
    for (const id of this.nodes.keys()) this.#process(id);
  }

  run(cmd: string, args: string[]): string {
    this.#out = [];
    switch (cmd) {
      case 'cluster': {
        const n = Number(args[0]);
        this.#voters = Array.from({ length: n }, (_, i) => i + 1);
        this.nodes.clear();
        this.#queue = [];
        for (const id of this.#voters) this.nodes.set(id, this.#start(id, { hard: { term: 0, vote: 0, commit: 0 }, snapshot: undefined, entries: [] }, this.#voters));
        break;
      }
      case 'tick': {
        const n = this.#node(args[0]);
        for (let i = 0; i < Number(args[1] ?? 1); i++) n.raft.tick();
        this.#process(Number(args[0]));
        break;
      }
      case 'elect': {
        const n = this.#node(args[0]);
        for (let i = 0; i < 100 && n.raft.role === 'follower'; i++) n.raft.tick();
        this.#stabilize();
        break;
      }
      case 'stabilize':
        this.#stabilize();
        break;
      case 'deliver':
        this.#deliver();
        break;
      case 'partition': {
        const bar = args.indexOf('|');
        const [a, b] = [args.slice(0, bar).map(Number), args.slice(bar + 1).map(Number)];
        for (const x of a) for (const y of b) this.#cut.add(`${x}-${y}`).add(`${y}-${x}`);
        break;
      }
      case 'heal':
        this.#cut.clear();
        break;
      case 'propose':
        this.#out.push(this.#node(args[0]).raft.propose(Buffer.from(args.slice(1).join(' '))) ? 'ok' : 'refused');
        this.#process(Number(args[0]));
        break;
      case 'read':
        this.#out.push(this.#node(args[0]).raft.readIndex(args[1]!) ? 'ok' : 'refused');
        this.#process(Number(args[0]));
        break;
      case 'transfer':
        this.#out.push(this.#node(args[0]).raft.transferLeader(Number(args[1])) ? 'ok' : 'refused');
        this.#process(Number(args[0]));
        break;
      case 'add':
      case 'remove': {
        const node = Number(args[1]);
        if (cmd === 'add' && !this.nodes.has(node)) {
          // A new, empty node: it learns the membership from the leader.
          this.nodes.set(node, this.#start(node, { hard: { term: 0, vote: 0, commit: 0 }, snapshot: undefined, entries: [] }, []));
        }
        this.#out.push(this.#node(args[0]).raft.proposeConfChange({ type: cmd, node }) ? 'ok' : 'refused');
        this.#process(Number(args[0]));
        break;
      }
      case 'compact': {
        const n = this.#node(args[0]);
        const s = n.raft.compact(n.raft.applied, Buffer.from(n.applied.join(',')));
        n.stored.snapshot = s;
        n.stored.entries = n.stored.entries.filter((e) => e.index > s.meta.index);
        this.#out.push(`${args[0]} compacted to ${s.meta.index}`);
        break;
      }
      case 'crash':
        this.#node(args[0]).up = false;
        break;
      case 'restart': {
        const id = Number(args[0]);
        const old = this.#node(args[0]);
        this.nodes.set(id, this.#start(id, old.stored, this.#voters));
        break;
      }
      case 'status':
        for (const [id, n] of this.nodes) {
          const r = n.raft;
          this.#out.push(`${id}: ${n.up ? r.role : 'down'} term ${r.term} leader ${r.leader} commit ${r.committed} last ${r.lastIndex()} voters ${[...r.voters].sort().join(' ')}`);
        }
        break;
      case 'log': {
        const r = this.#node(args[0]).raft;
        const parts: string[] = [];
        if (r.firstIndex() > 1) parts.push(`(snapshot ${r.firstIndex() - 1})`);
        for (const e of r.entriesFrom(r.firstIndex())) parts.push(`${e.index}/${e.term}:${e.data.length ? text(e) : '-'}`);
        this.#out.push(parts.join(' '));
        break;
      }
      case 'applied':
        this.#out.push(this.#node(args[0]).applied.join(' '));
        break;
      default:
        throw new Error(`unknown command ${cmd}`);
    }
    return this.#out.join('\n');
  }
}
