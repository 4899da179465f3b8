/**
 * Property-based tests (fast-check) of the configuration, src/daemon/config.ts: parseConfig on any JSON
 * object — arbitrary, or built from the real keys with arbitrary values — either returns a config whose
 * values are within their documented ranges or throws an MqlogError with code ERR_CONFIG, never another
 * error; loadConfig does the same for any bytes in mqlog.json. Keys that every JS object inherits
 * (`constructor`, `toString`, `__proto__`…) are unknown keys like any other.
 *
 * Runs: 2000 per property by default (500 for loadConfig, which writes a file per run), to keep CI fast.
 * MQLOG_FUZZ_RUNS=<n> scales them by n / 2000 (e.g. MQLOG_FUZZ_RUNS=200000 for a long run);
 * MQLOG_FUZZ_SEED=<int> changes the seed, which every run prints (a failure also prints the seed and
 * path to replay it).
 */
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import fc from 'fast-check';
import { DEFAULT_LIMITS, loadConfig, parseConfig, type Config } from '../../src/daemon/config.js';
import { MqlogError } from '../../src/errors.js';
import { mqlog, tempDir } from '../helpers/index.js';
import { fuzzRuns, fuzzSeed } from '../helpers/security.js';

const TOP_KEYS = ['name', 'listen', 'advertise', 'peers', 'segmentBytes', 'segmentRollIdleMs', 'maxQueueBytes', 'visibilityTimeoutMs', 'renewLeases', 'maxDeliveries', 'handlerConcurrency', 'handlerTimeoutMs', 'handlerRetryDelayMs', 'forwardRetryDelayMs', 'forwardMaxRetryDelayMs', 'retainDoneMs', 'retainReceiptsMs', 'orphanChunkMs', 'compactIntervalMs', 'allowUnauthenticated', 'tls', 'limits', 'admin', 'sources', 'nats'];
const LIMIT_KEYS = Object.keys(DEFAULT_LIMITS);
const TLS_KEYS = ['cert', 'key', 'ca', 'requireClientCert'];
const ADMIN_KEYS = ['listen', 'token', 'tls'];
/** Names every plain object inherits: a lookup table keyed by user input must not find them. */
const INHERITED = ['__proto__', 'constructor', 'toString', 'toLocaleString', 'valueOf', 'hasOwnProperty', 'isPrototypeOf', 'propertyIsEnumerable', '__defineGetter__', '__lookupGetter__'];

/** An object with exactly these own properties (`__proto__` included, as JSON.parse makes it). */
function own(entries: readonly (readonly [string, unknown])[]): Record<string, unknown> {
  return Object.fromEntries(entries);
}

/** Values close to what the keys expect, and anything else. */
const valueArb: fc.Arbitrary<unknown> = fc.oneof(
  fc.jsonValue({ maxDepth: 2 }),
  fc.integer({ min: -2, max: 2 ** 41 }),
  fc.constantFrom(0, 1, 99, 100, 1023, 1024, 1025, 255, 256, 65535, 65536, 2 ** 31, 2 ** 53, -1, 1.5, Number.MAX_SAFE_INTEGER, 1e308, true, false, null, '', 'x'),
  fc.constantFrom('127.0.0.1:0', '127.0.0.1:65536', '[::1]:7420', 'host:port', ':1', 'http://127.0.0.1:1', 'https://x', 'ftp://x', 'javascript:alert(1)', '0123456789abcdef', 'short', 'a'.repeat(64), '../x', '/dev/null'),
  fc.string({ maxLength: 24 }),
);

function keyArb(known: readonly string[]): fc.Arbitrary<string> {
  return fc.oneof({ weight: 6, arbitrary: fc.constantFrom(...known) }, { weight: 1, arbitrary: fc.constantFrom(...INHERITED) }, { weight: 1, arbitrary: fc.string({ maxLength: 12 }) });
}

function objectArb(known: readonly string[], value: fc.Arbitrary<unknown>): fc.Arbitrary<Record<string, unknown>> {
  return fc.array(fc.tuple(keyArb(known), value), { maxLength: 5 }).map(own);
}

const peerArb = fc.oneof(valueArb, objectArb(['url', 'key'], valueArb));
const peersArb = fc.oneof(valueArb, fc.array(fc.tuple(fc.oneof(fc.constantFrom('a', 'b', 'peer-1', 'Zed.x', '-bad', 'a b', '', ...INHERITED), fc.string({ maxLength: 8 })), peerArb), { maxLength: 3 }).map(own));

/** Objects built from the real keys, with nested objects for peers, tls, limits and admin. */
const configArb: fc.Arbitrary<Record<string, unknown>> = fc
  .array(
    fc.oneof(
      fc.tuple(keyArb(TOP_KEYS), valueArb),
      fc.tuple(fc.constant('peers'), peersArb),
      fc.tuple(fc.constant('limits'), objectArb(LIMIT_KEYS, valueArb)),
      fc.tuple(fc.constant('tls'), objectArb(TLS_KEYS, valueArb)),
      fc.tuple(fc.constant('admin'), objectArb(ADMIN_KEYS, valueArb)),
    ),
    { maxLength: 8 },
  )
  .map(own);

function inRange(value: number, min: number, max: number): boolean {
  return Number.isSafeInteger(value) && value >= min && value <= max;
}

/** What a returned config promises. */
function checkConfig(config: Config, input: Record<string, unknown>): void {
  const top = Object.keys(config);
  for (const key of Object.keys(input)) assert.ok(TOP_KEYS.includes(key), `the unknown key ${JSON.stringify(key)} was accepted`);
  assert.ok(top.every((k) => TOP_KEYS.includes(k)), `only known keys in the config: ${top.join(',')}`);
  assert.equal(typeof config.name, 'string');
  assert.match(config.listen, /:\d{1,5}$/);
  assert.ok(inRange(config.segmentBytes, 1024, 2 ** 40));
  assert.ok(inRange(config.segmentRollIdleMs, 0, 2 ** 31));
  assert.ok(inRange(config.handlerTimeoutMs, 1, 2 ** 31));
  assert.ok(inRange(config.forwardRetryDelayMs, 10, 3_600_000));
  assert.ok(inRange(config.forwardMaxRetryDelayMs, 10, 86_400_000));
  assert.ok(inRange(config.orphanChunkMs, 0, Number.MAX_SAFE_INTEGER));
  assert.ok(config.maxQueueBytes === null || inRange(config.maxQueueBytes, 1024, Number.MAX_SAFE_INTEGER));
  assert.equal(typeof config.allowUnauthenticated, 'boolean');
  assert.equal(typeof config.renewLeases, 'boolean');
  for (const key of LIMIT_KEYS) assert.ok(Number.isSafeInteger(config.limits[key as keyof Config['limits']]), `limits.${key}`);
  assert.ok(Object.keys(config.limits).every((k) => LIMIT_KEYS.includes(k)));
  assert.ok(Object.keys(config.tls).every((k) => TLS_KEYS.includes(k)));
  assert.ok(Object.keys(config.admin).every((k) => ADMIN_KEYS.includes(k)));
  for (const [name, peer] of Object.entries(config.peers)) {
    assert.match(name, /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/);
    assert.match(peer.url, /^(https?|nats|tls):\/\//);
    assert.ok(peer.key === undefined || (typeof peer.key === 'string' && peer.key.length >= 16));
    assert.ok(Object.keys(peer).every((k) => k === 'url' || k === 'key' || k === 'nats' || k === 'options'));
  }
}

function parseOrRefuse(input: Record<string, unknown>): void {
  let config: Config;
  try {
    config = parseConfig(input);
  } catch (err) {
    if (err instanceof MqlogError && err.code === 'ERR_CONFIG') return;
    assert.fail(`parseConfig(${safeJson(input)}) threw ${err instanceof Error ? `${err.name}: ${err.message}` : String(err)}`);
  }
  checkConfig(config, input);
}

function safeJson(value: unknown): string {
  try {
    return JSON.stringify(value);
  } catch {
    return String(value);
  }
}

test('parseConfig on any JSON object returns a config within the documented ranges or throws ERR_CONFIG', (t) => {
  const seed = fuzzSeed(t, 0x5eed_c001);
  fc.assert(
    fc.property(fc.oneof(fc.dictionary(fc.string({ maxLength: 10 }), fc.jsonValue({ maxDepth: 3 })), configArb), (input) => parseOrRefuse(input)),
    { numRuns: fuzzRuns(), seed },
  );
});

test('loadConfig on any bytes in mqlog.json returns a config or throws ERR_CONFIG', async (t) => {
  const seed = fuzzSeed(t, 0x5eed_c002);
  const dir = await tempDir(t);
  const file = join(dir, 'mqlog.json');
  const text = fc.oneof(
    fc.jsonValue({ maxDepth: 3 }).map((v) => JSON.stringify(v)),
    configArb.map((v) => JSON.stringify(v)),
    fc.string({ unit: 'binary', maxLength: 64 }),
    fc.uint8Array({ maxLength: 64 }).map((a) => Buffer.from(a).toString('latin1')),
    configArb.map((v) => JSON.stringify(v).slice(0, -1)),
  );
  await fc.assert(
    fc.asyncProperty(text, async (content) => {
      await writeFile(file, content);
      try {
        await loadConfig(dir);
      } catch (err) {
        if (err instanceof MqlogError && err.code === 'ERR_CONFIG') return;
        assert.fail(`loadConfig of ${JSON.stringify(content)} threw ${err instanceof Error ? `${err.name}: ${err.message}` : String(err)}`);
      }
    }),
    { numRuns: Math.max(1, Math.round(fuzzRuns() / 4)), seed },
  );
});

test('keys every object inherits (constructor, toString, __proto__…) are unknown keys, at the top and in nested objects', () => {
  const failures: string[] = [];
  for (const key of INHERITED) {
    for (const [where, input] of [
      ['top', own([[key, 1]])],
      ['limits', { limits: own([[key, 1]]) }],
      ['tls', { tls: own([[key, 'x']]) }],
      ['admin', { admin: own([[key, 'x']]) }],
      ['peer', { peers: { a: own([['url', 'http://127.0.0.1:1'], [key, 'x']]) } }],
    ] as const) {
      try {
        parseConfig(input);
        failures.push(`${where} ${key}: accepted`);
      } catch (err) {
        if (!(err instanceof MqlogError && err.code === 'ERR_CONFIG')) failures.push(`${where} ${key}: ${err instanceof Error ? `${err.name}: ${err.message}` : String(err)}`);
      }
    }
  }
  assert.deepEqual(failures, []);
});

test('mqlog refuses a mqlog.json with an inherited key name with exit 1 and ERR_CONFIG', async (t) => {
  const dir = await tempDir(t);
  await writeFile(join(dir, 'mqlog.json'), '{"bogus": 1}');
  const control = await mqlog(['stat', '--data', dir]);
  assert.match(control.stderr, /^mqlog: ERR_CONFIG: .*unknown key "bogus"/, 'an ordinary unknown key');
  for (const key of ['constructor', 'valueOf', '__proto__']) {
    await writeFile(join(dir, 'mqlog.json'), `{"${key}": 1}`);
    const result = await mqlog(['stat', '--data', dir]);
    assert.deepEqual([result.code, /^mqlog: ERR_CONFIG: .*unknown key/.test(result.stderr)], [1, true], `${key}: ${result.stdout}${result.stderr}`);
  }
});
