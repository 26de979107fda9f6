// The real thing: the write-ahead log on disk, and a 3-node Raft key-value
// cluster over TCP in this process, through failover and restart.
import t from 'tap';
import { appendFileSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execFile, execFileSync } from 'node:child_process';
import { promisify } from 'node:util';
import { fileURLToPath } from 'node:url';
import { RaftWal } from '../../../src/dwcp/consensus/raft/wal.js';
import { RaftKvNode, type KvResponse } from '../../../src/dwcp/consensus/raft/kv-node.js';
import { RaftKvClient } from '../../../src/dwcp/consensus/raft/client.js';
import type { Entry, Ready } from '../../../src/dwcp/consensus/raft/types.js';
import { clusterAddresses, freePort, smallDisk, smallDiskMissing } from '../../services.js';

function hasOpenssl(): boolean {
  try {
    execFileSync('openssl', ['version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

const entry = (index: number, term: number, text: string): Entry => ({ index, term, type: 'normal', data: new Uint8Array(Buffer.from(text)) });
const ready = (fields: Partial<Ready>): Ready => ({ hardState: undefined, entries: [], snapshot: undefined, committed: [], messages: [], readStates: [], soft: undefined, ...fields });
const texts = (es: Entry[]): string[] => es.map((e) => `${e.index}/${e.term}:${Buffer.from(e.data).toString()}`);

t.test('write-ahead log: round trip, overwritten suffix, torn tail, compaction', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'novacron-wal-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  let { wal, stored } = await RaftWal.open(dir);
  t.same(stored, { hardState: { term: 0, vote: 0, commit: 0 }, snapshot: undefined, entries: [] });
  await wal.save(ready({ hardState: { term: 1, vote: 2, commit: 0 }, entries: [entry(1, 1, 'a'), entry(2, 1, 'b'), entry(3, 1, 'c')] }));
  // A new leader's entries replace the log from index 2 on.
  await wal.save(ready({ hardState: { term: 2, vote: 3, commit: 2 }, entries: [entry(2, 2, 'B'), entry(3, 2, 'C')] }));
  await wal.close();
  ({ wal, stored } = await RaftWal.open(dir));
  t.same(stored.hardState, { term: 2, vote: 3, commit: 2 });
  t.same(texts(stored.entries), ['1/1:a', '2/2:B', '3/2:C']);
  await wal.save(ready({ entries: [entry(4, 2, 'd')] }));
  await wal.close();

  // A crash mid-write: half a record after the good ones. It is cut off.
  const log = join(dir, 'raft.wal');
  const good = readFileSync(log);
  const end = good.indexOf(Buffer.from('d')) + 1;
  writeFileSync(log, Buffer.concat([good.subarray(0, end), Buffer.from([40, 0, 0, 0, 1, 2, 3, 4, 2, 9, 9])]));
  ({ wal, stored } = await RaftWal.open(dir));
  t.same(texts(stored.entries), ['1/1:a', '2/2:B', '3/2:C', '4/2:d'], 'the torn record is gone, the rest kept');
  t.equal(statSync(log).size, end, 'the file is cut where the good records end');
  // A flipped byte in the last record: that record goes too.
  await wal.close();
  const bytes = readFileSync(log);
  bytes[bytes.length - 1]! ^= 0xff;
  writeFileSync(log, bytes);
  ({ wal, stored } = await RaftWal.open(dir));
  t.same(texts(stored.entries), ['1/1:a', '2/2:B', '3/2:C']);

  // Compaction: the snapshot file holds the state, the log what follows it.
  await wal.save(ready({ entries: [entry(4, 2, 'e'), entry(5, 2, 'f')] }));
  await wal.compact({ meta: { index: 3, term: 2, voters: [1, 2, 3] }, data: new Uint8Array(Buffer.from('state@3')) });
  await wal.save(ready({ entries: [entry(6, 2, 'g')], hardState: { term: 2, vote: 3, commit: 5 } }));
  await wal.close();
  ({ wal, stored } = await RaftWal.open(dir));
  t.same(stored.snapshot?.meta, { index: 3, term: 2, voters: [1, 2, 3] });
  t.equal(Buffer.from(stored.snapshot!.data).toString(), 'state@3');
  t.same(texts(stored.entries), ['4/2:e', '5/2:f', '6/2:g']);
  t.same(stored.hardState, { term: 2, vote: 3, commit: 5 });
  await wal.close();
  // Garbage appended to the snapshot file is not read as part of it; a snapshot file that is all garbage is an error.
  appendFileSync(join(dir, 'raft.snap'), Buffer.alloc(10, 7));
  ({ wal } = await RaftWal.open(dir));
  await wal.close();
  writeFileSync(join(dir, 'raft.snap'), Buffer.alloc(30, 7));
  await t.rejects(RaftWal.open(dir), { code: 'ERR_RAFT_STORAGE' });
});

async function cluster(dir: string, n = 3): Promise<{ nodes: Array<RaftKvNode | undefined>; start(i: number): Promise<void>; leader(): Promise<RaftKvNode> }> {
  const raftPorts = await Promise.all(Array.from({ length: n }, () => freePort()));
  const peers = new Map(raftPorts.map((port, i) => [i + 1, { host: '127.0.0.1', port }]));
  const nodes: Array<RaftKvNode | undefined> = [];
  const start = async (i: number): Promise<void> => {
    const node = new RaftKvNode({ id: i + 1, peers, dir: join(dir, `n${i + 1}`), clientPort: 0, tickMs: 10, snapshotEvery: 50 });
    await node.start();
    nodes[i] = node;
  };
  for (let i = 0; i < n; i++) await start(i);
  const leader = async (): Promise<RaftKvNode> => {
    const deadline = Date.now() + 10000;
    for (;;) {
      const l = nodes.find((x) => x?.raft.role === 'leader');
      if (l) return l;
      if (Date.now() > deadline) throw new Error('no leader');
      await new Promise((r) => setTimeout(r, 10));
    }
  };
  return { nodes, start, leader };
}

t.test('a 3-node cluster: operations, failover, restart from disk, snapshots', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'novacron-raftkv-'));
  const c = await cluster(dir);
  t.teardown(async () => {
    for (const n of c.nodes) await n?.close();
    rmSync(dir, { recursive: true, force: true });
  });
  let l = await c.leader();
  let id = 0;
  const q = async (node: RaftKvNode, req: Record<string, unknown>): Promise<KvResponse> => node.request({ id: ++id, ...req } as never);
  t.match(await q(l, { op: 'put', key: 'a', value: '1' }), { ok: true });
  t.match(await q(l, { op: 'get', key: 'a' }), { ok: true, value: '1' });
  t.match(await q(l, { op: 'cas', key: 'a', expect: '1', value: '2' }), { ok: true, swapped: true });
  t.match(await q(l, { op: 'cas', key: 'a', expect: '1', value: '3' }), { ok: true, swapped: false });
  t.match(await q(l, { op: 'cas', key: 'new', expect: null, value: 'x' }), { ok: true, swapped: true });
  t.match(await q(l, { op: 'delete', key: 'new' }), { ok: true });
  t.match(await q(l, { op: 'get', key: 'new' }), { ok: true, value: null });
  const follower = c.nodes.find((x) => x !== l)!;
  t.match(await q(follower, { op: 'put', key: 'b', value: 'x' }), { error: 'ERR_RAFT_NOT_LEADER', leader: l.id });
  // Enough writes for every node to snapshot and compact (every 50 entries).
  await Promise.all(Array.from({ length: 120 }, (_, i) => q(l, { op: 'put', key: `k${i % 10}`, value: `v${i}` })));

  // The leader goes away; the others elect a new one that has every write.
  const old = c.nodes.indexOf(l);
  await l.close();
  c.nodes[old] = undefined;
  l = await c.leader();
  t.not(c.nodes.indexOf(l), old);
  t.match(await q(l, { op: 'get', key: 'a' }), { ok: true, value: '2' });
  t.match(await q(l, { op: 'get', key: 'k9' }), { ok: true, value: 'v119' });
  t.match(await q(l, { op: 'put', key: 'after', value: 'failover' }), { ok: true });
  // The old leader restarts from its directory and catches up.
  await c.start(old);
  const back = c.nodes[old]!;
  const deadline = Date.now() + 10000;
  while (back.raft.applied < l.raft.committed && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
  t.ok(back.raft.applied >= l.raft.committed, 'restarted node caught up');
  t.ok(back.raft.snapshot !== undefined, 'and it had compacted its log before');
  const status = await q(back, { op: 'status' });
  t.match(status, { ok: true, role: 'follower', leader: l.id });
  // Leadership handed over on request (before maintenance of the leader, say).
  t.match(await q(l, { op: 'transfer', to: back.id }), { ok: true, leader: back.id });
  t.equal(back.raft.role, 'leader');
  t.match(await q(back, { op: 'put', key: 'after-transfer', value: 'x' }), { ok: true });
  t.match(await q(back, { op: 'transfer', to: 99 }), { error: 'ERR_RAFT_BAD_REQUEST' });
});

t.test('client port: frames in, frames out, bad requests answered with a code', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'novacron-raftkv-'));
  const c = await cluster(dir, 1);
  t.teardown(async () => {
    for (const n of c.nodes) await n?.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const l = await c.leader();
  const sock = connect(l.clientPort, '127.0.0.1');
  await new Promise((r) => sock.once('connect', r));
  const replies: KvResponse[] = [];
  let buf = Buffer.alloc(0);
  sock.on('data', (d: Buffer) => {
    buf = Buffer.concat([buf, d]);
    while (buf.length >= 4 && buf.length >= 4 + buf.readUInt32LE(0)) {
      replies.push(JSON.parse(buf.subarray(4, 4 + buf.readUInt32LE(0)).toString()) as KvResponse);
      buf = buf.subarray(4 + buf.readUInt32LE(0));
    }
  });
  const frame = (s: string): Buffer => {
    const b = Buffer.from(s);
    const h = Buffer.alloc(4);
    h.writeUInt32LE(b.length);
    return Buffer.concat([h, b]);
  };
  const until = async (n: number): Promise<void> => {
    const deadline = Date.now() + 5000;
    while (replies.length < n && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
  };
  sock.write(Buffer.concat([frame('{"id":1,"op":"put","key":"x","value":"y"}'), frame('not json'), frame('{"id":3,"op":"put","key":"x"}'), frame('{"id":4,"op":"drop"}')]));
  await until(4);
  // Requests in flight together are concurrent (a read may be ordered before
  // a write sent just ahead of it); this one follows the put's answer.
  sock.write(frame('{"id":2,"op":"get","key":"x"}'));
  await until(5);
  t.same(replies.filter((r) => r.id > 0).sort((a, b) => a.id - b.id), [{ id: 1, ok: true }, { id: 2, ok: true, value: 'y' }]);
  t.equal(replies.filter((r) => 'error' in r && r.error === 'ERR_RAFT_BAD_REQUEST').length, 3);
  // An oversized frame closes the connection.
  sock.write(Buffer.from([0xff, 0xff, 0xff, 0x7f]));
  await new Promise((r) => sock.once('close', r));
});

t.test('bench consensus prints its JSON line', async (t) => {
  const cli = fileURLToPath(new URL('../../../dist/cli/main.js', import.meta.url));
  const { stdout } = await promisify(execFile)(process.execPath, [cli, 'bench', 'consensus', '--sequential', '50', '--concurrent', '400'], { timeout: 120000 });
  const s = JSON.parse(stdout.trim().split('\n').at(-1)!) as Record<string, number>;
  t.equal(s.bench as unknown as string, 'consensus');
  for (const k of ['seq_p50_ms', 'seq_p99_ms', 'conc16_puts_per_s', 'conc16_p50_ms', 'conc16_p99_ms']) t.ok(s[k]! > 0, k);
});

// A CA and certificates it signed (and one it did not), made with openssl.
function pki(dir: string): { ca: string; member: (name: string) => { key: string; cert: string }; stranger: { key: string; cert: string } } {
  const run = (args: string[]): void => void execFileSync('openssl', args, { cwd: dir, stdio: 'ignore' });
  const make = (name: string, caName: string): { key: string; cert: string } => {
    run(['req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${name}`]);
    run(['x509', '-req', '-in', `${name}.csr`, '-CA', `${caName}.crt`, '-CAkey', `${caName}.key`, '-CAcreateserial', '-days', '1', '-out', `${name}.crt`]);
    return { key: readFileSync(join(dir, `${name}.key`), 'utf8'), cert: readFileSync(join(dir, `${name}.crt`), 'utf8') };
  };
  for (const ca of ['ca', 'other-ca']) run(['req', '-x509', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', `${ca}.key`, '-out', `${ca}.crt`, '-days', '1', '-subj', `/CN=${ca}`]);
  return { ca: readFileSync(join(dir, 'ca.crt'), 'utf8'), member: (name) => make(name, 'ca'), stranger: make('stranger', 'other-ca') };
}

t.test('mutual TLS between members and for clients; strangers get nowhere', { skip: hasOpenssl() ? false : 'openssl is not installed' }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'novacron-raft-tls-'));
  const p = pki(dir);
  const { peers, clientAddrs, clientPorts } = await clusterAddresses(3);
  const nodes = await Promise.all(
    [0, 1, 2].map(async (i) => {
      const n = new RaftKvNode({ id: i + 1, peers, dir: join(dir, `n${i}`), clientPort: clientPorts[i]!, tickMs: 10, tls: { ...p.member(`node${i + 1}`), ca: p.ca } });
      await n.start();
      return n;
    }),
  );
  const client = new RaftKvClient(clientAddrs, { tls: { ...p.member('client'), ca: p.ca } });
  t.teardown(async () => {
    client.close();
    for (const n of nodes) await n.close();
    rmSync(dir, { recursive: true, force: true });
  });
  t.match(await client.call({ op: 'put', key: 'k', value: 'over tls' }), { ok: true });
  t.match(await client.call({ op: 'get', key: 'k' }), { ok: true, value: 'over tls' });
  // Plain TCP and a certificate from another CA: no answer.
  const plain = new RaftKvClient(clientAddrs, { timeoutMs: 800 });
  await t.rejects(plain.call({ op: 'get', key: 'k' }), { code: 'ERR_RAFT_UNAVAILABLE' });
  plain.close();
  const stranger = new RaftKvClient(clientAddrs, { timeoutMs: 800, tls: { ...p.stranger, ca: p.ca } });
  await t.rejects(stranger.call({ op: 'get', key: 'k' }), { code: 'ERR_RAFT_UNAVAILABLE' });
  stranger.close();
});

t.test('membership: a fourth member joins, catches up and votes; another leaves', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'novacron-raft-member-'));
  const four = await clusterAddresses(4);
  const peers3 = new Map([...four.peers].filter(([id]) => id <= 3));
  const clients3 = new Map([...four.clientAddrs].filter(([id]) => id <= 3));
  const nodes: RaftKvNode[] = [];
  for (let i = 1; i <= 3; i++) {
    const n = new RaftKvNode({ id: i, peers: peers3, dir: join(dir, `n${i}`), clientPort: four.clientPorts[i - 1]!, tickMs: 10, snapshotEvery: 20 });
    await n.start();
    nodes.push(n);
  }
  const client = new RaftKvClient(clients3, { timeoutMs: 10000 });
  t.teardown(async () => {
    client.close();
    for (const n of nodes) await n.close();
    rmSync(dir, { recursive: true, force: true });
  });
  for (let i = 0; i < 50; i++) await client.call({ op: 'put', key: `k${i}`, value: `v${i}` });
  // Node 4 starts knowing everyone, but waits to be added.
  const joiner = new RaftKvNode({ id: 4, peers: four.peers, dir: join(dir, 'n4'), clientPort: four.clientPorts[3]!, tickMs: 10, join: true });
  await joiner.start();
  nodes.push(joiner);
  await new Promise((r) => setTimeout(r, 300));
  t.equal(joiner.raft.role, 'follower', 'a joiner does not campaign');
  const addr = `127.0.0.1:${four.peers.get(4)!.port}`;
  t.match(await client.call({ op: 'member', action: 'add', node: 4, address: addr }), { ok: true, voters: [1, 2, 3, 4] });
  const leader = nodes.find((n) => n.raft.role === 'leader')!;
  const deadline = Date.now() + 10000;
  while (joiner.raft.applied < leader.raft.committed && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  t.ok(joiner.raft.applied >= leader.raft.committed, 'the new member caught up (from a snapshot: the others had compacted)');
  t.same([...joiner.raft.voters].sort(), [1, 2, 3, 4], 'and knows it votes');
  t.equal(joiner.localGet('k49'), 'v49');
  // A follower leaves; the cluster of three carries on.
  const leaving = nodes.find((n) => n.raft.role !== 'leader' && n !== joiner)!;
  t.match(await client.call({ op: 'member', action: 'remove', node: leaving.id }), { ok: true });
  t.notOk(leader.raft.voters.has(leaving.id));
  await leaving.close();
  t.match(await client.call({ op: 'put', key: 'after', value: 'change' }), { ok: true });
  await t.rejects(client.call({ op: 'member', action: 'add', node: 9 }), { code: 'ERR_RAFT_BAD_REQUEST' }, 'adding needs an address');
});

// A log that cannot be written (a full disk) stops the node, with a code, rather than crash it
// or let it acknowledge what it could not make durable. Needs root to mount a small tmpfs.
t.test('a full disk stops the node cleanly', { skip: smallDiskMissing() ?? false }, async (t) => {
  const disk = smallDisk('256k');
  if (!disk) return void t.comment('mount failed here: skipped');
  const small = disk.dir;
  const { peers, clientPorts } = await clusterAddresses(1);
  const node = new RaftKvNode({ id: 1, peers, dir: join(small, 'raft'), clientPort: clientPorts[0]!, tickMs: 10 });
  await node.start();
  t.teardown(async () => {
    await node.close();
    disk.remove();
  });
  // The first write zero-fills 1 MiB of log: more than the disk holds.
  const r = await node.request({ id: 1, op: 'put', key: 'k', value: 'v' });
  t.match(r, { error: 'ERR_RAFT_STORAGE' });
  t.match(node.failure, { code: 'ERR_RAFT_STORAGE', message: /could not be written/ });
  t.match(await node.request({ id: 2, op: 'status' }), { error: 'ERR_RAFT_STORAGE' }, 'and says so to every later request');
});
