/**
 * Message ids: UUIDv7 (RFC 9562), time-ordered and unique across nodes without coordination.
 * Within one process, ids are strictly increasing even within the same millisecond (the 12-bit
 * `rand_a` field is used as a counter seeded at random each millisecond).
 */
import { randomFillSync } from 'node:crypto';

let lastMs = 0;
let counter = 0;

/** Random bytes drawn 4 KiB at a time: one system call per 200 ids instead of two per id. */
const pool = Buffer.allocUnsafe(4096);
let poolAt = pool.length;

function random(bytes: number): Buffer {
  if (poolAt + bytes > pool.length) {
    randomFillSync(pool);
    poolAt = 0;
  }
  const out = pool.subarray(poolAt, poolAt + bytes);
  poolAt += bytes;
  return out;
}

/** A new UUIDv7 string, e.g. `01933b5e-8f3a-7c21-9d4e-5b6a7c8d9e0f`. */
export function newId(now = Date.now()): string {
  let ms = now;
  if (ms <= lastMs) {
    ms = lastMs;
    counter++;
    if (counter > 0xfff) {
      ms = lastMs + 1;
      counter = random(1)[0] as number;
    }
  } else {
    counter = (random(1)[0] as number) & 0x7f;
  }
  lastMs = ms;
  const bytes = Buffer.from(random(16));
  bytes.writeUIntBE(ms, 0, 6);
  bytes[6] = 0x70 | ((counter >> 8) & 0x0f);
  bytes[7] = counter & 0xff;
  bytes[8] = 0x80 | ((bytes[8] as number) & 0x3f);
  const hex = bytes.toString('hex');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

const ID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/** True for a lower-case hyphenated UUID string (the only id form mqlog accepts). */
export function isId(value: unknown): value is string {
  return typeof value === 'string' && ID.test(value);
}

/** The millisecond timestamp a UUIDv7 carries. */
export function idTimestamp(id: string): number {
  return Number.parseInt(id.slice(0, 8) + id.slice(9, 13), 16);
}
