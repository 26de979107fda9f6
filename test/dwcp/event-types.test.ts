// Type checks of the public event APIs (AMST, file receiver, SWIM): `npm test` type-checks test/
// before running it, so a listener typed wrongly here fails the run.
import t from 'tap';
import type { AmstConnection, AmstServer } from '../../src/index.js';
import type { FileReceiver } from '../../src/dwcp/transfer/file.js';
import type { SwimNode } from '../../src/dwcp/consensus/swim/node.js';

export function listeners(conn: AmstConnection, server: AmstServer): void {
  conn.on('message', (m) => void m.readUInt8(0));
  conn.on('batch', (b) => void b.toArray());
  conn.once('streamLost', (index, errno) => void [index.toFixed(), errno?.toLowerCase()]);
  conn.on('close', (err) => void err?.code.startsWith('ERR_AMST_'));
  conn.on('transport', (carrier, err) => void [carrier === 'rdma', err?.syscallError]);
  server.on('connection', (c) => void c.id.toFixed());
  // @ts-expect-error messages are Buffers, not strings
  conn.on('message', (m: string) => void m);
  // @ts-expect-error no such event (a typo)
  conn.on('mesage', () => {});
}

export function otherEmitters(rx: FileReceiver, swim: SwimNode): void {
  rx.on('file', (f) => void [f.sha256.length, f.bytes.toFixed()]);
  rx.on('transferError', (err, name) => void [err.code.startsWith('ERR_'), name?.length]);
  swim.on('change', (u) => void u.id);
  // @ts-expect-error a file event carries a ReceivedFile
  rx.on('file', (f: number) => void f);
}

t.test('event listeners are typed (checked at compile time)', async (t) => {
  t.equal(typeof listeners, 'function');
  t.equal(typeof otherEmitters, 'function');
});
