// Raft's durable state in a directory: a write-ahead log of hard states and
// entries (one write and one fdatasync per Ready: group commit), and the
// latest snapshot in its own file. A record is [u32 length][u32 CRC32C]
// [payload]; a torn or corrupt tail, which can only be a write whose fsync
// had not finished (so nothing that was acknowledged), is cut off at open.
// The log file is zero-filled ahead of the writes (PREALLOC at a time, in
// the background, after a first 1 MiB so that a new log costs little):
// overwriting allocated blocks leaves the file's size and extents alone, so
// fdatasync flushes data only, not a journal commit; a zero length ends the
// records.
import { closeSync, existsSync, fsyncSync, mkdirSync, openSync, readFileSync, renameSync, ftruncateSync, writeSync } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { native } from '../../../native.js';
import { NovacronError } from '../../../errors.js';
import type { Entry, HardState, Ready, Snapshot, StoredState } from './types.js';

const PREALLOC = 16 << 20;
const REC_HARD = 1;
const REC_ENTRY = 2;

function record(type: number, body: Buffer): Buffer {
  const out = Buffer.allocUnsafe(8 + 1 + body.length);
  out.writeUInt32LE(1 + body.length, 0);
  out[8] = type;
  body.copy(out, 9);
  out.writeUInt32LE(native.crc32c(out.subarray(8)), 4);
  return out;
}

function hardRecord(h: HardState): Buffer {
  const b = Buffer.allocUnsafe(20);
  b.writeDoubleLE(h.term, 0);
  b.writeUInt32LE(h.vote, 8);
  b.writeDoubleLE(h.commit, 12);
  return record(REC_HARD, b);
}

function entryRecord(e: Entry): Buffer {
  const b = Buffer.allocUnsafe(17 + e.data.length);
  b.writeDoubleLE(e.term, 0);
  b.writeDoubleLE(e.index, 8);
  b[16] = e.type === 'conf' ? 1 : 0;
  b.set(e.data, 17);
  return record(REC_ENTRY, b);
}

function encodeSnapshot(s: Snapshot): Buffer {
  const meta = Buffer.from(JSON.stringify(s.meta));
  const head = Buffer.allocUnsafe(4);
  head.writeUInt32LE(meta.length, 0);
  return record(3, Buffer.concat([head, meta, s.data]));
}

function writeAllSync(fd: number, buf: Buffer): void {
  for (let done = 0; done < buf.length; ) {
    const n = writeSync(fd, buf, done, buf.length - done);
    if (n === 0) throw new NovacronError('ERR_RAFT_STORAGE', 'a Raft file write stopped short (disk full?)');
    done += n;
  }
}

/** Reads records until the end or the first bad one; returns them and where the good part ends. */
function readRecords(buf: Buffer): { recs: Array<{ type: number; body: Buffer }>; end: number } {
  const recs: Array<{ type: number; body: Buffer }> = [];
  let at = 0;
  while (at + 8 <= buf.length) {
    const len = buf.readUInt32LE(at);
    if (len < 1 || at + 8 + len > buf.length) break;
    const payload = buf.subarray(at + 8, at + 8 + len);
    if (native.crc32c(payload) !== buf.readUInt32LE(at + 4)) break;
    recs.push({ type: payload[0]!, body: payload.subarray(1) });
    at += 8 + len;
  }
  return { recs, end: at };
}

export class RaftWal {
  readonly dir: string;
  #fh: FileHandle;
  #hard: HardState;
  // Entries on disk after the snapshot: kept for compaction, which rewrites them.
  #entries: Entry[];
  #bytes: number;
  #capacity: number;
  #extending: Promise<void> | undefined;

  private constructor(dir: string, fh: FileHandle, stored: StoredState, bytes: number, capacity: number) {
    this.dir = dir;
    this.#fh = fh;
    this.#hard = stored.hardState;
    this.#entries = stored.entries;
    this.#bytes = bytes;
    this.#capacity = capacity;
  }

  /** Opens (creating) the directory's log; returns it with the state it holds. */
  static async open(dir: string): Promise<{ wal: RaftWal; stored: StoredState }> {
    mkdirSync(dir, { recursive: true });
    const logPath = join(dir, 'raft.wal');
    const snapPath = join(dir, 'raft.snap');
    let snapshot: Snapshot | undefined;
    if (existsSync(snapPath)) {
      const { recs } = readRecords(readFileSync(snapPath));
      const r = recs[0];
      if (!r || r.type !== 3) throw new NovacronError('ERR_RAFT_STORAGE', `snapshot file ${snapPath} is corrupt`);
      const metaLen = r.body.readUInt32LE(0);
      snapshot = { meta: JSON.parse(r.body.subarray(4, 4 + metaLen).toString()) as Snapshot['meta'], data: new Uint8Array(r.body.subarray(4 + metaLen)) };
    }
    let hardState: HardState = { term: 0, vote: 0, commit: 0 };
    let entries: Entry[] = [];
    let bytes = 0;
    if (existsSync(logPath)) {
      const buf = readFileSync(logPath);
      const { recs, end } = readRecords(buf);
      for (const r of recs) {
        if (r.type === REC_HARD) {
          hardState = { term: r.body.readDoubleLE(0), vote: r.body.readUInt32LE(8), commit: r.body.readDoubleLE(12) };
        } else if (r.type === REC_ENTRY) {
          const e: Entry = { term: r.body.readDoubleLE(0), index: r.body.readDoubleLE(8), type: r.body[16] === 1 ? 'conf' : 'normal', data: new Uint8Array(r.body.subarray(17)) };
          // A later write of an index replaces it and everything after.
          const first = entries[0]?.index ?? e.index;
          if (e.index < first + entries.length) entries.length = Math.max(0, e.index - first);
          entries.push(e);
        }
      }
      if (end < buf.length) {
        // Zero padding, or the unsynced tail of a write cut short by a
        // crash: gone either way, so no stale bytes follow new records.
        const fd = openSync(logPath, 'r+');
        ftruncateSync(fd, end);
        fsyncSync(fd);
        closeSync(fd);
      }
      bytes = end;
    }
    if (snapshot) entries = entries.filter((e) => e.index > snapshot!.meta.index);
    const fh = await open(logPath, existsSync(logPath) ? 'r+' : 'w+');
    return { wal: new RaftWal(dir, fh, { hardState, snapshot, entries }, bytes, bytes), stored: { hardState, snapshot, entries } };
  }

  // A write that stops short (a full disk answers with fewer bytes, not an
  // error, until nothing fits) is a failed write here.
  async #writeAll(buf: Buffer, at: number): Promise<void> {
    let done = 0;
    while (done < buf.length) {
      const { bytesWritten } = await this.#fh.write(buf, done, buf.length - done, at + done);
      if (bytesWritten === 0) throw new NovacronError('ERR_RAFT_STORAGE', `writing the Raft log in ${this.dir} stopped after ${done} of ${buf.length} bytes (disk full?)`);
      done += bytesWritten;
    }
  }

  // Makes room for `need` more bytes. The zero-fill runs ahead, in the
  // background, once half the room is used, so appends rarely wait for it
  // (a zero-fill and its fsync on the write path stalled every commit behind
  // it).
  async #reserve(need: number): Promise<void> {
    while (this.#bytes + need > this.#capacity) await (this.#extending ??= this.#extend(need));
    if (!this.#extending && (this.#capacity < PREALLOC || this.#bytes + need > this.#capacity / 2)) {
      const ahead = this.#extend(0);
      ahead.catch(() => undefined); // a failure shows again when the room is needed
      this.#extending = ahead;
    }
  }

  #extend(need: number): Promise<void> {
    // A new log starts with 1 MiB (a node starts fast), then grows PREALLOC at a time.
    const grow = Math.max(this.#capacity === 0 ? 1 << 20 : PREALLOC, need);
    const at = this.#capacity;
    return (async () => {
      try {
        await this.#writeAll(Buffer.alloc(grow), at);
        await this.#fh.sync();
        this.#capacity = at + grow;
      } finally {
        this.#extending = undefined;
      }
    })();
  }

  /** Makes a Ready's state durable: one write, one fdatasync. */
  async save(rd: Ready): Promise<void> {
    if (rd.snapshot) await this.#installSnapshot(rd.snapshot);
    const parts: Buffer[] = [];
    for (const e of rd.entries) parts.push(entryRecord(e));
    if (rd.hardState) parts.push(hardRecord(rd.hardState));
    if (!parts.length) return;
    const buf = parts.length === 1 ? parts[0]! : Buffer.concat(parts);
    await this.#reserve(buf.length);
    await this.#writeAll(buf, this.#bytes);
    await this.#fh.datasync();
    this.#bytes += buf.length;
    if (rd.hardState) this.#hard = rd.hardState;
    if (rd.entries.length) {
      const first = rd.entries[0]!.index;
      const base = this.#entries[0]?.index ?? first;
      if (first < base + this.#entries.length) this.#entries.length = Math.max(0, first - base);
      this.#entries.push(...rd.entries);
    }
  }

  /** Keeps `snap` and drops the log entries it covers (the log file is rewritten). */
  async compact(snap: Snapshot): Promise<void> {
    this.#writeSnapshotFile(snap);
    this.#entries = this.#entries.filter((e) => e.index > snap.meta.index);
    await this.#rewriteLog();
  }

  async #installSnapshot(snap: Snapshot): Promise<void> {
    this.#writeSnapshotFile(snap);
    this.#entries = [];
    await this.#rewriteLog();
  }

  #writeSnapshotFile(snap: Snapshot): void {
    const tmp = join(this.dir, 'raft.snap.tmp');
    const fd = openSync(tmp, 'w');
    writeAllSync(fd, encodeSnapshot(snap));
    fsyncSync(fd);
    closeSync(fd);
    renameSync(tmp, join(this.dir, 'raft.snap'));
    this.#syncDir();
  }

  // The log holds what the snapshot does not: written aside, synced, renamed over.
  async #rewriteLog(): Promise<void> {
    await this.#extending?.catch(() => undefined); // it writes to the file about to be replaced
    const tmp = join(this.dir, 'raft.wal.tmp');
    const buf = Buffer.concat([hardRecord(this.#hard), ...this.#entries.map(entryRecord)]);
    const pad = Math.min(PREALLOC, Math.max(1 << 20, buf.length));
    const capacity = buf.length + pad;
    const fd = openSync(tmp, 'w');
    writeAllSync(fd, buf);
    writeAllSync(fd, Buffer.alloc(pad));
    fsyncSync(fd);
    closeSync(fd);
    await this.#fh.close();
    renameSync(tmp, join(this.dir, 'raft.wal'));
    this.#syncDir();
    this.#fh = await open(join(this.dir, 'raft.wal'), 'r+');
    this.#bytes = buf.length;
    this.#capacity = capacity;
  }

  #syncDir(): void {
    const fd = openSync(this.dir, 'r');
    fsyncSync(fd);
    closeSync(fd);
  }

  /** Bytes in the log file. */
  get size(): number {
    return this.#bytes;
  }

  async close(): Promise<void> {
    await this.#extending?.catch(() => undefined);
    await this.#fh.close();
  }
}
