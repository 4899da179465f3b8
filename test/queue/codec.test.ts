import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Packr } from 'msgpackr';
import { decodeMessage, decodeMeta, encodeMessagePayload, type MessageMeta } from '../../src/queue/codec.js';
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
});

test('garbage and wrong field types are ERR_INVALID_MESSAGE or ERR_INVALID_NAME, never a crash', () => {
  const packr = new Packr({ useRecords: false });
  const frame = (map: unknown): Buffer => {
    const m = packr.pack(map);
    const prefix = Buffer.alloc(4);
    prefix.writeUInt32LE(m.length);
    return Buffer.concat([prefix, m]);
  };
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
