/**
 * Peer authentication on a real daemon (spec/http-protocol.md §7): node B knows peer `a` by a shared key
 * and is sent raw requests — unsigned, signed with the wrong key, replayed, stale, from an unknown peer —
 * each refused with its status and code, with B's inbox unchanged (read with `mqlog dump`). A valid
 * proof is accepted and the stored `from` is the authenticated name, whatever the request claims.
 * A node without any key accepts loopback only, and says so in its log.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { networkInterfaces } from 'node:os';
import { test, type TestContext } from 'node:test';
import { mqlog, tempDir } from '../helpers/index.js';
import { allInbox, type NodeSpec } from '../helpers/daemon.js';
import { envelope, frame, healthz, uuidV7 } from '../helpers/wire.js';
import { UNREACHABLE, anyDaemons, nodeSpec, payloadWith, postWith, signed, writeConfig, type AnyDaemon, type Answer } from '../helpers/security.js';

const KEY = 'k3y-for-a-and-b-0123456789';
const OTHER_KEY = 'not-the-key-of-a-9876543210';

/** B with `peers.a.key = KEY` (a's URL is never reached), running. */
async function keyedReceiver(t: TestContext, extra: Record<string, unknown> = {}): Promise<{ b: NodeSpec; daemon: AnyDaemon }> {
  const root = await tempDir(t);
  const b = await nodeSpec(root, 'b');
  await writeConfig(b, { peers: { a: { url: UNREACHABLE, key: KEY } }, ...extra });
  const [daemon] = anyDaemons(t, [b]);
  await daemon!.start();
  return { b, daemon: daemon! };
}

/** A valid one-message batch; the envelope and the message both claim to come from `claimed`. */
function batch(body: string, claimed = 'a'): Buffer {
  return envelope([{ stream: 'p4.w0', frame: frame(payloadWith({ f: claimed }, body), 0) }], { node: randomUUID(), name: claimed, to: 'b' });
}

function assertRefused(answer: Answer, status: number, code: string, what: string): void {
  assert.deepEqual([answer.status, answer.json?.code], [status, code], `${what}: ${answer.text.slice(0, 300)}`);
  assert.equal(typeof answer.json?.message, 'string', what);
  assert.ok(!answer.text.includes(KEY), `${what}: the answer does not reveal the key`);
}

async function inboxBodies(dir: string): Promise<unknown[]> {
  return (await allInbox(dir)).map((m) => m.body);
}

test('an unsigned request to a node with peer keys gets 401 ERR_UNAUTHORIZED and stores nothing', async (t) => {
  const { b } = await keyedReceiver(t);
  assertRefused(await postWith(b.url, batch('unsigned')), 401, 'ERR_UNAUTHORIZED', 'no headers');
  // Three of the four headers are not enough either.
  const body = batch('partly signed');
  const { 'x-mqlog-nonce': _nonce, ...partial } = signed('a', KEY, body);
  assertRefused(await postWith(b.url, body, partial), 401, 'ERR_UNAUTHORIZED', 'without the nonce');
  assert.deepEqual(await inboxBodies(b.dir), []);
  assert.equal(await healthz(b.url), 200);
});

test('an unsigned request gets 401 whatever its content type, body or size: nothing in it is looked at before the sender is authenticated', async (t) => {
  const { b } = await keyedReceiver(t);
  assertRefused(await postWith(b.url, batch('wrong type'), { 'content-type': 'text/plain' }), 401, 'ERR_UNAUTHORIZED', 'text/plain');
  assertRefused(await postWith(b.url, Buffer.from('{"a":1}'), { 'content-type': 'application/json' }), 401, 'ERR_UNAUTHORIZED', 'JSON');
  assertRefused(await postWith(b.url, Buffer.from('not a batch'), { 'content-type': 'application/octet-stream' }), 401, 'ERR_UNAUTHORIZED', 'octet-stream');
  assertRefused(await postWith(b.url, Buffer.from('MQLB garbage')), 401, 'ERR_UNAUTHORIZED', 'a malformed batch');
  // Signed, the same wrong type is what it is: 415.
  const body = batch('signed, wrong type');
  assertRefused(await postWith(b.url, body, { ...signed('a', KEY, body), 'content-type': 'text/plain' }), 415, 'ERR_UNSUPPORTED_MEDIA_TYPE', 'signed text/plain');
  assert.deepEqual(await inboxBodies(b.dir), []);
});

test('a request signed with a wrong key, or over another body, gets 401 and stores nothing', async (t) => {
  const { b } = await keyedReceiver(t);
  const body = batch('wrong key');
  assertRefused(await postWith(b.url, body, signed('a', OTHER_KEY, body)), 401, 'ERR_UNAUTHORIZED', 'wrong key');
  // A proof made for one body, sent with another (the signature covers the body's SHA-256).
  const swapped = batch('swapped body');
  assertRefused(await postWith(b.url, swapped, signed('a', KEY, body)), 401, 'ERR_UNAUTHORIZED', 'proof of another body');
  // A proof whose signature is not hex, and one whose nonce is too short.
  const proof = signed('a', KEY, body);
  assertRefused(await postWith(b.url, body, { ...proof, 'x-mqlog-signature': 'z'.repeat(64) }), 401, 'ERR_UNAUTHORIZED', 'signature not hex');
  assertRefused(await postWith(b.url, body, { ...proof, 'x-mqlog-nonce': 'abcd' }), 401, 'ERR_UNAUTHORIZED', 'short nonce');
  assert.deepEqual(await inboxBodies(b.dir), []);
});

test('a replayed request (same headers, same body) is stored once and refused with 401 the second time', async (t) => {
  const { b } = await keyedReceiver(t);
  const body = batch('replayed');
  const proof = signed('a', KEY, body);
  const first = await postWith(b.url, body, proof);
  assert.deepEqual([first.status, first.json], [200, { stored: 1, duplicates: 0 }], first.text);
  const before = await allInbox(b.dir);
  assertRefused(await postWith(b.url, body, proof), 401, 'ERR_UNAUTHORIZED', 'replay');
  assert.deepEqual(await allInbox(b.dir), before, 'the inbox is unchanged by the replay');
  assert.deepEqual(before.map((m) => m.body), ['replayed']);
});

test('a request whose timestamp is 10 minutes off, either way, gets 401 and stores nothing', async (t) => {
  const { b } = await keyedReceiver(t);
  const body = batch('stale');
  assertRefused(await postWith(b.url, body, signed('a', KEY, body, Date.now() - 10 * 60_000)), 401, 'ERR_UNAUTHORIZED', '10 minutes ago');
  assertRefused(await postWith(b.url, body, signed('a', KEY, body, Date.now() + 10 * 60_000)), 401, 'ERR_UNAUTHORIZED', 'in 10 minutes');
  assert.deepEqual(await inboxBodies(b.dir), []);
  // Within the skew window the same body is accepted: only the clock was wrong.
  const ok = await postWith(b.url, body, signed('a', KEY, body, Date.now() - 60_000));
  assert.equal(ok.status, 200, ok.text);
});

test('the skew window follows limits.maxClockSkewMs', async (t) => {
  const { b } = await keyedReceiver(t, { limits: { maxClockSkewMs: 2000 } });
  const body = batch('skew');
  assertRefused(await postWith(b.url, body, signed('a', KEY, body, Date.now() - 60_000)), 401, 'ERR_UNAUTHORIZED', 'a minute off with a 2 s window');
  assert.deepEqual(await inboxBodies(b.dir), []);
});

test('a validly signed request from a peer not in the config gets 403 ERR_UNKNOWN_PEER and stores nothing', async (t) => {
  const { b } = await keyedReceiver(t);
  const body = batch('from a stranger', 'mallory');
  assertRefused(await postWith(b.url, body, signed('mallory', KEY, body)), 403, 'ERR_UNKNOWN_PEER', 'unknown peer with a good signature');
  assertRefused(await postWith(b.url, body, signed('mallory', OTHER_KEY, body)), 403, 'ERR_UNKNOWN_PEER', 'unknown peer with its own key');
  assert.deepEqual(await inboxBodies(b.dir), []);
});

test('malformed proof headers get 401 before the peer name is looked up, also for a peer not in the config', async (t) => {
  // spec/http-protocol.md §7: (1) all four headers present and well-formed, else 401; (2) then the peer.
  const { b } = await keyedReceiver(t);
  const body = batch('malformed', 'mallory');
  const proof = signed('mallory', KEY, body);
  assertRefused(await postWith(b.url, body, { ...proof, 'x-mqlog-nonce': 'not-hex' }), 401, 'ERR_UNAUTHORIZED', 'unknown peer, malformed nonce');
  assertRefused(await postWith(b.url, body, { ...proof, 'x-mqlog-timestamp': 'yesterday' }), 401, 'ERR_UNAUTHORIZED', 'unknown peer, malformed timestamp');
  assert.deepEqual(await inboxBodies(b.dir), []);
});

test('a valid signed request is stored with the authenticated peer as from, whatever name the body claims', async (t) => {
  const { b, daemon } = await keyedReceiver(t);
  const id = uuidV7();
  const body = envelope([{ stream: 'p4.w0', frame: frame(payloadWith({ i: id, f: 'root', c: 'auth' }, 'signed by a'), 0) }], { node: randomUUID(), name: 'mallory', to: 'b' });
  const answer = await postWith(b.url, body, signed('a', KEY, body));
  assert.deepEqual([answer.status, answer.json], [200, { stored: 1, duplicates: 0 }], answer.text);
  const inbox = await allInbox(b.dir);
  assert.deepEqual(inbox.map((m) => [m.id, m.channel, m.from, m.body]), [[id, 'auth', 'a', 'signed by a']]);
  const verify = await mqlog(['verify', b.dir]);
  assert.equal(verify.code, 0, verify.stdout + verify.stderr);
  // The log says how the node authenticates, and never shows the key.
  assert.ok(daemon.logLines().some((l) => l.event === 'auth' && l.mode === 'keys'), daemon.output);
  assert.ok(!daemon.output.includes(KEY), 'the daemon log does not contain the peer key');
});

/** An IPv4 address of this machine that is not loopback, if there is one. */
function nonLoopbackAddress(): string | undefined {
  for (const list of Object.values(networkInterfaces())) {
    for (const a of list ?? []) if (a.family === 'IPv4' && !a.internal && !a.address.startsWith('127.')) return a.address;
  }
  return undefined;
}

test('a node without any peer key logs that it accepts loopback only and refuses other addresses with 403 ERR_FORBIDDEN', async (t) => {
  const root = await tempDir(t);
  const b = await nodeSpec(root, 'b');
  await writeConfig(b, { listen: `0.0.0.0:${b.port}`, peers: { a: { url: UNREACHABLE } } });
  const [daemon] = anyDaemons(t, [b]);
  await daemon!.start();
  assert.ok(daemon!.logLines().some((l) => l.event === 'auth' && l.mode === 'loopback'), `auth mode loopback in the log:\n${daemon!.output}`);
  const loopback = await postWith(`http://127.0.0.1:${b.port}`, batch('over loopback'));
  assert.equal(loopback.status, 200, loopback.text);
  const address = nonLoopbackAddress();
  if (address === undefined) {
    t.diagnostic('no non-loopback IPv4 interface: the 403 is checked through the log line only');
  } else {
    assertRefused(await postWith(`http://${address}:${b.port}`, batch('over the network')), 403, 'ERR_FORBIDDEN', `unsigned from ${address}`);
  }
  assert.deepEqual(await inboxBodies(b.dir), ['over loopback']);
});

test('allowUnauthenticated is logged at start and accepts unsigned requests from any address', async (t) => {
  const root = await tempDir(t);
  const b = await nodeSpec(root, 'b');
  await writeConfig(b, { listen: `0.0.0.0:${b.port}`, allowUnauthenticated: true });
  const [daemon] = anyDaemons(t, [b]);
  await daemon!.start();
  assert.ok(daemon!.logLines().some((l) => l.event === 'auth' && l.mode === 'open'), `auth mode open in the log:\n${daemon!.output}`);
  const address = nonLoopbackAddress() ?? '127.0.0.1';
  const answer = await postWith(`http://${address}:${b.port}`, batch('from anywhere', 'c'));
  assert.equal(answer.status, 200, answer.text);
  assert.deepEqual((await allInbox(b.dir)).map((m) => [m.from, m.body]), [['c', 'from anywhere']], 'unauthenticated: from is the name the request gives');
});
