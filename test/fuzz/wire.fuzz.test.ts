/**
 * Property-based tests (fast-check) of the batch envelope, src/transport/wire.ts
 * (spec/http-protocol.md §3): decodeBatch never throws anything but an MqlogError with a documented code,
 * whatever the bytes — random, random behind a valid prefix, or a valid batch mutated — and what it does
 * return is consistent with the bytes; encodeBatch → decodeBatch gives back the batch.
 *
 * Runs: 2000 per property by default, to keep CI fast. MQLOG_FUZZ_RUNS=<n> runs n per property instead
 * (e.g. MQLOG_FUZZ_RUNS=200000 for a long run); MQLOG_FUZZ_SEED=<int> changes the seed, which every run
 * prints (a failure also prints the seed and path to replay it).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { Packr } from 'msgpackr';
import { MqlogError } from '../../src/errors.js';
import { decodeBatch, encodeBatch, type DecodedBatch, type WireLimits } from '../../src/transport/wire.js';
import type { OutgoingBatch } from '../../src/transport/transport.js';
import { fuzzRuns, fuzzSeed } from '../helpers/security.js';

const packr = new Packr({ useRecords: false, mapsAsObjects: true });
const DECODE_CODES = new Set(['ERR_BAD_REQUEST', 'ERR_UNSUPPORTED_VERSION', 'ERR_FRAME_TOO_LARGE', 'ERR_TRUNCATED_FRAME', 'ERR_TOO_MANY_FRAMES']);

function utf8Bytes(s: string): number {
  return Buffer.byteLength(s, 'utf8');
}

/** A string of 1..max UTF-8 bytes (any code points, long ones now and then). */
function name(max: number, min = 0): fc.Arbitrary<string> {
  return fc
    .oneof(
      { weight: 5, arbitrary: fc.string({ unit: 'binary', minLength: min, maxLength: 24 }) },
      { weight: 1, arbitrary: fc.constantFrom('x'.repeat(max), 'é'.repeat(Math.floor(max / 2)), '../'.repeat(Math.floor(max / 3)), '\0') },
    )
    .filter((s) => s.length >= min && utf8Bytes(s) <= max);
}

const batchArb: fc.Arbitrary<OutgoingBatch> = fc.record({
  node: name(255, 1),
  name: name(255),
  destination: name(1024),
  frames: fc.array(fc.record({ stream: fc.oneof(fc.constantFrom('p4.w0', 'p9.w1', 'p0.w0'), name(255, 1)), frame: fc.uint8Array({ maxLength: 96 }).map((a) => Buffer.from(a)) }), { minLength: 1, maxLength: 8 }),
});

function bodyOf(batch: OutgoingBatch): Buffer {
  return Buffer.concat(encodeBatch(batch));
}

/** Decodes, failing the property on any exception but an MqlogError with a decoder code. */
function decodeOrRefuse(body: Buffer, limits?: WireLimits): DecodedBatch | MqlogError {
  try {
    const decoded = decodeBatch(body, limits);
    checkDecoded(decoded, body, limits);
    return decoded;
  } catch (err) {
    if (err instanceof MqlogError && DECODE_CODES.has(err.code)) {
      const frame = err.details?.frame;
      assert.ok(frame === undefined || (Number.isInteger(frame) && (frame as number) >= 0), `details.frame is an index: ${String(frame)}`);
      return err;
    }
    assert.fail(`decodeBatch threw ${err instanceof Error ? `${err.name} ${String((err as { code?: unknown }).code)} ${err.message}` : String(err)} on ${body.subarray(0, 64).toString('hex')}…`);
  }
}

/** What a decoded batch promises: its names within bounds, frames that are views into the body. */
function checkDecoded(decoded: DecodedBatch, body: Buffer, limits: WireLimits = {}): void {
  assert.ok(decoded.node.length > 0 && utf8Bytes(decoded.node) <= 255);
  assert.ok(utf8Bytes(decoded.name) <= 255);
  assert.ok(utf8Bytes(decoded.destination) <= 1024);
  assert.ok(decoded.frames.length >= 1 && decoded.frames.length <= (limits.maxFrames ?? 100_000));
  let bytes = 0;
  for (const f of decoded.frames) {
    assert.ok(typeof f.stream === 'string' && f.stream.length > 0 && utf8Bytes(f.stream) <= 255);
    assert.equal(f.frame.buffer, body.buffer, 'a frame is a view into the body');
    assert.ok(f.frame.byteOffset >= body.byteOffset && f.frame.byteOffset + f.frame.length <= body.byteOffset + body.length);
    assert.ok(f.frame.length <= (limits.maxFrameBytes ?? Number.MAX_SAFE_INTEGER));
    bytes += f.frame.length + 6;
  }
  assert.ok(12 + bytes <= body.length, 'the records fit in the body');
}

test('encodeBatch then decodeBatch gives back node, name, destination and every frame with its stream', (t) => {
  const seed = fuzzSeed(t, 0x5eed_a001);
  fc.assert(
    fc.property(batchArb, (batch) => {
      const decoded = decodeOrRefuse(bodyOf(batch));
      assert.ok(!(decoded instanceof MqlogError), `a valid batch decodes: ${decoded instanceof MqlogError ? decoded.message : ''}`);
      assert.deepEqual(
        { node: decoded.node, name: decoded.name, destination: decoded.destination, frames: decoded.frames.map((f) => [f.stream, f.frame.toString('hex')]) },
        { node: batch.node, name: batch.name, destination: batch.destination, frames: batch.frames.map((f) => [f.stream, f.frame.toString('hex')]) },
      );
    }),
    { numRuns: fuzzRuns(), seed },
  );
});

/** Random bodies, shaped more or less like a batch so that the decoder gets past its first checks. */
const hostileBody: fc.Arbitrary<Buffer> = fc.oneof(
  fc.uint8Array({ maxLength: 300 }).map((a) => Buffer.from(a)),
  // A valid prefix with any version and reserved bytes, any header length, then noise.
  fc.tuple(fc.constantFrom(1, 1, 1, 0, 2, 255), fc.constantFrom(0, 0, 0, 1), fc.nat({ max: 70_000 }), fc.uint8Array({ maxLength: 300 })).map(([version, reserved, headerBytes, rest]) => {
    const prefix = Buffer.alloc(12);
    prefix.write('MQLB', 0, 'latin1');
    prefix[4] = version;
    prefix[6] = reserved;
    prefix.writeUInt32LE(headerBytes % 3 === 0 ? headerBytes : Math.min(headerBytes, rest.length), 8);
    return Buffer.concat([prefix, rest]);
  }),
  // A valid prefix and a msgpack header of any shape (right keys, wrong types), then records of noise.
  fc
    .tuple(
      fc.oneof(
        fc.anything({ maxDepth: 3 }),
        fc.record({ node: fc.anything({ maxDepth: 1 }), name: fc.anything({ maxDepth: 1 }), to: fc.anything({ maxDepth: 1 }), streams: fc.oneof(fc.anything({ maxDepth: 2 }), fc.array(fc.string({ maxLength: 300 }), { maxLength: 4 })) }, { requiredKeys: [] }),
        fc.record({ node: name(300, 0), name: name(300), to: name(1100), streams: fc.array(name(300, 0), { maxLength: 3 }) }),
      ),
      fc.array(fc.tuple(fc.nat({ max: 4 }), fc.oneof(fc.nat({ max: 64 }), fc.nat()), fc.uint8Array({ maxLength: 64 })), { maxLength: 4 }),
      fc.nat({ max: 7 }),
    )
    .map(([header, records, cut]) => {
      let packed: Buffer;
      try {
        packed = packr.pack(header);
      } catch {
        packed = Buffer.from([0xc1]);
      }
      const prefix = Buffer.alloc(12);
      prefix.write('MQLB', 0, 'latin1');
      prefix[4] = 1;
      prefix.writeUInt32LE(packed.length, 8);
      const parts: Buffer[] = [prefix, packed];
      for (const [index, length, bytes] of records) {
        const record = Buffer.alloc(6);
        record.writeUInt16LE(index, 0);
        record.writeUInt32LE(length % 2 === 0 ? bytes.length : length, 2);
        parts.push(record, Buffer.from(bytes));
      }
      const body = Buffer.concat(parts);
      return cut === 0 ? body.subarray(0, Math.max(0, body.length - 3)) : body;
    }),
);

test('decodeBatch throws nothing but an MqlogError with a decoder code on arbitrary bytes', (t) => {
  const seed = fuzzSeed(t, 0x5eed_a002);
  const limits = fc.oneof(fc.constant(undefined), fc.record({ maxFrames: fc.integer({ min: 1, max: 5 }), maxFrameBytes: fc.nat({ max: 128 }) }));
  fc.assert(
    fc.property(hostileBody, limits, (body, lim) => {
      decodeOrRefuse(body, lim);
    }),
    { numRuns: fuzzRuns(), seed },
  );
});

type Mutation =
  | { kind: 'flip'; at: number; xor: number }
  | { kind: 'set'; at: number; value: number }
  | { kind: 'truncate'; at: number }
  | { kind: 'insert'; at: number; bytes: Uint8Array }
  | { kind: 'delete'; at: number; length: number }
  | { kind: 'duplicate-record'; record: number }
  | { kind: 'length'; record: number; delta: number }
  | { kind: 'header-length'; delta: number };

const mutationArb: fc.Arbitrary<Mutation> = fc.oneof(
  fc.record({ kind: fc.constant('flip' as const), at: fc.nat(), xor: fc.integer({ min: 1, max: 255 }) }),
  fc.record({ kind: fc.constant('set' as const), at: fc.nat(), value: fc.constantFrom(0, 0xff, 0x7f, 0x80, 0xc1, 0xdd, 0xdf) }),
  fc.record({ kind: fc.constant('truncate' as const), at: fc.nat() }),
  fc.record({ kind: fc.constant('insert' as const), at: fc.nat(), bytes: fc.uint8Array({ minLength: 1, maxLength: 16 }) }),
  fc.record({ kind: fc.constant('delete' as const), at: fc.nat(), length: fc.integer({ min: 1, max: 16 }) }),
  fc.record({ kind: fc.constant('duplicate-record' as const), record: fc.nat() }),
  fc.record({ kind: fc.constant('length' as const), record: fc.nat(), delta: fc.oneof(fc.integer({ min: -8, max: 8 }), fc.constantFrom(0x7fff_ffff, -0x7fff_ffff)) }),
  fc.record({ kind: fc.constant('header-length' as const), delta: fc.oneof(fc.integer({ min: -8, max: 8 }), fc.constantFrom(65_536, 0x7fff_ffff)) }),
);

/** Where each record starts in a body made by encodeBatch. */
function recordStarts(body: Buffer): number[] {
  const starts: number[] = [];
  if (body.length < 16) return starts;
  let at = 16 + body.readUInt32LE(8);
  while (at + 6 <= body.length) {
    starts.push(at);
    at += 6 + body.readUInt32LE(at + 2);
  }
  return starts;
}

function mutate(body: Buffer, m: Mutation): Buffer {
  const out = Buffer.from(body);
  const at = (n: number): number => n % out.length;
  // After an earlier mutation the records may not be where they were: these then change nothing.
  const starts = recordStarts(body);
  if ((m.kind === 'duplicate-record' || m.kind === 'length') && starts.length === 0) return out;
  if (m.kind === 'header-length' && out.length < 16) return out;
  switch (m.kind) {
    case 'flip':
      out[at(m.at)] = (out[at(m.at)] as number) ^ m.xor;
      return out;
    case 'set':
      out[at(m.at)] = m.value;
      return out;
    case 'truncate':
      return out.subarray(0, at(m.at));
    case 'insert':
      return Buffer.concat([out.subarray(0, at(m.at)), m.bytes, out.subarray(at(m.at))]);
    case 'delete':
      return Buffer.concat([out.subarray(0, at(m.at)), out.subarray(at(m.at) + m.length)]);
    case 'duplicate-record': {
      const i = m.record % starts.length;
      const start = starts[i] as number;
      const end = Math.min(body.length, start + 6 + body.readUInt32LE(start + 2));
      return Buffer.concat([out.subarray(0, end), out.subarray(start, end), out.subarray(end)]);
    }
    case 'length': {
      const start = starts[m.record % starts.length] as number;
      out.writeUInt32LE((out.readUInt32LE(start + 2) + m.delta) >>> 0, start + 2);
      return out;
    }
    case 'header-length':
      out.writeUInt32LE((out.readUInt32LE(8) + m.delta) >>> 0, 8);
      return out;
  }
}

test('decodeBatch of a mutated valid batch either refuses it with a decoder code or returns frames that lie in the body', (t) => {
  const seed = fuzzSeed(t, 0x5eed_a003);
  fc.assert(
    fc.property(batchArb, fc.array(mutationArb, { minLength: 1, maxLength: 3 }), (batch, mutations) => {
      let body = bodyOf(batch);
      for (const m of mutations) if (body.length > 0) body = mutate(body, m);
      decodeOrRefuse(body);
      decodeOrRefuse(body, { maxFrames: 3, maxFrameBytes: 64 });
    }),
    { numRuns: fuzzRuns(), seed },
  );
});

test('the frame count and frame size limits are refused with ERR_TOO_MANY_FRAMES and ERR_FRAME_TOO_LARGE naming the frame', (t) => {
  const seed = fuzzSeed(t, 0x5eed_a004);
  fc.assert(
    fc.property(batchArb, fc.integer({ min: 1, max: 8 }), fc.nat({ max: 96 }), (batch, maxFrames, maxFrameBytes) => {
      const result = decodeOrRefuse(bodyOf(batch), { maxFrames, maxFrameBytes });
      // Records are checked in order: the first record beyond either limit decides.
      const found = batch.frames.findIndex((f) => f.frame.length > maxFrameBytes);
      const firstTooLarge = found === -1 ? Infinity : found;
      const firstTooMany = batch.frames.length > maxFrames ? maxFrames : Infinity;
      if (firstTooLarge === Infinity && firstTooMany === Infinity) {
        assert.ok(!(result instanceof MqlogError), 'within the limits it decodes');
        return;
      }
      assert.ok(result instanceof MqlogError, 'beyond a limit it is refused');
      if (firstTooMany <= firstTooLarge) assert.equal(result.code, 'ERR_TOO_MANY_FRAMES');
      else assert.deepEqual([result.code, result.details?.frame], ['ERR_FRAME_TOO_LARGE', firstTooLarge]);
    }),
    { numRuns: fuzzRuns(), seed },
  );
});

test('any change to the envelope (prefix, header, record prefixes) is refused: only frames carry bytes the envelope CRC does not cover', (t) => {
  const seed = fuzzSeed(t, 0x5eed_a005);
  fc.assert(
    fc.property(batchArb, fc.nat(), fc.integer({ min: 1, max: 255 }), (batch, where, xor) => {
      const body = bodyOf(batch);
      // The envelope's bytes: the 16-byte prefix but its CRC field, the header, each record's prefix.
      const envelope = [...Array.from({ length: 12 }, (_, i) => i), ...Array.from({ length: body.readUInt32LE(8) }, (_, i) => 16 + i)];
      for (const start of recordStarts(body)) envelope.push(...Array.from({ length: 6 }, (_, i) => start + i));
      const at = envelope[where % envelope.length] as number;
      const damaged = Buffer.from(body);
      damaged[at] = (damaged[at] as number) ^ xor;
      const result = decodeOrRefuse(damaged);
      assert.ok(result instanceof MqlogError, `byte ${at} of the envelope changed and the batch was still taken`);
    }),
    { numRuns: fuzzRuns(), seed },
  );
});
