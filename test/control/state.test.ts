// The node's cluster state component: the protocol its config picks, a lone
// node's one-member Raft store, CRDT replicas gossiping between nodes, and
// the peer lists' validation.
import t from 'tap';
import { Writable } from 'node:stream';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { NovacronNode } from '../../src/control/node.js';
import { loadConfig } from '../../src/control/config.js';
import { freePort } from '../services.js';

const quiet = (): Writable => new Writable({ write: (_c, _e, cb) => cb() });
const flags = (more: Record<string, string> = {}): Record<string, string> => ({ 'node.dataDir': mkdtempSync(join(tmpdir(), 'novacron-state-node-')), 'api.port': '0', 'data.port': '0', 'data.host': '127.0.0.1', ...more });

t.test('a lone node keeps its cluster state in a one-member Raft cluster on disk', async (t) => {
  const f = flags();
  let node = new NovacronNode({ env: {}, flags: f, logStream: quiet() });
  await node.start();
  t.equal(node.stateProtocol(), 'raft');
  await node.state!.put('vm/1', 'here');
  t.equal(await node.state!.get('vm/1'), 'here');
  t.equal(await node.state!.cas('vm/1', 'here', 'moved'), true);
  const h = (await node.health()).components.find((c) => c.name === 'state');
  t.match(h, { ok: true, detail: { protocol: 'raft', raft: { role: 'leader' } } });
  await node.stop();
  // Restarted on the same data directory, the state is still there.
  node = new NovacronNode({ env: {}, flags: f, logStream: quiet() });
  await node.start();
  t.equal(await node.state!.get('vm/1'), 'moved');
  await node.stop();
});

t.test('nodes with gossip peers share CRDT state', async (t) => {
  const [pa, pb] = [await freePort(), await freePort()];
  const gossip = `a=127.0.0.1:${pa},b=127.0.0.1:${pb}`;
  const a = new NovacronNode({ env: {}, flags: flags({ 'cluster.gossipPeers': gossip, 'cluster.replica': 'a' }), logStream: quiet() });
  const b = new NovacronNode({ env: {}, flags: flags({ 'cluster.gossipPeers': gossip, 'cluster.replica': 'b', 'dwcp.mode': 'internet' }), logStream: quiet() });
  await Promise.all([a.start(), b.start()]);
  t.teardown(() => Promise.all([a.stop(), b.stop()]));
  t.equal(a.stateProtocol(), 'crdt', 'gossip peers only: CRDTs');
  t.equal(b.stateProtocol(), 'crdt', 'internet mode: CRDTs');
  await a.state!.put('placement/vm9', 'node-b');
  const deadline = Date.now() + 5000;
  while ((await b.state!.get('placement/vm9')) === undefined && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  t.equal(await b.state!.get('placement/vm9'), 'node-b');
});

t.test('with dwcp.mode auto the mode detector picks the protocol once it has classified a link', async (t) => {
  const { connect } = await import('../../src/index.js');
  const lines: Array<Record<string, unknown>> = [];
  const log = new Writable({
    write(chunk: Buffer, _e, cb) {
      for (const l of chunk.toString().split('\n')) if (l) lines.push(JSON.parse(l) as Record<string, unknown>);
      cb();
    },
  });
  const [pa] = [await freePort()];
  const node = new NovacronNode({ env: {}, flags: flags({ 'cluster.gossipPeers': `self=127.0.0.1:${pa}`, 'cluster.replica': 'self', 'dwcp.modeSamples': '1' }), logStream: log });
  await node.start();
  t.teardown(() => node.stop());
  t.equal(node.linkMode(), undefined, 'no link yet');
  t.equal(node.stateProtocol(), 'crdt', 'so the configured peers decide: gossip only');
  const conn = await connect({ host: '127.0.0.1', port: node.dataPort, streams: 2 });
  t.teardown(() => conn.destroy());
  const deadline = Date.now() + 10000;
  while (node.linkMode() === undefined && Date.now() < deadline) {
    await conn.send(Buffer.alloc(1 << 20));
    await new Promise((r) => setTimeout(r, 100));
  }
  t.equal(node.linkMode(), 'datacenter', 'loopback is classified datacenter');
  t.equal(node.stateProtocol(), 'raft', 'and the detector now picks Raft');
  t.ok(lines.some((l) => l.msg === "cluster state protocol no longer matches the links' mode; it changes at the next start" && l.running === 'crdt' && l.wanted === 'raft'), 'the running store says it no longer matches');
});

t.test('protocol choice and peer-list validation', async (t) => {
  const proto = (f: Record<string, string>): string => new NovacronNode({ env: {}, flags: flags(f), logStream: quiet() }).stateProtocol();
  t.equal(proto({ 'dwcp.mode': 'datacenter' }), 'raft');
  t.equal(proto({ 'dwcp.mode': 'hybrid' }), 'hybrid');
  t.equal(proto({ 'cluster.raftPeers': '1=10.0.0.1:7801,2=10.0.0.2:7801,3=10.0.0.3:7801', 'cluster.raftClientPeers': '1=10.0.0.1:7901,2=10.0.0.2:7901,3=10.0.0.3:7901' }), 'hybrid');
  t.equal(proto({ 'cluster.protocol': 'crdt' }), 'crdt', 'config wins');
  for (const [f, field, msg] of [
    [{ 'cluster.raftPeers': 'one=h:1' }, 'cluster.raftPeers', /is not id=host:port/],
    [{ 'cluster.raftPeers': '1=h:1,1=h:2' }, 'cluster.raftPeers', /repeats/],
    [{ 'cluster.raftPeers': '2=h:1', 'cluster.raftClientPeers': '2=h:2' }, 'cluster.raftPeers', /must include cluster.raftId/],
    [{ 'cluster.raftPeers': '1=h:1,2=h:1', 'cluster.raftClientPeers': '1=h:2' }, 'cluster.raftPeers', /name the same members/],
    [{ 'cluster.gossipPeers': 'a=h:99999' }, 'cluster.gossipPeers', /is not name=host:port/],
  ] as const) {
    t.throws(() => loadConfig({ env: {}, flags: f }), { code: 'ERR_CONFIG_INVALID', field, message: msg });
  }
});

t.test('with SWIM on, nodes find their CRDT gossip peers through membership', async (t) => {
  const [ga, gb, sa, sb] = [await freePort(), await freePort(), await freePort(), await freePort()];
  const a = new NovacronNode({ env: {}, flags: flags({ 'cluster.protocol': 'crdt', 'cluster.replica': 'a', 'cluster.gossipPeers': `a=127.0.0.1:${ga}`, 'cluster.swimPort': String(sa) }), logStream: quiet() });
  await a.start();
  const b = new NovacronNode({ env: {}, flags: flags({ 'cluster.protocol': 'crdt', 'cluster.replica': 'b', 'cluster.gossipPeers': `b=127.0.0.1:${gb}`, 'cluster.swimPort': String(sb), 'cluster.swimSeeds': `127.0.0.1:${sa}` }), logStream: quiet() });
  await b.start();
  t.teardown(() => Promise.all([a.stop(), b.stop()]));
  await a.state!.put('vm/via-swim', 'found');
  const deadline = Date.now() + 10000;
  while ((await b.state!.get('vm/via-swim')) === undefined && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  t.equal(await b.state!.get('vm/via-swim'), 'found', 'b learned a from SWIM, and a learned b');
  const h = (await b.health()).components.find((c) => c.name === 'state');
  t.match(h, { detail: { swim: { alive: 2 } } });
});
