// SWIM's datagram handling, fuzzed over real UDP: mutated and hostile
// datagrams never take a node down (an uncaught exception would end this
// test's process) or put a malformed entry in its member table, and the
// node goes on serving members that speak the protocol.
import t from 'tap';
import { createSocket } from 'node:dgram';
import { SwimNode } from '../../../src/dwcp/consensus/swim/node.js';
import type { SwimMessage } from '../../../src/dwcp/consensus/swim/swim.js';
import { rng } from '../../helpers.js';

const ID = /^[A-Za-z0-9.:-]{1,253}:\d{1,5}$/;

async function until(cond: () => boolean, ms = 10000): Promise<boolean> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) return false;
    await new Promise((r) => setTimeout(r, 20));
  }
  return true;
}

t.test('mutated datagrams neither crash a node nor corrupt its member table', async (t) => {
  const a = new SwimNode({ port: 0, seeds: [], meta: 'a', tickMs: 20 });
  await a.start();
  t.teardown(() => a.close(false));
  const [host, port] = [a.id.slice(0, a.id.lastIndexOf(':')), Number(a.id.slice(a.id.lastIndexOf(':') + 1))];
  const r = rng(1128);
  const int = (n: number): number => Math.floor(r() * n);
  const junk: unknown[] = [null, true, -1, 1.5, 2 ** 60, '', 'x', 'h:0', 'h:70000', '127.0.0.1:1.5', [], {}, 'dead', 'zombie', 'x'.repeat(5000)];
  const sample = (): SwimMessage => {
    const updates = Array.from({ length: int(4) }, () => ({ id: `127.0.0.${1 + int(3)}:${40000 + int(5)}`, state: (['alive', 'suspect', 'dead'] as const)[int(3)]!, incarnation: int(5) }));
    const from = `127.0.0.1:${45000 + int(3)}`;
    const kind = int(3);
    if (kind === 0) return { type: 'ping', from, to: a.id, seq: int(100), updates };
    if (kind === 1) return { type: 'pingReq', from, to: a.id, target: `127.0.0.1:${46000 + int(3)}`, seq: int(100), updates };
    return { type: 'ack', from, to: a.id, seq: int(100), updates };
  };
  const s = createSocket('udp4');
  for (let i = 0; i < 4000; i++) {
    let b: Buffer;
    const m = sample();
    if (i % 2 === 0) {
      b = Buffer.from(JSON.stringify(m));
      for (let k = 1 + int(3); k > 0; k--) {
        const at = int(b.length);
        if (int(2) === 0) b[at] = int(256);
        else b = b.subarray(0, at);
      }
    } else {
      const w = m as unknown as Record<string, unknown>;
      const updates = w.updates as Record<string, unknown>[];
      const target = int(3) === 0 && updates.length ? updates[0]! : w;
      const keys = [...Object.keys(target), 'origin', 'target'];
      const key = keys[int(keys.length)]!;
      if (int(5) === 0) delete target[key];
      else target[key] = junk[int(junk.length)];
      b = Buffer.from(JSON.stringify(w));
    }
    await new Promise<void>((res) => s.send(b, port, host, () => res()));
    if (i % 200 === 0) await new Promise((res) => setTimeout(res, 5)); // let the node keep up
  }
  s.close();
  await new Promise((res) => setTimeout(res, 200));
  const table = a.member.members();
  t.ok(table.every((m) => ID.test(m.id) && ['alive', 'suspect', 'dead'].includes(m.state) && Number.isSafeInteger(m.incarnation) && m.incarnation >= 0),
    `every member table entry is well-formed (${table.length})`);
  t.notOk(table.some((m) => /:(0|7\d{4})$/.test(m.id)), 'no member with an impossible port');
  // A member that speaks the protocol still joins and is seen alive.
  const b = new SwimNode({ port: 0, seeds: [a.id], meta: 'b', tickMs: 20 });
  await b.start();
  t.teardown(() => b.close(false));
  t.ok(await until(() => a.alive().some((m) => m.id === b.id) && b.alive().some((m) => m.id === a.id)), 'a new member joins after the garbage');
});

t.test('a meta too long for peers to take is refused up front', async (t) => {
  t.throws(() => new SwimNode({ port: 0, seeds: [], meta: 'm'.repeat(4097) }), { code: 'ERR_INVALID_ARGUMENT' });
  t.doesNotThrow(() => new SwimNode({ port: 0, seeds: [], meta: 'm'.repeat(4096) }));
});
