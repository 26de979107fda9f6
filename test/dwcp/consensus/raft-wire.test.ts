// Raft's wire decoder, fuzzed: whatever bytes a peer or a stranger sends, the
// decoder returns a well-typed message or throws ERR_RAFT_MALFORMED, and a
// node's transport drops the connection that carried it and carries on.
import t from 'tap';
import net from 'node:net';
import { once } from 'node:events';
import { decodeMessage, encodeMessage, jsonFrame, RaftTransport } from '../../../src/dwcp/consensus/raft/transport.js';
import type { Message, MessageType } from '../../../src/dwcp/consensus/raft/types.js';
import { rng } from '../../helpers.js';

const TYPES: MessageType[] = ['app', 'appResp', 'vote', 'voteResp', 'preVote', 'preVoteResp', 'heartbeat', 'heartbeatResp', 'snap', 'timeoutNow'];

function sample(r: () => number): Message {
  const int = (n: number): number => Math.floor(r() * n);
  const bytes = (n: number): Uint8Array => Uint8Array.from({ length: n }, () => int(256));
  const type = TYPES[int(TYPES.length)]!;
  return {
    type,
    from: 1 + int(5),
    to: 1 + int(5),
    term: int(1000),
    logTerm: int(1000),
    index: int(1e6),
    entries: type === 'app' ? Array.from({ length: int(4) }, (_, i) => ({ term: int(1000), index: i + 1, type: r() < 0.2 ? 'conf' : 'normal', data: bytes(int(40)) })) : [],
    commit: int(1e6),
    reject: r() < 0.3,
    rejectHint: int(1e6),
    context: r() < 0.3 ? `ctx${int(100)}` : '',
    snapshot: type === 'snap' ? { meta: { index: int(1e6), term: int(100), voters: [1, 2, 3] }, data: bytes(int(100)) } : undefined,
    force: r() < 0.1,
  };
}

// What any decoded message must look like, whatever it came from.
function wellTyped(m: Message): boolean {
  const nat = (v: unknown): boolean => Number.isSafeInteger(v) && (v as number) >= 0;
  const id = (v: unknown): boolean => Number.isSafeInteger(v) && (v as number) >= 1;
  return (
    TYPES.includes(m.type) && id(m.from) && id(m.to) && nat(m.term) && nat(m.logTerm) && nat(m.index) && nat(m.commit) && nat(m.rejectHint) &&
    typeof m.reject === 'boolean' && typeof m.force === 'boolean' && typeof m.context === 'string' &&
    Array.isArray(m.entries) && m.entries.every((e) => nat(e.term) && nat(e.index) && (e.type === 'normal' || e.type === 'conf') && e.data instanceof Uint8Array) &&
    (m.snapshot === undefined || (nat(m.snapshot.meta.index) && nat(m.snapshot.meta.term) && m.snapshot.meta.voters.every(id) && m.snapshot.data instanceof Uint8Array))
  );
}

const body = (m: Message): Buffer => encodeMessage(m).subarray(4);

t.test('every message survives the round trip', async (t) => {
  const r = rng(7);
  for (let i = 0; i < 500; i++) {
    const m = sample(r);
    t.same(decodeMessage(body(m)), m, `${m.type} ${i}`, { diagnostic: false });
  }
  // Fields a type does not use may be left out.
  t.same(decodeMessage(Buffer.from('{"type":"heartbeat","from":2,"to":1,"term":3}')), {
    type: 'heartbeat', from: 2, to: 1, term: 3, logTerm: 0, index: 0, entries: [], commit: 0, reject: false, rejectHint: 0, context: '', snapshot: undefined, force: false,
  });
});

t.test('mutated and hostile bodies: a well-typed message or ERR_RAFT_MALFORMED, nothing else', async (t) => {
  const r = rng(20261128);
  const int = (n: number): number => Math.floor(r() * n);
  const junk: unknown[] = [null, true, -1, 1.5, 2 ** 60, '', 'x', [], {}, [1], { a: 1 }, 'AAAA', '!!', -0, 1e308];
  let decoded = 0;
  let refused = 0;
  const wrong: string[] = [];
  for (let i = 0; i < 20000; i++) {
    const m = sample(r);
    let b: Buffer;
    if (i % 2 === 0) {
      // Byte level: flips, insertions, deletions, truncation.
      b = Buffer.from(body(m));
      for (let k = 1 + int(4); k > 0; k--) {
        const at = int(b.length);
        const op = int(4);
        if (op === 0) b[at] = int(256);
        else if (op === 1) b = Buffer.concat([b.subarray(0, at), Buffer.from([int(256)]), b.subarray(at)]);
        else if (op === 2) b = Buffer.concat([b.subarray(0, at), b.subarray(at + 1)]);
        else b = b.subarray(0, at);
      }
    } else {
      // Field level: a field (of the message, an entry or the snapshot) given a value of another type.
      const w = JSON.parse(body(m).toString()) as Record<string, unknown>;
      const target = (int(3) === 0 && Array.isArray(w.entries) && w.entries.length ? (w.entries as Record<string, unknown>[])[0] : int(4) === 0 && w.snapshot ? (w.snapshot as Record<string, unknown>) : w)!;
      const keys = [...Object.keys(target), 'extra'];
      const key = keys[int(keys.length)]!;
      if (int(5) === 0) delete target[key];
      else target[key] = junk[int(junk.length)];
      b = Buffer.from(JSON.stringify(int(20) === 0 ? junk[int(junk.length)] : w));
    }
    try {
      const got = decodeMessage(b);
      if (!wellTyped(got)) wrong.push(`returned a badly typed message for ${b.toString().slice(0, 120)}`);
      decoded++;
    } catch (err) {
      if ((err as { code?: string }).code !== 'ERR_RAFT_MALFORMED') wrong.push(`${String(err)} for ${b.toString().slice(0, 120)}`);
      refused++;
    }
  }
  t.same(wrong.slice(0, 5), [], 'no other outcome');
  t.ok(decoded > 1000 && refused > 5000, `both outcomes seen (${decoded} decoded, ${refused} refused)`);
});

t.test("a node's transport drops a connection that sends garbage, and keeps serving the others", async (t) => {
  const got: Message[] = [];
  const tr = new RaftTransport(1, new Map([[1, { host: '127.0.0.1', port: 1 }]]), (m) => got.push(m));
  const port = await tr.listen(0);
  const dial = async (): Promise<net.Socket> => {
    const s = net.connect(port, '127.0.0.1');
    await once(s, 'connect');
    return s;
  };
  const closed = (s: net.Socket): Promise<unknown> => once(s, 'close');
  const hostile: Buffer[] = [
    jsonFrame({ type: 'app', from: 2, to: 1, term: 'five', entries: [] }),
    jsonFrame({ type: 'app', from: 2, to: 1, term: 5, entries: [{ term: 1, index: 1, type: 'normal', data: 7 }] }),
    jsonFrame({ type: 'heartbeat', from: 2, to: 9, term: 5 }), // for another node
    Buffer.concat([Buffer.from([5, 0, 0, 0]), Buffer.from('{"typ')]),
    Buffer.from([0xff, 0xff, 0xff, 0xff, 1, 2, 3]), // a frame longer than the limit
  ];
  for (const frame of hostile) {
    const s = await dial();
    const gone = closed(s);
    s.on('error', () => undefined);
    s.write(frame);
    await gone;
  }
  t.equal(got.length, 0, 'nothing malformed reached Raft');
  const good: Message = { ...sample(rng(3)), type: 'heartbeat', from: 2, to: 1, entries: [], snapshot: undefined };
  const s = await dial();
  s.write(encodeMessage(good));
  for (let i = 0; i < 200 && got.length === 0; i++) await new Promise((r) => setTimeout(r, 5));
  t.same(got, [good], 'a well-formed message still arrives');
  s.destroy();
  await tr.close();
});
