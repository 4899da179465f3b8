/**
 * HTTPS between two real daemons (spec/http-protocol.md §7, §8), with a CA and certificates made by
 * openssl for the test: B listens with https, A trusts the test CA (`tls.ca`) and signs its requests
 * with the key they share. A wrong key on B shows as a 401 in A's `mqlog stat` while the backlog waits,
 * and drains exactly once when the key is fixed. With `tls.requireClientCert`, only a client certificate
 * signed by the CA gets through.
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { request as httpsRequest } from 'node:https';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import { jsonLines, mqlog, tempDir, waitFor } from '../helpers/index.js';
import { allInbox, freePort, type NodeSpec } from '../helpers/daemon.js';
import { anyDaemons, makeCertificates, nodeSpec, writeConfig, type AnyDaemon, type Certificates } from '../helpers/security.js';

const KEY = 'shared-by-a-and-b-over-tls-01';
const WRONG_KEY = 'b-has-the-wrong-key-now-0123';

interface PeerStat {
  readonly peer: string;
  readonly backlog: number;
  readonly lastError: string | null;
  readonly lastSentAt: number | null;
}

async function peerStat(node: NodeSpec, peer: string): Promise<PeerStat | undefined> {
  const result = await mqlog(['stat', '--data', node.dir, '--json']);
  assert.equal(result.code, 0, result.stderr);
  return jsonLines<PeerStat>(result.stdout).find((r) => r.peer === peer);
}

async function send(from: NodeSpec, to: string, body: string): Promise<string> {
  const result = await mqlog(['send', '--data', from.dir, '--to', to, body]);
  assert.equal(result.code, 0, result.stderr);
  return result.stdout.trim();
}

interface Pair {
  readonly a: NodeSpec;
  readonly b: NodeSpec;
  readonly da: AnyDaemon;
  readonly db: AnyDaemon;
  readonly certs: Certificates;
}

/** Node a (http, trusting the test CA) and node b (https), configured but not started. */
async function pair(t: TestContext): Promise<Pair> {
  const root = await tempDir(t);
  const certs = await makeCertificates(join(root, 'certs'));
  const a = await nodeSpec(root, 'a');
  const b = await nodeSpec(root, 'b', 'https');
  const [da, db] = anyDaemons(t, [a, b]);
  return { a, b, da: da!, db: db!, certs };
}

async function configureA(p: Pair, tls: Record<string, unknown>): Promise<void> {
  await writeConfig(p.a, { peers: { b: { url: p.b.url, key: KEY } }, tls });
}

async function configureB(p: Pair, key: string, tls: Record<string, unknown> = {}): Promise<void> {
  await writeConfig(p.b, { peers: { a: { url: p.a.url, key } }, tls: { cert: p.certs.serverCert, key: p.certs.serverKey, ...tls } });
}

async function restart(daemon: AnyDaemon): Promise<void> {
  assert.equal(await daemon.stop(), 0, daemon.output);
  await daemon.start();
}

/** Waits until A reports an error for b matching `pattern` while `backlog` messages wait. */
async function waitForPeerError(p: Pair, pattern: RegExp, backlog: number): Promise<PeerStat> {
  let last: PeerStat | undefined;
  try {
    return await waitFor(async () => {
      last = await peerStat(p.a, 'b');
      return last !== undefined && last.lastError !== null && pattern.test(last.lastError) && last.backlog === backlog ? last : undefined;
    }, { timeoutMs: 60_000, intervalMs: 100, message: `a's stat to show ${pattern} for b` });
  } catch (err) {
    throw new Error(`${(err as Error).message}; last stat: ${JSON.stringify(last)}`, { cause: err });
  }
}

/** Waits until the (re)started daemon A logs a failed attempt to forward to b; returns the logged error. */
async function waitForForwardFailure(p: Pair): Promise<string> {
  const line = await waitFor(() => p.da.logLines().find((l) => l.event === 'forward_failed' && l.peer === 'b'), { timeoutMs: 60_000, message: 'a to log a failed forward to b' });
  return `${String(line.code)}: ${String(line.error)}`;
}

/** Waits until b's inbox holds `count` messages and a's backlog for b is empty; returns b's inbox. */
async function waitForDrained(p: Pair, count: number): Promise<Record<string, unknown>[]> {
  await waitFor(async () => (await peerStat(p.a, 'b'))?.backlog === 0, { timeoutMs: 60_000, message: "a's backlog for b to drain" });
  return waitFor(async () => {
    const inbox = await allInbox(p.b.dir);
    return inbox.length >= count ? inbox : undefined;
  }, { timeoutMs: 60_000, message: `${count} messages in b` });
}

test('A sends to B over https with matching keys; with B\'s key changed A shows the 401 and the backlog waits; fixed, it drains exactly once', async (t) => {
  const p = await pair(t);
  await configureA(p, { ca: p.certs.ca });
  await configureB(p, KEY);
  await Promise.all([p.da.start(), p.db.start()]);
  assert.ok(p.db.output.includes(`listening on ${p.b.url}`), p.db.output);

  const first = await send(p.a, 'b', 'over tls 1');
  const delivered = await waitForDrained(p, 1);
  assert.deepEqual(delivered.map((m) => [m.id, m.from, m.body]), [[first, 'a', 'over tls 1']]);

  await configureB(p, WRONG_KEY);
  await restart(p.db);
  const second = await send(p.a, 'b', 'over tls 2');
  const failing = await waitForPeerError(p, /\b401\b/, 1);
  assert.match(failing.lastError ?? '', /ERR_UNAUTHORIZED/);
  assert.ok(!(failing.lastError ?? '').includes(KEY) && !(failing.lastError ?? '').includes(WRONG_KEY), 'the error does not show a key');
  assert.deepEqual((await allInbox(p.b.dir)).map((m) => m.body), ['over tls 1'], 'nothing stored while the keys differ');

  await configureB(p, KEY);
  await restart(p.db);
  const inbox = await waitForDrained(p, 2);
  assert.deepEqual(inbox.map((m) => [m.id, m.from, m.body]).sort(), [[first, 'a', 'over tls 1'], [second, 'a', 'over tls 2']].sort());
  const after = await peerStat(p.a, 'b');
  assert.equal(after?.lastError, null, 'the error is cleared by the next successful send');
  assert.equal((await mqlog(['verify', p.b.dir])).code, 0);
});

test('A refuses to send to a B whose certificate is not signed by a CA A trusts, and the backlog waits', async (t) => {
  const p = await pair(t);
  await configureA(p, { ca: p.certs.ca });
  await writeConfig(p.b, { peers: { a: { url: p.a.url, key: KEY } }, tls: { cert: p.certs.strangerCert, key: p.certs.strangerKey } });
  await Promise.all([p.da.start(), p.db.start()]);
  await send(p.a, 'b', 'to an impostor');
  const failing = await waitForPeerError(p, /certificate|self[- ]signed|verify/i, 1);
  assert.match(failing.lastError ?? '', /ERR_PEER_UNREACHABLE|UNABLE_TO_VERIFY|certificate/i);
  assert.deepEqual(await allInbox(p.b.dir), []);
});

test('with requireClientCert, A without a client certificate or with one from another CA fails, and with one signed by the CA it delivers once', async (t) => {
  const p = await pair(t);
  await configureA(p, { ca: p.certs.ca });
  await configureB(p, KEY, { ca: p.certs.ca, requireClientCert: true });
  await Promise.all([p.da.start(), p.db.start()]);

  const id = await send(p.a, 'b', 'needs a client certificate');
  t.diagnostic(`without a client certificate: ${await waitForForwardFailure(p)}`);
  await waitForPeerError(p, /./, 1);
  assert.deepEqual(await allInbox(p.b.dir), []);

  // A client certificate from a CA that B does not trust. (A's own receiver uses it too, so A listens with https.)
  await configureA(p, { ca: p.certs.ca, cert: p.certs.strangerCert, key: p.certs.strangerKey });
  await restart(p.da);
  t.diagnostic(`with a certificate of another CA: ${await waitForForwardFailure(p)}`);
  await waitForPeerError(p, /./, 1);
  assert.deepEqual(await allInbox(p.b.dir), []);

  await configureA(p, { ca: p.certs.ca, cert: p.certs.clientCert, key: p.certs.clientKey });
  await restart(p.da);
  const inbox = await waitForDrained(p, 1);
  assert.deepEqual(inbox.map((m) => [m.id, m.from, m.body]), [[id, 'a', 'needs a client certificate']]);
  assert.equal((await peerStat(p.a, 'b'))?.lastError, null);
});

/** GET over https trusting `ca` (PEM); resolves with the status, or rejects when no TLS answer comes. */
function httpsGet(url: string, ca: string, headers: Record<string, string> = {}): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const request = httpsRequest(url, { ca, headers }, (response) => {
      let body = '';
      response.on('data', (chunk: Buffer) => (body += chunk.toString()));
      response.on('end', () => resolve({ status: response.statusCode ?? 0, body }));
    });
    request.on('error', reject);
    request.end();
  });
}

test('with admin.tls, the admin address serves over https with the node\'s certificate (and its token), and plain http gets no answer there', async (t) => {
  const p = await pair(t);
  const adminPort = await freePort();
  const token = 'admin-token-over-tls-0123456789';
  await configureB(p, KEY);
  const config = JSON.parse(await readFile(join(p.b.dir, 'mqlog.json'), 'utf8')) as Record<string, unknown>;
  await writeConfig(p.b, { ...config, admin: { listen: `127.0.0.1:${adminPort}`, tls: true, token } });
  await p.db.start();
  const admin = `https://127.0.0.1:${adminPort}`;
  const ca = await readFile(p.certs.ca, 'utf8');
  assert.equal((await httpsGet(`${admin}/readyz`, ca)).status, 200);
  assert.equal((await httpsGet(`${admin}/metrics`, ca)).status, 401, 'the token is still needed');
  const metrics = await httpsGet(`${admin}/metrics`, ca, { authorization: `Bearer ${token}` });
  assert.equal(metrics.status, 200);
  assert.match(metrics.body, /^mqlog_build_info/m);
  await assert.rejects(fetch(`http://127.0.0.1:${adminPort}/readyz`), 'plain http on the admin address');
  // admin.tls without a certificate is a configuration error, named at start.
  const c = await nodeSpec(join(p.b.dir, '..'), 'c');
  await writeConfig(c, { admin: { listen: `127.0.0.1:${await freePort()}`, tls: true } });
  const start = await mqlog(['daemon', '--data', c.dir], { timeoutMs: 30_000 });
  assert.equal(start.code, 1);
  assert.match(start.stderr, /ERR_CONFIG: admin\.tls needs admin\.listen and the node's tls\.cert and tls\.key/);
});
