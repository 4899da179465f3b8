import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { test } from 'node:test';
import { RequestBodies } from '../../src/transport/request-bodies.ts';

const MiB = 1024 * 1024;

/** A body as a socket delivers it: in pieces of 64 KiB. */
function stream(bytes: Buffer, piece = 64 * 1024): Readable {
  const pieces: Buffer[] = [];
  for (let at = 0; at < bytes.length; at += piece) pieces.push(bytes.subarray(at, at + piece));
  return Readable.from(pieces, { objectMode: false });
}

test('a large body is read whole, and once released its buffer takes the next large body', async () => {
  const bodies = new RequestBodies({ maxBytes: 4 * MiB, pooledFromBytes: MiB });
  const first = randomBytes(3 * MiB + 17);
  const a = await bodies.read(stream(first), first.length);
  assert.ok(a.bytes.equals(first));
  const buffer = a.bytes.buffer;
  a.release();
  a.release();
  const second = randomBytes(2 * MiB);
  const b = await bodies.read(stream(second), second.length);
  assert.ok(b.bytes.equals(second));
  assert.equal(b.bytes.buffer, buffer, 'the released buffer is reused');
  // Not released: the next body gets a buffer of its own, and b's bytes stay as they were.
  const c = await bodies.read(stream(first), first.length);
  assert.notEqual(c.bytes.buffer, buffer);
  assert.ok(b.bytes.equals(second));
});

test('a small body, or one without a declared length, is gathered into a buffer of its own', async () => {
  const bodies = new RequestBodies({ maxBytes: 4 * MiB, pooledFromBytes: MiB });
  const small = randomBytes(200_000);
  const a = await bodies.read(stream(small), small.length);
  assert.ok(a.bytes.equals(small));
  const chunked = randomBytes(2 * MiB);
  const b = await bodies.read(stream(chunked), Number.NaN);
  assert.ok(b.bytes.equals(chunked));
});

test('a body larger than the limit is refused with ERR_REQUEST_TOO_LARGE, declared or not', async () => {
  const bodies = new RequestBodies({ maxBytes: MiB, pooledFromBytes: 1024 });
  const big = randomBytes(MiB + 1);
  await assert.rejects(bodies.read(stream(big), big.length), { code: 'ERR_REQUEST_TOO_LARGE' });
  await assert.rejects(bodies.read(stream(big), Number.NaN), { code: 'ERR_REQUEST_TOO_LARGE' });
});

test('a body shorter or longer than its Content-Length is ERR_BAD_REQUEST, and its buffer is reused', async () => {
  const bodies = new RequestBodies({ maxBytes: 4 * MiB, pooledFromBytes: MiB });
  const bytes = randomBytes(2 * MiB);
  await assert.rejects(bodies.read(stream(bytes), bytes.length + 1), { code: 'ERR_BAD_REQUEST', message: /fewer bytes/ });
  await assert.rejects(bodies.read(stream(bytes), bytes.length - 1), { code: 'ERR_BAD_REQUEST', message: /more bytes/ });
  const a = await bodies.read(stream(bytes), bytes.length);
  const b = await bodies.read(stream(bytes), bytes.length);
  assert.notEqual(a.bytes.buffer, b.bytes.buffer, 'two bodies at once never share a buffer');
  assert.ok(a.bytes.equals(bytes) && b.bytes.equals(bytes));
});

test('a body cut by a stream error rejects with that error as a 400', async () => {
  const bodies = new RequestBodies({ maxBytes: 4 * MiB, pooledFromBytes: MiB });
  const cut = new Readable({ read() {} });
  const reading = bodies.read(cut, 2 * MiB);
  cut.push(randomBytes(MiB));
  cut.destroy(Object.assign(new Error('aborted'), { code: 'ECONNRESET' }));
  await assert.rejects(reading, (err: Error & { code?: string; statusCode?: number }) => err.code === 'ECONNRESET' && err.statusCode === 400);
});
