// The per-thread CPU reading behind `bench transport`'s "thread CPU" line:
// the main thread's time shows as `js`, the AMST engine's thread (named
// amst-io) as `io`, each within a few clock ticks of what the process as a
// whole used meanwhile. Measured in CPU time, so a loaded machine cannot fail it.
import t from 'tap';
import { once } from 'node:events';
import { listen, connect } from '../../src/index.js';
import type { AmstConnection } from '../../src/index.js';

type Snapshot = Map<string, { role: string; seconds: number }>;
type Cpu = { js: number; io: number; other: number };
const { threadCpu, cpuShare } = (await import('../../bench/thread-cpu.js' as string)) as {
  threadCpu: (pid: number) => Snapshot;
  cpuShare: (before: Snapshot, after: Snapshot, seconds: number) => Cpu;
};

const processSeconds = () => {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
};
const tick = 0.03;  // three clock ticks of slack (utime and stime are counted in ticks)

t.test('a busy main thread is counted as js', async (t) => {
  const before = threadCpu(process.pid);
  const p0 = processSeconds();
  let x = 0;
  while (processSeconds() - p0 < 0.2) x += Math.sqrt(x + 1);
  const used = processSeconds() - p0;
  const after = threadCpu(process.pid);
  const { js, io } = cpuShare(before, after, 1);
  t.ok(x > 0);
  t.ok(js > used * 0.8 - tick && js < used + tick, `main thread ${js.toFixed(3)} s of ${used.toFixed(3)} s`);
  t.ok(io < tick, 'no transfer, no amst-io time');
  t.ok(Math.abs(cpuShare(before, after, 2).js - js / 2) < 1e-9, 'cpuShare divides by the seconds given');
});

t.test('an AMST transfer is counted as io', async (t) => {
  const server = await listen({ port: 0 });
  const accepted = once(server, 'connection') as Promise<[AmstConnection]>;
  const client = await connect({ host: '127.0.0.1', port: server.port, streams: 2 });
  const [peer] = await accepted;
  let got = 0;
  peer.on('message', (m: Buffer) => void (got += m.length));
  const before = threadCpu(process.pid);
  const p0 = processSeconds();
  const msg = Buffer.alloc(16 << 20, 7);
  for (let i = 0; i < 16; i++) await client.send(msg);
  const used = processSeconds() - p0;
  const { io } = cpuShare(before, threadCpu(process.pid), 1);
  // A send settles when the peer's engine holds the message; its event may follow.
  for (const end = Date.now() + 5000; got < 16 * msg.length && Date.now() < end; ) await new Promise((r) => setTimeout(r, 5));
  t.equal(got, 16 * msg.length);
  t.ok(io >= tick && io <= used + tick, `amst-io ${io.toFixed(3)} s of ${used.toFixed(3)} s`);
  await client.close();
  await peer.close();
  await server.close();
});

t.test('a process that is gone has no threads', async (t) => {
  t.equal(threadCpu(2 ** 22 + 1).size, 0);
});
