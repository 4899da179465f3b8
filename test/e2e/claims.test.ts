/**
 * Claims and ack journals with real processes (spec/log-format.md §11): an ack that resolved survives a
 * SIGKILL right after, a killed consumer's claimed run comes back to another within about one timeout,
 * four processes share a backlog without doing anything twice, priorities hold across consumers, a torn
 * ack journal is set aside without stopping anything, and a follower gets each new message at once.
 *
 * Messages are appended with the library (no daemon); consumers are fixture processes
 * (test/fixtures/lease-consumer.ts), `mqlog tail`, or the library in this process.
 */
import assert from 'node:assert/strict';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import { openNode, type MqlogNode } from '../../src/daemon/node.js';
import { newId } from '../../src/util/ids.js';
import { defer, exited, jsonLines, mqlog, tempDir, waitFor } from '../helpers/index.js';
import { allInbox } from '../helpers/daemon.js';
import { acked, assertShared, startConsumer, type ConsumerProcess } from '../helpers/consumer.js';

async function nodeDir(t: TestContext, visibilityTimeoutMs: number): Promise<string> {
  const dir = await tempDir(t);
  await writeFile(join(dir, 'mqlog.json'), JSON.stringify({ name: 'b', visibilityTimeoutMs }));
  return dir;
}

/** Appends messages (body, priority) to the inbox of `channel`; returns their ids in order. */
async function append(dir: string, messages: readonly { body: string; priority?: number }[], channel = 'common'): Promise<string[]> {
  const node: MqlogNode = await openNode({ data: dir });
  try {
    const inbox = await node.inbox(channel);
    const ids: string[] = [];
    for (const m of messages) {
      const id = newId();
      ids.push(id);
      await inbox.append({ id, ts: Date.now(), channel, priority: m.priority ?? 4, to: ['b'], from: 'a' }, Buffer.from(m.body));
    }
    return ids;
  } finally {
    await node.close();
  }
}

function bodies(n: number, prefix = 'job'): { body: string }[] {
  return Array.from({ length: n }, (_, i) => ({ body: `${prefix}-${i}` }));
}

async function inboxStates(dir: string): Promise<Map<string, string>> {
  return new Map((await allInbox(dir)).map((r) => [r.id as string, r.state as string]));
}

/** Starts consumers that wait at a barrier, then lets them all go at once. */
async function startTogether(t: TestContext, dir: string, n: number, args: string[]): Promise<ConsumerProcess[]> {
  const consumers = Array.from({ length: n }, () => startConsumer(t, dir, [...args, '--barrier']));
  await waitFor(() => consumers.every((c) => c.printed.some((p) => p.ready === true)), { message: 'the consumers to be ready' });
  for (const c of consumers) c.child.stdin!.write('go\n');
  return consumers;
}

test('an ack that resolved survives a SIGKILL right after it: the message never comes back, also after every claim lapsed', async (t) => {
  const VISIBILITY = 1000;
  const dir = await nodeDir(t, VISIBILITY);
  const ids = await append(dir, bodies(60));
  // Acks in flight 8 at a time (group-committed), the process kills itself right after the 20th resolved.
  const dying = startConsumer(t, dir, ['--ack', '--ack-window', '8', '--prefetch', '16', '--follow', '--die-after-acks', '20']);
  assert.equal((await exited(dying.child)).signal, 'SIGKILL');
  const before = acked(dying.printed).map((p) => p.id as string);
  assert.ok(before.length >= 20, `${before.length} acks resolved before the kill`);
  // Once its claims lapsed, another consumer takes everything else, and only that.
  await waitFor(() => Date.now() > Math.max(...dying.printed.map((p) => p.leaseUntil ?? 0)) + 100, { message: 'the killed consumer\'s claims to lapse' });
  const rest = await mqlog(['tail', '--data', dir, '--ack', '--json']);
  assert.equal(rest.code, 0, rest.stderr);
  const after = jsonLines<{ id: string }>(rest.stdout).map((m) => m.id);
  const back = after.filter((id) => before.includes(id));
  assert.deepEqual(back, [], `${back.length} messages acked before the kill came back`);
  // Acks whose resolution the kill cut off may have landed: those are done, not lost.
  assert.ok(before.length + after.length <= ids.length && before.length + after.length >= ids.length - 8, `${before.length} + ${after.length} of ${ids.length}`);
  const states = await inboxStates(dir);
  assert.deepEqual(ids.filter((id) => states.get(id) !== 'acked'), [], 'every message is acked in the end');
  assert.equal((await mqlog(['tail', '--data', dir, '--json'])).stdout, '', 'nothing is left to hand out');
});

test('a killed consumer\'s claimed run — handed out or only reserved — comes back to another consumer within about one timeout', async (t) => {
  const VISIBILITY = 1500;
  const dir = await nodeDir(t, VISIBILITY);
  const ids = await append(dir, bodies(40));
  // The victim takes 100 ms per message: at that pace it claims about 7 at a time (half a timeout of
  // work), one in its hands and the rest reserved.
  const victim = startConsumer(t, dir, ['--ack', '--prefetch', '32', '--work-ms', '100', '--follow']);
  await waitFor(() => acked(victim.printed).length >= 2, { message: `the victim to ack a few: ${victim.stderr()}` });
  const killedAt = Date.now();
  victim.child.kill('SIGKILL');
  await exited(victim.child);
  const before = acked(victim.printed).map((p) => p.id as string);
  const taker = (await startTogether(t, dir, 1, ['--ack', '--follow', '--idle-ms', '3000', '--prefetch', 'default']))[0]!;
  assert.equal((await exited(taker.child)).code, 0, taker.stderr());
  const got = acked(taker.printed);
  assert.deepEqual([...got.map((p) => p.id as string), ...before].sort(), [...ids].sort(), 'every message acked once, by one of them');
  const back = got.filter((p) => p.deliveries === 2);
  t.diagnostic(`${back.length} messages came back from the victim's claim`);
  assert.ok(back.length >= 2, `the victim's claim held its message in hand and some reserved ones: ${back.length} came back`);
  const latest = Math.max(...back.map((p) => p.at!));
  assert.ok(latest - killedAt <= VISIBILITY + 2500, `the victim's messages came back ${latest - killedAt} ms after the kill (timeout ${VISIBILITY} ms)`);
  assert.ok([...(await inboxStates(dir)).values()].every((s) => s === 'acked'));
});

test('four consumer processes share 400 messages of 10 ms work: each gets a fair part, none is processed twice, all are acked', async (t) => {
  const dir = await nodeDir(t, 30_000);
  const ids = await append(dir, bodies(400));
  const consumers = await startTogether(t, dir, 4, ['--ack', '--prefetch', 'default', '--work-ms', '10', '--follow', '--idle-ms', '1500']);
  await assertShared(t, consumers, ids, 50);
  assert.ok([...(await inboxStates(dir)).values()].every((s) => s === 'acked'));
});

test('two consumer processes hand out the most urgent messages first, across both', async (t) => {
  const dir = await nodeDir(t, 30_000);
  // Ten of each priority, least urgent appended first.
  const messages = Array.from({ length: 100 }, (_, i) => ({ body: `p${Math.floor(i / 10)}-${i % 10}`, priority: Math.floor(i / 10) }));
  await append(dir, messages);
  const consumers = await startTogether(t, dir, 2, ['--ack', '--prefetch', '1', '--work-ms', '15', '--follow', '--idle-ms', '1500']);
  for (const c of consumers) assert.equal((await exited(c.child)).code, 0, c.stderr());
  const handed = consumers.flatMap((c) => acked(c.printed).map((p) => ({ priority: Number(p.body!.slice(1, p.body!.indexOf('-'))), at: p.at! })));
  assert.equal(handed.length, 100);
  // Each consumer goes from the most urgent down.
  for (const c of consumers) {
    const priorities = acked(c.printed).map((p) => Number(p.body!.slice(1, p.body!.indexOf('-'))));
    assert.deepEqual(priorities, [...priorities].sort((a, b) => b - a), 'one consumer\'s hand-outs never go back up in priority');
  }
  // And across both: a message is handed out only when nothing more urgent is still waiting (up to the
  // other consumer's message in hand at that moment).
  for (const late of handed) {
    const earlierLessUrgent = handed.filter((x) => x.priority < late.priority && x.at < late.at - 100);
    assert.deepEqual(earlierLessUrgent, [], `a priority ${late.priority} message went out after less urgent ones had`);
  }
});

test('a torn ack journal is set aside (kept, reported) when its claims are taken over; the node works throughout and the acks before the tear stay', async (t) => {
  const VISIBILITY = 1000;
  const dir = await nodeDir(t, VISIBILITY);
  const ids = await append(dir, bodies(30));
  // A consumer acks ten messages and keeps its claims (of the rest it took) until killed.
  const victim = startConsumer(t, dir, ['--ack', '--prefetch', '16', '--limit', '10', '--hold']);
  await waitFor(() => victim.printed.some((p) => p.holding === true), { message: `the victim to hold: ${victim.stderr()}` });
  const before = acked(victim.printed).map((p) => p.id as string);
  victim.child.kill('SIGKILL');
  await exited(victim.child);
  // Tear its ack journal the way a killed write does: a partial frame right after the data.
  const consumerDir = join(dir, 'inbox', 'common', 'consumer');
  const journals = (await readdir(consumerDir)).filter((name) => /^c-[0-9a-f]{16}\.log$/.test(name));
  assert.equal(journals.length, 1, `one ack journal: ${journals.join(', ')}`);
  const path = join(consumerDir, journals[0]!);
  const bytes = await readFile(path);
  let end = bytes.length;
  while (end > 0 && bytes[end - 1] === 0) end--;
  const torn = Buffer.from([0xa7, 0x01, 0x03, 0x00, 0x40, 0x00, 0x00, 0x00, 0x09, 0x09]);
  torn.copy(bytes, end);
  await writeFile(path, bytes);

  for (const command of [['stat', '--data', dir, '--json'], ['dump', dir, '--json'], ['verify', dir]]) {
    const result = await mqlog(command);
    assert.equal(result.code, 0, `mqlog ${command[0]} with a torn ack journal: ${result.stderr}`);
  }
  const states = await inboxStates(dir);
  assert.deepEqual(before.map((id) => states.get(id)), before.map(() => 'acked'), 'the acks before the tear count');
  await waitFor(() => Date.now() > Math.max(...victim.printed.map((p) => p.leaseUntil ?? 0)) + 100, { message: 'the claims to lapse' });
  const rest = await mqlog(['tail', '--data', dir, '--ack', '--json']);
  assert.equal(rest.code, 0, rest.stderr);
  assert.match(rest.stderr, /torn tail of consumer journal/, 'the tear is reported');
  const after = jsonLines<{ id: string }>(rest.stdout).map((m) => m.id);
  assert.deepEqual([...after].sort(), ids.filter((id) => !before.includes(id)).sort(), 'the rest goes out, the acked ones do not');
  const left = await readdir(consumerDir);
  assert.ok(left.some((name) => name.startsWith(`${journals[0]!}.`) && name.endsWith('.torn')), `the torn bytes are kept aside: ${left.join(', ')}`);
  assert.ok(!left.includes(journals[0]!), 'the ack journal is gone once no claim names it');
  assert.equal((await mqlog(['verify', dir])).code, 0);
});

test('a following consumer gets each message appended one at a time within moments, not after a timeout', async (t) => {
  const dir = await nodeDir(t, 30_000);
  const node = await openNode({ data: dir });
  defer(t, () => node.close());
  const writer = await openNode({ data: dir });
  defer(t, () => writer.close());
  const inbox = await writer.inbox('common');
  const stop = new AbortController();
  const got = new Map<string, number>();
  const following = (async () => {
    try {
      for await (const m of node.tail({ follow: true, signal: stop.signal })) {
        got.set(m.id, Date.now());
        await m.ack();
      }
    } catch (err) {
      if (!stop.signal.aborted) throw err;
    }
  })();
  try {
    for (let i = 0; i < 6; i++) {
      const id = newId();
      const sentAt = Date.now();
      await inbox.append({ id, ts: sentAt, channel: 'common', priority: 4, to: ['b'], from: 'a' }, Buffer.from(`one-${i}`));
      await waitFor(() => got.has(id), { timeoutMs: 10_000, intervalMs: 5, message: `message ${i} to be handed out` });
      assert.ok(got.get(id)! - sentAt < 5000, `message ${i} was handed out ${got.get(id)! - sentAt} ms after it was appended`);
    }
  } finally {
    stop.abort();
    await following;
  }
});
