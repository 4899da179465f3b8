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

test('every code is unique and every spec entry is complete', () => {
  for (const [code, spec] of Object.entries(ERRORS)) {
    assert.match(code, /^ERR_[A-Z_]+$/);
    assert.ok(spec.message.length > 0);
    assert.ok(spec.httpStatus >= 400 && spec.httpStatus < 600);
  }
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
