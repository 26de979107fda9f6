// `novacron consensus node`: one member of a Raft key-value cluster, in the
// foreground (the consensus benchmark starts three).
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { NovacronError } from '../errors.js';
import { RaftKvNode } from '../dwcp/consensus/raft/kv-node.js';
import type { PeerAddress } from '../dwcp/consensus/raft/transport.js';

/** `1=127.0.0.1:7801,2=127.0.0.1:7802` -> map. */
export function parsePeers(s: string): Map<number, PeerAddress> {
  const out = new Map<number, PeerAddress>();
  for (const part of s.split(',').filter(Boolean)) {
    const m = /^(\d+)=([^:]+):(\d+)$/.exec(part.trim());
    if (!m || Number(m[1]) <= 0 || Number(m[3]) > 65535) throw new NovacronError('ERR_USAGE', `--peers: expected id=host:port, got ${part}`);
    out.set(Number(m[1]), { host: m[2]!, port: Number(m[3]) });
  }
  if (out.size === 0) throw new NovacronError('ERR_USAGE', '--peers is required');
  return out;
}

export async function cmdConsensus(args: string[]): Promise<void> {
  const [sub, ...rest] = args;
  if (sub === 'member') return cmdMember(rest);
  if (sub === 'transfer') return cmdTransfer(rest);
  if (sub !== 'node') throw new NovacronError('ERR_USAGE', `unknown consensus command: ${sub ?? '(none)'}; try \`novacron consensus node\` or \`member\``);
  const { values } = parseArgs({
    args: rest,
    options: { id: { type: 'string' }, peers: { type: 'string' }, 'client-port': { type: 'string' }, 'data-dir': { type: 'string' }, 'tick-ms': { type: 'string' }, 'tls-ca': { type: 'string' }, 'tls-cert': { type: 'string' }, 'tls-key': { type: 'string' }, join: { type: 'boolean', default: false } },
    strict: true,
  });
  const id = Number(values.id);
  if (!Number.isInteger(id) || id <= 0) throw new NovacronError('ERR_USAGE', '--id must be a positive integer');
  if (!values['data-dir']) throw new NovacronError('ERR_USAGE', '--data-dir is required');
  const tlsFiles = [values['tls-ca'], values['tls-cert'], values['tls-key']];
  if (tlsFiles.some(Boolean) && !tlsFiles.every(Boolean)) throw new NovacronError('ERR_USAGE', '--tls-ca, --tls-cert and --tls-key go together');
  const tls = values['tls-ca'] ? { ca: readFileSync(values['tls-ca']), cert: readFileSync(values['tls-cert']!), key: readFileSync(values['tls-key']!) } : undefined;
  const node = new RaftKvNode({
    ...(tls ? { tls } : {}),
    id,
    peers: parsePeers(values.peers ?? ''),
    dir: values['data-dir'],
    clientPort: Number(values['client-port'] ?? 0),
    join: values.join,
    ...(values['tick-ms'] ? { tickMs: Number(values['tick-ms']) } : {}),
  });
  await node.start();
  process.stdout.write(`raft node ${id} client port ${node.clientPort}\n`);
  const stop = (): void => {
    void node.close().then(() => process.exit(0));
  };
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
}

/** `novacron consensus member add|remove ID [--address HOST:PORT] --cluster 1=HOST:CLIENTPORT,...` */
async function cmdMember(args: string[]): Promise<void> {
  const { values, positionals } = parseArgs({ args, options: { address: { type: 'string' }, cluster: { type: 'string' } }, allowPositionals: true, strict: true });
  const [action, id] = positionals;
  if ((action !== 'add' && action !== 'remove') || !id || !/^\d+$/.test(id)) throw new NovacronError('ERR_USAGE', 'usage: novacron consensus member add|remove ID [--address HOST:PORT] --cluster 1=HOST:CLIENTPORT,...');
  if (action === 'add' && !values.address) throw new NovacronError('ERR_USAGE', '--address (the new member\'s Raft host:port) is required to add');
  const { RaftKvClient } = await import('../dwcp/consensus/raft/client.js');
  const client = new RaftKvClient(parsePeers(values.cluster ?? ''));
  try {
    const r = await client.call({ op: 'member', action, node: Number(id), ...(values.address ? { address: values.address } : {}) });
    process.stdout.write(`voters: ${(r.voters as number[]).join(' ')}\n`);
  } finally {
    client.close();
  }
}

/** `novacron consensus transfer ID --cluster 1=HOST:CLIENTPORT,...`: hand leadership to member ID. */
async function cmdTransfer(args: string[]): Promise<void> {
  const { values, positionals } = parseArgs({ args, options: { cluster: { type: 'string' } }, allowPositionals: true, strict: true });
  const id = positionals[0];
  if (!id || !/^\d+$/.test(id)) throw new NovacronError('ERR_USAGE', 'usage: novacron consensus transfer ID --cluster 1=HOST:CLIENTPORT,...');
  const { RaftKvClient } = await import('../dwcp/consensus/raft/client.js');
  const client = new RaftKvClient(parsePeers(values.cluster ?? ''));
  try {
    const r = await client.call({ op: 'transfer', to: Number(id) });
    process.stdout.write(`leader: ${String(r.leader)}\n`);
  } finally {
    client.close();
  }
}
