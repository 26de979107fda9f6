// The cluster state store over both protocols: CRDT replicas that gossip
// (converging through partitions, with the documented conflict policy) and
// Raft members reached through a leader-finding client (linearizable,
// through failover). Watches fire on every replica.
import t from 'tap';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { fileURLToPath } from 'node:url';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CrdtStateStore, HybridStateStore, LocalGossipHub, RaftStateStore, TcpGossipTransport, protocolFor } from '../../../src/dwcp/sync/state-store.js';
import { RaftKvNode } from '../../../src/dwcp/consensus/raft/kv-node.js';
import { RaftKvClient } from '../../../src/dwcp/consensus/raft/client.js';
import { clusterAddresses, freePort } from '../../services.js';

const settle = (ms = 200): Promise<void> => new Promise((r) => setTimeout(r, ms));

t.test('CRDT replicas converge, through a partition, with last-writer-wins and add-wins', async (t) => {
  const hub = new LocalGossipHub();
  const ids = ['a', 'b', 'c'];
  let clock = 1000;
  const now = (): number => clock;
  const stores = ids.map((id) => new CrdtStateStore({ replica: id, transport: hub.transport(id, ids.filter((x) => x !== id)), gossipMs: 10, now }));
  t.teardown(() => Promise.all(stores.map((s) => s.close())));
  const [a, b, c] = stores as [CrdtStateStore, CrdtStateStore, CrdtStateStore];
  const seen: string[] = [];
  c.watch('vm/', (k, v) => seen.push(`${k}=${v ?? '(deleted)'}`));
  await a.put('vm/1', 'host-a');
  await b.put('vm/2', 'host-b');
  await b.put('other', 'x');
  await settle();
  t.equal(await c.get('vm/1'), 'host-a');
  t.same([a.fingerprint(), b.fingerprint()], [c.fingerprint(), c.fingerprint()], 'all agree');
  t.same(seen.sort(), ['vm/1=host-a', 'vm/2=host-b'], 'c saw both remote writes, and only under its prefix');

  // Cut c off. Both sides keep taking writes.
  hub.cut.add('a|c').add('b|c');
  clock = 2000;
  await a.put('vm/1', 'moved-by-a');
  clock = 2005;
  await c.put('vm/1', 'moved-by-c'); // later: wins
  await c.delete('vm/2'); // concurrent with b's write below: b's write wins
  clock = 2001;
  await b.put('vm/2', 'kept-by-b');
  t.equal(await c.get('vm/1'), 'moved-by-c', 'a cut-off replica still answers, from its own copy');
  await settle();
  t.not(a.fingerprint(), c.fingerprint(), 'apart while cut off');
  hub.cut.clear();
  await settle(400);
  t.same([a.fingerprint(), b.fingerprint()], [c.fingerprint(), c.fingerprint()], 'converged after the partition healed');
  t.equal(await a.get('vm/1'), 'moved-by-c', 'the later write won');
  t.equal(await a.get('vm/2'), 'kept-by-b', 'a write concurrent with a delete survives it');
  // Same timestamp: the higher replica id wins, everywhere.
  hub.cut.add('a|b').add('a|c').add('b|c');
  clock = 3000;
  await a.put('tie', 'from-a');
  await b.put('tie', 'from-b');
  hub.cut.clear();
  await settle(400);
  t.same(await Promise.all(stores.map((s) => s.get('tie'))), ['from-b', 'from-b', 'from-b']);
  // Compare-and-set checks this replica's copy.
  t.equal(await a.cas('vm/1', 'moved-by-c', 'cas-a'), true);
  t.equal(await a.cas('vm/1', 'stale', 'nope'), false);
  await settle();
  t.equal(await b.get('vm/1'), 'cas-a');
});

t.test('Raft members: linearizable operations through a client that finds the leader, watches everywhere, failover', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'novacron-state-'));
  const { peers, clientAddrs, clientPorts } = await clusterAddresses(3);
  const nodes = await Promise.all(
    [0, 1, 2].map(async (i) => {
      const n = new RaftKvNode({ id: i + 1, peers, dir: join(dir, `n${i}`), clientPort: clientPorts[i]!, tickMs: 10 });
      await n.start();
      return n;
    }),
  );
  const stores = nodes.map((n) => new RaftStateStore(n, new RaftKvClient(clientAddrs, { timeoutMs: 10000 })));
  t.teardown(async () => {
    for (const s of stores) await s.close();
    for (const n of nodes) await n.close().catch(() => undefined);
    rmSync(dir, { recursive: true, force: true });
  });
  const watched: string[] = [];
  stores[2]!.watch('vm/', (k, v) => watched.push(`${k}=${v}`));
  // Whichever node a store sits on, its operations reach the leader.
  await stores[0]!.put('vm/1', 'a');
  t.equal(await stores[1]!.get('vm/1'), 'a');
  t.equal(await stores[2]!.cas('vm/1', 'a', 'b'), true);
  t.equal(await stores[0]!.cas('vm/1', 'a', 'c'), false, 'compare-and-set is atomic cluster-wide');
  t.equal(await stores[1]!.cas('vm/new', undefined, 'x'), true);
  await stores[0]!.delete('vm/new');
  t.equal(await stores[2]!.get('vm/new'), undefined);
  await settle(100);
  t.same(watched, ['vm/1=a', 'vm/1=b', 'vm/new=x', 'vm/new=undefined'], 'a follower watched every change, in order');
  // The leader goes down; the stores on the others carry on.
  const leader = nodes.findIndex((n) => n.raft.role === 'leader');
  await nodes[leader]!.close();
  const other = stores.find((_, i) => i !== leader)!;
  await other.put('vm/after', 'failover');
  t.equal(await stores.find((_, i) => i !== leader && stores[i] !== other)!.get('vm/after'), 'failover');
});

t.test('CRDT replicas over TCP', async (t) => {
  const addrs = new Map([
    ['x', { host: '127.0.0.1', port: await freePort() }],
    ['y', { host: '127.0.0.1', port: await freePort() }],
  ]);
  const [tx, ty] = await Promise.all([TcpGossipTransport.listen('x', addrs), TcpGossipTransport.listen('y', addrs)]);
  const x = new CrdtStateStore({ replica: 'x', transport: tx, gossipMs: 10 });
  const y = new CrdtStateStore({ replica: 'y', transport: ty, gossipMs: 10 });
  t.teardown(async () => {
    await x.close();
    await y.close();
    await tx.close();
    await ty.close();
  });
  await x.put('placement/vm7', 'node-3');
  await y.put('placement/vm8', 'node-1');
  await settle(300);
  t.equal(await y.get('placement/vm7'), 'node-3');
  t.equal(x.fingerprint(), y.fingerprint());
  // Garbage on the gossip port is ignored, not fatal.
  const { connect } = await import('node:net');
  const s = connect(addrs.get('x')!.port, '127.0.0.1');
  s.write(Buffer.from([5, 0, 0, 0, 1, 120, 123, 123, 123]));
  s.end();
  await settle(100);
  t.equal(await x.get('placement/vm8'), 'node-1');
});

t.test('hybrid: Raft while there is a quorum, CRDTs with bounded staleness without, reconciled when it returns', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'novacron-hybrid-'));
  const { peers, clientAddrs, clientPorts } = await clusterAddresses(3);
  const startNode = async (i: number): Promise<RaftKvNode> => {
    const n = new RaftKvNode({ id: i + 1, peers, dir: join(dir, `n${i}`), clientPort: clientPorts[i]!, tickMs: 10 });
    await n.start();
    return n;
  };
  const nodes = await Promise.all([0, 1, 2].map(startNode));
  const hub = new LocalGossipHub();
  const ids = ['r0', 'r1', 'r2'];
  const crdts = ids.map((id) => new CrdtStateStore({ replica: id, transport: hub.transport(id, ids.filter((x) => x !== id)), gossipMs: 10 }));
  const stores = nodes.map((n, i) => new HybridStateStore({ raft: new RaftStateStore(n, new RaftKvClient(clientAddrs)), crdt: crdts[i]!, raftTimeoutMs: 600, maxStalenessMs: 2500, probeMs: 200 }));
  t.teardown(async () => {
    for (const s of stores) await s.close();
    for (const c of crdts) await c.close();
    for (const n of nodes) await n.close().catch(() => undefined);
    rmSync(dir, { recursive: true, force: true });
  });
  const [s0, s1, s2] = stores as [HybridStateStore, HybridStateStore, HybridStateStore];
  await s0.put('vm/1', 'raft-era');
  t.equal(s0.protocol, 'raft');
  t.equal(await s2.cas('vm/1', 'raft-era', 'swapped'), true);
  await settle(100);
  t.equal(await crdts[1]!.get('vm/1'), 'swapped', 'Raft changes are mirrored into every CRDT replica');

  // Two of three Raft members go: no quorum.
  await nodes[1]!.close();
  await nodes[2]!.close();
  await s0.put('vm/2', 'written-without-quorum');
  t.equal(s0.protocol, 'crdt', 'fell back');
  await settle(100);
  t.equal(await s1.get('vm/2'), 'written-without-quorum', 'other replicas read it through the CRDTs');
  t.equal(s1.protocol, 'crdt');
  await t.rejects(s0.cas('vm/1', 'swapped', 'x'), { code: 'ERR_SYNC_DEGRADED' });
  await settle(2600);
  await t.rejects(s1.get('vm/1'), { code: 'ERR_SYNC_STALE' }, 'reads refuse once the state is older than allowed');

  // The quorum returns: s0's fallback write goes through Raft, and Raft is back in charge.
  nodes[1] = await startNode(1);
  nodes[2] = await startNode(2);
  const deadline = Date.now() + 15000;
  while (s0.protocol !== 'raft' && Date.now() < deadline) await settle(50);
  t.equal(s0.protocol, 'raft', 'reconciled');
  const direct = new RaftStateStore(nodes[1]!, new RaftKvClient(clientAddrs));
  t.equal(await direct.get('vm/2'), 'written-without-quorum', 'the fallback write is in Raft now');
  await direct.close();
  t.equal(await s0.get('vm/1'), 'swapped');
});

t.test('the protocol follows the link mode', async (t) => {
  t.equal(protocolFor('datacenter'), 'raft');
  t.equal(protocolFor('internet'), 'crdt');
  t.equal(protocolFor('hybrid'), 'raft+crdt');
  t.throws(() => protocolFor('space' as never), { code: 'ERR_INVALID_ARGUMENT' });
});

// A watch callback that throws is the caller's bug: it surfaces as an
// uncaught exception, and the store goes on (a Raft node stopped mid-apply
// with ERR_RAFT_STORAGE, and a CRDT merge stopped at the first such
// watcher). Run in a child, which counts the uncaught exceptions.
t.test('a throwing watcher neither stops a Raft node nor a CRDT merge', async (t) => {
  const script = fileURLToPath(new URL('./fixtures/throwing-watcher.mjs', import.meta.url));
  const { stdout } = await promisify(execFile)(process.execPath, [script], { timeout: 30000 });
  const r = JSON.parse(stdout) as Record<string, unknown>;
  t.same(r, { raftSeen: 5, raftValue: 'v4', raftFailure: null, crdtSeen: 5, crdtValue: 'v4', uncaught: 10 });
});
