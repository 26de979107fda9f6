import t from 'tap';
import { chooseCompression } from '../../../src/index.js';

t.test('datacenter links get LZ4, hybrid a cheap zstd', async (t) => {
  t.same(chooseCompression('datacenter'), { codec: 'lz4', level: 0 });
  t.same(chooseCompression('datacenter', { bandwidthBps: 1e6 }), { codec: 'lz4', level: 0 });
  t.same(chooseCompression('hybrid'), { codec: 'zstd', level: 1 });
});

t.test('internet links spend more CPU per byte as bandwidth falls', async (t) => {
  const levels = [10e6, 100e6, 400e6, 900e6].map((bw) => chooseCompression('internet', { bandwidthBps: bw }).level);
  t.same(levels, [9, 6, 3, 1]);
  for (let i = 1; i < levels.length; i++) t.ok(levels[i]! <= levels[i - 1]!, 'monotone');
  t.equal(chooseCompression('internet').level, 3, 'unknown bandwidth: the zstd default');
});

t.test('a busy CPU caps the level', async (t) => {
  t.equal(chooseCompression('internet', { bandwidthBps: 10e6, cpuHeadroom: 0.1 }).level, 1);
  t.equal(chooseCompression('internet', { bandwidthBps: 10e6, cpuHeadroom: 0.9 }).level, 9);
});
