import assert from 'node:assert/strict';
import { readdir } from 'node:fs/promises';
import { test } from 'node:test';
import { jsonLines, mqlog, tempDir, waitFor } from '../helpers/index.js';
import { allInbox, daemons, makeNodes, type NodeSpec } from '../helpers/daemon.js';

interface PeerStat {
  peer: string;
  backlog: number;
  lastError: string | null;
  lastSentAt: number | null;
}

async function peerStats(node: NodeSpec): Promise<Map<string, PeerStat>> {
  const result = await mqlog(['stat', '--data', node.dir, '--json']);
  assert.equal(result.code, 0, result.stderr);
  return new Map(jsonLines<PeerStat & { peer?: string }>(result.stdout).filter((r) => typeof r.peer === 'string').map((r) => [r.peer, r]));
}

async function send(from: NodeSpec, to: string[], lines: string[]): Promise<string[]> {
  const result = await mqlog(['send', '--data', from.dir, ...to.flatMap((d) => ['--to', d]), '--lines'], { input: `${lines.join('\n')}\n` });
  assert.equal(result.code, 0, result.stderr);
  const ids = result.stdout.trim().split('\n');
  assert.equal(ids.length, lines.length);
  return ids;
}

/** Asserts that `node`'s inbox holds exactly `expected` (id -> body), each once, from a. */
async function assertInboxExactly(node: NodeSpec, expected: Map<string, string>): Promise<void> {
  const inbox = await allInbox(node.dir);
  const ids = inbox.map((m) => m.id as string);
  assert.equal(new Set(ids).size, ids.length, `${node.name}: no message twice`);
  assert.deepEqual([...ids].sort(), [...expected.keys()].sort(), `${node.name}: exactly the messages sent to it`);
  for (const m of inbox) {
    assert.equal(m.body, expected.get(m.id as string), `${node.name}: body of ${m.id as string}`);
    assert.equal(m.from, 'a');
  }
}

test('A sends to B and C while C is down: B gets everything at once, C\'s backlog waits in A and drains exactly once when C starts', async (t) => {
  const root = await tempDir(t);
  const { a, b, c } = await makeNodes(root, ['a', 'b', 'c']);
  const [da, db, dc] = daemons(t, [a!, b!, c!]);
  await Promise.all([da!.start(), db!.start()]);

  // 500 multicast messages (one id, two destinations), plus some for each peer alone.
  const both = Array.from({ length: 500 }, (_, i) => `to b and c ${i}`);
  const onlyB = Array.from({ length: 50 }, (_, i) => `to b only ${i}`);
  const onlyC = Array.from({ length: 70 }, (_, i) => `to c only ${i} ${'c'.repeat(i)}`);
  const bothIds = await send(a!, ['b', 'c'], both);
  const onlyBIds = await send(a!, ['b'], onlyB);
  const onlyCIds = await send(a!, ['c'], onlyC);
  const forB = new Map([...bothIds.map((id, i): [string, string] => [id, both[i]!]), ...onlyBIds.map((id, i): [string, string] => [id, onlyB[i]!])]);
  const forC = new Map([...bothIds.map((id, i): [string, string] => [id, both[i]!]), ...onlyCIds.map((id, i): [string, string] => [id, onlyC[i]!])]);

  // B is not held back by C being down: it has everything while C has never run.
  await waitFor(async () => new Set((await allInbox(b!.dir)).map((m) => m.id)).size >= forB.size, { timeoutMs: 60_000, intervalMs: 100, message: 'B to have all its messages' });
  assert.equal(dc!.child, undefined, 'C has not been started');
  await assertInboxExactly(b!, forB);
  assert.deepEqual(await readdir(c!.dir), ['mqlog.json'], 'nothing reached C');

  // A keeps C's share: backlog for c is everything sent to c, with the forwarder's last error; b's is 0.
  const stats = await waitFor(async () => {
    const s = await peerStats(a!);
    return s.get('c')?.lastError != null && s.get('b')?.backlog === 0 ? s : undefined;
  }, { timeoutMs: 60_000, intervalMs: 100, message: "A's stat to show the failed attempt to reach c" });
  assert.equal(stats.get('c')?.backlog, forC.size);
  assert.equal(typeof stats.get('c')?.lastError, 'string');
  assert.equal(stats.get('c')?.lastSentAt, null, 'nothing ever reached c');
  assert.equal(stats.get('b')?.lastError, null);
  assert.equal(typeof stats.get('b')?.lastSentAt, 'number');

  // C comes up: its backlog drains, each message exactly once.
  await dc!.start();
  await waitFor(async () => new Set((await allInbox(c!.dir)).map((m) => m.id)).size >= forC.size, { timeoutMs: 90_000, intervalMs: 200, message: 'C to have all its messages' });
  await assertInboxExactly(c!, forC);
  const after = await waitFor(async () => {
    const s = await peerStats(a!);
    return s.get('c')?.backlog === 0 ? s : undefined;
  }, { timeoutMs: 30_000, intervalMs: 100, message: "A's backlog for c to reach 0" });
  assert.equal(after.get('c')?.lastError, null, 'the error is cleared once c took the messages');
  assert.equal(typeof after.get('c')?.lastSentAt, 'number');
  assert.equal(after.get('b')?.backlog, 0);
  // B got nothing more meanwhile.
  await assertInboxExactly(b!, forB);

  for (const node of [a!, b!, c!]) {
    const verify = await mqlog(['verify', node.dir]);
    assert.equal(verify.code, 0, `verify ${node.name}: ${verify.stdout}${verify.stderr}`);
  }
});
