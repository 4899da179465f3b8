/**
 * The receipt report body (spec/log-format.md §12): `at` is written as a MessagePack uint64 and read in
 * any integer encoding another implementation may choose.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Packr } from 'msgpackr';
import { decodeReceiptReport, encodeReceiptReport } from '../../src/queue/receipts.ts';
import { newId } from '../../src/util/ids.ts';

const AT = 1_765_000_000_123;

test('a receipt report with at as uint64, int64, float64 or a small integer is read as the same number', () => {
  const id = newId();
  const base = { id, destination: 'b', state: 'processed' };
  const plain = new Packr({ useRecords: false, mapsAsObjects: true });
  const bodies = {
    uint64: plain.pack({ ...base, at: BigInt(AT) }),
    int64: plain.pack({ ...base, at: BigInt.asIntN(64, BigInt(AT)) }),
    float64: plain.pack({ ...base, at: AT }),
  };
  // Force int64 (0xd3) for the second: msgpackr picks uint64 for a positive BigInt.
  const at = bodies.int64.indexOf(0xcf);
  if (at >= 0) bodies.int64[at] = 0xd3;
  for (const [kind, body] of Object.entries(bodies)) assert.equal(decodeReceiptReport(body).at, AT, kind);
  assert.equal(decodeReceiptReport(plain.pack({ ...base, at: 5 })).at, 5);
  assert.throws(() => decodeReceiptReport(plain.pack({ ...base, at: 2n ** 60n })), { code: 'ERR_INVALID_MESSAGE' });
});

test('a receipt report is written with at as an int64, and reads back', () => {
  const report = { id: newId(), destination: 'b', state: 'dead' as const, at: AT, reason: 'x' };
  const body = encodeReceiptReport(report);
  const key = body.indexOf(Buffer.from([0xa2, 0x61, 0x74])); // fixstr "at"
  assert.ok(key >= 0);
  assert.equal(body[key + 3], 0xd3, 'an int64 after the key, not a float64 (0xcb)');
  assert.deepEqual(decodeReceiptReport(body), report);
});
