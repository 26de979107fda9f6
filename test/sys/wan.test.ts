// The WAN emulator checked against itself: round trip within 1 ms of the
// setting (ping), loss within 10 % of the setting over 100k datagrams
// (random and Gilbert-Elliott), TCP through a rate-limited link within 5 %
// of the rate (iperf3), and the trace schedule's parsing. Needs root, TUN
// and iproute2; ping and iperf3 for their parts (skipped with the reason
// otherwise). Every link is taken down, whatever happens.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { wanUp, wanDown, wanLink, wanUnavailable, traceSchedule, parseDuration, parseRate, parseFraction } from '../../src/sys/wan.js';
import type { WanLink, WanOptions } from '../../src/sys/wan.js';

const counter = fileURLToPath(new URL('./fixtures/udp-count.mjs', import.meta.url));
const why = wanUnavailable();
const has = (cmd: string): boolean => !spawnSync(cmd, ['-V']).error;

async function withLink(t: { teardown(fn: () => unknown): void }, name: string, options: WanOptions, fn: (link: WanLink) => Promise<void>): Promise<void> {
  const link = await wanUp(options, name);
  t.teardown(() => wanDown(name));
  await fn(link);
}

t.test('parsing of settings and traces', async (t) => {
  t.equal(parseDuration('60ms'), 60);
  t.equal(parseDuration('0.5s'), 500);
  t.equal(parseRate('500mbit'), 500);
  t.equal(parseRate('1gbit'), 1000);
  t.equal(parseFraction('0.5%'), 0.005);
  t.equal(parseFraction('0.01'), 0.01);
  t.throws(() => parseFraction('150%'), { code: 'ERR_INVALID_ARGUMENT' });
  t.throws(() => parseRate('fast'), { code: 'ERR_INVALID_ARGUMENT' });
  const dir = mkdtempSync(join(tmpdir(), 'wan-'));
  const pantheon = join(dir, 'p.json');
  writeFileSync(pantheon, JSON.stringify({ timestamps: [10, 10.5, 11], bandwidths: [12, 0, 30], delays: [40], loss: 0.01 }));
  t.equal(traceSchedule(pantheon), '0 12 40 0.01\n0.5 0.01 40 0.01\n1 30 40 0.01\n', 'Pantheon JSON: times from 0, a floor on the rate');
  const cooked = join(dir, 'c.txt');
  writeFileSync(cooked, '3.0\t5.5\n4.0\t7\n');
  t.equal(traceSchedule(cooked, { delayMs: 25, loss: 0.002 }), '0 5.5 25 0.002\n1 7 25 0.002\n', 'cooked trace: delay and loss from the options');
  writeFileSync(cooked, '1 2 3\n');
  t.throws(() => traceSchedule(cooked), { code: 'ERR_INVALID_ARGUMENT' });
  await t.rejects(wanUp({ loss: 2 }, 'nvwp'), { code: 'ERR_INVALID_ARGUMENT' });
  await t.rejects(wanUp({}, 'Bad-Name'), { code: 'ERR_INVALID_ARGUMENT' });
});

t.test('round trip within 1 ms of the setting', { skip: why ?? (has('ping') ? false : 'no ping (apt install iputils-ping)') }, async (t) => {
  for (const rttMs of [0, 60]) {
    await withLink(t, 'nvwr', { rttMs }, async (link) => {
      const r = spawnSync('ip', ['netns', 'exec', link.nsA, 'ping', '-c', '40', '-i', '0.02', '-q', link.addrB], { encoding: 'utf8' });
      const m = /= ([\d.]+)\/([\d.]+)\/([\d.]+)/.exec(r.stdout);
      t.ok(m, `ping output: ${r.stdout.trim().split('\n').pop() ?? ''}`);
      const avg = Number(m![2]);
      t.ok(avg >= rttMs && avg <= rttMs + 1, `rtt ${rttMs} ms: measured ${avg} ms`);
      t.same(wanLink('nvwr')?.pid, link.pid, 'the link is found by name');
    });
    await wanDown('nvwr');
  }
  t.equal(wanLink('nvwr'), null, 'down means gone');
  t.notOk(spawnSync('ip', ['netns', 'list'], { encoding: 'utf8' }).stdout.includes('nvwr-'), 'namespaces removed');
});

async function countLoss(link: WanLink, n: number, pps: number): Promise<{ received: number; bursts: number; meanBurst: number }> {
  const recv = link.spawn('b', process.execPath, [counter, 'recv', link.addrB, '9100'], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  recv.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  while (!out.includes('ready')) await new Promise((r) => setTimeout(r, 20));
  const send = link.spawn('a', process.execPath, [counter, 'send', link.addrB, '9100', String(n), String(pps)], { stdio: 'inherit' });
  await once(send, 'exit');
  await once(recv, 'exit');
  return JSON.parse(out.split('\n').find((l) => l.startsWith('{'))!) as { received: number; bursts: number; meanBurst: number };
}

t.test('loss within 10 % of the setting over 100k datagrams', { skip: why ?? false }, async (t) => {
  const n = 100000;
  await withLink(t, 'nvwl', { loss: 0.01, seed: 7 }, async (link) => {
    const r = await countLoss(link, n, 25000);
    const loss = 1 - r.received / n;
    t.ok(Math.abs(loss - 0.01) <= 0.001, `random 1 %: measured ${(loss * 100).toFixed(3)} %`);
    const s = await link.stats();
    t.ok(s.ab.in >= n, `the forwarder saw every datagram (${s.ab.in} packets, with the link's own)`);
    t.ok(Math.abs(s.ab.lost / s.ab.in - 0.01) <= 0.001, `forwarder drew ${s.ab.lost} losses`);
  });
  await wanDown('nvwl');
  // Bursty: 1 % of packets enter the bad state, which lasts 1/r = 4 packets
  // on average and loses 75 % of them: 0.01 / 0.26 x 0.75 = 2.9 % loss.
  const ge = { p: 0.01, r: 0.25, badLoss: 0.75, goodLoss: 0 };
  await withLink(t, 'nvwl', { gilbertElliott: ge, seed: 11 }, async (link) => {
    const expected = (ge.p / (ge.p + ge.r)) * ge.badLoss;
    const r = await countLoss(link, n, 25000);
    const loss = 1 - r.received / n;
    t.ok(Math.abs(loss - expected) <= expected * 0.1, `Gilbert-Elliott: measured ${(loss * 100).toFixed(3)} %, expected ${(expected * 100).toFixed(3)} %`);
    t.ok(r.meanBurst > 1.5, `losses come in bursts (mean run ${r.meanBurst.toFixed(2)} datagrams)`);
  });
});

t.test('TCP through a rate-limited link within 5 % of the rate', { skip: why ?? (has('iperf3') ? false : 'no iperf3') }, async (t) => {
  for (const rateMbit of [100, 400]) {
    await withLink(t, 'nvwt', { rttMs: 20, rateMbit }, async (link) => {
      const server = link.spawn('b', 'iperf3', ['-s', '-1', '-B', link.addrB], { stdio: 'ignore' });
      await new Promise((r) => setTimeout(r, 400));
      // -O 2: leave slow start out of the average.
      const r = spawnSync('ip', ['netns', 'exec', link.nsA, 'iperf3', '-c', link.addrB, '-t', '4', '-O', '2', '-C', 'cubic', '-J'], { encoding: 'utf8', timeout: 30000 });
      server.kill();
      const mbit = (JSON.parse(r.stdout) as { end: { sum_received: { bits_per_second: number } } }).end.sum_received.bits_per_second / 1e6;
      t.ok(Math.abs(mbit - rateMbit) <= rateMbit * 0.05, `${rateMbit} Mbit/s link: iperf3 ${mbit.toFixed(1)} Mbit/s`);
    });
    await wanDown('nvwt');
  }
});
