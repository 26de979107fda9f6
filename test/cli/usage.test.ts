// The command line's answer to what it cannot run: a one-line error with a
// stable code and exit status 2 (1 for a failure of a well-formed command).
import t from 'tap';
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { refusedPort } from '../services.js';

const cli = fileURLToPath(new URL('../../dist/cli/main.js', import.meta.url));

function run(args: string[]): Promise<{ code: number; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [cli, ...args], { timeout: 30000 }, (err, _stdout, stderr) => {
      resolve({ code: err ? Number((err as { code?: number }).code) : 0, stderr });
    });
  });
}

t.test('malformed command lines exit 2 with ERR_USAGE', async (t) => {
  const cases: Array<[string[], RegExp]> = [
    [['send', '/etc/hostname', '--to', 'nowhere'], /--to must be host:port, got nowhere \(ERR_USAGE\)/],
    [['send', '/etc/hostname', '--to', '127.0.0.1:70000'], /--to must be host:port/],
    [['send', '/etc/hostname', '--to', '127.0.0.1:1', '--compression', 'gzip'], /--compression must be lz4, zstd or none, got gzip \(ERR_USAGE\)/],
    [['send', '/etc/hostname', '--to', '127.0.0.1:1', '--io', 'fast'], /--io must be thread or loop, got fast \(ERR_USAGE\)/],
    [['send'], /usage: novacron send FILE/],
    [['receive', '--port', '99999', '--out', '/tmp'], /--port must be an integer from 0 to 65535, got 99999 \(ERR_USAGE\)/],
    [['receive', '--port', '0'], /usage: novacron receive/],
    [['config', 'show'], /usage: novacron config print/],
    [['start', '--set', 'novalue'], /--set takes section.key=value, got novalue \(ERR_USAGE\)/],
    [['wan', 'sideways'], /usage: novacron wan up\|down\|status\|exec/],
    [['consensus', 'bogus'], /unknown consensus command: bogus;.*\(ERR_USAGE\)/],
    [['consensus', 'node', '--id', 'x'], /--id must be a positive integer \(ERR_USAGE\)/],
    [['bench', 'wan', '--links', 'a,z'], /--links: unknown link z \(a, b or c\) \(ERR_USAGE\)/],
    [['bench', 'transport', '--gib=0'], /--gib must be a positive number, got 0 \(ERR_USAGE\)/],
    [['send', '/etc/hostname', '--to', '127.0.0.1:1', '--no-such-flag'], /ERR_PARSE_ARGS_UNKNOWN_OPTION/],
  ];
  for (const [args, message] of cases) {
    const r = await run(args);
    t.equal(r.code, 2, `${args.join(' ')}: exit 2`);
    t.match(r.stderr, message, `${args.join(' ')}: says why`);
    t.ok(r.stderr.split('\n').length < 6 || args.includes('--no-such-flag'), `${args.join(' ')}: no page of usage for a bad value`);
  }
});

t.test('an unknown command prints the usage', async (t) => {
  const r = await run(['frobnicate']);
  t.equal(r.code, 2);
  t.match(r.stderr, /unknown command: frobnicate \(ERR_USAGE\)/);
  t.match(r.stderr, /commands:/);
});

t.test('a well-formed command that fails exits 1 with its own code', async (t) => {
  const port = await refusedPort();
  const r = await run(['status', '--api-port', String(port)]);
  t.equal(r.code, 1);
  t.match(r.stderr, new RegExp(`no node answers on 127\\.0\\.0\\.1:${port}: .*\\(ERR_NODE_UNREACHABLE\\)`));
  const missing = await run(['send', '/nonexistent-file', '--to', `127.0.0.1:${port}`]);
  t.equal(missing.code, 1);
  t.match(missing.stderr, /ENOENT/);
});
