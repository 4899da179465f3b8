import assert from 'node:assert/strict';
import { test } from 'node:test';
import { jsonLines, mqlog, tempDir, waitFor } from '../helpers/index.js';
import { allInbox, daemons, makeNodes } from '../helpers/daemon.js';

test('10 000 messages sent while the peer is down all arrive exactly once when it starts', async (t) => {
  const root = await tempDir(t);
  const { a, b } = await makeNodes(root, ['a', 'b']);
  const [da, db] = daemons(t, [a!, b!]);
  await da!.start();
  const lines = Array.from({ length: 10_000 }, (_, i) => `message ${i} ${'x'.repeat(i % 50)}`);
  const sent = await mqlog(['send', '--data', a!.dir, '--to', 'b', '--priority', '3', '--channel', 'jobs', '--lines'], { input: `${lines.join('\n')}\n` });
  assert.equal(sent.code, 0, sent.stderr);
  const ids = sent.stdout.trim().split('\n');
  assert.equal(ids.length, lines.length);
  await db!.start();
  const inbox = await waitFor(async () => {
    const messages = await allInbox(b!.dir);
    return messages.length >= lines.length ? messages : undefined;
  }, { timeoutMs: 120_000, message: 'all messages in B' });
  assert.equal(inbox.length, lines.length, 'no duplicates');
  const byId = new Map(inbox.map((m) => [m.id as string, m]));
  ids.forEach((id, i) => {
    const m = byId.get(id);
    assert.ok(m, `message ${i} missing`);
    assert.equal(m.body, lines[i]);
    assert.equal(m.channel, 'jobs');
    assert.equal(m.priority, 3);
    assert.equal(m.from, 'a');
  });
  // A's stat shows no backlog, and whatever compaction has not reclaimed yet shows as sent.
  await waitFor(async () => {
    const stat = jsonLines((await mqlog(['stat', '--data', a!.dir, '--json'])).stdout);
    return stat.find((r) => r.peer === 'b')?.backlog === 0;
  }, { message: "A's backlog to drain" });
  const outbox = jsonLines((await mqlog(['dump', a!.dir, '--json'])).stdout).filter((r) => r.queue === 'outbox');
  assert.deepEqual([...new Set(outbox.map((r) => r.state))].filter((s) => s !== 'sent'), []);
});

test('the most urgent messages queued while the peer was down are tailed first', async (t) => {
  const root = await tempDir(t);
  const { a, b } = await makeNodes(root, ['a', 'b']);
  const [da, db] = daemons(t, [a!, b!]);
  await da!.start();
  const low = await mqlog(['send', '--data', a!.dir, '--to', 'b', '--priority', '0', '--lines'], { input: Array.from({ length: 1000 }, (_, i) => `low ${i}`).join('\n') });
  assert.equal(low.code, 0, low.stderr);
  const high = await mqlog(['send', '--data', a!.dir, '--to', 'b', '--priority', '9', '--lines'], { input: Array.from({ length: 10 }, (_, i) => `urgent ${i}`).join('\n') });
  assert.equal(high.code, 0, high.stderr);
  await db!.start();
  await waitFor(async () => (await allInbox(b!.dir)).length === 1010, { message: 'all 1010 in B' });
  const tailed = await mqlog(['tail', '--data', b!.dir, '--limit', '10', '--json', '--ack']);
  assert.equal(tailed.code, 0, tailed.stderr);
  assert.deepEqual(jsonLines(tailed.stdout).map((m) => m.body), Array.from({ length: 10 }, (_, i) => `urgent ${i}`));
});

test('channels land in separate inboxes and tail reads only its own', async (t) => {
  const root = await tempDir(t);
  const { a, b } = await makeNodes(root, ['a', 'b']);
  const [da, db] = daemons(t, [a!, b!]);
  await Promise.all([da!.start(), db!.start()]);
  for (const channel of ['a', 'b', 'jobs/high?']) {
    const r = await mqlog(['send', '--data', a!.dir, '--to', 'b', '--channel', channel, `for ${channel}`]);
    assert.equal(r.code, 0, r.stderr);
  }
  await waitFor(async () => (await allInbox(b!.dir)).length === 3, { message: 'three messages in B' });
  const queues = new Set((await allInbox(b!.dir)).map((m) => m.queue));
  assert.equal(queues.size, 3, `separate inbox queues: ${[...queues].join(' ')}`);
  for (const channel of ['a', 'b', 'jobs/high?']) {
    const tailed = await mqlog(['tail', '--data', b!.dir, '--channel', channel, '--json', '--ack']);
    assert.deepEqual(jsonLines(tailed.stdout).map((m) => [m.channel, m.body]), [[channel, `for ${channel}`]]);
  }
});

test('a lone message on an idle pair is forwarded promptly and tail --follow sees it', async (t) => {
  const root = await tempDir(t);
  const { a, b } = await makeNodes(root, ['a', 'b']);
  const [da, db] = daemons(t, [a!, b!]);
  await Promise.all([da!.start(), db!.start()]);
  const tail = mqlog(['tail', '--data', b!.dir, '--follow', '--limit', '1', '--ack', '--json', '--timeout', '60s']);
  const sent = await mqlog(['send', '--data', a!.dir, '--to', 'b', 'ping']);
  assert.equal(sent.code, 0);
  const result = await tail;
  assert.equal(result.code, 0, result.stderr);
  assert.deepEqual(jsonLines(result.stdout).map((m) => m.body), ['ping']);
  // Acked: dump shows it, the next tail does not.
  const [record] = await allInbox(b!.dir);
  assert.equal(record?.state, 'acked');
  assert.equal((await mqlog(['tail', '--data', b!.dir])).stdout, '');
});
