import t from 'tap';
import { ModeDetector, classifyLink, transportForMode } from '../../src/dwcp/mode-detector.js';

t.test('classification by RTT, bandwidth and loss', async (t) => {
  t.equal(classifyLink({ rttMs: 0.3, bandwidthBps: 25e9 }), 'datacenter');
  t.equal(classifyLink({ rttMs: 9.9, bandwidthBps: 1.1e9 }), 'datacenter');
  t.equal(classifyLink({ rttMs: 10, bandwidthBps: 10e9 }), 'hybrid', 'RTT of exactly 10 ms is not below 10');
  t.equal(classifyLink({ rttMs: 30, bandwidthBps: 5e9 }), 'hybrid');
  t.equal(classifyLink({ rttMs: 51, bandwidthBps: 10e9 }), 'internet');
  t.equal(classifyLink({ rttMs: 2, bandwidthBps: 0.5e9 }), 'internet', 'slow link');
  t.equal(classifyLink({ rttMs: 2, bandwidthBps: 10e9, loss: 0.02 }), 'internet', 'lossy link');
  t.throws(() => classifyLink({ rttMs: NaN, bandwidthBps: 1 }), { code: 'ERR_INVALID_ARGUMENT' });
  t.throws(() => classifyLink({ rttMs: 1, bandwidthBps: -1 }), { code: 'ERR_INVALID_ARGUMENT' });
  t.throws(() => classifyLink(null as never), { code: 'ERR_INVALID_ARGUMENT' });
  t.same(transportForMode('internet'), { streams: 8, congestion: 'bbr' });
  t.same(transportForMode('datacenter'), { streams: 16, congestion: 'cubic' });
});

t.test('hysteresis: a noisy link does not flap', async (t) => {
  const d = new ModeDetector({ samples: 3 });
  const dc = { rttMs: 1, bandwidthBps: 10e9 };
  const wan = { rttMs: 80, bandwidthBps: 0.3e9 };
  t.same(d.observe(dc), { from: undefined, to: 'datacenter', reason: 'detected' });
  // Alternating samples never reach three in a row.
  for (let i = 0; i < 20; i++) t.equal(d.observe(i % 2 ? dc : wan), undefined);
  t.equal(d.mode, 'datacenter');
  t.equal(d.observe(wan), undefined);
  t.equal(d.observe(wan), undefined);
  t.same(d.observe(wan), { from: 'datacenter', to: 'internet', reason: 'detected' });
  t.equal(d.changes, 2);
});

t.test('a config override wins, and auto hands back to detection', async (t) => {
  const d = new ModeDetector({ samples: 1, override: 'internet' });
  t.equal(d.mode, 'internet');
  t.equal(d.observe({ rttMs: 1, bandwidthBps: 10e9 }), undefined, 'detection runs underneath but does not change the mode');
  t.equal(d.mode, 'internet');
  t.same(d.setOverride('auto'), { from: 'internet', to: 'datacenter', reason: 'detected' });
  t.same(d.setOverride('hybrid'), { from: 'datacenter', to: 'hybrid', reason: 'override' });
  t.equal(d.setOverride('hybrid'), undefined);
  t.throws(() => d.setOverride('fast' as never), { code: 'ERR_INVALID_ARGUMENT' });
  t.throws(() => new ModeDetector({ samples: 0 }), { code: 'ERR_INVALID_ARGUMENT' });
});

t.test('a mode change reconfigures a live connection: congestion, streams, compression', async (t) => {
  const { listen, connect, HdeEncoder, ModeController, sampleConnection } = await import('../../src/index.js');
  const server = await listen({ port: 0 });
  const accepted = new Promise<import('../../src/index.js').AmstConnection>((r) => server.once('connection', r));
  const conn = await connect({ host: '127.0.0.1', port: server.port, streams: 4, congestion: 'cubic' });
  const peer = await accepted;
  const enc = new HdeEncoder({ compression: 'lz4' });
  const changes: string[] = [];
  const ctl = new ModeController(conn, { intervalMs: 0, samples: 2, encoders: [enc], onChange: (c) => changes.push(`${c.from}->${c.to}`) });
  await conn.send(Buffer.alloc(1 << 20));
  const real = sampleConnection(conn);
  t.ok(real && real.rttMs >= 0 && real.bandwidthBps > 0, 'TCP_INFO gives a sample');
  const first = ctl.sample({ rttMs: 0.2, bandwidthBps: 20e9 });
  t.equal(first?.to, 'datacenter');
  t.equal(first?.streams, 16);
  // The WAN shows up: after two agreeing samples the connection is retuned.
  t.equal(ctl.sample({ rttMs: 80, bandwidthBps: 0.15e9 }), undefined);
  const wan = ctl.sample({ rttMs: 80, bandwidthBps: 0.15e9 });
  t.same([wan?.to, wan?.congestion, wan?.streams, wan?.errors], ['internet', 'bbr', 8, []]);
  t.same(changes, ['undefined->datacenter', 'datacenter->internet']);
  t.equal(enc.compression, 'zstd', 'encoder follows the mode');
  t.equal(enc.zstdLevel, 6, 'a 150 Mbit/s link gets zstd level 6');
  const until = async (cond: () => boolean): Promise<void> => {
    for (let i = 0; i < 500 && !cond(); i++) await new Promise((r) => setTimeout(r, 10));
  };
  await until(() => conn.stats()!.streams.filter((s) => s.alive).length === 8);
  const st = conn.stats()!;
  t.equal(st.streams.filter((s) => s.alive).length, 8, 'streams shrunk from 16 to 8');
  t.ok(st.streams.filter((s) => s.alive).every((s) => s.congestion === 'bbr'), 'every live stream runs BBR');
  // The accepting side can retune its sending, not the stream count.
  const peerCtl = new ModeController(peer, { intervalMs: 0, samples: 1, override: 'datacenter' });
  t.ok(peer.stats()!.streams.filter((s) => s.alive).every((s) => s.congestion === 'cubic'));
  t.equal(peerCtl.mode, 'datacenter');
  t.throws(() => conn.setCongestion('warp-drive'), { code: 'ERR_INVALID_ARGUMENT' });
  t.throws(() => conn.setCongestion('nosuchcc'), { code: 'ERR_AMST_INVALID_ARGUMENT', syscallError: 'ENOENT' });
  ctl.stop();
  conn.destroy();
  await server.close();
});
