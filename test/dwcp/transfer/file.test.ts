import t from 'tap';
import { smallDisk, smallDiskMissing } from '../../services.js';
import { once } from 'node:events';
import { execFile, spawn } from 'node:child_process';
import { promisify } from 'node:util';
import { fileURLToPath } from 'node:url';
import { mkdirSync, mkdtempSync, writeFileSync, readFileSync, readdirSync, copyFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  sendFile,
  receiveFiles,
  sendPages,
  connect,
  listen,
  HdeEncoder,
  HdeDecoder,
  TransferError,
  type AmstConnection,
  type ReceivedFile,
} from '../../../src/index.js';
import { randomBytes, rng, mutate } from '../../helpers.js';

const run = promisify(execFile);
const cli = fileURLToPath(new URL('../../../dist/cli/main.js', import.meta.url));

function dirs(): { src: string; dst: string } {
  const root = mkdtempSync(join(tmpdir(), 'novacron-xfer-'));
  const src = join(root, 'src');
  const dst = join(root, 'dst');
  mkdirSync(src);
  mkdirSync(dst);
  return { src, dst };
}

// A memory image: zero pages, random pages, repeated pages; odd length.
function image(bytes: number, seed: number): Buffer {
  const b = Buffer.alloc(bytes);
  const r = rng(seed);
  for (let off = 0; off + 4096 <= bytes; off += 4096) {
    const kind = r();
    if (kind < 0.4) continue;
    if (kind < 0.5) b.fill(0x11, off, off + 4096);
    else randomBytes(4096).copy(b, off);
  }
  randomBytes(bytes % 4096).copy(b, bytes - (bytes % 4096));
  return b;
}

t.test('a file arrives whole, verified, with no partial file left', async (t) => {
  const { src, dst } = dirs();
  const data = image(9 * 1024 * 1024 + 123, 1);
  writeFileSync(join(src, 'vm.mem'), data);
  const rx = await receiveFiles({ host: '127.0.0.1', port: 0, outDir: dst });
  const got = once(rx, 'file') as Promise<[ReceivedFile]>;
  const progress: number[] = [];
  const s = await sendFile(join(src, 'vm.mem'), { host: '127.0.0.1', port: rx.port, segmentBytes: 4 << 20, streams: 3, onProgress: (d) => progress.push(d) });
  const [f] = await got;
  t.ok(s.verified);
  t.equal(s.bytes, data.length);
  t.equal(f.sha256, s.sha256);
  t.ok(readFileSync(join(dst, 'vm.mem')).equals(data), 'bytes identical');
  t.same(readdirSync(dst), ['vm.mem'], 'no partial file left');
  t.ok(s.pages.zero > 0 && s.pages.full > 0, 'zero and full pages seen');
  t.ok(s.wireBytes < data.length * 0.7, `zero and repeated pages shrink it (${s.wireBytes} of ${data.length})`);
  t.ok(progress.length >= 3 && progress.every((d, i) => i === 0 || d >= progress[i - 1]!), 'progress rises');
  t.equal(progress.at(-1), data.length);
  // An empty file too.
  writeFileSync(join(src, 'empty.img'), '');
  const e = await sendFile(join(src, 'empty.img'), { host: '127.0.0.1', port: rx.port });
  t.ok(e.verified);
  t.equal(readFileSync(join(dst, 'empty.img')).length, 0);
  // The longest name a file system takes (255 bytes) goes too: its partial file's name is cut to fit.
  const longName = '\u6587'.repeat(85);
  const longData = image(10000, 3);
  writeFileSync(join(src, longName), longData);
  t.ok((await sendFile(join(src, longName), { host: '127.0.0.1', port: rx.port })).verified, 'a 255-byte name');
  t.ok(readFileSync(join(dst, longName)).equals(longData));
  // Transport choice: no RDMA device here, so `rdma` fails before anything
  // is sent and `tcp` (like the default `auto`) goes ahead.
  await t.rejects(sendFile(join(src, 'vm.mem'), { host: '127.0.0.1', port: rx.port, transport: 'rdma' }), { code: 'ERR_AMST_UNAVAILABLE' });
  const again = once(rx, 'file') as Promise<[ReceivedFile]>;
  t.ok((await sendFile(join(src, 'vm.mem'), { host: '127.0.0.1', port: rx.port, transport: 'tcp' })).verified);
  await again;
  await rx.close();
});

t.test('with a baseline only the changes travel', async (t) => {
  const { src, dst } = dirs();
  const v1 = image(6 * 1024 * 1024, 2);
  const v2 = Buffer.from(v1);
  mutate(v2, 4096, rng(3));
  writeFileSync(join(src, 'disk-v1.img'), v1);
  writeFileSync(join(src, 'disk-v2.img'), v2);
  const rx = await receiveFiles({ host: '127.0.0.1', port: 0, outDir: dst });
  const plain = await sendFile(join(src, 'disk-v2.img'), { host: '127.0.0.1', port: rx.port });
  t.notOk(plain.baselineUsed);
  copyFileSync(join(src, 'disk-v1.img'), join(dst, 'disk-v1.img'));
  const delta = await sendFile(join(src, 'disk-v2.img'), { host: '127.0.0.1', port: rx.port, baseline: join(src, 'disk-v1.img'), segmentBytes: 2 << 20 });
  t.ok(delta.baselineUsed && delta.verified);
  t.ok(delta.pages.unchanged > 0 && delta.pages.delta > 0, 'unchanged and delta pages');
  t.ok(delta.wireBytes < plain.wireBytes / 2, `delta ${delta.wireBytes} B against ${plain.wireBytes} B without`);
  t.ok(readFileSync(join(dst, 'disk-v2.img')).equals(v2));
  // The receiver's baseline differs from the sender's: full send, still correct.
  writeFileSync(join(dst, 'disk-v1.img'), image(6 * 1024 * 1024, 9));
  const fallback = await sendFile(join(src, 'disk-v2.img'), { host: '127.0.0.1', port: rx.port, baseline: join(src, 'disk-v1.img') });
  t.notOk(fallback.baselineUsed);
  t.ok(fallback.verified);
  t.ok(readFileSync(join(dst, 'disk-v2.img')).equals(v2));
  await rx.close();
});

// A hand-driven sender, for what a well-behaved one never sends.
async function rawSession(port: number): Promise<{ conn: AmstConnection; next: () => Promise<Record<string, unknown>> }> {
  const conn = await connect({ host: '127.0.0.1', port, streams: 1 });
  const inbox: Buffer[] = [];
  const waiters: Array<(b: Buffer) => void> = [];
  conn.on('message', (m: Buffer) => (waiters.length ? waiters.shift()!(m) : inbox.push(m)));
  const next = async (): Promise<Record<string, unknown>> => {
    const m = inbox.shift() ?? (await new Promise<Buffer>((r) => waiters.push(r)));
    return JSON.parse(m.toString()) as Record<string, unknown>;
  };
  return { conn, next };
}

const control = (o: object): Buffer => Buffer.from(JSON.stringify(o));

t.test('hostile senders are refused and leave nothing behind', async (t) => {
  const { dst } = dirs();
  const rx = await receiveFiles({ host: '127.0.0.1', port: 0, outDir: dst, maxBytes: 1 << 30 });
  const errors: string[] = [];
  rx.on('transferError', (e: TransferError) => errors.push(e.code));
  const hello = { t: 'hello', v: 1, name: 'x.img', size: 8192, pageSize: 4096, segmentBytes: 8192, baseline: null };
  for (const [bad, code] of [
    [{ ...hello, name: '../escape' }, 'ERR_TRANSFER_BAD_NAME'],
    [{ ...hello, name: '.hidden' }, 'ERR_TRANSFER_BAD_NAME'],
    [{ ...hello, name: '\u6587'.repeat(86) }, 'ERR_TRANSFER_BAD_NAME'],  // 258 bytes: over the file system's 255
    [{ ...hello, name: 'a\ud800b.img' }, 'ERR_TRANSFER_BAD_NAME'],  // a lone surrogate would be stored as another name
    [{ ...hello, size: 2 ** 40 }, 'ERR_TRANSFER_TOO_LARGE'],
    [{ ...hello, v: 99 }, 'ERR_TRANSFER_VERSION'],
    [{ ...hello, pageSize: 1000 }, 'ERR_TRANSFER_PROTOCOL'],
  ] as const) {
    const { conn, next } = await rawSession(rx.port);
    await conn.send(control(bad));
    const answer = await next();
    t.same([answer.t, answer.code], ['reject', code], code);
    conn.destroy();
  }
  // Accepted, then a corrupt frame: the transfer fails with the decoder's code.
  {
    const { conn, next } = await rawSession(rx.port);
    await conn.send(control(hello));
    t.equal((await next()).t, 'accept');
    await conn.send(control({ t: 'segment', index: 0, bytes: 8192 }));
    const enc = new HdeEncoder();
    const frame = enc.encode(randomBytes(8192), [0, 1]);
    frame[frame.length - 1]! ^= 0xff;
    await conn.send(frame);
    const answer = await next();
    t.equal(answer.t, 'done');
    t.equal(answer.ok, false);
    t.match(String(answer.code), /^ERR_HDE_/);
    conn.destroy();
  }
  // A frame that names a page outside the segment.
  {
    const { conn, next } = await rawSession(rx.port);
    await conn.send(control(hello));
    await next();
    await conn.send(control({ t: 'segment', index: 0, bytes: 8192 }));
    await conn.send(new HdeEncoder().encode(randomBytes(4096), [5]));
    t.equal((await next()).code, 'ERR_HDE_PAGE_OUT_OF_RANGE');
    conn.destroy();
  }
  // A sender that vanishes mid-transfer.
  {
    const { conn, next } = await rawSession(rx.port);
    await conn.send(control(hello));
    await next();
    await conn.send(control({ t: 'segment', index: 0, bytes: 8192 }));
    const gone = once(rx, 'transferError');
    conn.destroy();
    const [e] = (await gone) as [TransferError];
    t.equal(e.code, 'ERR_TRANSFER_CONNECTION');
  }
  // A checksum that does not match what arrived.
  {
    const { conn, next } = await rawSession(rx.port);
    await conn.send(control(hello));
    await next();
    await conn.send(control({ t: 'segment', index: 0, bytes: 8192 }));
    await conn.send(new HdeEncoder().encode(randomBytes(8192), [0, 1]));
    await conn.send(control({ t: 'segmentEnd', index: 0 }));
    await conn.send(control({ t: 'end', sha256: '0'.repeat(64) }));
    t.equal((await next()).code, 'ERR_TRANSFER_CHECKSUM');
    conn.destroy();
  }
  t.ok(errors.includes('ERR_TRANSFER_CHECKSUM'));
  t.same(readdirSync(dst), [], 'nothing written, nothing partial');
  t.notOk(existsSync(join(dst, '..', 'escape')));
  await rx.close();
});

t.test('sendPages: dirty pages of a region reach the peer', async (t) => {
  const server = await listen({ port: 0 });
  const accepted = once(server, 'connection') as Promise<[AmstConnection]>;
  const conn = await connect({ host: '127.0.0.1', port: server.port, streams: 2 });
  const [peer] = await accepted;
  const pages = 1000;
  const region = image(pages * 4096, 4);
  const mirror = Buffer.alloc(region.length);
  const decoder = new HdeDecoder({ region: mirror });
  let frames = 0;
  peer.on('message', (f: Buffer) => {
    decoder.decode(f);
    frames++;
  });
  const encoder = new HdeEncoder({ compression: 'zstd' });
  const all = await sendPages(conn, encoder, region, { batchPages: 128, window: 4 });
  t.equal(all.pages, pages);
  t.equal(all.frames, Math.ceil(pages / 128));
  t.ok(mirror.equals(region));
  // Change some pages, mark them dirty, send only those.
  const dirty = new Uint8Array(Math.ceil(pages / 8));
  const r = rng(5);
  for (let p = 0; p < pages; p++) {
    if (r() < 0.05) {
      region[p * 4096 + Math.floor(r() * 4096)]! ^= 0x5a;
      dirty[p >> 3]! |= 1 << (p & 7);
    }
  }
  const seen: number[] = [];
  const some = await sendPages(conn, encoder, region, { dirty, onProgress: (d) => seen.push(d) });
  t.ok(some.pages > 10 && some.pages < 100);
  t.equal(seen.at(-1), some.pages);
  t.ok(some.wireBytes < some.pages * 200, 'dirty pages travel as small deltas');
  t.ok(mirror.equals(region), 'peer region matches after the dirty pass');
  t.ok(frames > 0);
  const ac = new AbortController();
  ac.abort();
  await t.rejects(sendPages(conn, encoder, region, { signal: ac.signal }), { name: 'AbortError' });
  await t.rejects(sendPages(conn, encoder, region.subarray(0, 100)), { code: 'ERR_INVALID_ARGUMENT' });
  await t.rejects(sendPages(conn, encoder, region, { batchPages: 7 }), { code: 'ERR_INVALID_ARGUMENT' });
  conn.destroy();
  await server.close();
});

// A sender that stops talking: the transfer fails with ERR_TRANSFER_TIMEOUT,
// the receiver hangs up and the partial file is gone; a hello that asks for
// 1 GiB segments of a small file costs the receiver no more than the file.
t.test('a sender that goes quiet times out and leaves nothing behind', async (t) => {
  const { dst } = dirs();
  const rx = await receiveFiles({ host: '127.0.0.1', port: 0, outDir: dst, idleTimeoutMs: 300 });
  const errors: string[] = [];
  rx.on('transferError', (e: TransferError) => errors.push(e.code));
  const { conn, next } = await rawSession(rx.port);
  const closed = once(conn, 'close');
  const buffers0 = process.memoryUsage().arrayBuffers;
  await conn.send(control({ t: 'hello', v: 1, name: 'quiet.img', size: 8192, pageSize: 4096, segmentBytes: 1 << 30, baseline: null }));
  t.equal((await next()).t, 'accept');
  // Buffers count here as allocated, touched or not.
  t.ok(process.memoryUsage().arrayBuffers - buffers0 < 256 << 20, 'the 1 GiB segment size did not cost 1 GiB');
  t.match(readdirSync(dst), [/^\.quiet\.img\.[0-9a-f]{12}\.part$/], 'the partial file exists while the transfer runs');
  const answer = await next();
  t.same([answer.t, answer.ok, answer.code], ['done', false, 'ERR_TRANSFER_TIMEOUT'], 'the sender is told why');
  await closed;
  t.same(errors, ['ERR_TRANSFER_TIMEOUT']);
  t.same(readdirSync(dst), [], 'no partial file left');
  await t.rejects(receiveFiles({ port: 0, outDir: dst, idleTimeoutMs: 0 }), { code: 'ERR_INVALID_ARGUMENT', message: /idleTimeoutMs/ });
  await rx.close();
});

// Two senders of one name at once each write their own partial file: the
// name ends up as one of the two files, whole, never a mix of both.
t.test('two transfers of one name at once do not mix', async (t) => {
  const { src, dst } = dirs();
  mkdirSync(join(src, 'a'));
  mkdirSync(join(src, 'b'));
  const a = image((16 << 20) + 123, 11);
  const b = image((16 << 20) + 4567, 12);
  writeFileSync(join(src, 'a', 'vm.img'), a);
  writeFileSync(join(src, 'b', 'vm.img'), b);
  const rx = await receiveFiles({ host: '127.0.0.1', port: 0, outDir: dst });
  t.teardown(() => rx.close());
  const errors: unknown[] = [];
  rx.on('transferError', (e: unknown) => errors.push(e));
  for (let round = 0; round < 3; round++) {
    const [ra, rb] = await Promise.all([
      sendFile(join(src, 'a', 'vm.img'), { host: '127.0.0.1', port: rx.port, segmentBytes: 1 << 20 }),
      sendFile(join(src, 'b', 'vm.img'), { host: '127.0.0.1', port: rx.port, segmentBytes: 1 << 20 }),
    ]);
    t.ok(ra.verified && rb.verified, `round ${round}: both verified`);
    const got = readFileSync(join(dst, 'vm.img'));
    t.ok(got.equals(a) || got.equals(b), `round ${round}: the file is one of the two, whole`);
    t.same(readdirSync(dst), ['vm.img'], 'no partial file left');
  }
  t.same(errors, []);
});

// Options are checked before anything is opened: a sender whose encoder
// options are wrong must not leave a connection (which keeps a process
// alive) or a file handle behind. Run in a child, whose exit shows it.
t.test('bad options fail fast and leave nothing open', async (t) => {
  const { src, dst } = dirs();
  writeFileSync(join(src, 'f.img'), randomBytes(10000));
  const rx = await receiveFiles({ host: '127.0.0.1', port: 0, outDir: dst });
  const dist = fileURLToPath(new URL('../../../dist/index.js', import.meta.url));
  const script = `import { sendFile } from ${JSON.stringify(dist)};
    try { await sendFile(${JSON.stringify(join(src, 'f.img'))}, { host: '127.0.0.1', port: ${rx.port}, compression: 'gzip' }); }
    catch (e) { process.stdout.write(e.code); }`;
  const child = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  const timer = setTimeout(() => child.kill('SIGKILL'), 10000);
  const [code, signal] = (await once(child, 'exit')) as [number | null, string | null];
  clearTimeout(timer);
  t.equal(out, 'ERR_INVALID_ARGUMENT', 'the sender says why');
  t.same([code, signal], [0, null], 'and its process ends on its own');
  const file = join(src, 'f.img');
  await t.rejects(sendFile(file, undefined as never), { code: 'ERR_INVALID_ARGUMENT', message: /options must be an object/ });
  await t.rejects(sendFile(7 as never, { host: '127.0.0.1', port: rx.port }), { code: 'ERR_INVALID_ARGUMENT', message: /path/ });
  await t.rejects(sendFile(file, { host: '127.0.0.1', port: rx.port, onProgress: 3 as never }), { code: 'ERR_INVALID_ARGUMENT' });
  await t.rejects(sendFile(file, { host: '127.0.0.1', port: rx.port, pageSize: 1000 }), { code: 'ERR_INVALID_ARGUMENT' });
  await t.rejects(sendFile(file, { host: 'localhost', port: rx.port }), { code: 'ERR_INVALID_ARGUMENT' });
  await t.rejects(receiveFiles(undefined as never), { code: 'ERR_INVALID_ARGUMENT' });
  await t.rejects(receiveFiles({ port: 0 } as never), { code: 'ERR_INVALID_ARGUMENT', message: /outDir/ });
  await t.rejects(receiveFiles({ port: 0, outDir: dst, maxBytes: -1 }), { code: 'ERR_INVALID_ARGUMENT', message: /maxBytes/ });
  await t.rejects(receiveFiles({ port: -1, outDir: dst }), { code: 'ERR_INVALID_ARGUMENT', message: /port/ });
  t.same(readdirSync(dst), [], 'nothing arrived');
  await rx.close();
});

t.test('novacron send / receive from the command line', async (t) => {
  const { src, dst } = dirs();
  const v1 = image(3 * 1024 * 1024 + 77, 6);
  const v2 = Buffer.from(v1);
  v2[12345]! ^= 1;
  writeFileSync(join(src, 'a.img'), v1);
  writeFileSync(join(src, 'b.img'), v2);
  copyFileSync(join(src, 'a.img'), join(dst, 'a.img'));
  const rx = spawn(process.execPath, [cli, 'receive', '--port', '0', '--host', '127.0.0.1', '--out', dst, '--json'], { stdio: ['ignore', 'pipe', 'pipe'] });
  const exited = once(rx, 'exit') as Promise<[number]>;
  let err = '';
  rx.stderr.on('data', (d: Buffer) => (err += d.toString()));
  const port = await new Promise<number>((resolve) => {
    rx.stderr.on('data', () => {
      const m = /on port (\d+)/.exec(err);
      if (m) resolve(Number(m[1]));
    });
  });
  let out = '';
  rx.stdout.on('data', (d: Buffer) => (out += d.toString()));
  const { stdout } = await run(process.execPath, [cli, 'send', join(src, 'b.img'), '--to', `127.0.0.1:${port}`, '--baseline', join(src, 'a.img'), '--json']);
  const summary = JSON.parse(stdout) as { verified: boolean; baselineUsed: boolean; wireBytes: number };
  t.ok(summary.verified && summary.baselineUsed);
  t.ok(summary.wireBytes < 4096, `one changed byte costs ${summary.wireBytes} B`);
  const [code] = await exited;
  t.equal(code, 0, 'receiver exits after one file');
  t.equal((JSON.parse(out) as { name: string }).name, 'b.img');
  t.ok(readFileSync(join(dst, 'b.img')).equals(v2));
  await t.rejects(run(process.execPath, [cli, 'send', join(src, 'b.img'), '--to', 'nowhere']), { code: 2, stderr: /--to must be host:port, got nowhere \(ERR_USAGE\)/ });
  await t.rejects(run(process.execPath, [cli, 'send', join(src, 'missing.img'), '--to', `127.0.0.1:${port}`]), { code: 1 });
});

// A disk that fills up mid-transfer: the sender gets the receiver's error,
// the partial file is removed. Needs root to mount a small tmpfs.
t.test('a full disk fails the transfer cleanly', { skip: smallDiskMissing() ?? false }, async (t) => {
  const { src } = dirs();
  const disk = smallDisk('2m');
  if (!disk) return void t.comment('mount failed here: skipped');
  const small = disk.dir;
  try {
    writeFileSync(join(src, 'big.img'), randomBytes(6 << 20));
    const rx = await receiveFiles({ host: '127.0.0.1', port: 0, outDir: small });
    const failed = once(rx, 'transferError') as Promise<[TransferError]>;
    const err = await sendFile(join(src, 'big.img'), { host: '127.0.0.1', port: rx.port, segmentBytes: 1 << 20 }).catch((e: unknown) => e);
    t.equal((err as TransferError).code, 'ERR_TRANSFER_WRITE');
    t.equal((await failed)[0].code, 'ERR_TRANSFER_WRITE');
    t.same(readdirSync(small), [], 'partial file removed');
    await rx.close();
  } finally {
    disk.remove();
  }
});
