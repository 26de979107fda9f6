// Test helpers: deterministic memory images and the shapes their changes take.
import { randomFillSync } from 'node:crypto';

/** A seeded xorshift generator, so failures replay. */
export function rng(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s / 0x100000000;
  };
}

export function randomBytes(n: number): Buffer {
  return randomFillSync(Buffer.allocUnsafe(n));
}

export function pageNumbers(n: number, first = 0): BigUint64Array {
  const a = new BigUint64Array(n);
  for (let i = 0; i < n; i++) a[i] = BigInt(first + i);
  return a;
}

/** Changes `mem` page by page in a mix of the ways guest memory changes. */
export function mutate(mem: Buffer, pageSize: number, rand: () => number): void {
  const pages = mem.length / pageSize;
  for (let p = 0; p < pages; p++) {
    const base = p * pageSize;
    const r = Math.floor(rand() * 7);
    if (r === 0) continue; // unchanged
    if (r === 1) {
      for (let k = 0; k < 1 + rand() * 30; k++) mem.writeUInt32LE(Math.floor(rand() * 2 ** 32), base + Math.floor(rand() * (pageSize / 4)) * 4);
    } else if (r === 2) {
      const len = 1 + Math.floor(rand() * (pageSize / 3));
      const off = Math.floor(rand() * (pageSize - len));
      randomFillSync(mem, base + off, len);
    } else if (r === 3) {
      randomFillSync(mem, base, pageSize);
    } else if (r === 4) {
      mem.fill(0, base, base + pageSize);
    } else if (r === 5 && pages > 1) {
      const src = ((p + 1) % pages) * pageSize;
      mem.copy(mem, base, src, src + pageSize);
    } else {
      const at = base + Math.floor(rand() * pageSize);
      mem[at] = mem[at]! ^ 0x80;
    }
  }
}
