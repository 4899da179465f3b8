/**
 * Competing consumers with real processes: a message is leased when it is handed out (never with its lease
 * run down by a prefetch), leases are renewed while the work goes on and stop being renewed when the
 * consumer dies, consumers of one channel share a backlog, and looking (`tail --peek`) consumes nothing.
 *
 * Messages are appended to the inbox with the library (no daemon needed); consumers are fixture processes
 * (test/fixtures/lease-consumer.ts) or `mqlog tail`.
 */
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import { openNode, type MqlogNode } from '../../src/daemon/node.js';
import type { Delivery } from '../../src/queue/consumer.js';
import { newId } from '../../src/util/ids.js';
import { CLI, exited, jsonLines, mqlog, spawnChild, tempDir, waitFor } from '../helpers/index.js';
import { allInbox } from '../helpers/daemon.js';
import { acked, assertShared, startConsumer } from '../helpers/consumer.js';



/** A node directory with this visibility timeout; messages are appended through a node opened and closed here. */
async function nodeDir(t: TestContext, visibilityTimeoutMs: number, config: Record<string, unknown> = {}): Promise<string> {
  const dir = await tempDir(t);
  await writeFile(join(dir, 'mqlog.json'), JSON.stringify({ name: 'b', visibilityTimeoutMs, ...config }));
  return dir;
}

async function append(dir: string, bodies: readonly string[], channel = 'common'): Promise<string[]> {
  const node: MqlogNode = await openNode({ data: dir });
  try {
    const inbox = await node.inbox(channel);
    const messages = bodies.map((body) => ({ id: newId(), body }));
    await Promise.all(messages.map((m) => inbox.append({ id: m.id, ts: Date.now(), channel, priority: 4, to: ['b'], from: 'a' }, Buffer.from(m.body))));
    return messages.map((m) => m.id);
  } finally {
    await node.close();
  }
}



async function inboxStates(dir: string): Promise<Map<string, string>> {
  return new Map((await allInbox(dir)).map((r) => [r.id as string, r.state as string]));
}

test('visibility 1 s, 400 ms of work per message, default prefetch: each of 10 messages is processed once and no ack is refused', async (t) => {
  const dir = await nodeDir(t, 1000);
  const ids = await append(dir, Array.from({ length: 10 }, (_, i) => `m${i}`));
  const c = startConsumer(t, dir, ['--ack', '--prefetch', 'default', '--work-ms', '400', '--limit', '10']);
  const { code } = await exited(c.child);
  assert.equal(code, 0, `consumer failed: ${c.stderr()} ${JSON.stringify(c.printed.filter((p) => p.error !== undefined))}`);
  const done = acked(c.printed);
  assert.deepEqual(done.map((p) => p.id).sort(), [...ids].sort(), 'each message processed once');
  assert.ok(done.every((p) => p.deliveries === 1), 'no message was handed out twice');
  // Handed out with (nearly) its whole lease ahead.
  for (const p of c.printed.filter((x) => x.working !== undefined)) {
    const line = done.find((d) => d.id === p.working);
    assert.ok(line !== undefined && line.leaseUntil! - p.at! >= 850, `message ${p.working} was handed out with ${line!.leaseUntil! - p.at!} ms of its 1000 ms lease left`);
  }
  assert.ok([...(await inboxStates(dir)).values()].every((s) => s === 'acked'));
});

test('work that takes 3× the visibility timeout is not handed to a second consumer while the first renews; SIGKILL the first and it goes to the second within one timeout', async (t) => {
  const VISIBILITY = 1000;
  const dir = await nodeDir(t, VISIBILITY);
  const [id] = await append(dir, ['long job']);
  const first = startConsumer(t, dir, ['--ack', '--work-ms', String(3 * VISIBILITY), '--limit', '1']);
  await waitFor(() => first.printed.some((p) => p.working === id), { message: 'the first consumer to start the job' });
  const second = startConsumer(t, dir, ['--ack', '--follow', '--limit', '1']);
  const { code } = await exited(first.child);
  assert.equal(code, 0, `the first consumer's ack was refused: ${JSON.stringify(first.printed)} ${first.stderr()}`);
  assert.deepEqual(acked(first.printed).map((p) => [p.id, p.deliveries]), [[id, 1]], 'the first consumer finished and acked the job');
  assert.deepEqual(second.printed.filter((p) => p.id !== undefined), [], 'the second consumer never got the job');
  second.child.kill('SIGKILL');

  // The same again, but the first consumer dies mid-job: its renewals stop, the lease lapses once.
  const [next] = await append(dir, ['doomed job']);
  const dying = startConsumer(t, dir, ['--ack', '--work-ms', String(20 * VISIBILITY), '--limit', '1']);
  await waitFor(() => dying.printed.some((p) => p.working === next), { message: 'the dying consumer to start the job' });
  const taker = startConsumer(t, dir, ['--ack', '--follow', '--limit', '1', '--barrier']);
  await waitFor(() => taker.printed.some((p) => p.ready === true), { message: 'the taker to be ready' });
  taker.child.stdin!.write('go\n');
  // The claim is about time: for three timeouts of renewals the job must not go to the taker.
  const workingAt = dying.printed.find((p) => p.working === next)!.at!;
  await waitFor(() => Date.now() - workingAt > 3 * VISIBILITY, { intervalMs: 50, message: 'three timeouts to pass' });
  assert.deepEqual(taker.printed.filter((p) => p.id !== undefined), [], 'no hand-out while the dying consumer was alive and renewing');
  const killedAt = Date.now();
  dying.child.kill('SIGKILL');
  await exited(dying.child);
  const { code: takerCode } = await exited(taker.child);
  assert.equal(takerCode, 0, taker.stderr());
  const got = acked(taker.printed);
  assert.deepEqual(got.map((p) => [p.id, p.deliveries]), [[next, 2]], 'the taker got the job as its second delivery');
  assert.ok(got[0]!.at! - killedAt <= 2.5 * VISIBILITY, `the job came back ${got[0]!.at! - killedAt} ms after the kill, within about one timeout`);
});

test('two consumer processes, 200 messages of 20 ms work: each gets at least 30%, none is processed twice, all are acked', async (t) => {
  const dir = await nodeDir(t, 30_000);
  const ids = await append(dir, Array.from({ length: 200 }, (_, i) => `job-${i}`));
  const args = ['--ack', '--prefetch', 'default', '--work-ms', '20', '--follow', '--idle-ms', '1500', '--barrier'];
  const consumers = [startConsumer(t, dir, args), startConsumer(t, dir, args)];
  await waitFor(() => consumers.every((c) => c.printed.some((p) => p.ready === true)), { message: 'both consumers to be ready' });
  for (const c of consumers) c.child.stdin!.write('go\n');
  await assertShared(t, consumers, ids, 60);
});

test('two `mqlog tail --follow --ack` piped into workers of 1 ms a message split 4,000 messages between them, each at least 30%', async (t) => {
  const dir = await nodeDir(t, 30_000);
  await append(dir, []);
  // Two shells, each running `mqlog tail --follow --ack`.
  const tails = [0, 1].map(() => {
    const child = spawnChild(t, process.execPath, [CLI, 'tail', '--data', dir, '--follow', '--ack', '--json', '--timeout', '3s']);
    const lines: string[] = [];
    let partial = '';
    child.stdout!.setEncoding('utf8');
    child.stdout!.on('data', (chunk: string) => {
      const parts = (partial + chunk).split('\n');
      partial = parts.pop() ?? '';
      const read = parts.filter((l) => l.length > 0);
      lines.push(...read);
      // A worker at the other end of the pipe that takes a millisecond a message
      // (`mqlog tail --follow --ack | worker`): once the pipe is full, the tail's writes wait for it.
      child.stdout!.pause();
      setTimeout(() => child.stdout!.resume(), read.length);
    });
    return { child, lines };
  });
  // Both are following once each has printed a warm-up message (sent one at a time until both have).
  const warmUp: string[] = [];
  while (!tails.every((tail) => tail.lines.length > 0)) {
    warmUp.push(...(await append(dir, ['warm-up'])));
    await waitFor(() => tails.reduce((n, tail) => n + tail.lines.length, 0) === warmUp.length, { message: 'the warm-up message to be printed' });
  }
  // Enough for a backlog that lasts, with work per message: without it a tail prints a message in
  // microseconds, and the split followed whichever process the scheduler happened to run. A tail holds
  // up to a second of work ahead (a claim) and a pipe buffer's worth (~300 lines written before the
  // worker reads them): four seconds of work keep that from deciding the split (2,000 once split
  // 1,427 / 573 on a loaded machine).
  const ids = await append(dir, Array.from({ length: 4000 }, (_, i) => `line-${i}`));
  for (const tail of tails) assert.equal((await exited(tail.child)).code, 0);
  const fresh = new Set(ids);
  const shares = tails.map((tail) => tail.lines.map((line) => (JSON.parse(line) as { id: string }).id).filter((id) => fresh.has(id)));
  t.diagnostic(`shares: ${shares.map((share) => share.length).join(' / ')} (after ${warmUp.length} warm-up messages)`);
  const all = shares.flat();
  assert.equal(new Set(all).size, all.length, 'no message printed by both');
  assert.deepEqual([...all].sort(), [...ids].sort());
  for (const share of shares) assert.ok(share.length >= 0.3 * ids.length, `a tail got only ${share.length} of ${ids.length}`);
});

test('`tail --peek` six times lists the ready messages without leasing them: nothing is dead-lettered and a consumer then gets each on its first delivery', async (t) => {
  const dir = await nodeDir(t, 30_000, { maxDeliveries: 5 });
  const ids = await append(dir, ['a', 'b', 'c']);
  for (let i = 0; i < 6; i++) {
    const peek = await mqlog(['tail', '--data', dir, '--peek', '--json']);
    assert.equal(peek.code, 0, peek.stderr);
    const listed = jsonLines<{ id: string; deliveries: number }>(peek.stdout);
    assert.deepEqual(listed.map((m) => m.id).sort(), [...ids].sort(), `look ${i + 1} lists every ready message`);
    assert.ok(listed.every((m) => m.deliveries === 0), 'no delivery counted');
  }
  const limited = await mqlog(['tail', '--data', dir, '--peek', '--limit', '2']);
  assert.equal(limited.stdout.trim().split('\n').length, 2, '--limit bounds what peek lists');
  const refused = await mqlog(['tail', '--data', dir, '--peek', '--ack']);
  assert.equal(refused.code, 2, '--peek with --ack is a usage error');
  const consumed = await mqlog(['tail', '--data', dir, '--ack', '--json']);
  assert.equal(consumed.code, 0, consumed.stderr);
  assert.deepEqual(jsonLines<{ deliveries: number }>(consumed.stdout).map((m) => m.deliveries), [1, 1, 1]);
  const states = await inboxStates(dir);
  assert.deepEqual(ids.map((id) => states.get(id)), ['acked', 'acked', 'acked']);
  // Peeking an empty (all acked) queue lists nothing.
  assert.equal((await mqlog(['tail', '--data', dir, '--peek'])).stdout, '');
});

test('`mqlog purge` empties a channel (ready, leased and delayed messages alike) or its dead letters, durably, and says how many went; stat then shows 0 pending', async (t) => {
  const dir = await nodeDir(t, 30_000, { maxDeliveries: 1 });
  await append(dir, ['r1', 'r2', 'r3', 'r4'], 'jobs');
  const node = await openNode({ data: dir });
  try {
    const inbox = await node.inbox('jobs');
    await inbox.append({ id: newId(), ts: Date.now(), channel: 'jobs', priority: 4, to: ['b'], from: 'a', notBefore: Date.now() + 3_600_000 }, Buffer.from('later'));
    const take = async (): Promise<Delivery> => {
      for await (const d of node.tail({ channel: 'jobs', limit: 1, prefetch: 1 })) return d;
      throw new Error('nothing ready');
    };
    const leased = await take();
    await (await take()).nack();
    // Its one delivery used up, the nacked message goes to the dead letters; the next one is leased.
    const alsoLeased = await take();
    const pendingOf = async (queue: string): Promise<number | undefined> => {
      const stat = await mqlog(['stat', '--data', dir, '--json']);
      assert.equal(stat.code, 0, stat.stderr);
      return jsonLines<{ queue?: string; pending?: number }>(stat.stdout).find((r) => r.queue === queue)?.pending;
    };
    assert.equal(await pendingOf('inbox/jobs'), 4, 'before: two leased, one ready, one delayed');
    const deadLetters = async (): Promise<string[]> => jsonLines<{ queue: string; state: string }>((await mqlog(['dump', dir, '--json'])).stdout).filter((r) => r.queue === 'dead/jobs').map((r) => r.state);
    assert.deepEqual(await deadLetters(), ['dead'], 'one dead letter');

    const purged = await mqlog(['purge', '--data', dir, '--channel', 'jobs', '--json']);
    assert.equal(purged.code, 0, purged.stderr);
    assert.deepEqual(jsonLines(purged.stdout), [{ queue: 'inbox/jobs', purged: 4 }]);
    assert.equal(await pendingOf('inbox/jobs'), 0);
    assert.equal((await mqlog(['tail', '--data', dir, '--channel', 'jobs', '--peek'])).stdout, '', 'nothing left to hand out');
    // A purged message is done: its holder's ack changes nothing (it goes to the holder's own journal,
    // unchecked against the purge, or is refused as already acked), a nack is refused, nothing comes back.
    await leased.ack().catch((err: unknown) => assert.equal((err as { code?: string }).code, 'ERR_ALREADY_ACKED'));
    await assert.rejects(alsoLeased.nack(), { code: 'ERR_ALREADY_ACKED' });
    assert.equal(await pendingOf('inbox/jobs'), 0);
    assert.equal((await mqlog(['purge', '--data', dir, '--channel', 'jobs'])).stdout.trim(), 'inbox/jobs: 0 message(s) purged');

    const dead = await mqlog(['purge', '--data', dir, '--channel', 'jobs', '--dead']);
    assert.equal(dead.code, 0, dead.stderr);
    assert.equal(dead.stdout.trim(), 'dead/jobs: 1 message(s) purged');
    assert.deepEqual(await deadLetters(), ['acked'], 'the dead letter is done (as if redriven) and will be compacted away');
    assert.equal((await mqlog(['purge', '--data', dir])).code, 2, '--channel is required');
  } finally {
    await node.close();
  }
});
