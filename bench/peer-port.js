// The port a benchmark peer (transport-peer.js) prints once it listens, and
// everything it has printed so far; the port rejects if the peer exits first.
export function peerPort(child, what) {
  let out = '';
  const port = new Promise((resolve, reject) => {
    child.stdout.on('data', (d) => {
      out += d;
      const m = /port (\d+)/.exec(out);
      if (m) resolve(Number(m[1]));
    });
    child.once('exit', (code) => reject(new Error(`${what} exited with ${code}`)));
  });
  return { port, output: () => out };
}
