#!/usr/bin/env node
// The `novacron` command.
import { parseArgs } from 'node:util';
import { readFileSync } from 'node:fs';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { dirname, join } from 'node:path';
import { NovacronError } from '../errors.js';
import { UsageError } from './usage.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');

const USAGE = `usage: novacron <command> [options]

commands:
  start [options]           run a node: HTTP API (health, metrics) on 127.0.0.1:7700, data plane on 7701
      --config FILE         YAML or JSON config (repeatable; later files win)
      --api-port N, --api-host ADDR, --data-port N, --data-dir DIR, --log-level L
      --set section.key=V   any setting (see config print); flags beat env (NOVACRON_SECTION__KEY) beat files
  status [--json]           ask a running node for its health (same flags as start to find it)
  config print [--json]     the effective configuration and where each value came from
  doctor [--json]           what the data plane will use on this host
  bench encode [options]    HDE encode/decode throughput against memcpy
      --size-mib N          working set (default 256)
      --simd a,b            SIMD paths to measure (default: every supported one)
      --max-time S          seconds per measurement (default 0.5)
      --workloads a,b       k1,k16,k128,region512,unchanged,random,zero (default all)
  bench transport [options] AMST over loopback against Node net (and iperf3 when installed)
      --gib N               bulk volume (default 4)
      --streams 1,2,4,8     stream counts for the bulk run
      --messages N          64-byte messages for the rate run (default 200000)
      --rounds N            ping-pong round trips (default 5000)
      --bulk-rounds N       interleaved bulk rounds (default 3)
      --msg-rounds N        interleaved 64-byte message-rate rounds (default 3)
      --busy-poll US        busy-poll window of the busy-polling ping-pong (default 50)
      --transport rdma      instead: bandwidth and 64-byte latency over RDMA, against TCP to the
                            same peer (ib_write_bw / ib_write_lat style; needs RDMA devices)
      --peer HOST:PORT      (rdma) a peer started with --serve; default: one on this host
      --serve               (rdma) be that peer; --host ADDR --port P (default 0.0.0.0:7711)
      --lanes N --sizes B,.. (rdma) queue pairs (default 4), message sizes (default 64 KiB, 1 MiB, 4 MiB)
      --gid-index N         (rdma) RoCE GID index at this end (default: as doctor shows)
  bench boot [--runs 5]     node start to /ready, and parallel against sequential start
  bench veth [options]      AMST through a tbf-shaped veth pair into a network namespace (root)
      --rate-mbit N         link rate (default 1000)
      --seconds S           about this long per run (default 5)
      --streams 1,4         stream counts
  bench wan [options]       AMST over emulated WAN links against one CUBIC and one BBR stream (root, iperf3)
      --links a,b,c         (a) 1 Gbit/s 50 ms 0.5 % loss, (b) 200 Mbit/s 120 ms 1 %, (c) a cellular trace
      --seconds S           measured seconds per run, after 3 s of warm-up (default 10)
      --trace FILE          replay this trace (Pantheon JSON or schedule) as link (c)
  send FILE --to HOST:PORT  send a file (a disk or memory image) over AMST, HDE-encoded
      --baseline OLD        previous version, also held by the receiver: send only what changed
      --streams N           TCP streams (default 8)
      --transport T         auto (default: RDMA when both hosts have a device), rdma, tcp
      --compression C       lz4 (default), zstd or none
      --segment-mib N       MiB per segment; each side holds two (default 128)
      --json                summary as JSON
  receive --port P --out DIR
                            receive files into DIR (written whole, fsynced, SHA-256 verified)
      --host ADDR           address to bind (default 0.0.0.0)
      --transport T         auto (default: take RDMA offers when this host has a device) or tcp
      --keep                keep receiving after the first file
      --json                one JSON line per file
  consensus node [options]  one member of a Raft key-value cluster (foreground)
      --id N --peers 1=HOST:PORT,2=...,3=... --client-port P --data-dir DIR
      --tls-ca F --tls-cert F --tls-key F   mutual TLS for the Raft and client ports
      --join                a new member: wait to be added instead of campaigning
  consensus member add|remove ID [--address HOST:PORT] --cluster 1=HOST:CLIENTPORT,...
                            change a Raft cluster's membership, one member at a time
  consensus transfer ID --cluster 1=HOST:CLIENTPORT,...
                            hand the cluster's leadership to member ID
  bench consensus           a 3-node Raft cluster on loopback (3 processes, fsync on): put latency and throughput
  wan up [options]          an emulated WAN link between network namespaces <name>-a and <name>-b (root)
      --rtt 60ms | --delay 30ms   round trip, or one-way delay
      --jitter 2ms --loss 0.5% --rate 500mbit --queue BYTES --reorder 1%
      --ge P,R[,BAD,GOOD]   bursty (Gilbert-Elliott) loss instead of --loss
      --trace FILE          replay a Pantheon JSON or cooked throughput trace, looped
      --name N              link name (default nvwan); --seed N; --json
  wan down [--name N]       remove the link and its namespaces
  wan status [--name N]     addresses and the forwarder's counters
  wan exec a|b [--name N] -- CMD ...   run a command in one side's namespace
  help                      this text
  --version                 the package version
`;

function positive(v: string | undefined, name: string): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isFinite(n) || n <= 0) throw new UsageError(`--${name} must be a positive number, got ${v}`);
  return n;
}

async function cmdDoctor(args: string[]): Promise<void> {
  const { values } = parseArgs({ args, options: { json: { type: 'boolean', default: false } }, strict: true });
  const { doctor, formatDoctor } = await import('../sys/doctor.js');
  const report = await doctor();
  process.stdout.write(values.json ? `${JSON.stringify(report)}\n` : `${formatDoctor(report)}\n`);
}

async function cmdBench(args: string[]): Promise<void> {
  const [suite, ...rest] = args;
  if (suite === 'transport') return benchTransport(rest);
  if (suite === 'veth') return benchVeth(rest);
  if (suite === 'wan') return benchWan(rest);
  if (suite === 'consensus') {
    const { values } = parseArgs({ args: rest, options: { sequential: { type: 'string' }, concurrent: { type: 'string' }, clients: { type: 'string' } }, strict: true });
    const mod = (await import(pathToFileURL(join(root, 'bench', 'consensus.js')).href)) as { run(opts: Record<string, unknown>): Promise<void> };
    return mod.run({ sequential: positive(values.sequential, 'sequential'), concurrent: positive(values.concurrent, 'concurrent'), clients: positive(values.clients, 'clients') });
  }
  if (suite === 'boot') {
    const { values } = parseArgs({ args: rest, options: { runs: { type: 'string' } }, strict: true });
    const mod = (await import(pathToFileURL(join(root, 'bench', 'boot.js')).href)) as { run(opts: Record<string, unknown>): Promise<void> };
    return mod.run({ runs: positive(values.runs, 'runs') });
  }
  if (suite !== 'encode') throw new UsageError(`unknown benchmark suite: ${suite ?? '(none)'}; try \`novacron bench encode\`, \`transport\`, \`veth\`, \`boot\` or \`consensus\``);
  const { values } = parseArgs({
    args: rest,
    options: {
      'size-mib': { type: 'string' },
      simd: { type: 'string' },
      'max-time': { type: 'string' },
      workloads: { type: 'string' },
    },
    strict: true,
  });
  const url = pathToFileURL(join(root, 'bench', `${suite}.js`)).href;
  const mod = (await import(url)) as { run(opts: Record<string, unknown>): Promise<void> };
  await mod.run({
    sizeMiB: positive(values['size-mib'], 'size-mib'),
    simd: values.simd?.split(',').filter(Boolean),
    maxTime: positive(values['max-time'], 'max-time'),
    workloads: values.workloads?.split(',').filter(Boolean),
  });
}

function gidIndex(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0 || n > 255) throw new UsageError(`--gid-index must be an integer from 0 to 255, got ${v}`);
  return n;
}

async function benchTransport(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: {
      gib: { type: 'string' },
      streams: { type: 'string' },
      messages: { type: 'string' },
      rounds: { type: 'string' },
      'bulk-rounds': { type: 'string' },
      'msg-rounds': { type: 'string' },
      'busy-poll': { type: 'string' },
      transport: { type: 'string' },
      peer: { type: 'string' },
      serve: { type: 'boolean' },
      host: { type: 'string' },
      port: { type: 'string' },
      lanes: { type: 'string' },
      sizes: { type: 'string' },
      'gid-index': { type: 'string' },
    },
    strict: true,
  });
  const transport = values.transport ?? 'tcp';
  if (transport === 'rdma') {
    const lanes = positive(values.lanes, 'lanes');
    if (lanes !== undefined && (!Number.isInteger(lanes) || lanes > 16)) throw new UsageError('--lanes must be an integer from 1 to 16');
    const rdma = (await import(pathToFileURL(join(root, 'bench', 'transport-rdma.js')).href)) as { run(opts: Record<string, unknown>): Promise<void> };
    await rdma.run({
      gib: positive(values.gib, 'gib'),
      rounds: positive(values.rounds, 'rounds'),
      lanes,
      sizes: values.sizes?.split(',').map((s) => positive(s, 'sizes')!),
      peer: values.peer,
      serve: values.serve ?? false,
      host: values.host,
      port: positive(values.port, 'port'),
      gidIndex: values['gid-index'] === undefined ? undefined : gidIndex(values['gid-index']),
    });
    return;
  }
  if (transport !== 'tcp') throw new UsageError(`--transport must be tcp or rdma, got ${transport}`);
  for (const only of ['peer', 'serve', 'host', 'port', 'lanes', 'sizes', 'gid-index'] as const) {
    if (values[only] !== undefined) throw new UsageError(`--${only} goes with --transport rdma`);
  }
  const streams = values.streams?.split(',').map((s) => positive(s, 'streams')!);
  const mod = (await import(pathToFileURL(join(root, 'bench', 'transport.js')).href)) as { run(opts: Record<string, unknown>): Promise<void> };
  await mod.run({
    gib: positive(values.gib, 'gib'),
    streams,
    messages: positive(values.messages, 'messages'),
    rounds: positive(values.rounds, 'rounds'),
    bulkRounds: positive(values['bulk-rounds'], 'bulk-rounds'),
    msgRounds: positive(values['msg-rounds'], 'msg-rounds'),
    busyPoll: positive(values['busy-poll'], 'busy-poll'),
  });
}

async function benchWan(args: string[]): Promise<void> {
  const { values } = parseArgs({ args, options: { seconds: { type: 'string' }, links: { type: 'string' }, trace: { type: 'string' } }, strict: true });
  const links = values.links?.split(',');
  const unknown = links?.find((l) => !['a', 'b', 'c'].includes(l));
  if (unknown !== undefined) throw new UsageError(`--links: unknown link ${unknown} (a, b or c)`);
  const mod = (await import(pathToFileURL(join(root, 'bench', 'wan.js')).href)) as { run(opts: Record<string, unknown>): Promise<void> };
  await mod.run({ seconds: positive(values.seconds, 'seconds'), links, trace: values.trace });
}

async function benchVeth(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: { 'rate-mbit': { type: 'string' }, seconds: { type: 'string' }, streams: { type: 'string' } },
    strict: true,
  });
  const streams = values.streams?.split(',').map((s) => positive(s, 'streams')!);
  const mod = (await import(pathToFileURL(join(root, 'bench', 'veth.js')).href)) as { run(opts: Record<string, unknown>): Promise<void> };
  await mod.run({ rateMbit: positive(values['rate-mbit'], 'rate-mbit'), seconds: positive(values.seconds, 'seconds'), streams });
}

async function main(argv: string[]): Promise<void> {
  const [cmd, ...args] = argv;
  switch (cmd) {
    case 'doctor':
      return cmdDoctor(args);
    case 'bench':
      return cmdBench(args);
    case 'start':
      return (await import('./node.js')).cmdStart(args);
    case 'status':
      return (await import('./node.js')).cmdStatus(args);
    case 'config':
      return (await import('./node.js')).cmdConfig(args);
    case 'send':
      return (await import('./transfer.js')).cmdSend(args);
    case 'receive':
      return (await import('./transfer.js')).cmdReceive(args);
    case 'consensus':
      return (await import('./consensus.js')).cmdConsensus(args);
    case 'wan':
      return (await import('./wan.js')).cmdWan(args);
    case '--version':
    case 'version': {
      const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { version: string };
      process.stdout.write(`${pkg.version}\n`);
      return;
    }
    case undefined:
    case 'help':
    case '--help':
    case '-h':
      process.stdout.write(USAGE);
      return;
    default:
      throw new UsageError(`unknown command: ${cmd}`, true);
  }
}

main(process.argv.slice(2)).catch((err: unknown) => {
  const code = err instanceof NovacronError ? err.code : (err as { code?: string }).code;
  process.stderr.write(`novacron: ${err instanceof Error ? err.message : String(err)}${code ? ` (${code})` : ''}\n`);
  // A command line that cannot run exits 2, as parseArgs' own complaints do.
  const usage = code === 'ERR_USAGE' || (typeof code === 'string' && code.startsWith('ERR_PARSE_ARGS_'));
  if ((err instanceof UsageError && err.showUsage) || code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION') process.stderr.write(USAGE);
  else if (usage) process.stderr.write('novacron help lists every command and option\n');
  process.exitCode = usage ? 2 : 1;
});
