import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { ERRORS, MqlogError, abortError, ioError, isMqlogError } from '../src/errors.js';
import { ROOT } from './helpers/index.js';

test('spec/errors.md lists exactly the codes of src/errors.ts, with the same status and retryability', async () => {
  const doc = await readFile(join(ROOT, 'spec', 'errors.md'), 'utf8');
  const rows = new Map<string, { status: number; retryable: boolean }>();
  for (const match of doc.matchAll(/^\| `(ERR_[A-Z_]+)` \| (\d{3}) \| (yes|no) \|/gm)) {
    rows.set(match[1]!, { status: Number(match[2]), retryable: match[3] === 'yes' });
  }
  const codes = Object.keys(ERRORS);
  assert.deepEqual([...rows.keys()].sort(), [...codes].sort());
  for (const code of codes) {
    const spec = ERRORS[code as keyof typeof ERRORS];
    assert.deepEqual(rows.get(code), { status: spec.httpStatus, retryable: spec.retryable }, code);
  }
});

/**
 * Every code ever released, in the order it was added. Codes are API: this list only grows at its end.
 * A code removed or renamed in src/errors.ts or spec/errors.md fails the test below; a new code is
 * added to src/errors.ts (in its area), to spec/errors.md and at the end of this list.
 */
const PINNED_CODES = [
  'ERR_INVALID_ARG', 'ERR_USAGE', 'ERR_CONFIG', 'ERR_UNKNOWN_PEER', 'ERR_INVALID_NAME', 'ERR_CLOSED', 'ERR_ABORTED', 'ERR_TIMEOUT',
  'ERR_LOCKED', 'ERR_NOT_FOUND', 'ERR_CORRUPT_FRAME', 'ERR_TRUNCATED_FRAME', 'ERR_UNSUPPORTED_VERSION', 'ERR_FRAME_TOO_LARGE',
  'ERR_CORRUPT_STATE', 'ERR_DISK_FULL', 'ERR_QUEUE_FULL', 'ERR_IO', 'ERR_INVALID_MESSAGE', 'ERR_BODY_TOO_LARGE', 'ERR_LEASE_EXPIRED',
  'ERR_ALREADY_ACKED', 'ERR_BODY_DIGEST_MISMATCH', 'ERR_BODY_INCOMPLETE', 'ERR_BAD_REQUEST', 'ERR_REQUEST_TOO_LARGE',
  'ERR_UNSUPPORTED_MEDIA_TYPE', 'ERR_PEER_UNREACHABLE', 'ERR_PEER_REJECTED', 'ERR_PEER_FAILED', 'ERR_UNAUTHORIZED', 'ERR_FORBIDDEN',
  'ERR_TOO_MANY_FRAMES', 'ERR_HEADERS_TOO_LARGE', 'ERR_TOO_MANY_REQUESTS', 'ERR_REQUEST_TIMEOUT', 'ERR_STREAM_CONFLICT',
  'ERR_ADDRESS_IN_USE',
] as const;

/** The codes as written in src/errors.ts and as rows of spec/errors.md, duplicates included, in file order. */
async function writtenCodes(): Promise<{ source: string[]; doc: string[] }> {
  const source = await readFile(join(ROOT, 'src', 'errors.ts'), 'utf8');
  const doc = await readFile(join(ROOT, 'spec', 'errors.md'), 'utf8');
  return {
    source: [...source.matchAll(/^\s+(ERR_[A-Z_]+): \{/gm)].map((m) => m[1]!),
    doc: [...doc.matchAll(/^\| `(ERR_[A-Z_]+)` \|/gm)].map((m) => m[1]!),
  };
}

test('the codes are append-only: every pinned code is still in src/errors.ts and spec/errors.md, and every code is pinned', async () => {
  const { source, doc } = await writtenCodes();
  for (const [where, codes] of [['src/errors.ts', source], ['spec/errors.md', doc], ['ERRORS', Object.keys(ERRORS)]] as const) {
    for (const code of PINNED_CODES) assert.ok(codes.includes(code), `${code} was removed or renamed in ${where}: codes are API, only add`);
  }
  const pinned: readonly string[] = PINNED_CODES;
  assert.deepEqual(Object.keys(ERRORS).filter((code) => !pinned.includes(code)), [], 'a new code is pinned too: add it at the end of PINNED_CODES');
  assert.equal(new Set(pinned).size, pinned.length, 'each code is pinned once');
});

test('every code is written once in src/errors.ts and listed once in spec/errors.md, and every entry is complete', async () => {
  const { source, doc } = await writtenCodes();
  const twice = (codes: readonly string[]): string[] => codes.filter((c, i) => codes.indexOf(c) !== i);
  assert.deepEqual(twice(source), [], 'a code written twice in src/errors.ts (the later entry would silently replace the earlier)');
  assert.deepEqual(twice(doc), [], 'a code listed twice in spec/errors.md');
  assert.deepEqual(source, Object.keys(ERRORS), 'every entry of the table was read from the source');
  for (const [code, spec] of Object.entries(ERRORS)) {
    assert.match(code, /^ERR_[A-Z_]+$/);
    assert.ok(spec.message.length > 0);
    assert.ok(spec.httpStatus >= 400 && spec.httpStatus < 600);
  }
});

test('isMqlogError and instanceof recognise an MqlogError of another copy of the package, and nothing else', async () => {
  // A second instance of the module, as another copy of the package in node_modules would be.
  const other = (await import(`../src/errors.ts?copy=${Date.now()}`)) as typeof import('../src/errors.js');
  assert.notEqual(other.MqlogError, MqlogError, 'a distinct copy of the class');
  const foreign: object = new other.MqlogError('ERR_QUEUE_FULL', 'full');
  assert.ok(isMqlogError(foreign));
  assert.ok(isMqlogError(foreign, 'ERR_QUEUE_FULL'));
  assert.equal(isMqlogError(foreign, 'ERR_IO'), false);
  assert.ok(foreign instanceof MqlogError);
  assert.ok(other.isMqlogError(new MqlogError('ERR_IO')));
  assert.ok(!isMqlogError(Object.assign(new Error('x'), { code: 'ERR_IO' })), 'a code alone does not make an MqlogError');
  assert.ok(!isMqlogError(null));
  assert.ok(!((Object.assign(new Error("x"), { code: "ERR_IO" }) as object) instanceof MqlogError));
});

test('MqlogError carries code, details and cause, and serializes without the stack', () => {
  const cause = new Error('boom');
  const err = new MqlogError('ERR_CORRUPT_FRAME', 'bad', { details: { path: '/x', position: 3 }, cause });
  assert.equal(err.code, 'ERR_CORRUPT_FRAME');
  assert.equal(err.cause, cause);
  assert.equal(err.httpStatus, 400);
  assert.equal(err.retryable, false);
  assert.deepEqual(JSON.parse(JSON.stringify(err)), { code: 'ERR_CORRUPT_FRAME', message: 'bad', details: { path: '/x', position: 3 } });
  assert.ok(isMqlogError(err, 'ERR_CORRUPT_FRAME'));
  assert.ok(!isMqlogError(err, 'ERR_IO'));
});

test('abort and I/O errors map to their codes', () => {
  const controller = new AbortController();
  controller.abort(new Error('stop'));
  assert.equal(abortError(controller.signal).code, 'ERR_ABORTED');
  const full = Object.assign(new Error('no space'), { code: 'ENOSPC' });
  assert.equal(ioError(full, 'append').code, 'ERR_DISK_FULL');
  assert.equal(ioError(new Error('x'), 'append').code, 'ERR_IO');
});
