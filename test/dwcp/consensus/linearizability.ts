// A linearizability checker for key-value histories: Wing & Gong's search
// with porcupine's pruning (a cache of (linearized set, state) pairs already
// explored) and P-compositionality (each key is checked on its own, since
// operations on different keys commute).

export type KvInput = { op: 'get' } | { op: 'put'; value: string } | { op: 'delete' } | { op: 'cas'; expect: string | undefined; value: string };
/** get: the value read; put/delete: 'ok'; cas: whether it swapped. `unknown`: the client never heard back. */
export type KvOutput = { value: string | undefined } | { ok: true } | { swapped: boolean } | { unknown: true };

export interface Operation {
  client: number;
  key: string;
  input: KvInput;
  output: KvOutput;
  /** Logical times: invocation, and response (Infinity when unknown). */
  call: number;
  ret: number;
}

type State = string | undefined;

// The sequential specification of one key.
function step(state: State, input: KvInput, output: KvOutput): { ok: boolean; next: State } {
  const unknown = 'unknown' in output;
  switch (input.op) {
    case 'get':
      return { ok: unknown || ('value' in output && output.value === state), next: state };
    case 'put':
      return { ok: true, next: input.value };
    case 'delete':
      return { ok: true, next: undefined };
    case 'cas': {
      const swaps = state === input.expect;
      if (unknown) return { ok: true, next: swaps ? input.value : state };
      return { ok: 'swapped' in output && output.swapped === swaps, next: swaps ? input.value : state };
    }
  }
}

interface Node {
  op: number;
  isCall: boolean;
  time: number;
  match: Node | undefined; // call -> its return
  prev: Node | undefined;
  next: Node | undefined;
}

export interface CheckResult {
  ok: boolean;
  /** The key whose history has no linearization. */
  key?: string;
  /** Its operations, for a failure report. */
  history?: Operation[];
}

/** Checks one key's history; `budget` bounds the search steps (undefined result when exhausted). */
function checkKey(ops: Operation[], budget: number): boolean | undefined {
  // The history as a linked list of call and return events by time.
  const events: Node[] = [];
  ops.forEach((o, i) => {
    const call: Node = { op: i, isCall: true, time: o.call, match: undefined, prev: undefined, next: undefined };
    const ret: Node = { op: i, isCall: false, time: o.ret, match: undefined, prev: undefined, next: undefined };
    call.match = ret;
    events.push(call, ret);
  });
  // Returns after calls at equal times would claim a precedence that does not exist; calls first.
  events.sort((a, b) => a.time - b.time || (a.isCall === b.isCall ? 0 : a.isCall ? -1 : 1));
  const head: Node = { op: -1, isCall: false, time: -Infinity, match: undefined, prev: undefined, next: undefined };
  let prev = head;
  for (const e of events) {
    prev.next = e;
    e.prev = prev;
    prev = e;
  }
  const lift = (call: Node): void => {
    call.prev!.next = call.next;
    if (call.next) call.next.prev = call.prev;
    const r = call.match!;
    r.prev!.next = r.next;
    if (r.next) r.next.prev = r.prev;
  };
  const unlift = (call: Node): void => {
    const r = call.match!;
    r.prev!.next = r;
    if (r.next) r.next.prev = r;
    call.prev!.next = call;
    if (call.next) call.next.prev = call;
  };
  const linearized = new Uint8Array(ops.length);
  const seen = new Set<string>();
  const stack: Array<{ call: Node; state: State }> = [];
  let state: State = undefined;
  let entry = head.next;
  while (head.next) {
    if (--budget < 0) return undefined;
    if (!entry) return false; // cannot happen: a return always follows
    if (entry.isCall) {
      const o = ops[entry.op]!;
      const r = step(state, o.input, o.output);
      if (r.ok) {
        linearized[entry.op] = 1;
        const key = `${Buffer.from(linearized).toString('base64')}|${r.next === undefined ? '\u0000' : r.next}`;
        if (!seen.has(key)) {
          seen.add(key);
          stack.push({ call: entry, state });
          state = r.next;
          lift(entry);
          entry = head.next;
          continue;
        }
        linearized[entry.op] = 0;
      }
      entry = entry.next;
    } else {
      // A return whose call is not linearized yet: back up.
      const top = stack.pop();
      if (!top) return false;
      state = top.state;
      linearized[top.call.op] = 0;
      unlift(top.call);
      entry = top.call.next;
    }
  }
  return true;
}

/** Checks a whole history. Unknown-outcome operations may or may not have happened. */
export function checkLinearizable(history: readonly Operation[], budget = 5_000_000): CheckResult {
  const byKey = new Map<string, Operation[]>();
  for (const o of history) {
    if (o.input.op === 'get' && 'unknown' in o.output) continue; // a read nobody saw has no effect
    let l = byKey.get(o.key);
    if (!l) byKey.set(o.key, (l = []));
    l.push(o);
  }
  for (const [key, ops] of byKey) {
    const r = checkKey(ops, budget);
    if (r === undefined) throw new Error(`linearizability check of key ${key} exceeded its budget (${ops.length} operations)`);
    if (!r) return { ok: false, key, history: ops };
  }
  return { ok: true };
}
