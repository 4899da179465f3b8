import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Packr } from 'msgpackr';
import fc from 'fast-check';
import { decodeAddress, decodeMessage, decodeMeta, decodeRouting, encodeMessagePayload, inboxCopyPayload, type MessageMeta } from '../../src/queue/codec.js';
import { decodeRecord, encodeRecord } from '../../src/queue/consumer-records.js';
import { newId } from '../../src/util/ids.js';

const meta: MessageMeta = {
  id: newId(),
  ts: 1_700_000_000_000,
  channel: 'jobs/high?',
  priority: 9,
  to: ['b', 'http://127.0.0.1:9'],
  from: 'a',
  node: 'node-a',
  expiresAt: 1_700_000_010_000,
  notBefore: 1_700_000_001_000,
  headers: { k: 'v', 'content-type': 'text/plain' },
  receipt: true,
  replyTo: 'http://127.0.0.1:7420',
  origin: { node: 'node-a', stream: 'p9.w0', offset: 42 },
};

test('a message round-trips with every field and its body bytes untouched', () => {
  const body = Buffer.from([0, 1, 2, 255, 254]);
  const decoded = decodeMessage(encodeMessagePayload(meta, body));
  assert.deepEqual({ ...decoded, body: undefined }, { ...meta, body: undefined });
  assert.deepEqual(decoded.body, body);
});

test('fields are decoded without copying the body', () => {
  const payload = encodeMessagePayload(meta, Buffer.alloc(1000, 1));
  const { bodyStart } = decodeMeta(payload);
  assert.equal(payload.length - bodyStart, 1000);
  const { body } = decodeMessage(payload);
  // A view into the payload, not a copy: same memory, at the body's place; a write through one shows in the other.
  assert.equal(body.buffer, payload.buffer);
  assert.equal(body.byteOffset, payload.byteOffset + bodyStart);
  payload[bodyStart] = 7;
  assert.equal(body[0], 7, 'the body shares the payload bytes');
});

/** A MESSAGE payload whose meta is `map` as given (no checks), with an empty body. */
function frame(map: unknown): Buffer {
  const m = new Packr({ useRecords: false }).pack(map);
  const prefix = Buffer.alloc(4);
  prefix.writeUInt32LE(m.length);
  return Buffer.concat([prefix, m]);
}

test('decoded header and priority problems are data errors: ERR_HEADERS_TOO_LARGE past the format limits, else ERR_INVALID_MESSAGE', () => {
  const base = { i: meta.id, t: meta.ts, c: 'jobs', p: 4, d: ['b'], f: 'a' };
  const many = Object.fromEntries(Array.from({ length: 65 }, (_, i) => [`k${i}`, 'v']));
  assert.throws(() => decodeMeta(frame({ ...base, h: many })), { code: 'ERR_HEADERS_TOO_LARGE' });
  assert.throws(() => decodeMeta(frame({ ...base, h: { k: 'v'.repeat(64 * 1024) } })), { code: 'ERR_HEADERS_TOO_LARGE' });
  assert.throws(() => decodeMeta(frame({ ...base, h: { k: 1 } })), { code: 'ERR_INVALID_MESSAGE' });
  assert.throws(() => decodeMeta(frame({ ...base, h: [] })), { code: 'ERR_INVALID_MESSAGE' });
  assert.throws(() => decodeMeta(frame({ ...base, p: 12 })), { code: 'ERR_INVALID_MESSAGE' });
  assert.doesNotThrow(() => decodeMeta(frame({ ...base, h: Object.fromEntries(Object.entries(many).slice(0, 64)) })));
});

test('garbage and wrong field types are ERR_INVALID_MESSAGE or ERR_INVALID_NAME, never a crash', () => {
  const good = { i: meta.id, t: 1, c: 'x', p: 1, d: ['b'], f: 'a' };
  assert.doesNotThrow(() => decodeMeta(frame(good)));
  const cases: unknown[] = [
    null,
    [],
    'text',
    { ...good, i: 'not-a-uuid' },
    { ...good, t: -1 },
    { ...good, c: '' },
    { ...good, c: 'x'.repeat(256) },
    { ...good, p: 10 },
    { ...good, p: 1.5 },
    { ...good, d: [] },
    { ...good, d: [1] },
    { ...good, h: { k: 1 } },
    { ...good, o: ['n', 's'] },
  ];
  for (const c of cases) {
    assert.throws(() => decodeMeta(frame(c)), (err: { code?: string }) => err.code === 'ERR_INVALID_MESSAGE' || err.code === 'ERR_INVALID_NAME' || err.code === 'ERR_INVALID_ARG', JSON.stringify(c));
  }
  assert.throws(() => decodeMeta(Buffer.from([1, 0])), { code: 'ERR_INVALID_MESSAGE' });
  assert.throws(() => decodeMeta(Buffer.from([200, 0, 0, 0, 1])), { code: 'ERR_INVALID_MESSAGE' });
  assert.throws(() => decodeMeta(Buffer.from([3, 0, 0, 0, 0xc1, 0xc1, 0xc1])), { code: 'ERR_INVALID_MESSAGE' });
});

test('the routing fields (and the address: id and priority) read from the map alone match the decoded message, whatever else it holds', () => {
  fc.assert(
    fc.property(
      fc.record({
        ts: fc.integer({ min: 0, max: 2 ** 53 - 1 }),
        priority: fc.integer({ min: 0, max: 9 }),
        channel: fc.string({ minLength: 1, maxLength: 40 }).filter((c) => Buffer.byteLength(c) <= 255 && !/[\uD800-\uDFFF]/.test(c)),
        to: fc.array(fc.string({ minLength: 1, maxLength: 30 }).filter((d) => !/[\uD800-\uDFFF]/.test(d)), { minLength: 1, maxLength: 5 }),
        expiresAt: fc.option(fc.integer({ min: 0, max: 2 ** 53 - 1 }), { nil: undefined }),
        headers: fc.option(fc.dictionary(fc.string({ minLength: 1, maxLength: 8 }).filter((k) => !/[\uD800-\uDFFF]/.test(k)), fc.string({ maxLength: 300 }).filter((v) => !/[\uD800-\uDFFF]/.test(v)), { maxKeys: 5 }), { nil: undefined }),
        receipt: fc.option(fc.constant(true), { nil: undefined }),
        kind: fc.option(fc.constant('receipt' as const), { nil: undefined }),
        streamed: fc.option(fc.constant({ size: 5, sha256: 'a'.repeat(64), parts: [{ stream: 'p4.w0', first: 1, last: 2 }] }), { nil: undefined }),
      }),
      (fields) => {
        const m: MessageMeta = { ...meta, ...fields, headers: fields.headers, receipt: fields.receipt, kind: fields.kind, streamed: fields.streamed };
        const payload = encodeMessagePayload(m, Buffer.from('body'));
        const full = decodeMeta(payload).meta;
        const routing = decodeRouting(payload);
        assert.deepEqual(routing, { ts: full.ts, channel: full.channel, to: full.to, expiresAt: full.expiresAt, kind: full.kind, receipt: full.receipt === true, streamed: full.streamed !== undefined });
        assert.deepEqual(decodeAddress(payload), { ...routing, id: full.id, priority: full.priority });
      },
    ),
    { numRuns: 300 },
  );
});

test('routing fields of a damaged map are ERR_INVALID_MESSAGE, never a read past the map', () => {
  const payload = encodeMessagePayload(meta, Buffer.alloc(64, 0xcc));
  const metaBytes = payload.readUInt32LE(0);
  for (let cut = 4; cut < 4 + metaBytes; cut++) {
    const damaged = Buffer.from(payload);
    // The map claims fewer bytes than it has: every read must stay within them.
    damaged.writeUInt32LE(cut - 4, 0);
    try {
      decodeRouting(damaged);
      decodeAddress(damaged);
    } catch (err) {
      assert.equal((err as { code?: string }).code, 'ERR_INVALID_MESSAGE', `cut at ${cut}: ${String(err)}`);
    }
  }
  for (let i = 0; i < 2000; i++) {
    const damaged = Buffer.from(payload);
    damaged[4 + ((i * 7919) % metaBytes)] = (i * 31) & 0xff;
    try {
      decodeRouting(damaged);
      decodeAddress(damaged);
    } catch (err) {
      assert.equal((err as { code?: string }).code, 'ERR_INVALID_MESSAGE', `flip ${i}: ${String(err)}`);
    }
  }
});

test('an inbox copy made from the payload as it came has the set sender and origin, every other field and the body unchanged', () => {
  fc.assert(
    fc.property(
      fc.record({
        from: fc.string({ maxLength: 40 }).filter((f) => !/[\uD800-\uDFFF]/.test(f)),
        node: fc.string({ minLength: 1, maxLength: 36 }).filter((n) => !/[\uD800-\uDFFF]/.test(n)),
        offset: fc.integer({ min: 0, max: 2 ** 53 - 1 }),
        destination: fc.option(fc.constantFrom('b', 'http://127.0.0.1:9/x'), { nil: undefined }),
        withOrigin: fc.boolean(),
        replyTo: fc.option(fc.constantFrom('http://127.0.0.1:7421', 'https://a.example:443'), { nil: undefined }),
        headers: fc.dictionary(fc.string({ minLength: 1, maxLength: 8 }).filter((k) => !/[\uD800-\uDFFF]/.test(k)), fc.string({ maxLength: 50 }).filter((v) => !/[\uD800-\uDFFF]/.test(v)), { maxKeys: 20 }),
        body: fc.uint8Array({ maxLength: 300 }),
      }),
      ({ from, node, offset, destination, withOrigin, replyTo, headers, body }) => {
        const sent: MessageMeta = { ...meta, headers: { ...headers }, origin: withOrigin ? meta.origin : undefined };
        const origin = { node, stream: 'p4.w0', offset, ...(destination === undefined ? {} : { destination }) };
        const copy = Buffer.concat(inboxCopyPayload(encodeMessagePayload(sent, body), { from, origin, replyTo }));
        const decoded = decodeMessage(copy);
        const defined = (o: object): object => Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined));
        assert.deepEqual(defined({ ...decoded, body: undefined }), defined({ ...sent, headers: Object.keys(headers).length > 0 ? { ...headers } : undefined, from, origin, replyTo: replyTo ?? sent.replyTo }));
        assert.deepEqual(decoded.body, Buffer.from(body));
      },
    ),
    { numRuns: 300 },
  );
});

test('inbox copies of one sender stream each carry their own origin offset, at every size of integer', () => {
  const payload = encodeMessagePayload(meta, Buffer.from('body'));
  for (const replyTo of [undefined, 'http://127.0.0.1:7421']) {
    for (const [i, offset] of [0, 1, 127, 128, 255, 256, 65_535, 65_536, 2 ** 32 - 1, 2 ** 32, 2 ** 53 - 1, 5].entries()) {
      // Two sender streams taking turns, and one message of another sender between.
      const origin = { node: i === 7 ? 'n2' : 'n1', stream: i % 2 === 0 ? 'p4.w0' : 'p9.w1', offset, destination: 'b' };
      const decoded = decodeMessage(Buffer.concat(inboxCopyPayload(payload, { from: 'a', origin, replyTo })));
      assert.deepEqual(decoded.origin, origin, `offset ${offset}`);
      assert.equal(decoded.from, 'a');
      assert.equal(decoded.replyTo, replyTo ?? meta.replyTo);
    }
  }
});

test('times and other integers beyond 32 bits are written as MessagePack integers, and float64 ones of earlier versions are still read', () => {
  const at = Date.UTC(2026, 11, 6);
  const payload = encodeMessagePayload({ ...meta, ts: at, expiresAt: at + 1000 }, Buffer.from('x'));
  const metaBytes = payload.subarray(4, 4 + payload.readUInt32LE(0));
  // `t` (0xa1 0x74) and `x` (0xa1 0x78) are followed by int64 (0xd3), not float64 (0xcb).
  for (const key of ['t', 'x']) {
    const at = metaBytes.indexOf(Buffer.from([0xa1, key.charCodeAt(0)]));
    assert.ok(at >= 0, key);
    assert.equal(metaBytes[at + 2], 0xd3, `${key} is an int64`);
  }
  assert.equal(decodeMeta(payload).meta.ts, at);
  assert.equal(decodeRouting(payload).expiresAt, at + 1000);
  // An earlier version's float64 time.
  const legacy = frame({ i: meta.id, t: at, c: 'x', p: 1, d: ['b'], f: 'a' });
  assert.equal(legacy[legacy.indexOf(Buffer.from([0xa1, 0x74])) + 2], 0xcb, 'the legacy encoding is a float64');
  assert.equal(decodeMeta(legacy).meta.ts, at);
  assert.throws(() => decodeMeta(frame({ i: meta.id, t: at + 0.5, c: 'x', p: 1, d: ['b'], f: 'a' })), { code: 'ERR_INVALID_MESSAGE' });
});

test('state records write times as MessagePack integers and read them back as numbers', () => {
  const until = Date.UTC(2026, 11, 6, 12);
  const bytes = encodeRecord({ k: 'R', t: 'tok', u: until });
  assert.ok(bytes.includes(Buffer.from([0xd3])), 'an int64 in the record');
  assert.ok(!bytes.includes(Buffer.from([0xcb])), 'no float64 in the record');
  assert.deepEqual(decodeRecord(bytes), { k: 'R', t: 'tok', u: until });
});
