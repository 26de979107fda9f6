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
