// Raft scenarios, data-driven: each file in testdata/ is a list of blocks,
//   # what this step shows
//   command args
//   ----
//   expected output
// separated by blank lines, run in order against one Harness (harness.ts
// lists the commands). REWRITE=1 writes the actual outputs back (then read
// the diff before committing it).
import t from 'tap';
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { join } from 'node:path';
import { Harness } from './harness.js';

const dir = fileURLToPath(new URL('./testdata/', import.meta.url));

for (const file of readdirSync(dir).filter((f) => f.endsWith('.txt')).sort()) {
  t.test(file, async (t) => {
    const blocks = readFileSync(join(dir, file), 'utf8').trimEnd().split(/\n\s*\n/);
    const h = new Harness();
    const rewritten: string[] = [];
    for (const block of blocks) {
      const lines = block.split('\n');
      const sep = lines.indexOf('----');
      const head = sep < 0 ? lines : lines.slice(0, sep);
      const comments = head.filter((l) => l.startsWith('#'));
      const cmdLine = head.filter((l) => !l.startsWith('#') && l.trim() !== '');
      if (cmdLine.length !== 1) {
        rewritten.push(block);
        if (cmdLine.length > 1) t.fail(`${file}: one command per block: ${cmdLine.join(' / ')}`);
        continue;
      }
      const [cmd, ...args] = cmdLine[0]!.trim().split(/\s+/);
      const want = sep < 0 ? '' : lines.slice(sep + 1).join('\n');
      const got = h.run(cmd!, args);
      if (process.env.REWRITE) rewritten.push([...comments, cmdLine[0]!, '----', ...(got ? [got] : [])].join('\n'));
      else t.equal(got, want, `${file}: ${cmdLine[0]}`);
    }
    if (process.env.REWRITE) writeFileSync(join(dir, file), `${rewritten.join('\n\n')}\n`);
  });
}
