import assert from 'node:assert/strict';
import { Ajv, type ValidateFunction } from 'ajv';
import { writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { test } from 'node:test';
import { AJV_OPTIONS, DEFAULTS, loadConfig, resolveDestination, validatorSchema } from '../../src/daemon/config.js';
import { tempDir } from '../helpers/index.js';

test('a missing mqlog.json means defaults', async (t) => {
  const config = await loadConfig(await tempDir(t));
  assert.equal(config.segmentBytes, DEFAULTS.segmentBytes);
  assert.equal(config.visibilityTimeoutMs, 30_000);
  assert.equal(config.maxDeliveries, 5);
  assert.deepEqual(config.peers, {});
});

test('unknown keys and wrong values are ERR_CONFIG naming the key', async (t) => {
  const dir = await tempDir(t);
  const cases: [unknown, RegExp][] = [
    [{ segmentByts: 1 }, /unknown key "segmentByts"/],
    [{ segmentBytes: 'big' }, /segmentBytes/],
    [{ listen: 'nope' }, /listen/],
    [{ peers: { b: { url: 'ftp://x' } } }, /peers\.b\.url/],
    [{ peers: { b: { url: 'http://x:1', extra: 1 } } }, /peers\.b\.extra/],
    [{ peers: { '../x': { url: 'http://x:1' } } }, /peers name/],
    [[1, 2], /JSON object/],
  ];
  for (const [content, pattern] of cases) {
    await writeFile(join(dir, 'mqlog.json'), JSON.stringify(content));
    await assert.rejects(loadConfig(dir), (err: { code?: string; message: string }) => {
      assert.equal(err.code, 'ERR_CONFIG');
      assert.match(err.message, pattern);
      return true;
    });
  }
  await writeFile(join(dir, 'mqlog.json'), '{ not json');
  await assert.rejects(loadConfig(dir), { code: 'ERR_CONFIG' });
});

test('the validator the build generates finds what the schema compiled now finds', () => {
  const generated = createRequire(import.meta.url)('../../dist/daemon/config-validator.cjs') as ValidateFunction;
  const compiled = new Ajv(AJV_OPTIONS).compile(validatorSchema());
  const inputs: unknown[] = [
    {},
    { name: 'a', listen: '127.0.0.1:7100', peers: { b: { url: 'http://127.0.0.1:7200', key: 'k'.repeat(16) } }, segmentBytes: 4096, limits: { maxBodyBytes: 1024 } },
    { segmentByts: 1 },
    { segmentBytes: 'big', visibilityTimeoutMs: 0, maxQueueBytes: null },
    { listen: 'nope', name: '-x' },
    { peers: { b: { url: 'ftp://x' }, '../x': { url: 'http://x:1' } } },
    { peers: { b: { extra: 1 } } },
    { limits: { maxRequestBytes: 1, unknown: true }, admin: { token: 'short' } },
    { sources: [{ url: 'http://x', durable: 'd' }, { durable: 'bad name' }] },
    { tls: { cert: '' }, renewLeases: 'yes' },
  ];
  for (const input of inputs) {
    assert.equal(generated(input), compiled(input), JSON.stringify(input));
    assert.deepEqual(generated.errors ?? null, compiled.errors ?? null, JSON.stringify(input));
  }
});

test('flags override the file', async (t) => {
  const dir = await tempDir(t);
  await writeFile(join(dir, 'mqlog.json'), JSON.stringify({ listen: '127.0.0.1:1000', name: 'a' }));
  const config = await loadConfig(dir, { listen: '127.0.0.1:2000' });
  assert.equal(config.listen, '127.0.0.1:2000');
  assert.equal(config.name, 'a');
});

test('destinations are configured peers or URLs, nothing else', async (t) => {
  const dir = await tempDir(t);
  await writeFile(join(dir, 'mqlog.json'), JSON.stringify({ peers: { b: { url: 'http://127.0.0.1:7001' } } }));
  const config = await loadConfig(dir);
  assert.equal(resolveDestination(config, 'b'), 'b');
  assert.equal(resolveDestination(config, 'http://127.0.0.1:7001/'), 'b', "a configured peer's URL is that peer");
  assert.equal(resolveDestination(config, 'http://127.0.0.1:7002/x'), 'http://127.0.0.1:7002');
  assert.throws(() => resolveDestination(config, 'c'), { code: 'ERR_UNKNOWN_PEER' });
  assert.throws(() => resolveDestination(config, 'http://'), { code: 'ERR_UNKNOWN_PEER' });
});
