import assert from 'node:assert/strict';
import { test } from 'node:test';
import { FRAME_HEADER_BYTES, FrameType, decodeFrame, encodeFrame, encodeFrameHeader } from '../../src/log/frame.js';

test('a frame decodes to the type, offset and payload it was encoded with', () => {
  const payload = Buffer.from('hello frames');
  const bytes = encodeFrame(FrameType.MESSAGE, 12345, payload);
  assert.equal(bytes.length, FRAME_HEADER_BYTES + payload.length);
  const decoded = decodeFrame(bytes);
  assert.ok(decoded.ok);
  assert.equal(decoded.frame.type, FrameType.MESSAGE);
  assert.equal(decoded.frame.offset, 12345);
  assert.deepEqual(decoded.frame.payload, payload);
  assert.equal(decoded.bytes, bytes.length);
});

test('offsets up to 2^53-1 survive the u64 field', () => {
  const decoded = decodeFrame(encodeFrame(FrameType.RECORD, Number.MAX_SAFE_INTEGER, Buffer.alloc(0)));
  assert.ok(decoded.ok);
  assert.equal(decoded.frame.offset, Number.MAX_SAFE_INTEGER);
});

test('a flipped bit anywhere in a frame is caught', () => {
  const bytes = encodeFrame(FrameType.MESSAGE, 7, Buffer.from('some payload bytes'));
  for (let i = 0; i < bytes.length; i++) {
    for (const bit of [0x01, 0x80]) {
      const copy = Buffer.from(bytes);
      copy[i] = (copy[i] as number) ^ bit;
      const decoded = decodeFrame(copy);
      assert.equal(decoded.ok, false, `flip of bit ${bit} at byte ${i} went unnoticed`);
    }
  }
});

test('a short buffer is incomplete, not corrupt', () => {
  const bytes = encodeFrame(FrameType.MESSAGE, 1, Buffer.alloc(100, 1));
  const partialHeader = decodeFrame(bytes.subarray(0, 10));
  assert.deepEqual(partialHeader, { ok: false, incomplete: true, needed: FRAME_HEADER_BYTES });
  const partialPayload = decodeFrame(bytes.subarray(0, 50));
  assert.deepEqual(partialPayload, { ok: false, incomplete: true, needed: bytes.length });
});

test('an unknown version is reported as such', () => {
  const bytes = encodeFrame(FrameType.MESSAGE, 1, Buffer.from('x'));
  bytes[1] = 9;
  const decoded = decodeFrame(bytes);
  assert.ok(!decoded.ok && !decoded.incomplete);
  assert.equal(decoded.code, 'ERR_UNSUPPORTED_VERSION');
});

test('a declared length over the limit is refused before reading the payload', () => {
  const bytes = encodeFrame(FrameType.MESSAGE, 1, Buffer.alloc(2000));
  const decoded = decodeFrame(bytes, 0, 1000);
  assert.ok(!decoded.ok && !decoded.incomplete);
  assert.equal(decoded.code, 'ERR_FRAME_TOO_LARGE');
});

test('the encoder refuses bad types and offsets', () => {
  assert.throws(() => encodeFrameHeader(0, 0, Buffer.alloc(0)), { code: 'ERR_INVALID_ARG' });
  assert.throws(() => encodeFrameHeader(1, -1, Buffer.alloc(0)), { code: 'ERR_INVALID_ARG' });
  assert.throws(() => encodeFrameHeader(1, 2 ** 60, Buffer.alloc(0)), { code: 'ERR_INVALID_ARG' });
});

test('an empty payload part does not disturb the CRC (zlib.crc32 returns 0 for empty buffers without memory)', () => {
  const empty = Buffer.alloc(0);
  const parts = [Buffer.from('abcd'), Buffer.from('xyz'), Buffer.from(empty.buffer, empty.byteOffset, 0)];
  const header = encodeFrameHeader(FrameType.MESSAGE, 1, parts);
  const decoded = decodeFrame(Buffer.concat([header, ...parts]));
  assert.ok(decoded.ok);
  assert.deepEqual(decoded.frame.payload, Buffer.from('abcdxyz'));
  const emptyFrame = decodeFrame(Buffer.concat([encodeFrameHeader(FrameType.MESSAGE, 2, empty), empty]));
  assert.ok(emptyFrame.ok);
});
