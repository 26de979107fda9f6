// The VM API's request bodies cross the network: random and mutated bodies
// are either a well-formed record or a 400 with ERR_API_INVALID, never
// another error (which the server would answer with a 500).
import t from 'tap';
import { parseVm } from '../../src/control/vm-api.js';
import { VM_STATES } from '../../src/control/store.js';
import { rng } from '../helpers.js';

t.test('parseVm: a valid record or ERR_API_INVALID, whatever the body', async (t) => {
  const r = rng(42);
  const int = (n: number): number => Math.floor(r() * n);
  const values: unknown[] = [null, true, 0, -1, 1.5, '', 'x', 'running', 'y'.repeat(300), [], ['running'], {}, { a: 1 }, 'defined', 'migrating', 'node-a'];
  const keys = ['name', 'state', 'host', 'owner', '__proto__', 'constructor'];
  const wrong: string[] = [];
  let ok = 0;
  for (let i = 0; i < 20000; i++) {
    let body: unknown;
    if (int(10) === 0) {
      body = values[int(values.length)];
    } else {
      const o: Record<string, unknown> = int(2) ? { name: 'web', state: VM_STATES[int(VM_STATES.length)] } : {};
      for (let k = int(3); k > 0; k--) o[keys[int(keys.length)]!] = values[int(values.length)];
      body = JSON.parse(JSON.stringify(o)); // as it would arrive: own "__proto__" keys included
    }
    try {
      const rec = parseVm('vm-1', body, 7);
      const good = rec.id === 'vm-1' && typeof rec.name === 'string' && rec.name.length >= 1 && rec.name.length <= 256 &&
        (VM_STATES as readonly string[]).includes(rec.state) && (rec.host === null || (typeof rec.host === 'string' && rec.host.length >= 1)) && rec.updatedAt === 7;
      if (!good) wrong.push(`accepted ${JSON.stringify(body)}`);
      ok++;
    } catch (err) {
      const e = err as { status?: number; code?: string };
      if (e.status !== 400 || e.code !== 'ERR_API_INVALID') wrong.push(`${String(err)} for ${JSON.stringify(body)}`);
    }
  }
  t.same(wrong.slice(0, 3), []);
  t.ok(ok > 1000, `valid bodies were accepted (${ok})`);
});
