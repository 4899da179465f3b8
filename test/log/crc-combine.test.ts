import assert from 'node:assert/strict';
import { test } from 'node:test';
import { crc32 } from 'node:zlib';
import fc from 'fast-check';
import { crc32Combine, crc32Tail } from '../../src/log/crc-combine.js';
import { FrameType, encodeFrame, encodeFrameHeader, frameChecksum, tailCrc, withKnownCrc } from '../../src/log/frame.js';

test('the CRC of two joined byte strings comes from theirs, and the CRC of a tail from the whole and the head', () => {
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 300 }), fc.uint8Array({ maxLength: 3000 }), (a, b) => {
      const whole = crc32(Buffer.concat([a, b]));
      assert.equal(crc32Combine(crc32(a), crc32(b), b.length), whole);
      assert.equal(crc32Tail(whole, crc32(a), b.length), crc32(b));
    }),
  );
  // Lengths with many bits set, and past 2^24 bytes (the shift runs through more powers of x).
  const head = Buffer.from('header and fields');
  for (const length of [65_535, 1_048_576 + 77, 3 * 1_048_576 - 1]) {
    const tail = Buffer.alloc(length, 0x5a);
    tail[length - 1] = 1;
    assert.equal(crc32Combine(crc32(head), crc32(tail), length), crc32(Buffer.concat([head, tail])), `length ${length}`);
  }
});

test('a frame written with a part whose CRC is known gets the CRC a full pass gives, and a wrong known CRC shows', () => {
  const data = Buffer.alloc(200 * 1024, 0x33);
  data[12_345] = 7;
  const received = encodeFrame(FrameType.BODY_CHUNK, 41, Buffer.concat([Buffer.from('old fields'), data]));
  const known = tailCrc(received, received.length - data.length);
  assert.equal(known, crc32(data));
  const fields = Buffer.from('new fields, longer');
  const direct = frameChecksum(encodeFrameHeader(FrameType.BODY_CHUNK, 7, [fields, Buffer.from(data)]));
  assert.equal(frameChecksum(encodeFrameHeader(FrameType.BODY_CHUNK, 7, [fields, withKnownCrc(data, known)])), direct);
  // The known CRC is what is used (no second pass): a wrong one makes a frame no reader accepts.
  const other = withKnownCrc(Buffer.from(data), known ^ 1);
  assert.notEqual(frameChecksum(encodeFrameHeader(FrameType.BODY_CHUNK, 7, [fields, other])), direct);
});
