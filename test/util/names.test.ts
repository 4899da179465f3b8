import assert from 'node:assert/strict';
import { test } from 'node:test';
import { decodeName, encodeName } from '../../src/util/names.js';
import { idTimestamp, isId, newId } from '../../src/util/ids.js';

test('names become one safe path component whatever they contain', () => {
  const hostile = ['..', '.', '../etc', 'a/b', 'a\\b', 'nul\0byte', 'jobs/high?', 'ａ／ｂ', '\u2215slash', ' ', '', '%2F', 'x'.repeat(300), '💥'.repeat(70)];
  const seen = new Set<string>();
  for (const name of hostile) {
    const encoded = encodeName(name);
    assert.match(encoded, /^[A-Za-z0-9_%~-]+$/, name);
    assert.ok(encoded.length <= 200, `${encoded.length} chars for ${name.length}`);
    assert.ok(encoded !== '.' && encoded !== '..');
    assert.ok(!seen.has(encoded), `collision for ${name}`);
    seen.add(encoded);
    if (!encoded.includes('~')) assert.equal(decodeName(encoded), name);
  }
});

test('ids are UUIDv7, strictly increasing within a process, and carry their time', () => {
  const ids = Array.from({ length: 10_000 }, () => newId());
  for (let i = 1; i < ids.length; i++) assert.ok(ids[i]! > ids[i - 1]!, `${ids[i]} after ${ids[i - 1]}`);
  for (const id of ids.slice(0, 10)) {
    assert.ok(isId(id));
    assert.equal(id[14], '7');
    assert.ok(Math.abs(idTimestamp(id) - Date.now()) < 60_000);
  }
});
