// PBFT with n = 4 (f = 1) under a seeded, virtual-time simulator: messages
// delayed, reordered and duplicated; one replica Byzantine in one of several
// ways. Safety: correct replicas execute the same request at every sequence
// number, and every result a client accepts is the one they executed.
// Liveness: every client request completes, with a view change where the
// primary is the faulty one.
import t from 'tap';
import { generateKeyPairSync, type KeyObject } from 'node:crypto';
import net from 'node:net';
import { once } from 'node:events';
import { PbftClient, PbftReplica, digestOf, signBody, type Outbound, type Signed } from '../../../src/dwcp/consensus/pbft/pbft.js';
import { seeded } from './sim.js';

type Fault = 'none' | 'partitioned-backup' | 'lying-state' | 'silent-primary' | 'equivocating-primary' | 'inventing-primary' | 'forging-backup' | 'replaying-backup' | 'forged-digest-primary';

interface Run {
  executed: Map<number, string>[]; // per replica: seq -> request identity
  accepted: Array<{ client: string; ts: number; result: string }>;
  completed: number;
  wanted: number;
  views: number[];
  logSizes: number[];
  lastExecuted: number[];
  /** partitioned-backup: what the others had executed when the cut ended. */
  gapAt: number;
}

const N = 4;
const keys = Array.from({ length: N }, () => generateKeyPairSync('ed25519'));
const clientKeys = Array.from({ length: 3 }, () => generateKeyPairSync('ed25519'));
const publicKeys = new Map<number | string, KeyObject>([...keys.map((k, i) => [i, k.publicKey] as const), ...clientKeys.map((k, i) => [`c${i}`, k.publicKey] as const)]);

function simulate(seed: number, fault: Fault, requestsPerClient = fault === 'partitioned-backup' || fault === 'lying-state' ? 80 : 12): Run {
  const rnd = seeded(seed);
  const bad = fault === 'none' || fault === 'partitioned-backup' ? -1 : fault.endsWith('primary') ? 0 : 2;
  const replicas = keys.map((k, id) => new PbftReplica({ id, n: N, privateKey: k.privateKey, publicKeys, checkpointInterval: 4, viewTimeoutTicks: 15 }));
  const clients = clientKeys.map((k, i) => new PbftClient(`c${i}`, k.privateKey, publicKeys, N));
  const executed = replicas.map(() => new Map<number, string>());
  const accepted: Run['accepted'] = [];
  const seen: Signed[] = []; // what the replaying replica has overheard
  let now = 0;
  let seq = 0;
  const events: Array<{ at: number; seq: number; run: () => void }> = [];
  const at = (delay: number, run: () => void): void => {
    events.push({ at: now + delay, seq: seq++, run });
    events.sort((a, b) => a.at - b.at || a.seq - b.seq);
  };
  const heardRequests: Signed[] = []; // client requests that reached the Byzantine replica
  const deliverTo = (to: number, m: Signed): void => {
    if (to === bad && m.body.type === 'request') heardRequests.push(m);
    at(0.2 + rnd() * 8, () => {
      replicas[to]!.step(m);
      flush(to);
    });
    if (rnd() < 0.05) at(0.2 + rnd() * 20, () => (replicas[to]!.step(m), flush(to))); // duplicate
  };
  const toClient = (client: string, m: Signed): void => {
    at(0.2 + rnd() * 8, () => {
      const c = clients.find((x) => x.id === client);
      if (!c) return;
      const before = c.result;
      const r = c.onReply(m);
      if (r !== undefined && before === undefined) {
        accepted.push({ client, ts: m.body.ts!, result: r });
        nextRequest(c);
      }
    });
  };
  // An honest replica cut off for a while: it misses whole checkpoints and must catch up by state transfer.
  const cutOff = (x: number | string): boolean => (fault === 'partitioned-backup' || fault === 'lying-state') && x === 3 && now >= 200 && now < 700;
  const route = (from: number | string, o: Outbound): void => {
    const targets = (o.to === 'all' ? [0, 1, 2, 3].filter((x) => x !== from) : typeof o.to === 'number' ? [o.to] : []).filter((to) => !cutOff(to) && !cutOff(from));
    if (typeof o.to === 'string' && o.to !== 'all') return toClient(o.to, o.msg);
    for (const to of targets) deliverTo(to, o.msg);
  };
  // The Byzantine replica's outgoing traffic, rewritten.
  const byzantine = (o: Outbound): void => {
    const b = o.msg.body;
    switch (fault) {
      case 'silent-primary':
        return; // says nothing at all
      case 'equivocating-primary': {
        if (b.type !== 'prePrepare' || !b.request) return route(bad, o);
        // Replica 1 is told sequence number n holds this request, replicas 2
        // and 3 that it holds another client's (really signed) request.
        const other = [...heardRequests].reverse().find((r) => digestOf(r.body.request!) !== b.digest);
        deliverTo(1, o.msg);
        if (!other) return;
        const forked = signBody({ ...b, request: other.body.request!, digest: digestOf(other.body.request!), clientSig: other.sig }, keys[bad]!.privateKey);
        deliverTo(2, forked);
        deliverTo(3, forked);
        return;
      }
      case 'inventing-primary': {
        // Requests no client sent (or signed): replaced outright.
        if (b.type !== 'prePrepare' || !b.request) return route(bad, o);
        const made = { ...b.request, op: `${b.request.op}-evil` };
        return route(bad, { to: o.to, msg: signBody({ ...b, request: made, digest: digestOf(made) }, keys[bad]!.privateKey) });
      }
      case 'forged-digest-primary': {
        // Pre-prepares whose digest does not match the request they carry.
        if (b.type !== 'prePrepare' || !b.request) return route(bad, o);
        return route(bad, { to: o.to, msg: signBody({ ...b, digest: digestOf({ ...b.request, op: 'other' }) }, keys[bad]!.privateKey) });
      }
      case 'forging-backup': {
        route(bad, o);
        // Prepares and commits for made-up digests, and messages in other replicas' names.
        if (b.type === 'prepare' || b.type === 'commit') {
          route(bad, { to: 'all', msg: signBody({ ...b, digest: 'f'.repeat(64) }, keys[bad]!.privateKey) });
          for (const victim of [1, 3]) route(bad, { to: 'all', msg: signBody({ ...b, from: victim, digest: 'e'.repeat(64) }, keys[bad]!.privateKey) });
        }
        return;
      }
      case 'lying-state': {
        // Answers a lagging replica's fetch with made-up results, properly signed by itself.
        if (b.type !== 'state' || !b.entries) return route(bad, o);
        const lie = b.entries.map((e) => ({ ...e, result: `${e.result}-lie` }));
        return route(bad, { to: o.to, msg: signBody({ ...b, entries: lie }, keys[bad]!.privateKey) });
      }
      case 'replaying-backup': {
        route(bad, o);
        // Old messages of anyone, sent again at random.
        for (let i = 0; i < 2 && seen.length; i++) route(bad, { to: 'all', msg: seen[Math.floor(rnd() * seen.length)]! });
        return;
      }
      default:
        return route(bad, o);
    }
  };
  const flush = (id: number): void => {
    const rd = replicas[id]!.ready();
    for (const e of rd.executed) executed[id]!.set(e.seq, `${e.request.client}/${e.request.ts}/${e.request.op}->${e.result}`);
    for (const o of rd.messages) {
      if (fault === 'replaying-backup' && seen.length < 5000) seen.push(o.msg);
      if (id === bad) byzantine(o);
      else route(id, o);
    }
  };
  let wanted = 0;
  const nextRequest = (c: PbftClient): void => {
    const done = accepted.filter((a) => a.client === c.id).length;
    if (done >= requestsPerClient) return;
    wanted++;
    const o = c.request(`op${done}`);
    route(c.id, o);
    const ts = done + 1;
    // No answer in time: to every replica (they forward it and start their timers).
    const retry = (): void => {
      if (accepted.some((a) => a.client === c.id && a.ts === ts)) return;
      const r = c.retransmit();
      if (r) route(c.id, r);
      at(300, retry);
    };
    at(300, retry);
  };
  for (const c of clients) at(rnd() * 10, () => nextRequest(c));
  for (let id = 0; id < N; id++) {
    const tick = (): void => {
      replicas[id]!.tick();
      flush(id);
      at(10, tick);
    };
    at(rnd() * 10, tick);
  }
  let gapAt = 0;
  if (fault === 'partitioned-backup' || fault === 'lying-state') at(700, () => (gapAt = replicas[0]!.lastExecuted - replicas[3]!.lastExecuted));
  while (events.length && now < 60_000 && accepted.length < clients.length * requestsPerClient) {
    const e = events.shift()!;
    now = e.at;
    e.run();
  }
  return { executed, accepted, completed: accepted.length, wanted: clients.length * requestsPerClient, views: replicas.map((r) => r.view), logSizes: replicas.map((r) => r.logSize), lastExecuted: replicas.map((r) => r.lastExecuted), gapAt };
}

// What is wrong with a run's outcome, if anything.
function safetyProblems(run: Run, bad: number): string[] {
  const problems: string[] = [];
  const honest = run.executed.filter((_, i) => i !== bad);
  // Same request at every sequence number any two correct replicas executed.
  const bySeq = new Map<number, string>();
  for (const ex of honest) {
    for (const [s, what] of ex) {
      const have = bySeq.get(s);
      if (have !== undefined && have !== what) problems.push(`sequence ${s}: ${have} and ${what}`);
      bySeq.set(s, what);
    }
  }
  // Every accepted result is what correct replicas executed for that request.
  const results = new Map<string, string>();
  for (const what of bySeq.values()) {
    const [id, result] = what.split('->') as [string, string];
    results.set(id.split('/').slice(0, 2).join('/'), result);
  }
  for (const a of run.accepted) if (results.get(`${a.client}/${a.ts}`) !== a.result) problems.push(`${a.client}/${a.ts} accepted ${a.result}`);
  for (const w of bySeq.values()) if (w.includes('-evil')) problems.push(`equivocated request executed: ${w}`);
  return problems;
}

t.test('a replica cut off through several checkpoints catches up by state transfer', async (t) => {
  for (let seed = 1; seed <= 4; seed++) {
    const run = simulate(seed, 'partitioned-backup');
    t.equal(run.completed, run.wanted, `seed ${seed}: every request completed`);
    t.same(safetyProblems(run, -1), [], `seed ${seed}: all four agree`);
    const [a, , , behind] = run.lastExecuted as [number, number, number, number];
    t.ok(behind >= a - 8, `seed ${seed}: the cut-off replica is back within two checkpoints (${run.lastExecuted.join(' ')})`);
    t.ok(run.gapAt > 0 && behind > run.gapAt + 8, `seed ${seed}: it had missed checkpoints (cut off at ${run.gapAt}) and is past them`);
  }
});

t.test('a lying answer to a state fetch is refused', async (t) => {
  for (let seed = 1; seed <= 3; seed++) {
    const run = simulate(seed, 'lying-state');
    t.same(safetyProblems(run, 2), [], `seed ${seed}: the lagging replica took no made-up state`);
    t.notOk([...run.executed[3]!.values()].some((w) => w.endsWith('-lie')));
    t.ok(run.lastExecuted[3]! >= run.lastExecuted[0]! - 8, `seed ${seed}: and caught up from the honest ones (${run.lastExecuted.join(' ')})`);
  }
});

for (const fault of ['none', 'silent-primary', 'equivocating-primary', 'inventing-primary', 'forged-digest-primary', 'forging-backup', 'replaying-backup'] as const) {
  t.test(`${fault}: safe and live over seeds 1-4`, async (t) => {
    for (let seed = 1; seed <= 4; seed++) {
      const run = simulate(seed, fault);
      const bad = fault === 'none' ? -1 : fault.endsWith('primary') ? 0 : 2;
      t.equal(run.completed, run.wanted, `seed ${seed}: every request completed (${run.completed}/${run.wanted})`);
      t.same(safetyProblems(run, bad), [], `seed ${seed}: correct replicas agree; clients accepted only executed results`);
      const honestViews = run.views.filter((_, i) => i !== bad);
      if (fault.endsWith('primary')) t.ok(honestViews.every((v) => v >= 1), `seed ${seed}: the faulty primary was voted out (views ${run.views.join(' ')})`);
      else t.ok(honestViews.every((v) => v === 0), `seed ${seed}: no needless view change (views ${run.views.join(' ')})`);
      // Checkpoints keep the log short: 36 requests, checkpoints every 4.
      t.ok(Math.max(...run.logSizes.filter((_, i) => i !== bad)) <= 24, `seed ${seed}: log garbage-collected (sizes ${run.logSizes.join(' ')})`);
    }
  });
}

t.test('signatures: forged, altered and unknown senders are refused', async (t) => {
  const r = new PbftReplica({ id: 1, n: N, privateKey: keys[1]!.privateKey, publicKeys });
  const req = { client: 'c0', ts: 1, op: 'x' };
  const clientSig = signBody({ type: 'request', from: 'c0', request: req }, clientKeys[0]!.privateKey).sig;
  const good = signBody({ type: 'prePrepare', from: 0, view: 0, seq: 1, digest: digestOf(req), request: req, clientSig }, keys[0]!.privateKey);
  const { clientSig: _dropped, ...unsigned } = good.body;
  r.step(signBody(unsigned, keys[0]!.privateKey)); // a request its client never signed
  r.step({ ...good, body: { ...good.body, seq: 2 } }); // altered after signing
  r.step(signBody({ ...good.body }, keys[2]!.privateKey)); // signed by 2 in 0's name
  r.step(signBody({ ...good.body, from: 9 }, keys[2]!.privateKey)); // unknown sender
  r.step({ ...good, sig: 'not base64 at all' });
  t.equal(r.ready().messages.length, 0, 'nothing accepted, nothing sent');
  r.step(good);
  const out = r.ready().messages;
  t.equal(out.length, 1);
  t.equal(out[0]!.msg.body.type, 'prepare');
  t.throws(() => new PbftReplica({ id: 0, n: 5, privateKey: keys[0]!.privateKey, publicKeys }), RangeError);
});

t.test('over TCP: four replica drivers and a client, through the primary going down', async (t) => {
  const { PbftNode, PbftNetClient } = await import('../../../src/dwcp/consensus/pbft/node.js');
  const { freePort } = await import('../../services.js');
  const peers = new Map(await Promise.all([0, 1, 2, 3].map(async (i) => [i, { host: '127.0.0.1', port: await freePort() }] as const)));
  const clientPorts = await Promise.all([0, 1, 2, 3].map(() => freePort()));
  const nodes = keys.map((k, id) => new PbftNode({ id, peers, clientPort: clientPorts[id]!, privateKey: k.privateKey, publicKeys, tickMs: 10, viewTimeoutTicks: 20, checkpointInterval: 4 }));
  await Promise.all(nodes.map((n) => n.start()));
  const client = new PbftNetClient('c0', clientKeys[0]!.privateKey, publicKeys, new Map(clientPorts.map((port, i) => [i, { host: '127.0.0.1', port }])));
  t.teardown(async () => {
    client.close();
    await Promise.all(nodes.map((n) => n.close()));
  });
  const results: string[] = [];
  for (let i = 0; i < 10; i++) results.push(await client.request(`put k${i}`));
  t.same(results, Array.from({ length: 10 }, (_, i) => `${i + 1}:put k${i}`), 'executed in order, sequence numbers 1..10');
  // The primary stops: the others change view and carry on.
  await nodes[0]!.close();
  for (let i = 10; i < 15; i++) results.push(await client.request(`put k${i}`, { retryMs: 200 }));
  t.equal(results.length, 15);
  t.ok(nodes.slice(1).every((n) => n.replica.view >= 1), `view changed (${nodes.map((n) => n.replica.view).join(' ')})`);
  // f + 1 answers were enough for the client; the third replica gets there too.
  const until = Date.now() + 5000;
  while (new Set(nodes.slice(1).map((n) => n.replica.lastExecuted)).size > 1 && Date.now() < until) await new Promise((r) => setTimeout(r, 20));
  t.same(new Set(nodes.slice(1).map((n) => n.replica.lastExecuted)).size, 1, 'the three agree on how far they are');
});

// Replies go back on the connection a client's request came in on. A
// stranger who claims the client's name without its signature, or replays a
// request it overheard, must not move them to its own connection.
t.test("over TCP: a forged or replayed request does not take a client's replies", async (t) => {
  const { PbftNode } = await import('../../../src/dwcp/consensus/pbft/node.js');
  const { FrameReader, jsonFrame } = await import('../../../src/dwcp/consensus/raft/transport.js');
  const { freePort } = await import('../../services.js');
  const peers = new Map(await Promise.all([0, 1, 2, 3].map(async (i) => [i, { host: '127.0.0.1', port: await freePort() }] as const)));
  const clientPorts = await Promise.all([0, 1, 2, 3].map(() => freePort()));
  const nodes = keys.map((k, id) => new PbftNode({ id, peers, clientPort: clientPorts[id]!, privateKey: k.privateKey, publicKeys, tickMs: 10 }));
  await Promise.all(nodes.map((n) => n.start()));
  // One connection to every replica's client port; replies counted by request number.
  const open = async (): Promise<{ socks: net.Socket[]; replies: Map<number, Set<number>> }> => {
    const replies = new Map<number, Set<number>>();
    const socks = await Promise.all(clientPorts.map(async (port) => {
      const s = net.connect(port, '127.0.0.1');
      await once(s, 'connect');
      const reader = new FrameReader((body) => {
        const m = JSON.parse(body.toString()) as Signed;
        if (m.body.type === 'reply' && typeof m.body.ts === 'number') {
          if (!replies.has(m.body.ts)) replies.set(m.body.ts, new Set());
          replies.get(m.body.ts)!.add(m.body.from as number);
        }
      });
      s.on('data', (d: Buffer) => reader.push(d));
      return s;
    }));
    return { socks, replies };
  };
  const owner = await open();
  const stranger = await open();
  t.teardown(async () => {
    for (const s of [...owner.socks, ...stranger.socks]) s.destroy();
    await Promise.all(nodes.map((n) => n.close()));
  });
  const request = (ts: number): Signed => signBody({ type: 'request', from: 'c0', request: { client: 'c0', ts, op: `put k${ts}` } }, clientKeys[0]!.privateKey);
  const settle = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
  const repliesFor = async (ts: number): Promise<number> => {
    for (let i = 0; i < 150 && (owner.replies.get(ts)?.size ?? 0) < 4; i++) await settle(20);
    return owner.replies.get(ts)?.size ?? 0;
  };
  // The client's first request, to every replica: each learns where c0 is.
  const first = request(1);
  for (const s of owner.socks) s.write(jsonFrame(first));
  t.ok((await repliesFor(1)) >= 2, 'the client has its first answers');
  // A stranger replays that request, then sends one in c0's name it could not sign.
  for (const s of stranger.socks) s.write(jsonFrame(first));
  const forged = request(50);
  forged.sig = Buffer.alloc(64, 7).toString('base64');
  for (const s of stranger.socks) s.write(jsonFrame(forged));
  await settle(300);
  // The client's next request goes to the primary only; the others answer
  // it on the connection they know, which must still be the client's.
  owner.socks[0]!.write(jsonFrame(request(2)));
  t.ok((await repliesFor(2)) >= 2, `the client still hears from f + 1 replicas (${owner.replies.get(2)?.size ?? 0})`);
  t.equal(stranger.replies.get(2)?.size ?? 0, 0, 'the stranger hears nothing of it');
});
