// The AMST side of `novacron bench wan`, run inside the sending namespace:
// connects with one stream, lets the mode controller classify the link and
// set streams and congestion control, then sends 4 MiB messages for the
// given seconds. Prints one JSON line: throughput after the first `omit`
// seconds (as iperf3 -O), and what the controller chose.
// usage: node wan-send.js HOST PORT SECONDS OMIT
import { connect, ModeController } from '../dist/index.js';

const [host, portText, secondsText, omitText] = process.argv.slice(2);
const seconds = Number(secondsText);
const omit = Number(omitText ?? 2);
const conn = await connect({ host, port: Number(portText), streams: 1, chunkSize: 256 * 1024 });
let chosen = { mode: null, streams: 1, congestion: null };
const controller = new ModeController(conn, {
  intervalMs: 250,
  samples: 2,
  onChange: (c) => (chosen = { mode: c.to, streams: c.streams ?? conn.streams, congestion: c.congestion }),
});
const msg = Buffer.alloc(4 << 20, 0x3c);
// Bytes the peer holds, from progress reports (about every sixteenth of a
// message), so slow links are measured finer than whole messages. The
// measurement ends on the clock, not on a message: on a link slower than a
// message per few seconds, waiting for one would stretch it without bound.
let acked = 0;
let ackedAtOmit = 0;
let ackedAtEnd = 0;
setTimeout(() => (ackedAtOmit = acked), omit * 1000);
let over = false;
const end = new Promise((resolve) => setTimeout(() => {
  ackedAtEnd = acked;
  over = true;
  resolve();
}, seconds * 1000));
// 16 x 4 MiB in flight: several round trips of data at (a), so a chunk in loss
// recovery on one stream does not hold the others back.
const inflight = [];
while (!over) {
  let held = 0;
  const sent = conn.send(msg, {
    onProgress: (n) => {
      acked += n - held;
      held = n;
    },
  });
  sent.catch(() => {});  // the connection is destroyed with sends in flight
  inflight.push(sent);
  if (inflight.length >= 16) await Promise.race([inflight.shift(), end]);
}
controller.stop();
const mbps = ((ackedAtEnd - ackedAtOmit) * 8) / (seconds - omit) / 1e6;
// TCP retransmissions of all streams, to tell a lossy run from a stalled one.
const st = conn.stats();
const retransmits = st?.streams.reduce((n, s) => n + s.retransmits, 0) ?? 0;
process.stdout.write(`${JSON.stringify({ mbps, ...chosen, liveStreams: st?.streams.filter((s) => s.alive).length ?? 0, retransmits })}\n`);
conn.destroy();
process.exit(0);
