/**
 * JetStream in real deployments (spec/transports.md §3.5), against real nats-servers: a server that
 * requires a user and password (given in the peer's URL, and in a source's `nats` settings), one that
 * requires TLS with client certificates (a CA made here with openssl), the stream settings mqlog creates
 * a stream with, and the error it gives for an existing stream with other settings, which it leaves
 * as it is. Secrets appear in no log, no `stat` and no `dump`.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { checkServerIdentity, type PeerCertificate } from 'node:tls';
import { test } from 'node:test';
import type { TlsOptions } from '@nats-io/transport-node';
import { jetstreamManager, StorageType } from '@nats-io/jetstream';
import { jsonLines, mqlog, tempDir, waitFor } from '../helpers/index.js';
import { allInbox, daemons, makeNodes } from '../helpers/daemon.js';
import { NatsServer } from '../helpers/nats.js';
import { makeCertificates } from '../helpers/security.js';

const PASSWORD = 'pa55-w0rd-never-shown';

async function sendLines(dir: string, to: string, lines: string[]): Promise<string[]> {
  const sent = await mqlog(['send', '--data', dir, '--to', to, '--lines'], { input: `${lines.join('\n')}\n` });
  assert.equal(sent.code, 0, sent.stderr);
  return sent.stdout.trim().split('\n');
}

async function peerRow(dir: string, peer: string): Promise<Record<string, unknown> | undefined> {
  const stat = await mqlog(['stat', '--data', dir, '--json']);
  return jsonLines(stat.stdout).find((r) => r.peer === peer);
}

test('a server requiring a user and password: credentials in the peer URL and in a source\'s nats settings; a wrong password is retried with a clear error; the password is never shown', async (t) => {
  const nats = await NatsServer.start(t, {
    config: `authorization { users: [ { user: mq, password: "${PASSWORD}" } ] }`,
    client: { user: 'mq', pass: PASSWORD },
  });
  const root = await tempDir(t);
  const withPassword = `nats://mq:${PASSWORD}@127.0.0.1:${nats.port}/AUTH`;
  const { a } = await makeNodes(root, ['a'], { peers: { hub: { url: withPassword }, wrong: { url: nats.streamUrl('AUTH'), nats: { user: 'mq', pass: 'not-the-password' } } } });
  const { b } = await makeNodes(root, ['b'], { nats: { user: 'mq', pass: PASSWORD }, sources: [{ url: nats.streamUrl('AUTH'), durable: 'b' }] });
  const [da, db] = daemons(t, [a!, b!]);
  await da!.start();
  await db!.start();
  const ids = await sendLines(a!.dir, 'hub', ['one', 'two', 'three']);
  await sendLines(a!.dir, 'wrong', ['never gets in']);
  await waitFor(async () => (await allInbox(b!.dir)).length === 3, { message: "the three messages in B's inbox" });
  assert.deepEqual((await allInbox(b!.dir)).map((m) => m.id).sort(), [...ids].sort());
  const wrong = await waitFor(async () => {
    const row = await peerRow(a!.dir, 'wrong');
    return typeof row?.lastError === 'string' ? row : undefined;
  }, { message: 'the failing peer to show its error in stat' });
  assert.match(String(wrong.lastError), /authori[sz]ation/i);
  assert.equal(wrong.backlog, 1, 'nothing dropped: retried');
  const hub = await peerRow(a!.dir, 'hub');
  assert.equal(hub?.url, `nats://mq:***@127.0.0.1:${nats.port}/AUTH`, 'stat shows the URL without the password');
  // A URL with credentials cannot be a message's destination (the message would store it).
  const refused = await mqlog(['send', '--data', a!.dir, '--to', withPassword, 'x']);
  assert.equal(refused.code, 2);
  assert.match(refused.stderr, /ERR_UNKNOWN_PEER: .*cannot carry credentials/);
  const outputs = [da!.output, db!.output, refused.stderr, (await mqlog(['stat', '--data', a!.dir])).stdout, (await mqlog(['dump', a!.dir, '--json'])).stdout];
  for (const text of outputs) assert.ok(!text.includes(PASSWORD), 'the password appears nowhere');
  assert.ok(!da!.output.includes('not-the-password'));
});

test('a server requiring TLS with client certificates (a CA made here): tls:// for the forwarder, nats settings with the CA and a client certificate for both sides', async (t) => {
  const root = await tempDir(t);
  const certs = await makeCertificates(join(root, 'pki'));
  const nats = await NatsServer.start(t, {
    scheme: 'tls',
    config: `tls { cert_file: "${certs.serverCert}", key_file: "${certs.serverKey}", ca_file: "${certs.ca}", verify: true }`,
    // The client names no host for an IP address: check the server's certificate for 127.0.0.1 (as mqlog does).
    client: { tls: { caFile: certs.ca, certFile: certs.clientCert, keyFile: certs.clientKey, checkServerIdentity: (_: string, cert: PeerCertificate) => checkServerIdentity('127.0.0.1', cert) } as TlsOptions },
  });
  const tls = { ca: certs.ca, cert: certs.clientCert, key: certs.clientKey };
  const { a } = await makeNodes(root, ['a'], {
    peers: { hub: { url: nats.streamUrl('SECURE'), nats: { tls } }, stranger: { url: nats.streamUrl('SECURE'), nats: { tls: { ca: certs.ca, cert: certs.strangerCert, key: certs.strangerKey } } } },
  });
  const { b } = await makeNodes(root, ['b'], { sources: [{ url: nats.streamUrl('SECURE').replace('tls://', 'nats://'), durable: 'b', nats: { tls } }] });
  const [da, db] = daemons(t, [a!, b!]);
  await da!.start();
  await db!.start();
  const ids = await sendLines(a!.dir, 'hub', ['over TLS 1', 'over TLS 2']);
  await sendLines(a!.dir, 'stranger', ['a certificate the server does not trust']);
  await waitFor(async () => (await allInbox(b!.dir)).length === 2, { message: "both messages in B's inbox" });
  assert.deepEqual((await allInbox(b!.dir)).map((m) => m.body).sort(), ['over TLS 1', 'over TLS 2']);
  assert.deepEqual((await allInbox(b!.dir)).map((m) => m.id).sort(), [...ids].sort());
  const stranger = await waitFor(async () => {
    const row = await peerRow(a!.dir, 'stranger');
    return typeof row?.lastError === 'string' ? row : undefined;
  }, { message: 'the untrusted client to show its error in stat' });
  assert.equal(stranger.backlog, 1);
  assert.equal(await nats.streamCount('SECURE'), 2);
});

test('mqlog creates a stream with the configured settings; an existing stream with other settings is left as it is, with ERR_STREAM_CONFLICT in stat', async (t) => {
  const nats = await NatsServer.start(t);
  await nats.addStream('THEIRS', { storage: StorageType.File });
  const root = await tempDir(t);
  const stream = { maxBytes: 64 * 1024 * 1024, maxAgeMs: 3_600_000, storage: 'memory', duplicateWindowMs: 30_000, replicas: 1 };
  const { a } = await makeNodes(root, ['a'], {
    nats: { stream },
    peers: { mine: { url: nats.streamUrl('MINE') }, theirs: { url: nats.streamUrl('THEIRS') } },
  });
  const [da] = daemons(t, [a!]);
  await da!.start();
  await sendLines(a!.dir, 'mine', ['into a stream mqlog creates']);
  await sendLines(a!.dir, 'theirs', ['into a stream made by hand']);
  await waitFor(async () => (await nats.streamCount('MINE')) === 1, { message: 'the message in MINE' });
  await nats.withConnection(async (nc) => {
    const config = (await (await jetstreamManager(nc)).streams.info('MINE')).config;
    assert.equal(config.max_bytes, stream.maxBytes);
    assert.equal(config.max_age, stream.maxAgeMs * 1_000_000);
    assert.equal(config.storage, StorageType.Memory);
    assert.equal(config.duplicate_window, stream.duplicateWindowMs * 1_000_000);
    assert.deepEqual(config.subjects, ['MINE.>']);
  });
  const theirs = await waitFor(async () => {
    const row = await peerRow(a!.dir, 'theirs');
    return typeof row?.lastError === 'string' ? row : undefined;
  }, { message: 'the conflict in stat' });
  assert.match(String(theirs.lastError), /stream THEIRS exists with other settings.*maxBytes.*storage "memory" \(the stream has "file"\)/);
  assert.match(da!.output, /"code":"ERR_STREAM_CONFLICT"/);
  assert.equal(theirs.backlog, 1);
  await nats.withConnection(async (nc) => {
    const config = (await (await jetstreamManager(nc)).streams.info('THEIRS')).config;
    assert.equal(config.storage, StorageType.File, 'the existing stream is unchanged');
    assert.equal(config.max_bytes, -1);
  });
  assert.equal(await nats.streamCount('THEIRS'), 0);
});
