/**
 * `mqlog reload` (SIGHUP) applies the servers' settings of mqlog.json to a running daemon: limits for the
 * requests that start after it (one in flight finishes under the limits it started with), a new listen
 * address (listening before the old one closes, no message lost, receipts coming back to the new
 * address), a certificate renewed in place, a new admin token and admin address. An address that cannot
 * listen leaves the running servers as they were, and the daemon logs why.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { copyFile, readFile, writeFile } from 'node:fs/promises';
import { connect as netConnect, createServer } from 'node:net';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { test, type TestContext } from 'node:test';
import { connect as tlsConnect } from 'node:tls';
import { request } from 'undici';
import { mqlog, tempDir, waitFor } from '../helpers/index.js';
import { allInbox, daemons, freePort, makeNodes, type DaemonProcess, type NodeSpec } from '../helpers/daemon.js';
import { BATCH_CONTENT_TYPE, envelope, frame, healthz } from '../helpers/wire.js';
import { anyDaemons, getText, makeCertificates, nodeSpec, payloadWith, postWith, writeConfig, type AnyDaemon } from '../helpers/security.js';

async function configure(node: NodeSpec, change: (config: Record<string, unknown>) => Record<string, unknown>): Promise<void> {
  const config = JSON.parse(await readFile(join(node.dir, 'mqlog.json'), 'utf8')) as Record<string, unknown>;
  await writeFile(join(node.dir, 'mqlog.json'), JSON.stringify(change(config)));
}

function count(output: string, event: string): number {
  return output.split('\n').filter((line) => line.includes(`"event":"${event}"`)).length;
}

/** `mqlog reload`, then waits for the daemon's next `reloaded` (or, with `failed`, `reload_failed`) event. */
async function reload(daemon: DaemonProcess, event: 'reloaded' | 'reload_failed' = 'reloaded'): Promise<string> {
  const before = count(daemon.output, event);
  const result = await mqlog(['reload', '--data', daemon.node.dir]);
  assert.equal(result.code, 0, result.stderr);
  await waitFor(() => count(daemon.output, event) > before, { timeoutMs: 30_000, message: `a ${event} event of ${daemon.node.name}` });
  return daemon.output.split('\n').filter((line) => line.includes(`"event":"${event}"`)).at(-1) ?? '';
}

async function send(node: NodeSpec, to: string, body: string, extra: string[] = []): Promise<string> {
  const result = await mqlog(['send', '--data', node.dir, '--to', to, ...extra, body]);
  assert.equal(result.code, 0, result.stderr);
  return result.stdout.trim();
}

async function bodies(node: NodeSpec): Promise<string[]> {
  return (await allInbox(node.dir)).map((m) => String(m.body)).sort();
}

/** A batch of one message whose body is `bodyBytes` long, from a sender of its own. */
function batchWithBody(bodyBytes: number): Buffer {
  return envelope([{ stream: 'p4.w0', frame: frame(payloadWith({}, Buffer.alloc(bodyBytes, 0x61)), 0) }], { node: randomUUID() });
}

/** True once nothing accepts connections on `port` of 127.0.0.1. */
function refused(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = netConnect({ host: '127.0.0.1', port });
    socket.once('connect', () => {
      socket.destroy();
      resolve(false);
    });
    socket.once('error', (err: NodeJS.ErrnoException) => resolve(err.code === 'ECONNREFUSED'));
  });
}

async function receiver(t: TestContext, config: Record<string, unknown>, scheme: 'http' | 'https' = 'http'): Promise<{ b: NodeSpec; daemon: AnyDaemon; root: string }> {
  const root = await tempDir(t);
  const b = await nodeSpec(root, 'b', scheme);
  const [daemon] = anyDaemons(t, [b]);
  return { b, daemon: daemon!, root };
}

test('a reload applies limits.maxBodyBytes to the requests that start after it; a request in flight finishes under the limit it started with', async (t) => {
  const { b, daemon } = await receiver(t, {});
  await writeConfig(b, {});
  await daemon.start();
  assert.equal((await postWith(b.url, batchWithBody(2000))).status, 200, 'a body of 2000 bytes under the default limit');

  // A request that starts now and sends its last bytes after the reload.
  const slow = batchWithBody(3000);
  const body = new PassThrough();
  const answer = request(`${b.url}/v1/messages`, { method: 'POST', headers: { 'content-type': BATCH_CONTENT_TYPE, 'content-length': String(slow.length) }, body, headersTimeout: 60_000, bodyTimeout: 60_000 });
  body.write(slow.subarray(0, 100));

  await writeConfig(b, { limits: { maxBodyBytes: 1000 } });
  const reloaded = await reload(daemon);
  assert.match(reloaded, /"servers":\["limits"\]/);
  const over = await postWith(b.url, batchWithBody(2000));
  assert.deepEqual([over.status, over.json?.code], [413, 'ERR_BODY_TOO_LARGE'], over.text);
  const at = await postWith(b.url, batchWithBody(1000));
  assert.equal(at.status, 200, at.text);

  body.end(slow.subarray(100));
  const response = await answer;
  const text = await response.body.text();
  assert.equal(response.statusCode, 200, `the request begun before the reload: ${text}`);
  assert.deepEqual((await allInbox(b.dir)).map((m) => String(m.body).length).sort(), [1000, 2000, 3000]);

  // And back up: the new limit is the file's, not a floor.
  await writeConfig(b, {});
  await reload(daemon);
  assert.equal((await postWith(b.url, batchWithBody(2000))).status, 200, 'a body of 2000 bytes under the default limit again');
  assert.equal(await daemon.stop(), 0, 'a graceful stop after the reloads');
});

test('a reload to a new listen port: the new port listens, the old one closes, the peer configured for the new address gets every message once, and receipts come back to the new address', async (t) => {
  const root = await tempDir(t);
  const { a, b, c } = await makeNodes(root, ['a', 'b', 'c']);
  // C does not know B: it sends its receipts to the address B's batches give (replyTo).
  await configure(c!, (config) => ({ ...config, peers: {} }));
  const [da, db, dc] = daemons(t, [a!, b!, c!]);
  for (const d of [da!, db!, dc!]) await d.start();
  await send(a!, 'b', 'one');
  await waitFor(async () => (await bodies(b!)).length === 1, { message: 'the first message at b' });

  const port = await freePort();
  const moved = `http://127.0.0.1:${port}`;
  await configure(b!, (config) => ({ ...config, listen: `127.0.0.1:${port}` }));
  const reloaded = await reload(db!);
  assert.match(reloaded, new RegExp(`"url":"${moved}"`));
  assert.equal(await healthz(moved), 200, 'the new port serves');
  await waitFor(() => refused(b!.port), { timeoutMs: 30_000, message: 'the old port to close' });

  // A still sends to the old address until it reloads the new one: the message waits, then goes.
  await send(a!, 'b', 'two');
  await configure(a!, (config) => ({ ...config, peers: { ...(config.peers as object), b: { url: moved } } }));
  await reload(da!);
  await send(a!, 'b', 'three');
  await waitFor(async () => (await bodies(b!)).length === 3, { timeoutMs: 60_000, message: 'the three messages at b' });
  assert.deepEqual(await bodies(b!), ['one', 'three', 'two'], 'each once');

  const id = await send(b!, 'c', 'with a receipt', ['--receipt']);
  const tail = await mqlog(['tail', '--data', c!.dir, '--follow', '--ack', '--limit', '1', '--timeout', '60s']);
  assert.equal(tail.code, 0, tail.stderr);
  const receipt = await mqlog(['receipt', '--data', b!.dir, id, '--wait', 'processed', '--timeout', '60s']);
  assert.equal(receipt.code, 0, `the receipt came back to b's new address: ${receipt.stdout}${receipt.stderr}`);
  assert.equal(await db!.stop(), 0, 'a graceful stop after the move');
});

test('a reload to a listen address that is taken keeps the running one, and the daemon logs ERR_ADDRESS_IN_USE with EADDRINUSE', async (t) => {
  const { b, daemon } = await receiver(t, {});
  await writeConfig(b, {});
  await daemon.start();
  const taken = createServer();
  await new Promise<void>((resolve) => taken.listen(0, '127.0.0.1', resolve));
  t.after(() => new Promise<void>((resolve) => taken.close(() => resolve())));
  const address = taken.address();
  assert.ok(typeof address === 'object' && address !== null);
  await writeConfig(b, { listen: `127.0.0.1:${address.port}`, limits: { maxBodyBytes: 1000 } });
  const failed = await reload(daemon, 'reload_failed');
  assert.match(failed, /"code":"ERR_ADDRESS_IN_USE"/);
  assert.match(failed, /"errno":"EADDRINUSE"/);
  assert.equal(await healthz(b.url), 200, 'the running address still serves');
  // Nothing of the file applied, the limits neither.
  assert.equal((await postWith(b.url, batchWithBody(2000))).status, 200, 'the running limits stay');
  assert.ok(daemon.running);
});

/** The common name of the certificate that `url` (https) shows, trusting `ca`. */
async function certificateName(url: string, ca: string): Promise<string> {
  const { hostname, port } = new URL(url);
  return new Promise((resolve, reject) => {
    const socket = tlsConnect({ host: hostname, port: Number(port), ca, servername: undefined }, () => {
      const subject = socket.getPeerCertificate().subject as { CN?: string } | undefined;
      socket.end();
      resolve(String(subject?.CN));
    });
    socket.once('error', reject);
  });
}

test('a reload picks up a certificate renewed in place (same paths): new connections get the new certificate', async (t) => {
  const { b, daemon, root } = await receiver(t, {}, 'https');
  const certs = await makeCertificates(join(root, 'certs'));
  const live = { cert: join(root, 'live.pem'), key: join(root, 'live.key') };
  await copyFile(certs.serverCert, live.cert);
  await copyFile(certs.serverKey, live.key);
  await writeConfig(b, { tls: { ...live, ca: certs.ca } });
  await daemon.start();
  const ca = await readFile(certs.ca, 'utf8');
  assert.equal(await certificateName(b.url, ca), 'server');

  // The renewed certificate (another one for 127.0.0.1 from the same CA) replaces the files.
  await copyFile(certs.clientCert, live.cert);
  await copyFile(certs.clientKey, live.key);
  const reloaded = await reload(daemon);
  assert.match(reloaded, /"servers":\["tls"\]/);
  assert.equal(await certificateName(b.url, ca), 'client');
  assert.equal(await daemon.stop(), 0);
});

test('a reload applies a new admin token and a new admin address', async (t) => {
  const { b, daemon } = await receiver(t, {});
  await writeConfig(b, { admin: { token: 'first-admin-token-0123' } });
  await daemon.start();
  const status = (url: string, token: string): Promise<number> => getText(`${url}/status.json`, { authorization: `Bearer ${token}` }).then((r) => r.status);
  assert.equal(await status(b.url, 'first-admin-token-0123'), 200);
  assert.equal(await status(b.url, 'second-admin-token-0123'), 401);

  await writeConfig(b, { admin: { token: 'second-admin-token-0123' } });
  await reload(daemon);
  assert.equal(await status(b.url, 'first-admin-token-0123'), 401, 'the old token is refused');
  assert.equal(await status(b.url, 'second-admin-token-0123'), 200, 'the new token is taken');

  const adminPort = await freePort();
  const admin = `http://127.0.0.1:${adminPort}`;
  await writeConfig(b, { admin: { token: 'second-admin-token-0123', listen: `127.0.0.1:${adminPort}` } });
  const reloaded = await reload(daemon);
  assert.match(reloaded, new RegExp(`"adminUrl":"${admin}"`));
  assert.equal(await status(admin, 'second-admin-token-0123'), 200, 'the admin address serves');
  assert.equal(await status(b.url, 'second-admin-token-0123'), 404, 'the peer port no longer serves /status.json');

  await writeConfig(b, { admin: { token: 'second-admin-token-0123' } });
  await reload(daemon);
  await waitFor(() => refused(adminPort), { timeoutMs: 30_000, message: 'the admin address to close' });
  assert.equal(await status(b.url, 'second-admin-token-0123'), 200, 'back on the peer port');
  assert.equal(await daemon.stop(), 0);
});
