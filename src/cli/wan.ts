// `novacron wan up|down|status|exec`: the WAN emulator from the command line
// (`npm run wan -- up --rtt 60ms --loss 0.5% --rate 500mbit`).
import { parseArgs } from 'node:util';
import { UsageError } from './usage.js';
import type { WanDirection, WanOptions } from '../sys/wan.js';


const linkFlags = {
  name: { type: 'string' },
  rtt: { type: 'string' },
  delay: { type: 'string' },
  jitter: { type: 'string' },
  loss: { type: 'string' },
  ge: { type: 'string' },
  rate: { type: 'string' },
  queue: { type: 'string' },
  reorder: { type: 'string' },
  trace: { type: 'string' },
  seed: { type: 'string' },
  json: { type: 'boolean', default: false },
} as const;

export async function cmdWan(args: string[]): Promise<void> {
  const [sub, ...rest] = args;
  const wan = await import('../sys/wan.js');
  if (sub === 'exec') {
    // novacron wan exec a|b [--name N] -- CMD ARGS...
    const dash = rest.indexOf('--');
    if (dash < 0) throw new UsageError('usage: novacron wan exec a|b [--name N] -- COMMAND [ARGS...]');
    const { values, positionals } = parseArgs({ args: rest.slice(0, dash), options: { name: { type: 'string' } }, allowPositionals: true, strict: true });
    const side = positionals[0];
    if (side !== 'a' && side !== 'b') throw new UsageError('wan exec: the side is a or b');
    const link = wan.wanLink(values.name ?? 'nvwan');
    if (!link) throw new UsageError(`no WAN link ${values.name ?? 'nvwan'} is up`);
    const cmd = rest.slice(dash + 1);
    if (cmd.length === 0) throw new UsageError('wan exec: no command');
    const child = link.spawn(side, cmd[0]!, cmd.slice(1), { stdio: 'inherit' });
    const code = await new Promise<number>((resolve) => child.on('exit', (c) => resolve(c ?? 1)));
    process.exitCode = code;
    return;
  }
  const { values } = parseArgs({ args: rest, options: linkFlags, strict: true });
  const name = values.name ?? 'nvwan';
  if (sub === 'down') {
    await wan.wanDown(name);
    return;
  }
  if (sub === 'status') {
    const link = wan.wanLink(name);
    if (!link) {
      process.stdout.write(values.json ? 'null\n' : `WAN link ${name}: down\n`);
      process.exitCode = 1;
      return;
    }
    const stats = await link.stats();
    const s = { name, pid: link.pid, a: { namespace: link.nsA, address: link.addrA }, b: { namespace: link.nsB, address: link.addrB }, options: link.options, stats };
    process.stdout.write(values.json ? `${JSON.stringify(s)}\n`
      : `WAN link ${name}: ${link.nsA} ${link.addrA} <-> ${link.nsB} ${link.addrB} (forwarder ${link.pid})\n` +
        `  settings ${JSON.stringify(link.options)}\n` +
        `  a->b in ${stats.ab.in} lost ${stats.ab.lost} queue-dropped ${stats.ab.queueDropped} out ${stats.ab.out}\n` +
        `  b->a in ${stats.ba.in} lost ${stats.ba.lost} queue-dropped ${stats.ba.queueDropped} out ${stats.ba.out}\n`);
    return;
  }
  if (sub !== 'up') throw new UsageError('usage: novacron wan up|down|status|exec (see novacron help)');
  const o: WanOptions = {};
  const d: WanDirection = o;
  if (values.rtt !== undefined) o.rttMs = wan.parseDuration(values.rtt);
  if (values.delay !== undefined) d.delayMs = wan.parseDuration(values.delay);
  if (values.jitter !== undefined) d.jitterMs = wan.parseDuration(values.jitter);
  if (values.loss !== undefined) d.loss = wan.parseFraction(values.loss);
  if (values.rate !== undefined) d.rateMbit = wan.parseRate(values.rate);
  if (values.queue !== undefined) d.queueBytes = Number(values.queue);
  if (values.reorder !== undefined) d.reorder = wan.parseFraction(values.reorder);
  if (values.trace !== undefined) o.trace = values.trace;
  if (values.seed !== undefined) o.seed = Number(values.seed);
  if (values.ge !== undefined) {
    const g = values.ge.split(',').map((x) => wan.parseFraction(x));
    if (g.length < 2 || g.length > 4) throw new UsageError('--ge P,R[,BAD_LOSS[,GOOD_LOSS]]');
    d.gilbertElliott = { p: g[0]!, r: g[1]!, ...(g[2] !== undefined ? { badLoss: g[2] } : {}), ...(g[3] !== undefined ? { goodLoss: g[3] } : {}) };
  }
  const link = await wan.wanUp(o, name);
  process.stdout.write(values.json ? `${JSON.stringify({ name, pid: link.pid, a: link.addrA, b: link.addrB, nsA: link.nsA, nsB: link.nsB })}\n`
    : `WAN link ${name} up: ${link.nsA} ${link.addrA} <-> ${link.nsB} ${link.addrB}\n` +
      `  run in a side: novacron wan exec a -- <command>   (or ip netns exec ${link.nsA} ...)\n` +
      `  take it down:  novacron wan down${name === 'nvwan' ? '' : ` --name ${name}`}\n`);
}
