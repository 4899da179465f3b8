/**
 * `mqlog config check` and the configuration's validation from the command line: every bad key named in
 * one ERR_CONFIG line, the effective configuration printed with its secrets masked.
 */
import assert from 'node:assert/strict';
import { stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { loadConfig } from '../../src/daemon/config.js';
import { mqlog, tempDir } from '../helpers/index.js';

const SECRET = 'peer-secret-0123456789';
const TOKEN = 'admin-token-0123456789';

test('ERR_CONFIG names every unknown and invalid key, nested ones too, not only the first', async (t) => {
  const dir = await tempDir(t);
  await writeFile(join(dir, 'mqlog.json'), JSON.stringify({
    segmentByts: 4096,
    maxDeliveries: 0,
    limits: { maxBodyBytes: -1, maxBodyByts: 1 },
    peers: { b: { url: 'ftp://b', key: SECRET, extra: 1 } },
    listen: 'nowhere',
  }));
  const keys = ['segmentByts', 'maxDeliveries', 'limits.maxBodyBytes', 'limits.maxBodyByts', 'peers.b.url', 'peers.b.extra', 'listen'];
  await assert.rejects(loadConfig(dir), (err: { code?: string; message: string; details?: { keys?: string[] } }) => {
    assert.equal(err.code, 'ERR_CONFIG');
    for (const key of keys) assert.ok(err.message.includes(key), `${key} named in: ${err.message}`);
    assert.deepEqual([...(err.details?.keys ?? [])].sort(), [...keys].sort());
    return true;
  });
  const result = await mqlog(['config', 'check', '--data', dir]);
  assert.equal(result.code, 1, result.stderr);
  assert.match(result.stderr, /^mqlog: ERR_CONFIG: [^\n]*\n$/, 'one line');
  for (const key of keys) assert.ok(result.stderr.includes(key), `${key} named in: ${result.stderr}`);
  assert.ok(!result.stderr.includes(SECRET), 'no secret in the error');
});

test('mqlog config check prints the effective configuration, defaults and flags included, with secrets masked', async (t) => {
  const dir = await tempDir(t);
  await writeFile(join(dir, 'mqlog.json'), JSON.stringify({ name: 'n1', peers: { b: { url: 'http://127.0.0.1:7001/', key: SECRET }, c: { url: 'http://127.0.0.1:7002' } }, admin: { token: TOKEN } }));
  const result = await mqlog(['config', 'check', '--data', dir, '--listen', '127.0.0.1:7999']);
  assert.equal(result.code, 0, result.stderr);
  const config = JSON.parse(result.stdout) as Record<string, unknown> & { peers: Record<string, { url: string; key?: string }>; admin: { token?: string }; limits: Record<string, number> };
  assert.equal(config.name, 'n1');
  assert.equal(config.listen, '127.0.0.1:7999', 'the flag overrides the file');
  assert.equal(config.segmentBytes, 64 * 1024 * 1024, 'defaults are shown');
  assert.equal(config.limits.maxBodyBytes, 32 * 1024 * 1024);
  assert.equal(config.peers.b!.url, 'http://127.0.0.1:7001', 'URLs as the daemon uses them');
  assert.equal(config.peers.b!.key, '********');
  assert.equal(config.peers.c!.key, undefined, 'an unset key stays unset');
  assert.equal(config.admin.token, '********');
  assert.ok(!result.stdout.includes(SECRET) && !result.stdout.includes(TOKEN), 'no secret printed');
});

test('mqlog config check on a directory that does not exist is ERR_NOT_FOUND and creates nothing', async (t) => {
  const root = await tempDir(t);
  const result = await mqlog(['config', 'check', '--data', join(root, 'typo')]);
  assert.equal(result.code, 1);
  assert.match(result.stderr, /^mqlog: ERR_NOT_FOUND: /);
  await assert.rejects(stat(join(root, 'typo')), { code: 'ENOENT' }, 'no directory made');
  const usage = await mqlog(['config', 'show', '--data', root]);
  assert.equal(usage.code, 2, 'an unknown action is a usage error');
});
