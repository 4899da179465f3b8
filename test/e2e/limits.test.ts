/**
 * The receiver's limits (spec/http-protocol.md §9) on a real daemon with small limits in mqlog.json:
 * each limit is answered with its own status and code, one byte (one frame, one header) beyond it, and a
 * request exactly at it is accepted; a refused request stores nothing and the daemon keeps serving.
 * Then the read-only endpoints (§10): behind admin.token, on their own address with admin.listen, and
 * never showing a message body, a header value or a secret.
 */
import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { join } from 'node:path';
import { connect } from 'node:net';
import { PassThrough, Readable } from 'node:stream';
import { test, type TestContext } from 'node:test';
import { request } from 'undici';
import { mqlog, tempDir, waitFor } from '../helpers/index.js';
import { allInbox, daemons, freePort, makeNodes, type NodeSpec } from '../helpers/daemon.js';
import { BATCH_CONTENT_TYPE, envelope, frame, healthz, type RawFrame } from '../helpers/wire.js';
import { UNREACHABLE, anyDaemons, getText, nodeSpec, payloadWith, postWith, signed, writeConfig, type Answer, type AnyDaemon } from '../helpers/security.js';

const LIMITS = {
  maxRequestBytes: 8192,
  maxFramesPerRequest: 10,
  maxBodyBytes: 1000,
  maxHeaders: 4,
  maxHeaderBytes: 200,
  maxChannelBytes: 16,
};

async function receiver(t: TestContext, config: Record<string, unknown>): Promise<{ b: NodeSpec; daemon: AnyDaemon }> {
  const root = await tempDir(t);
  const b = await nodeSpec(root, 'b');
  await writeConfig(b, config);
  const [daemon] = anyDaemons(t, [b]);
  await daemon!.start();
  return { b, daemon: daemon! };
}

/** One frame of a batch; `meta` are short meta keys (c channel, h headers…) on top of valid defaults. */
function rawFrame(offset: number, meta: Record<string, unknown> = {}, body: string | Buffer = `message ${offset}`, stream = 'p4.w0'): RawFrame {
  return { stream, frame: frame(payloadWith(meta, body), offset) };
}

/** Frames 0..n-1 with small bodies. */
function frames(n: number): RawFrame[] {
  return Array.from({ length: n }, (_, i) => rawFrame(i));
}

/** A valid batch of exactly `size` bytes, every body within LIMITS.maxBodyBytes. */
function batchOfExactly(size: number): Buffer {
  const node = randomUUID();
  const probe = (bodies: number[]): Buffer => envelope(bodies.map((n, i) => rawFrame(i, {}, Buffer.alloc(n, 0x61))), { node });
  const bodies: number[] = [];
  for (;;) {
    const withEmpty = probe([...bodies, 0]).length;
    if (withEmpty > size) throw new Error(`cannot build a batch of exactly ${size} bytes`);
    const last = size - withEmpty;
    if (last <= LIMITS.maxBodyBytes) {
      const body = probe([...bodies, last]);
      assert.equal(body.length, size);
      return body;
    }
    bodies.push(LIMITS.maxBodyBytes);
  }
}

interface Case {
  readonly name: string;
  readonly body: Buffer;
  readonly status: number;
  readonly code: string;
  readonly frame?: number;
}

/**
 * POSTs a body without Content-Length (chunked), in 1 KiB pieces. The protocol asks for Content-Length;
 * without it the limit must still hold while the bytes arrive: the answer is a 413, or the connection is
 * closed before the client has written everything (then it never sees the answer).
 */
async function postChunked(url: string, body: Buffer): Promise<Answer | 'closed'> {
  const pieces = async function* (): AsyncGenerator<Buffer> {
    for (let at = 0; at < body.length; at += 1024) yield body.subarray(at, at + 1024);
  };
  try {
    const response = await request(`${url}/v1/messages`, { method: 'POST', headers: { 'content-type': BATCH_CONTENT_TYPE }, body: Readable.from(pieces()), headersTimeout: 60_000, bodyTimeout: 60_000 });
    const text = await response.body.text();
    let json: Answer['json'];
    try {
      json = JSON.parse(text) as Answer['json'];
    } catch {
      json = undefined;
    }
    return { status: response.statusCode, text, json };
  } catch (err) {
    const code = (err as { code?: unknown }).code;
    if (code === 'EPIPE' || code === 'ECONNRESET' || code === 'UND_ERR_SOCKET') return 'closed';
    throw err;
  }
}

test('each receiver limit is answered with its own status and code, stores nothing, and the daemon keeps serving', async (t) => {
  const { b } = await receiver(t, { limits: LIMITS });
  const over = (n: number): string => 'x'.repeat(n);
  const cases: Case[] = [
    { name: 'a request one byte over maxRequestBytes', body: batchOfExactly(LIMITS.maxRequestBytes + 1), status: 413, code: 'ERR_REQUEST_TOO_LARGE' },
    { name: 'maxFramesPerRequest + 1 frames', body: envelope(frames(LIMITS.maxFramesPerRequest + 1)), status: 413, code: 'ERR_TOO_MANY_FRAMES' },
    { name: 'a body of maxBodyBytes + 1 in the second frame', body: envelope([rawFrame(0), rawFrame(1, {}, Buffer.alloc(LIMITS.maxBodyBytes + 1, 0x63))]), status: 413, code: 'ERR_BODY_TOO_LARGE', frame: 1 },
    { name: 'maxHeaders + 1 headers in the second frame', body: envelope([rawFrame(0), rawFrame(1, { h: { a: '1', b: '2', c: '3', d: '4', e: '5' } })]), status: 400, code: 'ERR_HEADERS_TOO_LARGE', frame: 1 },
    { name: 'maxHeaderBytes + 1 bytes of headers in the second frame', body: envelope([rawFrame(0), rawFrame(1, { h: { k: over(LIMITS.maxHeaderBytes) } })]), status: 400, code: 'ERR_HEADERS_TOO_LARGE', frame: 1 },
    { name: 'a channel of maxChannelBytes + 1 bytes in the second frame', body: envelope([rawFrame(0), rawFrame(1, { c: over(LIMITS.maxChannelBytes + 1) })]), status: 400, code: 'ERR_INVALID_NAME', frame: 1 },
    { name: 'a channel of 9 characters but 18 bytes', body: envelope([rawFrame(0, { c: 'é'.repeat(9) })]), status: 400, code: 'ERR_INVALID_NAME', frame: 0 },
  ];
  const failures: string[] = [];
  for (const c of cases) {
    const answer = await postWith(b.url, c.body);
    const actual = { status: answer.status, code: answer.json?.code, frame: answer.json?.frame, message: typeof answer.json?.message };
    const expected = { status: c.status, code: c.code, frame: c.frame, message: 'string' };
    try {
      assert.deepEqual(actual, expected);
    } catch {
      failures.push(`${c.name}: expected ${JSON.stringify(expected)}, got ${JSON.stringify(actual)} ${answer.text.slice(0, 200)}`);
    }
    assert.equal(await healthz(b.url), 200, `healthz after ${c.name}`);
    assert.deepEqual(await allInbox(b.dir), [], `nothing stored after ${c.name}`);
  }
  assert.deepEqual(failures, []);
  const chunked = await postChunked(b.url, envelope([rawFrame(0, {}, Buffer.alloc(20_000, 0x62))]));
  if (chunked !== 'closed') assert.deepEqual([chunked.status, chunked.json?.code], [413, 'ERR_REQUEST_TOO_LARGE'], `chunked: ${chunked.text}`);
  assert.equal(await healthz(b.url), 200, 'healthz after the chunked request');
  assert.deepEqual(await allInbox(b.dir), [], 'nothing stored after the chunked request');

  // Exactly at each limit is accepted.
  const accepted: [string, Buffer, number][] = [
    ['a request of exactly maxRequestBytes', batchOfExactly(LIMITS.maxRequestBytes), 0],
    ['maxFramesPerRequest frames', envelope(frames(LIMITS.maxFramesPerRequest)), LIMITS.maxFramesPerRequest],
    ['a body of maxBodyBytes, maxHeaders headers of maxHeaderBytes, a channel of maxChannelBytes', envelope([rawFrame(0, { c: 'é'.repeat(8), h: { h1: over(48), h2: over(48), h3: over(48), h4: over(48) } }, Buffer.alloc(LIMITS.maxBodyBytes, 0x64))]), 1],
  ];
  let total = 0;
  for (const [name, body, count] of accepted) {
    const answer = await postWith(b.url, body);
    assert.equal(answer.status, 200, `${name}: ${answer.text}`);
    const stored = answer.json?.stored as number;
    if (count > 0) assert.equal(stored, count, name);
    total += stored;
  }
  assert.equal((await allInbox(b.dir)).length, total);
  const verify = await mqlog(['verify', b.dir]);
  assert.equal(verify.code, 0, verify.stdout + verify.stderr);
});

test('with maxConcurrentRequestsPerPeer 1, a second request while a slow one is in flight gets 429 ERR_TOO_MANY_REQUESTS and stores nothing', async (t) => {
  const { b } = await receiver(t, { limits: { maxConcurrentRequestsPerPeer: 1 } });
  const slowBody = envelope([rawFrame(0, { c: 'slow' }, Buffer.alloc(256 * 1024, 0x73))]);
  const stream = new PassThrough();
  const slow = request(`${b.url}/v1/messages`, {
    method: 'POST',
    headers: { 'content-type': BATCH_CONTENT_TYPE, 'content-length': String(slowBody.length) },
    body: stream,
    headersTimeout: 60_000,
    bodyTimeout: 60_000,
  });
  // Half the body, then a pause: the request is in flight until the rest arrives. A round trip on
  // another connection, started after these bytes were written, lets the server take them in first.
  stream.write(slowBody.subarray(0, slowBody.length >> 1));
  assert.equal(await healthz(b.url), 200);
  const second = await postWith(b.url, envelope([rawFrame(0, { c: 'second' })]));
  stream.end(slowBody.subarray(slowBody.length >> 1));
  const first = await slow;
  const firstText = await first.body.text();
  assert.equal(first.statusCode, 200, firstText);
  assert.deepEqual([second.status, second.json?.code], [429, 'ERR_TOO_MANY_REQUESTS'], `the concurrent request: ${second.text}`);
  assert.deepEqual((await allInbox(b.dir)).map((m) => m.channel), ['slow'], 'only the slow request was stored');
  // Once the slow one is done, the peer may send again.
  const after = await postWith(b.url, envelope([rawFrame(0, { c: 'after' })]));
  assert.equal(after.status, 200, after.text);
});

test('a request whose body never finishes gets 408 ERR_REQUEST_TIMEOUT after requestTimeoutMs, stores nothing, and the daemon keeps serving', async (t) => {
  const requestTimeoutMs = 1000;
  const { b } = await receiver(t, { limits: { requestTimeoutMs } });
  const body = envelope([rawFrame(0, { c: 'never' })]);
  const socket = connect(b.port, '127.0.0.1');
  t.after(() => socket.destroy());
  let answer = '';
  let closed = false;
  socket.on('data', (chunk: Buffer) => (answer += chunk.toString('latin1')));
  socket.on('close', () => (closed = true));
  socket.on('error', () => undefined);
  socket.write(`POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: ${BATCH_CONTENT_TYPE}\r\nContent-Length: ${body.length}\r\n\r\n`);
  socket.write(body.subarray(0, body.length - 10));
  const started = Date.now();
  // Generous for a 1 s limit on a loaded machine, and well below the 60 s of the default limits.
  await waitFor(() => closed || /\r\n\r\n/.test(answer), { timeoutMs: 20_000, message: `an answer to the unfinished request (requestTimeoutMs ${requestTimeoutMs})` });
  await waitFor(() => closed || /\r\n\r\n[\s\S]*\}/.test(answer), { timeoutMs: 5000, message: 'the whole answer' }).catch(() => undefined);
  t.diagnostic(`answered after ${Date.now() - started} ms: ${JSON.stringify(answer.slice(0, 300))}`);
  assert.match(answer, /^HTTP\/1\.1 408 /, 'status 408');
  const json = JSON.parse(answer.slice(answer.indexOf('\r\n\r\n') + 4)) as { code?: unknown };
  assert.equal(json.code, 'ERR_REQUEST_TIMEOUT');
  assert.equal(await healthz(b.url), 200);
  assert.deepEqual(await allInbox(b.dir), []);
});

const PEER_KEY = 'peer-key-of-a-for-b-0123456789';
const ADMIN_TOKEN = 'admin-token-0123456789abcdef';

/** Puts a message with a secret body and header into B's inbox, and one with a secret body into its outbox. */
async function secrets(b: NodeSpec): Promise<string[]> {
  const inboxBody = `SECRET-INBOX-BODY-${randomUUID()}`;
  const headerValue = `SECRET-HEADER-VALUE-${randomUUID()}`;
  const outboxBody = `SECRET-OUTBOX-BODY-${randomUUID()}`;
  const body = envelope([rawFrame(0, { c: 'visible-channel', h: { 'x-secret': headerValue } }, inboxBody)], { name: 'a' });
  const answer = await postWith(b.url, body, signed('a', PEER_KEY, body));
  assert.equal(answer.status, 200, answer.text);
  const sent = await mqlog(['send', '--data', b.dir, '--to', 'a', '--header', `x-out=${headerValue}`, outboxBody]);
  assert.equal(sent.code, 0, sent.stderr);
  return [inboxBody, headerValue, outboxBody, PEER_KEY, ADMIN_TOKEN];
}

const READ_ONLY = ['/metrics', '/status.json', '/'];

async function assertNoSecrets(base: string, headers: Record<string, string>, hidden: string[]): Promise<void> {
  for (const path of READ_ONLY) {
    const page = await getText(`${base}${path}`, headers);
    assert.equal(page.status, 200, `${path}: ${page.text.slice(0, 200)}`);
    for (const secret of hidden) assert.ok(!page.text.includes(secret), `${path} does not show ${secret.slice(0, 24)}…`);
  }
}

/** Waits until the status data shows the inbox channel and the failing peer (so there is something to show). */
async function waitForStatus(base: string, headers: Record<string, string>): Promise<void> {
  let last = '';
  try {
    await waitFor(async () => {
      const page = await getText(`${base}/status.json`, headers);
      last = page.text;
      const status = JSON.parse(page.text) as { channels?: { channel?: unknown }[]; peers?: { peer?: unknown; lastError?: unknown }[] };
      return page.status === 200 && (status.channels ?? []).some((c) => c.channel === 'visible-channel') && (status.peers ?? []).some((p) => p.peer === 'a' && typeof p.lastError === 'string');
    }, { timeoutMs: 60_000, message: 'status.json to show the channel and the failing peer' });
  } catch (err) {
    throw new Error(`${(err as Error).message}; last status.json: ${last.slice(0, 1000)}`, { cause: err });
  }
}

test('with admin.token, /metrics and /status.json answer 401 without the token and 200 with it, / holds no data, and none shows a body, header value or secret', async (t) => {
  const { b, daemon } = await receiver(t, { peers: { a: { url: UNREACHABLE, key: PEER_KEY } }, admin: { token: ADMIN_TOKEN } });
  const hidden = await secrets(b);
  // The page is served to anyone: it asks for the token itself, and shows nothing of the node without it.
  const page = await getText(`${b.url}/`);
  assert.equal(page.status, 200);
  for (const shown of ['visible-channel', UNREACHABLE, PEER_KEY, ADMIN_TOKEN, ...hidden]) assert.ok(!page.text.includes(shown), `the page alone shows ${shown.slice(0, 24)}`);
  for (const path of READ_ONLY.filter((p) => p !== '/')) {
    const wrong: Record<string, string>[] = [{}, { authorization: `Bearer ${ADMIN_TOKEN}x` }, { authorization: ADMIN_TOKEN }, { authorization: `Basic ${ADMIN_TOKEN}` }];
    for (const headers of wrong) {
      const page = await getText(`${b.url}${path}`, headers);
      assert.equal(page.status, 401, `${path} with ${JSON.stringify(headers)}: ${page.text.slice(0, 200)}`);
      assert.equal((JSON.parse(page.text) as { code?: unknown }).code, 'ERR_UNAUTHORIZED');
    }
    assert.equal((await getText(`${b.url}${path}?token=${ADMIN_TOKEN}`)).status, 200, `${path}?token=`);
  }
  const bearer = { authorization: `Bearer ${ADMIN_TOKEN}` };
  await waitForStatus(b.url, bearer);
  await assertNoSecrets(b.url, bearer, hidden);
  assert.equal(await healthz(b.url), 200, 'healthz needs no token');
  for (const secret of [PEER_KEY, ADMIN_TOKEN]) assert.ok(!daemon.output.includes(secret), 'the log shows no secret');
});

test('with admin.listen, the read-only endpoints are served there and the peer port answers 404 for them', async (t) => {
  const adminPort = await freePort();
  const { b, daemon } = await receiver(t, { peers: { a: { url: UNREACHABLE, key: PEER_KEY } }, admin: { listen: `127.0.0.1:${adminPort}` } });
  const admin = `http://127.0.0.1:${adminPort}`;
  const hidden = await secrets(b);
  for (const path of READ_ONLY) {
    const page = await getText(`${b.url}${path}`);
    assert.equal(page.status, 404, `${path} on the peer port: ${page.text.slice(0, 200)}`);
    assert.equal((await getText(`${admin}${path}`)).status, 200, `${path} on the admin port`);
  }
  assert.equal(await healthz(b.url), 200, 'the peer port keeps /healthz');
  await waitForStatus(admin, {});
  await assertNoSecrets(admin, {}, hidden);
  // The admin address does not take messages.
  const body = envelope([rawFrame(0, { c: 'via-admin' })]);
  const viaAdmin = await postWith(admin, body, signed('a', PEER_KEY, body));
  assert.equal(viaAdmin.status, 404, viaAdmin.text);
  assert.ok(!daemon.output.includes(PEER_KEY), 'the log shows no secret');
});

test('a receiver whose inline body limit is below a chunk still takes streamed bodies whole: the two limits are independent', async (t) => {
  const root = await tempDir(t);
  const { a, b } = await makeNodes(root, ['a', 'b']);
  // B takes inline bodies of at most 64 KiB; a streamed body travels in chunks of 1 MiB.
  const { writeFile, readFile } = await import('node:fs/promises');
  const config = JSON.parse(await readFile(join(b!.dir, 'mqlog.json'), 'utf8')) as Record<string, unknown>;
  await writeFile(join(b!.dir, 'mqlog.json'), JSON.stringify({ ...config, limits: { maxBodyBytes: 64 * 1024 } }));
  const [da, db] = daemons(t, [a!, b!]);
  await Promise.all([da!.start(), db!.start()]);
  const body = randomBytes(9 * 1024 * 1024);
  const file = join(root, 'body.bin');
  await writeFile(file, body);
  const sent = await mqlog(['send', '--data', a!.dir, '--to', 'b', '--file', file]);
  assert.equal(sent.code, 0, sent.stderr);
  const id = sent.stdout.trim();
  await waitFor(async () => (await allInbox(b!.dir)).some((m) => m.id === id), { timeoutMs: 120_000, message: `the 9 MiB body at B: ${db!.output.slice(-1500)}` });
  const out = join(root, 'out');
  const tail = await mqlog(['tail', '--data', b!.dir, '--ack', '--limit', '1', '--body-to', out]);
  assert.equal(tail.code, 0, tail.stderr);
  assert.ok((await readFile(join(out, id))).equals(body), 'the body arrived byte for byte');
  // An inline body over the limit is still refused (and dead-lettered at A with the reason).
  const big = await mqlog(['send', '--data', a!.dir, '--to', 'b', 'x'.repeat(70 * 1024)]);
  assert.equal(big.code, 0, big.stderr);
  await waitFor(async () => (await mqlog(['dump', a!.dir, '--json'])).stdout.includes('"state":"dead"'), { timeoutMs: 60_000, message: 'the inline body over the limit dead-lettered at A' });
});
