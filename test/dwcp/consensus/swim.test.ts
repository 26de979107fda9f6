// SWIM under a seeded, virtual-time simulator: 20 members, lossy links.
// Failures are detected by everyone within a bound; a lossy but healthy
// cluster declares nobody dead; suspicion is refuted; joins and restarts
// spread.
import t from 'tap';
import { SwimMember, type SwimMessage } from '../../../src/dwcp/consensus/swim/swim.js';
import { seeded } from './sim.js';

class Cluster {
  now = 0;
  members = new Map<string, SwimMember>();
  down = new Set<string>();
  cut = new Set<string>();
  #events: Array<{ at: number; seq: number; run: () => void }> = [];
  #seq = 0;
  rnd: () => number;
  messages = 0;

  constructor(
    seed: number,
    n: number,
    readonly loss: number,
  ) {
    this.rnd = seeded(seed);
    const ids = Array.from({ length: n }, (_, i) => `m${i}`);
    for (const id of ids) this.add(id, ids);
  }

  at(delay: number, run: () => void): void {
    this.#events.push({ at: this.now + delay, seq: this.#seq++, run });
    this.#events.sort((a, b) => a.at - b.at || a.seq - b.seq);
  }

  add(id: string, seeds: string[]): void {
    const m = new SwimMember({ id, seeds, random: this.rnd });
    this.members.set(id, m);
    this.down.delete(id);
    const tick = (): void => {
      if (this.members.get(id) !== m || this.down.has(id)) return;
      m.tick();
      this.flush(m);
      this.at(10, tick);
    };
    this.at(this.rnd() * 10, tick);
  }

  flush(m: SwimMember): void {
    for (const msg of m.ready().messages) this.send(msg);
  }

  send(msg: SwimMessage): void {
    this.messages++;
    if (this.rnd() < this.loss || this.cut.has(msg.from) || this.cut.has(msg.to)) return;
    this.at(1 + this.rnd() * 4, () => {
      const to = this.members.get(msg.to);
      if (!to || this.down.has(msg.to)) return;
      to.step(msg);
      this.flush(to);
    });
  }

  run(ms: number): void {
    const end = this.now + ms;
    while (this.#events.length && this.#events[0]!.at <= end) {
      const e = this.#events.shift()!;
      this.now = e.at;
      e.run();
    }
    this.now = end;
  }

  /** How each live member sees `id`. */
  views(id: string): string[] {
    return [...this.members].filter(([m]) => !this.down.has(m) && m !== id).map(([, m]) => m.members().find((x) => x.id === id)?.state ?? 'unknown');
  }

  deadAnywhere(): string[] {
    const out = new Set<string>();
    for (const [m, sw] of this.members) if (!this.down.has(m)) for (const x of sw.members()) if (x.state === 'dead') out.add(x.id);
    return [...out].sort();
  }
}

t.test('a healthy cluster with 5% loss declares nobody dead', async (t) => {
  for (const seed of [1, 2, 3]) {
    const c = new Cluster(seed, 20, 0.05);
    c.run(60_000);
    t.same(c.deadAnywhere(), [], `seed ${seed}: no false failure in 60 s`);
  }
});

t.test('crashed members are declared dead by every live member, within a bound', async (t) => {
  for (const seed of [1, 2, 3]) {
    const c = new Cluster(seed, 20, 0.02);
    c.run(2000);
    for (const id of ['m3', 'm7', 'm11']) c.down.add(id);
    const crashedAt = c.now;
    let detected = -1;
    for (let step = 0; step < 300 && detected < 0; step++) {
      c.run(100);
      if (['m3', 'm7', 'm11'].every((id) => c.views(id).every((v) => v === 'dead'))) detected = c.now - crashedAt;
    }
    t.ok(detected > 0 && detected <= 10_000, `seed ${seed}: all 17 live members saw all 3 dead after ${detected} ms`);
    t.same(c.deadAnywhere(), ['m11', 'm3', 'm7'], `seed ${seed}: and nobody else`);
  }
});

t.test('a member cut off briefly is suspected, refutes, and stays a member', async (t) => {
  const c = new Cluster(4, 12, 0.01);
  c.run(2000);
  c.cut.add('m5');
  let suspected = false;
  for (let i = 0; i < 6 && !suspected; i++) {
    c.run(100);
    suspected = c.views('m5').some((v) => v === 'suspect');
  }
  t.ok(suspected, 'suspected while cut off');
  c.cut.delete('m5');
  c.run(5000);
  t.ok(c.views('m5').every((v) => v === 'alive'), `alive everywhere again (${c.views('m5').join(',')})`);
  t.ok(c.members.get('m5')!.incarnation >= 1, 'by raising its incarnation');
  t.same(c.deadAnywhere(), []);
});

t.test('a new member joins through one seed; a restarted one comes back', async (t) => {
  const c = new Cluster(5, 12, 0.02);
  c.run(1000);
  c.add('newcomer', ['m0']);
  c.run(5000);
  t.ok(c.views('newcomer').every((v) => v === 'alive'), 'everyone knows the newcomer');
  t.equal(c.members.get('newcomer')!.live().length, 13, 'and it knows everyone');
  // m2 crashes, is declared dead, then restarts with no memory of it.
  c.down.add('m2');
  c.run(10_000);
  t.ok(c.views('m2').every((v) => v === 'dead'));
  c.add('m2', ['m0', 'm1']);
  c.run(10_000);
  t.ok(c.views('m2').every((v) => v === 'alive'), `restarted member alive again (${c.views('m2').join(',')})`);
});

t.test('a member that leaves is dead everywhere at once, without a suspicion period', async (t) => {
  const c = new Cluster(6, 10, 0);
  c.run(1000);
  const m = c.members.get('m4')!;
  m.leave();
  c.flush(m);
  c.down.add('m4');
  c.run(1500);
  t.ok(c.views('m4').every((v) => v === 'dead'), c.views('m4').join(','));
});

t.test('same seed, same run', async (t) => {
  const a = new Cluster(9, 10, 0.05);
  const b = new Cluster(9, 10, 0.05);
  a.run(5000);
  b.run(5000);
  t.equal(a.messages, b.messages);
  t.same([...a.members.values()].map((m) => m.members()), [...b.members.values()].map((m) => m.members()));
});

t.test('over UDP: members find each other through a seed, carry their meta, and see a crash', async (t) => {
  const { SwimNode } = await import('../../../src/dwcp/consensus/swim/node.js');
  const a = new SwimNode({ port: 0, seeds: [], meta: 'a-meta', tickMs: 20 });
  await a.start();
  const b = new SwimNode({ port: 0, seeds: [a.id], meta: 'b-meta', tickMs: 20 });
  const c = new SwimNode({ port: 0, seeds: [a.id], meta: 'c-meta', tickMs: 20 });
  await Promise.all([b.start(), c.start()]);
  t.teardown(() => Promise.all([a.close(false), b.close(false), c.close(false)]));
  const until = async (cond: () => boolean, ms = 10000): Promise<boolean> => {
    const end = Date.now() + ms;
    while (!cond()) {
      if (Date.now() > end) return false;
      await new Promise((r) => setTimeout(r, 20));
    }
    return true;
  };
  t.ok(await until(() => [a, b, c].every((n) => n.alive().length === 3 && n.alive().every((m) => m.meta !== undefined))), 'each knows all three, with their meta');
  t.same(b.alive().map((m) => m.meta).sort(), ['a-meta', 'b-meta', 'c-meta'], 'what each said about itself');
  const changes: string[] = [];
  a.on('change', (u: { id: string; state: string }) => changes.push(`${u.id}=${u.state}`));
  await c.close(false); // a crash: no goodbye
  t.ok(await until(() => a.alive().length === 2 && b.alive().length === 2), 'the crash is noticed by both');
  t.ok(changes.includes(`${c.id}=dead`));
  // Garbage datagrams are ignored.
  const { createSocket } = await import('node:dgram');
  const s = createSocket('udp4');
  const [host, port] = [a.id.split(':')[0]!, Number(a.id.split(':')[1])];
  await new Promise<void>((r) => s.send(Buffer.from('{"type":"ping"'), port, host, () => r()));
  await new Promise<void>((r) => s.send(Buffer.from('{"type":"ping","from":1}'), port, host, () => r()));
  s.close();
  await new Promise((r) => setTimeout(r, 100));
  t.equal(a.alive().length, 2);
});

// A `change` listener that throws costs the other listeners none of the
// flush's changes (they stopped at the first), and its errors surface as
// uncaught exceptions. Run in a child, which counts them.
t.test('a throwing change listener does not hide later changes from the others', async (t) => {
  const { execFile } = await import('node:child_process');
  const { promisify } = await import('node:util');
  const { fileURLToPath } = await import('node:url');
  const script = fileURLToPath(new URL('./fixtures/throwing-swim-listener.mjs', import.meta.url));
  const { stdout } = await promisify(execFile)(process.execPath, [script], { timeout: 20000 });
  const r = JSON.parse(stdout) as { seen: string[]; uncaught: number; calls: number };
  t.same(r.seen, ['127.0.0.1:41000', '127.0.0.1:41001', '127.0.0.1:41002', '127.0.0.1:41003'], 'the sender and the three members it named');
  t.equal(r.uncaught, r.calls, 'one uncaught exception per change');
});
