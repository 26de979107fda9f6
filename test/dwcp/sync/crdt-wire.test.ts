// What CRDT replicas gossip crosses the network: mutated and hostile
// payloads are either refused or merge into a state that stays well-formed,
// and replicas still converge afterwards.
import t from 'tap';
import { ORMap, isStringORMapState, type ORMapState } from '../../../src/dwcp/sync/crdt.js';
import { CrdtStateStore, LocalGossipHub, type GossipTransport } from '../../../src/dwcp/sync/state-store.js';
import { rng } from '../../helpers.js';

// Real deltas and states: writes and removes by three replicas.
function history(seed: number): Array<ORMapState<string>> {
  const r = rng(seed);
  const int = (n: number): number => Math.floor(r() * n);
  let s = ORMap.empty<string>();
  const out: Array<ORMapState<string>> = [];
  for (let i = 0; i < 60; i++) {
    const key = `vm/${int(6)}`;
    const step = int(4) === 0 ? ORMap.remove(s, key) : ORMap.set(s, ['a', 'b', 'c'][int(3)]!, key, `host-${int(9)}`, 1000 + i);
    s = step.state;
    out.push(step.delta, s);
  }
  return out;
}

t.test('the check takes every real state and refuses what merge cannot take', async (t) => {
  const real = history(1);
  t.ok(real.every((s) => isStringORMapState(JSON.parse(JSON.stringify(s)))), 'every real delta and state passes');
  const base = JSON.parse(JSON.stringify(real.at(-1))) as Record<string, unknown>;
  const bad: unknown[] = [
    null, [], 'x', {}, { keys: {}, values: {} },
    { ...base, values: { k: { value: 5, ts: 1, replica: 'a' } } },
    { ...base, values: { k: { value: 'v', ts: -1, replica: 'a' } } },
    { ...base, values: { k: { value: 'v', ts: 1 } } },
    { ...base, keys: { entries: { k: ['a:0'] }, context: { vc: {}, cloud: [] } } },
    { ...base, keys: { entries: { k: ['nocolon'] }, context: { vc: {}, cloud: [] } } },
    { ...base, keys: { entries: {}, context: { vc: { a: 1.5 }, cloud: [] } } },
    { ...base, keys: { entries: {}, context: { vc: {}, cloud: 'a:1' } } },
    JSON.parse('{"keys":{"entries":{},"context":{"vc":{},"cloud":[]}},"values":{"__proto__":{"value":"v","ts":1,"replica":"a"}}}'),
    JSON.parse('{"keys":{"entries":{"__proto__":["a:1"]},"context":{"vc":{},"cloud":[]}},"values":{}}'),
  ];
  for (const v of bad) t.notOk(isStringORMapState(v), JSON.stringify(v).slice(0, 100));
});

t.test('mutated payloads: refused, or merged into a well-formed state', async (t) => {
  const r = rng(1128);
  const int = (n: number): number => Math.floor(r() * n);
  const real = history(2).map((s) => JSON.stringify(s));
  const junk: unknown[] = [null, true, -1, 1.5, 1e308, '', 'x', 'a:1', 'a:0', [], {}, ['a:1', 5], { a: -1 }];
  let state = ORMap.empty<string>();
  let merged = 0;
  const wrong: string[] = [];
  for (let i = 0; i < 5000; i++) {
    let text = real[int(real.length)]!;
    if (i % 2 === 0) {
      const b = Buffer.from(text);
      for (let k = 1 + int(3); k > 0; k--) b[int(b.length)] = int(256);
      text = b.toString();
    } else {
      // Replace one value somewhere in the tree with junk.
      const v = JSON.parse(text) as unknown;
      const nodes: Array<Record<string, unknown>> = [];
      const walk = (x: unknown): void => {
        if (typeof x === 'object' && x !== null) {
          nodes.push(x as Record<string, unknown>);
          for (const y of Object.values(x)) walk(y);
        }
      };
      walk(v);
      const node = nodes[int(nodes.length)]!;
      const keys = Object.keys(node);
      if (keys.length) node[keys[int(keys.length)]!] = junk[int(junk.length)];
      text = JSON.stringify(v);
    }
    let v: unknown;
    try {
      v = JSON.parse(text);
    } catch {
      continue;
    }
    if (!isStringORMapState(v)) continue;
    try {
      state = ORMap.merge(state, v);
      ORMap.entries(state);
      merged++;
    } catch (err) {
      wrong.push(`merge threw ${String(err)} on ${text.slice(0, 120)}`);
    }
    if (!isStringORMapState(JSON.parse(JSON.stringify(state)))) wrong.push(`state went bad after ${text.slice(0, 120)}`);
  }
  t.same(wrong.slice(0, 3), []);
  t.ok(merged > 100, `some mutated payloads were still valid and merged (${merged})`);
});

t.test('a replica fed garbage keeps converging with its peers', async (t) => {
  const hub = new LocalGossipHub();
  let inject: (from: string, data: Uint8Array) => void = () => undefined;
  const ta = hub.transport('a', ['b']);
  const spy: GossipTransport = { peers: ta.peers, send: (p, d) => ta.send(p, d), onMessage: (cb) => ((inject = cb), ta.onMessage(cb)) };
  const a = new CrdtStateStore({ replica: 'a', transport: spy, gossipMs: 10 });
  const b = new CrdtStateStore({ replica: 'b', transport: hub.transport('b', ['a']), gossipMs: 10 });
  t.teardown(() => Promise.all([a.close(), b.close()]));
  const r = rng(5);
  for (let i = 0; i < 2000; i++) {
    const n = Math.floor(r() * 200);
    inject('x', Uint8Array.from({ length: n }, () => Math.floor(r() * 256)));
  }
  for (const text of ['null', '{}', '{"keys":5,"values":{}}', '{"keys":{"entries":{"k":"a:1"},"context":{"vc":{},"cloud":[]}},"values":{}}']) inject('x', Buffer.from(text));
  await a.put('vm/1', 'host-a');
  await b.put('vm/2', 'host-b');
  for (let i = 0; i < 100 && a.fingerprint() !== b.fingerprint(); i++) await new Promise((res) => setTimeout(res, 10));
  t.equal(a.fingerprint(), b.fingerprint(), 'the replicas converge');
  t.equal(await a.get('vm/2'), 'host-b');
  t.equal(await b.get('vm/1'), 'host-a');
});
