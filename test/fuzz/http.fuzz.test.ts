/**
 * Fuzzing a real daemon's receiver (loopback, default limits) with fast-check: thousands of request
 * bodies to POST /v1/messages — valid batches, valid batches mutated (bytes flipped, cut short, records
 * duplicated or swapped, lengths changed, the prefix changed) and random bytes. Every answer is 200 or a
 * 4xx with a JSON code (never a 5xx, never a dropped connection); an unmodified valid batch gets 200 and
 * a mutation that surely breaks the batch gets a 4xx. At the end the daemon still serves, and its inbox
 * holds exactly the messages of the answers that said they were stored — each valid batch's once — and
 * `mqlog verify` is clean. A second test throws malformed HTTP at the same port.
 *
 * Bounds: 2000 requests or 40 s, whichever comes first (the raw HTTP test: 200 connections or 30 s).
 * MQLOG_FUZZ_RUNS=<n> scales them (n requests, 40 s × n / 2000; n / 10 connections);
 * MQLOG_FUZZ_SEED=<int> changes the seed, which every run prints.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { connect } from 'node:net';
import { test, type TestContext } from 'node:test';
import fc from 'fast-check';
import { mqlog, tempDir } from '../helpers/index.js';
import { allInbox, type NodeSpec } from '../helpers/daemon.js';
import { envelope, frame, healthz, uuidV7, type RawFrame } from '../helpers/wire.js';
import { UNREACHABLE, anyDaemons, fuzzRuns, fuzzSeed, nodeSpec, payloadWith, postWith, writeConfig, type AnyDaemon } from '../helpers/security.js';

const CHANNELS = ['common', 'fuzz', 'jobs/high?'];
const STREAMS = ['p4.w0', 'p9.w1', 'p0.w12'];

async function receiver(t: TestContext): Promise<{ b: NodeSpec; daemon: AnyDaemon }> {
  const root = await tempDir(t);
  const b = await nodeSpec(root, 'b');
  await writeConfig(b, { peers: { a: { url: UNREACHABLE } } });
  const [daemon] = anyDaemons(t, [b]);
  await daemon!.start();
  return { b, daemon: daemon! };
}

interface Base {
  readonly body: Buffer;
  readonly ids: readonly string[];
  /** Byte position of every record (its 6-byte prefix), in order, and the end of the body. */
  readonly records: readonly number[];
}

/** The shape of a valid batch; the bytes are made fresh per run (new node id, new message ids). */
interface BaseSpec {
  readonly frames: readonly { readonly stream: number; readonly channel: number; readonly body: Uint8Array; readonly priority: number }[];
  readonly firstOffset: number;
}

const baseSpecArb: fc.Arbitrary<BaseSpec> = fc.record({
  frames: fc.array(fc.record({ stream: fc.nat({ max: STREAMS.length - 1 }), channel: fc.nat({ max: CHANNELS.length - 1 }), body: fc.uint8Array({ maxLength: 160 }), priority: fc.nat({ max: 9 }) }), { minLength: 1, maxLength: 4 }),
  firstOffset: fc.nat({ max: 1_000_000 }),
});

function makeBase(spec: BaseSpec): Base {
  const next = new Map<number, number>();
  const ids: string[] = [];
  const frames: RawFrame[] = spec.frames.map((f) => {
    const offset = next.get(f.stream) ?? spec.firstOffset;
    next.set(f.stream, offset + 1);
    const id = uuidV7();
    ids.push(id);
    return { stream: STREAMS[f.stream]!, frame: frame(payloadWith({ i: id, c: CHANNELS[f.channel], p: f.priority }, Buffer.from(f.body)), offset) };
  });
  const body = envelope(frames, { node: `fuzz-${randomBytes(8).toString('hex')}`, name: 'a', to: 'b' });
  const records: number[] = [];
  let at = 16 + body.readUInt32LE(8);
  while (at < body.length) {
    records.push(at);
    at += 6 + body.readUInt32LE(at + 2);
  }
  records.push(body.length);
  return { body, ids, records };
}

type Mutation =
  | { kind: 'prefix'; at: number; xor: number }
  | { kind: 'flip-frame'; record: number; at: number; xor: number }
  | { kind: 'flip-header'; at: number; xor: number }
  | { kind: 'flip-anywhere'; at: number; xor: number }
  | { kind: 'truncate'; at: number }
  | { kind: 'cut-record'; record: number }
  | { kind: 'duplicate-record'; record: number }
  | { kind: 'swap-records'; first: number; second: number }
  | { kind: 'frame-length'; record: number; delta: number }
  | { kind: 'stream-index'; record: number; index: number }
  | { kind: 'header-length'; delta: number }
  | { kind: 'insert'; at: number; bytes: Uint8Array }
  | { kind: 'delete'; at: number; length: number }
  | { kind: 'append'; bytes: Uint8Array };

const deltaArb = fc.oneof(fc.integer({ min: -20, max: 20 }).filter((d) => d !== 0), fc.constantFrom(-1, 1, 0x7fff_ffff, 0x1000_0000, 64 * 1024 * 1024));
const mutationArb: fc.Arbitrary<Mutation> = fc.oneof(
  fc.record({ kind: fc.constant('prefix' as const), at: fc.nat({ max: 7 }), xor: fc.integer({ min: 1, max: 255 }) }),
  fc.record({ kind: fc.constant('flip-frame' as const), record: fc.nat(), at: fc.nat(), xor: fc.integer({ min: 1, max: 255 }) }),
  fc.record({ kind: fc.constant('flip-header' as const), at: fc.nat(), xor: fc.integer({ min: 1, max: 255 }) }),
  fc.record({ kind: fc.constant('flip-anywhere' as const), at: fc.nat(), xor: fc.integer({ min: 1, max: 255 }) }),
  fc.record({ kind: fc.constant('truncate' as const), at: fc.nat() }),
  fc.record({ kind: fc.constant('cut-record' as const), record: fc.nat() }),
  fc.record({ kind: fc.constant('duplicate-record' as const), record: fc.nat() }),
  fc.record({ kind: fc.constant('swap-records' as const), first: fc.nat(), second: fc.nat() }),
  fc.record({ kind: fc.constant('frame-length' as const), record: fc.nat(), delta: deltaArb }),
  fc.record({ kind: fc.constant('stream-index' as const), record: fc.nat(), index: fc.constantFrom(0, 1, 2, 3, 255, 0xffff) }),
  fc.record({ kind: fc.constant('header-length' as const), delta: deltaArb }),
  fc.record({ kind: fc.constant('insert' as const), at: fc.nat(), bytes: fc.uint8Array({ minLength: 1, maxLength: 8 }) }),
  fc.record({ kind: fc.constant('delete' as const), at: fc.nat(), length: fc.integer({ min: 1, max: 8 }) }),
  fc.record({ kind: fc.constant('append' as const), bytes: fc.uint8Array({ minLength: 1, maxLength: 12 }) }),
);

/**
 * Applies one mutation. Returns the new body and whether it surely breaks the batch (then the answer
 * must be a 4xx); a mutation that may leave a valid batch (a flipped name in the header, a record cut at
 * its boundary, a duplicated record…) may get a 200.
 */
function mutate(base: Base, m: Mutation): { body: Buffer; surelyBad: boolean } {
  const body = Buffer.from(base.body);
  const { records } = base;
  const count = records.length - 1;
  const record = (n: number): [number, number] => [records[n % count]!, records[(n % count) + 1]!];
  const headerEnd = records[0]!;
  const recordBased = ['flip-frame', 'cut-record', 'duplicate-record', 'swap-records', 'frame-length', 'stream-index'].includes(m.kind);
  // After an earlier mutation there may be no whole record left: then these change nothing.
  if (recordBased && (count < 1 || records.slice(0, -1).some((r, i) => r + 6 > records[i + 1]! || r + 6 > body.length))) return { body, surelyBad: false };
  if (m.kind === 'flip-header' && headerEnd <= 16) return { body, surelyBad: false };
  if (m.kind === 'header-length' && body.length < 16) return { body, surelyBad: false };
  switch (m.kind) {
    case 'prefix':
      body[m.at] = (body[m.at] as number) ^ m.xor;
      // Magic, version or reserved bytes.
      return { body, surelyBad: true };
    case 'flip-frame': {
      // Inside a frame (after its 6-byte record prefix): every byte is covered by the CRC.
      const [start, end] = record(m.record);
      if (end - start <= 6) return { body, surelyBad: false };
      const at = start + 6 + (m.at % (end - start - 6));
      body[at] = (body[at] as number) ^ m.xor;
      return { body, surelyBad: true };
    }
    case 'flip-header': {
      // The header is covered by the envelope CRC: a damaged one never names another sender.
      const at = 16 + (m.at % (headerEnd - 16));
      body[at] = (body[at] as number) ^ m.xor;
      return { body, surelyBad: true };
    }
    case 'flip-anywhere': {
      const at = m.at % body.length;
      body[at] = (body[at] as number) ^ m.xor;
      return { body, surelyBad: at < 8 || at >= headerEnd + 6 && records.every((r) => at < r || at >= r + 6) };
    }
    case 'truncate': {
      const at = m.at % body.length;
      return { body: body.subarray(0, at), surelyBad: !(records.includes(at) && at > headerEnd) };
    }
    case 'cut-record': {
      const [start, end] = record(m.record);
      return { body: Buffer.concat([body.subarray(0, start), body.subarray(end)]), surelyBad: count === 1 };
    }
    case 'duplicate-record': {
      const [start, end] = record(m.record);
      return { body: Buffer.concat([body.subarray(0, end), body.subarray(start, end), body.subarray(end)]), surelyBad: false };
    }
    case 'swap-records': {
      const [a0, a1] = record(m.first);
      const [b0, b1] = record(m.second);
      if (a0 === b0) return { body, surelyBad: false };
      const [x0, x1, y0, y1] = a0 < b0 ? [a0, a1, b0, b1] : [b0, b1, a0, a1];
      return { body: Buffer.concat([body.subarray(0, x0), body.subarray(y0, y1), body.subarray(x1, y0), body.subarray(x0, x1), body.subarray(y1)]), surelyBad: false };
    }
    case 'frame-length': {
      const [start] = record(m.record);
      body.writeUInt32LE((body.readUInt32LE(start + 2) + m.delta) >>> 0, start + 2);
      return { body, surelyBad: true };
    }
    case 'stream-index': {
      // Record prefixes are covered by the envelope CRC too.
      const [start] = record(m.record);
      const before = body.readUInt16LE(start);
      body.writeUInt16LE(m.index, start);
      return { body, surelyBad: m.index !== before };
    }
    case 'header-length':
      body.writeUInt32LE((body.readUInt32LE(8) + m.delta) >>> 0, 8);
      return { body, surelyBad: m.delta !== 0 };
    case 'insert': {
      const at = m.at % body.length;
      return { body: Buffer.concat([body.subarray(0, at), m.bytes, body.subarray(at)]), surelyBad: at < 8 };
    }
    case 'delete': {
      const at = m.at % body.length;
      return { body: Buffer.concat([body.subarray(0, at), body.subarray(at + m.length)]), surelyBad: at < 8 };
    }
    case 'append':
      // Fewer than 6 bytes cannot be a record; more make a record whose frame cannot be whole and valid.
      return { body: Buffer.concat([body, m.bytes]), surelyBad: true };
  }
}

type Case =
  | { kind: 'valid'; spec: BaseSpec }
  | { kind: 'mutated'; spec: BaseSpec; mutations: Mutation[] }
  | { kind: 'random'; bytes: Uint8Array; prefix: boolean };

const caseArb: fc.Arbitrary<Case> = fc.oneof(
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('valid' as const), spec: baseSpecArb }) },
  { weight: 6, arbitrary: fc.record({ kind: fc.constant('mutated' as const), spec: baseSpecArb, mutations: fc.array(mutationArb, { minLength: 1, maxLength: 3 }) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('random' as const), bytes: fc.uint8Array({ maxLength: 600 }), prefix: fc.boolean() }) },
);

interface Ledger {
  requests: number;
  ok: number;
  refused: number;
  storedTotal: number;
  /** Ids of valid batches (answered 200): each must be in the inbox exactly once. */
  readonly validIds: Set<string>;
  /** Ids of every batch answered 200 (valid or mutated): the inbox holds nothing else. */
  readonly acceptedIds: Set<string>;
  readonly codes: Map<string, number>;
}

async function runCase(url: string, c: Case, ledger: Ledger): Promise<void> {
  let body: Buffer;
  let ids: readonly string[] = [];
  let expect: 'ok' | 'refused' | 'either';
  if (c.kind === 'random') {
    body = Buffer.from(c.bytes);
    if (c.prefix && body.length >= 8) {
      body.write('MQLB', 0, 'latin1');
      body[4] = 1;
      body.fill(0, 5, 8);
    }
    expect = 'refused';
  } else {
    const base = makeBase(c.spec);
    ids = base.ids;
    if (c.kind === 'valid') {
      body = base.body;
      expect = 'ok';
    } else {
      // Mutations apply to the base one after the other; only a single one is classified.
      let current: Base = base;
      let surelyBad = false;
      for (const m of c.mutations) {
        if (current.body.length === 0) break;
        const result = mutate(current, m);
        surelyBad = c.mutations.length === 1 && result.surelyBad;
        current = { ...current, body: result.body, records: reindex(result.body) };
      }
      body = current.body;
      expect = surelyBad ? 'refused' : 'either';
    }
  }
  ledger.requests++;
  const answer = await postWith(url, body);
  const code = typeof answer.json?.code === 'string' ? answer.json.code : undefined;
  const what = `${c.kind === 'mutated' ? `mutated ${JSON.stringify(c.mutations.map((m) => m.kind))}` : c.kind} body of ${body.length} bytes: ${answer.status} ${answer.text.slice(0, 200)}`;
  if (answer.status === 200) {
    assert.notEqual(expect, 'refused', `a body that cannot be valid was accepted: ${what}`);
    const stored = answer.json?.stored;
    assert.ok(typeof stored === 'number' && typeof answer.json?.duplicates === 'number', what);
    if (c.kind === 'valid') assert.deepEqual(answer.json, { stored: ids.length, duplicates: 0 }, what);
    ledger.ok++;
    ledger.storedTotal += stored;
    for (const id of ids) ledger.acceptedIds.add(id);
    if (c.kind === 'valid') for (const id of ids) ledger.validIds.add(id);
  } else {
    assert.notEqual(expect, 'ok', `a valid batch was refused: ${what}`);
    assert.ok(answer.status >= 400 && answer.status < 500, `a 4xx: ${what}`);
    assert.ok(code !== undefined && /^ERR_[A-Z_]+$/.test(code) && typeof answer.json?.message === 'string', `a JSON error with a code: ${what}`);
    ledger.refused++;
    ledger.codes.set(`${answer.status} ${code}`, (ledger.codes.get(`${answer.status} ${code}`) ?? 0) + 1);
  }
}

/** Record positions of a body that may no longer be well-formed (best effort, for chained mutations). */
function reindex(body: Buffer): number[] {
  if (body.length < 16) return [body.length, body.length];
  const records: number[] = [];
  let at = 16 + body.readUInt32LE(8);
  while (at + 6 <= body.length && records.length < 64) {
    records.push(at);
    const next = at + 6 + body.readUInt32LE(at + 2);
    if (next > body.length) break;
    at = next;
  }
  if (records.length === 0) records.push(Math.min(at, body.length));
  records.push(body.length);
  return records;
}

test('thousands of random and mutated batches get 200 or a 4xx, the daemon keeps serving, and the inbox holds only what was acknowledged', async (t) => {
  const { b, daemon } = await receiver(t);
  const seed = fuzzSeed(t, 0x5eed_b001);
  const runs = fuzzRuns(2000);
  const timeLimitMs = Math.round((40_000 * runs) / 2000);
  const ledger: Ledger = { requests: 0, ok: 0, refused: 0, storedTotal: 0, validIds: new Set(), acceptedIds: new Set(), codes: new Map() };
  const started = Date.now();
  await fc.assert(fc.asyncProperty(caseArb, (c) => runCase(b.url, c, ledger)), { numRuns: runs, seed, interruptAfterTimeLimit: timeLimitMs, markInterruptAsFailure: false });
  t.diagnostic(`${ledger.requests} requests in ${Date.now() - started} ms: ${ledger.ok} accepted (${ledger.storedTotal} messages stored), ${ledger.refused} refused`);
  t.diagnostic(`answers: ${[...ledger.codes].sort((x, y) => y[1] - x[1]).map(([k, n]) => `${k} ×${n}`).join(', ')}`);
  assert.ok(ledger.requests >= Math.min(runs, 200), `at least ${Math.min(runs, 200)} requests were made (${ledger.requests})`);

  assert.ok(daemon.running, `the daemon is alive: ${daemon.output.slice(-2000)}`);
  assert.equal(await healthz(b.url), 200);
  const inbox = await allInbox(b.dir);
  const stray = inbox.filter((m) => !ledger.acceptedIds.has(m.id as string)).map((m) => `${String(m.id)} ${String(m.channel)}`);
  assert.deepEqual(stray, [], 'no message from a refused request');
  assert.equal(inbox.length, ledger.storedTotal, 'as many messages as the 200 answers said were stored');
  const counts = new Map<string, number>();
  for (const m of inbox) counts.set(m.id as string, (counts.get(m.id as string) ?? 0) + 1);
  const wrong = [...ledger.validIds].filter((id) => counts.get(id) !== 1).map((id) => `${id} ×${counts.get(id) ?? 0}`);
  assert.deepEqual(wrong, [], 'every message of a valid batch exactly once');
  const verify = await mqlog(['verify', b.dir]);
  assert.equal(verify.code, 0, verify.stdout + verify.stderr);
  assert.ok(!/"level":(50|60)/.test(daemon.output), `no error logged: ${daemon.output.split('\n').filter((l) => /"level":(50|60)/.test(l)).slice(0, 3).join('\n')}`);
});

test('a batch that repeats a record, or gives two frames the same stream and offset, stores that message once', async (t) => {
  const { b } = await receiver(t);
  const base = makeBase({ frames: [{ stream: 0, channel: 0, body: Buffer.from('once'), priority: 4 }], firstOffset: 7 });
  const { body } = mutate(base, { kind: 'duplicate-record', record: 0 });
  const answer = await postWith(b.url, body);
  if (answer.status === 200) {
    assert.deepEqual(answer.json, { stored: 1, duplicates: 1 }, 'the repeated record is a duplicate');
  } else {
    assert.equal(answer.status, 400, answer.text);
  }
  const inbox = await allInbox(b.dir);
  assert.ok(inbox.filter((m) => m.id === base.ids[0]).length <= 1, `stored ${inbox.length} times: ${answer.text}`);
  // Two different frames that both claim offset 7 of the same stream: one is a duplicate, or the batch is refused.
  const twins = envelope([
    { stream: 'p4.w0', frame: frame(payloadWith({}, 'first at 7'), 7) },
    { stream: 'p4.w0', frame: frame(payloadWith({}, 'second at 7'), 7) },
  ]);
  const twinAnswer = await postWith(b.url, twins);
  assert.ok(twinAnswer.status === 400 || (twinAnswer.status === 200 && (twinAnswer.json?.stored as number) <= 1), `twins: ${twinAnswer.status} ${twinAnswer.text}`);
  assert.ok((await allInbox(b.dir)).filter((m) => String(m.body).endsWith('at 7')).length <= 1, 'at most one message per (node, to, stream, offset)');
});

test('thousands of mutations of one real request, posted after it, store none of its messages a second time', async (t) => {
  const { b } = await receiver(t);
  const seed = fuzzSeed(t, 0x5eed_b003);
  const runs = fuzzRuns(3000);
  const base = makeBase({
    frames: [0, 1, 2, 0, 1, 2].map((stream, i) => ({ stream, channel: i % CHANNELS.length, body: Buffer.from(`real ${i}`), priority: 4 })),
    firstOffset: 100,
  });
  const first = await postWith(b.url, base.body);
  assert.deepEqual(first.json, { stored: base.ids.length, duplicates: 0 }, first.text);
  // Damage of any kind to the same request (its node, destination, streams, records, frames): the answer
  // is a refusal or says its frames are duplicates, and nothing is stored again.
  let posted = 0;
  await fc.assert(
    fc.asyncProperty(fc.array(mutationArb, { minLength: 1, maxLength: 3 }), async (mutations) => {
      let current: Base = base;
      for (const m of mutations) {
        if (current.body.length === 0) break;
        current = { ...current, body: mutate(current, m).body, records: reindex(mutate(current, m).body) };
      }
      const answer = await postWith(b.url, current.body);
      posted++;
      assert.ok(answer.status === 200 || (answer.status >= 400 && answer.status < 500), `${answer.status} ${answer.text.slice(0, 200)}`);
    }),
    { numRuns: runs, seed, interruptAfterTimeLimit: Math.round((40_000 * runs) / 3000), markInterruptAsFailure: false },
  );
  assert.ok(posted >= Math.min(runs, 300), `at least ${Math.min(runs, 300)} damaged requests were posted (${posted})`);
  const inbox = await allInbox(b.dir);
  const counts = new Map<string, number>();
  for (const m of inbox) counts.set(m.id as string, (counts.get(m.id as string) ?? 0) + 1);
  const twice = [...counts].filter(([, n]) => n > 1).map(([id, n]) => `${id} ×${n}`);
  assert.deepEqual(twice, [], `after ${posted} damaged copies of one request, each of its messages is stored once`);
  assert.deepEqual(base.ids.filter((id) => counts.get(id) !== 1), [], 'every message of the real request is there once');
});

/** A well-formed HTTP request carrying a valid batch, as text to mutate. */
function httpRequest(host: string): Buffer {
  const body = makeBase({ frames: [{ stream: 0, channel: 1, body: Buffer.from('over raw http'), priority: 4 }], firstOffset: 0 }).body;
  return Buffer.concat([Buffer.from(`POST /v1/messages HTTP/1.1\r\nHost: ${host}\r\nContent-Type: application/x-mqlog-batch\r\nContent-Length: ${body.length}\r\n\r\n`, 'latin1'), body]);
}

const rawHttpArb = fc.oneof(
  fc.uint8Array({ maxLength: 400 }).map((a) => ({ name: 'random bytes', bytes: Buffer.from(a) })),
  fc.tuple(fc.nat(), fc.integer({ min: 1, max: 255 })).map(([at, xor]) => ({ name: `flip ${at}`, bytes: ((r) => { const i = at % r.length; r[i] = (r[i] as number) ^ xor; return r; })(httpRequest('127.0.0.1')) })),
  fc.nat().map((at) => ({ name: `cut ${at}`, bytes: ((r) => r.subarray(0, at % r.length))(httpRequest('127.0.0.1')) })),
  fc.constantFrom(
    'GET / HTTP/1.1\r\n\r\n',
    'POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello',
    'POST /v1/messages HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n',
    'POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-mqlog-batch\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n',
    'POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-mqlog-batch\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\nhello\r\n',
    'POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-mqlog-batch\r\nContent-Length: -1\r\n\r\n',
    'POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-mqlog-batch\r\nContent-Length: 99999999999999999999\r\n\r\n',
    'POST /../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n',
    'POST /v1/messages/../../x HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n',
    'POST /v1/messages HTTP/9.9\r\nHost: x\r\n\r\n',
    'POST /v1/messages HTTP/1.1\r\nHost: x\r\nX-Big: ' + 'a'.repeat(20_000) + '\r\n\r\n',
    'POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-mqlog-batch\x00\r\nContent-Length: 0\r\n\r\n',
    'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n',
    '\r\n\r\n\r\n',
  ).map((s) => ({ name: JSON.stringify(s.slice(0, 60)), bytes: Buffer.from(s, 'latin1') })),
);

/** Writes raw bytes to the port, half-closes, and collects what comes back until the server closes (or 5 s). */
function rawExchange(port: number, bytes: Buffer): Promise<string> {
  return new Promise((resolve) => {
    const socket = connect(port, '127.0.0.1');
    let answer = '';
    const done = (): void => {
      clearTimeout(timer);
      socket.destroy();
      resolve(answer);
    };
    const timer = setTimeout(done, 5000);
    socket.on('data', (chunk: Buffer) => (answer += chunk.toString('latin1')));
    socket.on('error', done);
    socket.on('close', done);
    socket.end(bytes);
  });
}

test('malformed HTTP on the peer port never gets a 5xx and never stops the daemon', async (t) => {
  const { b, daemon } = await receiver(t);
  const seed = fuzzSeed(t, 0x5eed_b002);
  const runs = Math.max(20, Math.round(fuzzRuns(2000) / 10));
  const statuses = new Map<string, number>();
  await fc.assert(
    fc.asyncProperty(rawHttpArb, async ({ name, bytes }) => {
      const answer = await rawExchange(b.port, bytes);
      for (const m of answer.matchAll(/HTTP\/1\.1 (\d{3})/g)) {
        statuses.set(m[1]!, (statuses.get(m[1]!) ?? 0) + 1);
        assert.ok(Number(m[1]) < 500, `${name}: ${answer.slice(0, 300)}`);
      }
    }),
    { numRuns: runs, seed, interruptAfterTimeLimit: 30_000, markInterruptAsFailure: false },
  );
  t.diagnostic(`statuses: ${[...statuses].map(([s, n]) => `${s} ×${n}`).join(', ')}`);
  assert.ok(daemon.running, daemon.output.slice(-2000));
  assert.equal(await healthz(b.url), 200);
  const good = await postWith(b.url, makeBase({ frames: [{ stream: 0, channel: 0, body: Buffer.from('still taking batches'), priority: 4 }], firstOffset: 0 }).body);
  assert.equal(good.status, 200, good.text);
  const verify = await mqlog(['verify', b.dir]);
  assert.equal(verify.code, 0, verify.stdout + verify.stderr);
});
