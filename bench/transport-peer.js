// The receiving side of `novacron bench transport`, run as its own process
// (as iperf3's server is). Modes: `amst-sink`, `amst-lend-sink` (borrows
// large messages: `lendBuffers`), `amst-batch-sink` (takes
// messages in `batch` events, as a receiver of many small ones would),
// `amst-echo`, `amst-mixed` (echoes messages under 1 KiB, takes larger ones
// in: the peer of `bench transport --transport rdma`), `net-sink`,
// `net-echo`; then the AMST I/O mode (`thread`,
// `loop`), the address to bind, the busy-poll window in microseconds (loop
// mode), the port (0: any) and the RDMA GID index (empty: picked).
// Prints its port, then on SIGTERM its peak RSS in bytes.
import net from 'node:net';
import { listen } from '../dist/index.js';

const mode = process.argv[2];
const report = () => {
  process.stdout.write(`rss ${process.resourceUsage().maxRSS * 1024}\n`);
  process.exit(0);
};
process.on('SIGTERM', report);

if (mode === 'amst-sink' || mode === 'amst-lend-sink' || mode === 'amst-batch-sink' || mode === 'amst-echo' || mode === 'amst-mixed') {
  const server = await listen({
    port: Number(process.argv[6] ?? 0),
    io: process.argv[3] ?? 'thread',
    host: process.argv[4] ?? '127.0.0.1',
    lendBuffers: mode === 'amst-lend-sink' || mode === 'amst-mixed',
    busyPollMicros: Number(process.argv[5] ?? 0),
    ...(process.argv[7] !== undefined && process.argv[7] !== '' ? { rdmaGidIndex: Number(process.argv[7]) } : {}),
  });
  server.on('connection', (conn) => {
    if (mode === 'amst-echo') conn.on('message', (m) => void conn.send(m).catch(() => {}));
    // A lent message is only valid while its listener runs: echo a copy.
    else if (mode === 'amst-mixed') conn.on('message', (m) => void (m.length < 1024 && conn.send(Buffer.from(m)).catch(() => {})));
    else if (mode === 'amst-batch-sink') conn.on('batch', () => {});
    else conn.on('message', () => {});
  });
  process.stdout.write(`port ${server.port}\n`);
} else {
  const server = net.createServer({ noDelay: true }, (sock) => {
    if (mode === 'net-echo') sock.on('data', (d) => sock.write(d));
    else sock.on('data', () => {});
    sock.on('error', () => {});
  });
  server.listen(0, '127.0.0.1', () => process.stdout.write(`port ${server.address().port}\n`));
}
