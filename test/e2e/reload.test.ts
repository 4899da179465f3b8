/**
 * Changing a running node's configuration: `mqlog reload` (SIGHUP) re-reads mqlog.json and applies its
 * peers and keys without a restart, losing nothing in flight, and the daemon still stops cleanly after.
 */
import assert from 'node:assert/strict';
import { access, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { mqlog, tempDir, waitFor } from '../helpers/index.js';
import { allInbox, daemons, makeNodes, type NodeSpec } from '../helpers/daemon.js';

async function configure(node: NodeSpec, change: (config: Record<string, unknown>) => Record<string, unknown>): Promise<void> {
  const config = JSON.parse(await readFile(join(node.dir, 'mqlog.json'), 'utf8')) as Record<string, unknown>;
  await writeFile(join(node.dir, 'mqlog.json'), JSON.stringify(change(config)));
}

async function send(node: NodeSpec, to: string, body: string): Promise<string> {
  const result = await mqlog(['send', '--data', node.dir, '--to', to, body]);
  assert.equal(result.code, 0, result.stderr);
  return result.stdout.trim();
}

async function bodies(node: NodeSpec): Promise<string[]> {
  return (await allInbox(node.dir)).map((m) => String(m.body)).sort();
}

test('mqlog reload applies a peer added to mqlog.json while the daemon runs: messages waiting for it go out, the daemon keeps running, and it still stops cleanly', async (t) => {
  const root = await tempDir(t);
  const { a, b } = await makeNodes(root, ['a', 'b']);
  await configure(a!, (c) => ({ ...c, peers: {} }));
  const [da, db] = daemons(t, [a!, b!]);
  await da!.start();
  await db!.start();
  const pid = da!.child!.pid;

  // The file gains peer b; send (which reads the file) accepts it, the running daemon does not know it yet.
  await configure(a!, (c) => ({ ...c, peers: { b: { url: b!.url } } }));
  await send(a!, 'b', 'before reload');
  const reloaded = await mqlog(['reload', '--data', a!.dir]);
  assert.equal(reloaded.code, 0, reloaded.stderr);
  assert.match(reloaded.stdout, new RegExp(`daemon pid ${pid}`));
  await waitFor(async () => (await bodies(b!)).length === 1, { message: 'the waiting message at b' });
  await send(a!, 'b', 'after reload');
  await waitFor(async () => (await bodies(b!)).length === 2, { message: 'the next message at b' });
  assert.deepEqual(await bodies(b!), ['after reload', 'before reload'], 'each once');
  assert.ok(da!.running, 'SIGHUP did not stop the daemon');
  assert.equal(da!.child!.pid, pid);
  await waitFor(() => /"event":"reloaded"/.test(da!.output), { message: 'a reloaded event in the log' });

  assert.equal(await da!.stop(), 0, 'a graceful stop after the reload');
  await assert.rejects(access(join(a!.dir, 'daemon.lock.owner')), { code: 'ENOENT' }, 'the lock\'s owner file went with the daemon');
});

test('mqlog reload applies new peer keys on both sides: messages signed with the new key are accepted, none is lost', async (t) => {
  const root = await tempDir(t);
  const { a, b } = await makeNodes(root, ['a', 'b']);
  const withKey = (key: string) => (c: Record<string, unknown>): Record<string, unknown> => ({
    ...c,
    peers: Object.fromEntries(Object.entries(c.peers as Record<string, { url: string }>).map(([name, p]) => [name, { url: p.url, key }])),
  });
  await configure(a!, withKey('first-secret-0123456789'));
  await configure(b!, withKey('first-secret-0123456789'));
  const [da, db] = daemons(t, [a!, b!]);
  await da!.start();
  await db!.start();
  await send(a!, 'b', 'old key');
  await waitFor(async () => (await bodies(b!)).length === 1, { message: 'the first message at b' });

  await configure(a!, withKey('second-secret-0123456789'));
  await configure(b!, withKey('second-secret-0123456789'));
  for (const node of [b!, a!]) {
    const reloaded = await mqlog(['reload', '--data', node.dir]);
    assert.equal(reloaded.code, 0, reloaded.stderr);
  }
  await waitFor(() => /"event":"reloaded"/.test(da!.output) && /"event":"reloaded"/.test(db!.output), { message: 'both daemons reloaded' });
  await send(a!, 'b', 'new key');
  await waitFor(async () => (await bodies(b!)).length === 2, { message: 'the message signed with the new key at b' });
  assert.deepEqual(await bodies(b!), ['new key', 'old key']);
  assert.ok(!/ERR_UNAUTHORIZED/.test(da!.output), 'no request was refused');
});

test('mqlog reload of an invalid mqlog.json is ERR_CONFIG naming the key, and the daemon runs on with its configuration', async (t) => {
  const root = await tempDir(t);
  const { a } = await makeNodes(root, ['a']);
  const [da] = daemons(t, [a!]);
  await da!.start();
  await configure(a!, (c) => ({ ...c, peerz: {} }));
  const reloaded = await mqlog(['reload', '--data', a!.dir]);
  assert.equal(reloaded.code, 1);
  assert.match(reloaded.stderr, /^mqlog: ERR_CONFIG: .*peerz/);
  assert.ok(da!.running);
  const none = await mqlog(['reload', '--data', join(root, 'nothing-runs-here')]);
  assert.equal(none.code, 1);
  assert.match(none.stderr, /^mqlog: ERR_NOT_FOUND: /);
});
