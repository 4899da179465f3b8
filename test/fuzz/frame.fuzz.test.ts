/**
 * Property-based tests (fast-check) of the frame codec, src/log/frame.ts (spec/log-format.md §2).
 *
 * Runs: 2000 per property by default, to keep CI fast. MQLOG_FUZZ_RUNS=<n> runs n per property instead
 * (e.g. MQLOG_FUZZ_RUNS=200000 for a long run); MQLOG_FUZZ_SEED=<int> changes the seed, which every run
 * prints (a failure also prints the seed and path to replay it).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { FRAME_HEADER_BYTES, MAX_OFFSET, decodeFrame, encodeFrame, encodeFrameHeader, type DecodeResult } from '../../src/log/frame.js';
import { fuzzRuns, fuzzSeed } from '../helpers/security.js';

const payloadArb = fc.uint8Array({ maxLength: 512 });
const typeArb = fc.integer({ min: 1, max: 255 });
const offsetArb = fc.oneof(fc.nat(), fc.constantFrom(0, 0xffff_ffff, 0x1_0000_0000, MAX_OFFSET), fc.integer({ min: 0, max: MAX_OFFSET }));

/** Bytes that look like a frame more often than pure noise would: a valid header prefix, then anything. */
const frameLikeBytes = fc.oneof(
  fc.uint8Array({ maxLength: 256 }),
  fc.tuple(fc.uint8Array({ minLength: 18, maxLength: 18 }), fc.uint8Array({ maxLength: 256 })).map(([head, rest]) => {
    const out = Buffer.concat([Buffer.from([0xa7, 0x01]), head, rest]);
    // A small declared length now and then, so that some reach the CRC check.
    if (out[0] === 0xa7 && (head[0] ?? 0) % 2 === 0) out.writeUInt32LE((head[1] ?? 0) % 300, 4);
    return out;
  }),
);

function check(result: DecodeResult, bytes: Buffer, at: number): void {
  if (result.ok) {
    assert.ok(result.bytes >= FRAME_HEADER_BYTES && at + result.bytes <= bytes.length, 'a whole frame lies within the bytes');
    assert.equal(result.frame.payload.length, result.bytes - FRAME_HEADER_BYTES);
    assert.ok(result.frame.type >= 1 && result.frame.type <= 255);
    assert.ok(Number.isSafeInteger(result.frame.offset) && result.frame.offset >= 0);
  } else if (result.incomplete) {
    assert.ok(result.needed > bytes.length - at, 'incomplete means more bytes are needed');
  } else {
    assert.ok(['ERR_CORRUPT_FRAME', 'ERR_UNSUPPORTED_VERSION', 'ERR_FRAME_TOO_LARGE'].includes(result.code), result.code);
    assert.equal(typeof result.reason, 'string');
  }
}

test('decodeFrame never throws on arbitrary bytes, at any position, with any payload limit', (t) => {
  const seed = fuzzSeed(t, 0x5eed_f001);
  fc.assert(
    fc.property(frameLikeBytes, fc.nat(), fc.oneof(fc.constant(undefined), fc.nat({ max: 1024 })), (raw, atSeed, limit) => {
      const bytes = Buffer.from(raw);
      const at = bytes.length === 0 ? 0 : atSeed % (bytes.length + 1);
      let result: DecodeResult;
      try {
        result = decodeFrame(bytes, at, limit);
      } catch (err) {
        assert.fail(`decodeFrame threw ${String(err)} on ${bytes.toString('hex')} at ${at}`);
      }
      check(result, bytes, at);
    }),
    { numRuns: fuzzRuns(), seed },
  );
});

test('encode then decode gives back the type, offset and payload, also inside a larger buffer', (t) => {
  const seed = fuzzSeed(t, 0x5eed_f002);
  fc.assert(
    fc.property(typeArb, offsetArb, payloadArb, fc.uint8Array({ maxLength: 32 }), fc.uint8Array({ maxLength: 32 }), (type, offset, payload, before, after) => {
      const frame = encodeFrame(type, offset, payload);
      assert.equal(frame.length, FRAME_HEADER_BYTES + payload.length);
      // The header alone, from parts, gives the same bytes.
      const half = payload.length >> 1;
      assert.deepEqual(encodeFrameHeader(type, offset, [payload.subarray(0, half), payload.subarray(half)]), frame.subarray(0, FRAME_HEADER_BYTES));
      const bytes = Buffer.concat([before, frame, after]);
      const decoded = decodeFrame(bytes, before.length);
      assert.ok(decoded.ok, `decodes: ${JSON.stringify(decoded)}`);
      assert.equal(decoded.frame.type, type);
      assert.equal(decoded.frame.offset, offset);
      assert.deepEqual(Buffer.from(decoded.frame.payload), Buffer.from(payload));
      assert.equal(decoded.bytes, frame.length);
    }),
    { numRuns: fuzzRuns(), seed },
  );
});

test('a frame with one byte changed is never accepted as a different frame', (t) => {
  const seed = fuzzSeed(t, 0x5eed_f003);
  fc.assert(
    fc.property(typeArb, offsetArb, payloadArb, fc.nat(), fc.integer({ min: 1, max: 255 }), fc.uint8Array({ maxLength: 64 }), (type, offset, payload, where, xor, trailing) => {
      const frame = encodeFrame(type, offset, payload);
      const mutated = Buffer.concat([frame, trailing]);
      const i = where % frame.length;
      mutated[i] = (mutated[i] as number) ^ xor;
      const decoded = decodeFrame(mutated);
      if (decoded.ok) {
        // Only acceptable if it is the very same frame (it cannot be: every byte of a frame is covered).
        assert.deepEqual(
          { type: decoded.frame.type, offset: decoded.frame.offset, payload: Buffer.from(decoded.frame.payload).toString('hex'), bytes: decoded.bytes },
          { type, offset, payload: Buffer.from(payload).toString('hex'), bytes: frame.length },
          `byte ${i} ^ 0x${xor.toString(16)} of a ${frame.length}-byte frame gave another valid frame`,
        );
      }
    }),
    { numRuns: fuzzRuns(), seed },
  );
});

test('a frame cut short anywhere is incomplete, never valid and never corrupt', (t) => {
  const seed = fuzzSeed(t, 0x5eed_f004);
  fc.assert(
    fc.property(typeArb, offsetArb, payloadArb, fc.nat(), (type, offset, payload, cut) => {
      const frame = encodeFrame(type, offset, payload);
      const length = cut % frame.length;
      const decoded = decodeFrame(frame.subarray(0, length));
      assert.equal(decoded.ok, false);
      assert.ok(!decoded.ok && decoded.incomplete, `a ${length}-byte prefix of a ${frame.length}-byte frame is incomplete: ${JSON.stringify(decoded)}`);
    }),
    { numRuns: fuzzRuns(), seed },
  );
});
