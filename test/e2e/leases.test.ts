/**
 * Delivery semantics of an inbox across consumer processes: leases lapse after the visibility timeout
 * (a crashed consumer's message goes out again, counted), acks are final, two consumers never get the
 * same message, nack delays, and a late ack is refused once the message went to someone else.
 *
 * Messages are appended to the inbox with the library (no daemon needed); consumers are fixture
 * processes (test/fixtures/lease-consumer.ts), `mqlog tail`, or the library in this process.
 */
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import { openNode, type MqlogNode } from '../../src/daemon/node.js';
import type { Delivery } from '../../src/queue/consumer.js';
import { newId } from '../../src/util/ids.js';
import { defer, exited, jsonLines, mqlog, tempDir, waitFor } from '../helpers/index.js';
import { allInbox } from '../helpers/daemon.js';
import { startConsumer } from '../helpers/consumer.js';

const VISIBILITY_MS = 1500;


/** A node directory whose mqlog.json sets the visibility timeout, and the node opened on it (closed after the test). */
async function node(t: TestContext, config: Record<string, unknown> = {}): Promise<{ dir: string; node: MqlogNode }> {
  const dir = await tempDir(t);
  await writeFile(join(dir, 'mqlog.json'), JSON.stringify({ name: 'b', visibilityTimeoutMs: VISIBILITY_MS, ...config }));
  const opened = await openNode({ data: dir });
  defer(t, () => opened.close());
  return { dir, node: opened };
}

/** Appends messages with these bodies to the inbox of `channel`, as if a peer had delivered them; returns their ids. */
async function append(target: MqlogNode, bodies: readonly string[], channel = 'common', meta: { expiresAt?: number; notBefore?: number } = {}): Promise<string[]> {
  const inbox = await target.inbox(channel);
  const ids: string[] = [];
  const CHUNK = 500;
  for (let start = 0; start < bodies.length; start += CHUNK) {
    const chunk = bodies.slice(start, start + CHUNK).map((body) => ({ id: newId(), body }));
    ids.push(...chunk.map((m) => m.id));
    // Concurrent appends share one fsync (group commit).
    await Promise.all(chunk.map((m) => inbox.append({ id: m.id, ts: Date.now(), channel, priority: 4, to: ['b'], from: 'a', ...meta }, Buffer.from(m.body))));
  }
  return ids;
}

/** Leases the next ready message with the library, or undefined when none is ready now. */
async function takeOne(target: MqlogNode, channel = 'common'): Promise<Delivery | undefined> {
  for await (const delivery of target.tail({ channel, limit: 1, prefetch: 1 })) return delivery;
  return undefined;
}

/** Leases every message ready now with the library. */
async function takeAll(target: MqlogNode, channel = 'common'): Promise<Delivery[]> {
  const out: Delivery[] = [];
  for await (const delivery of target.tail({ channel, prefetch: 16 })) out.push(delivery);
  return out;
}


async function states(dir: string): Promise<Map<string, string[]>> {
  const byId = new Map<string, string[]>();
  for (const record of await allInbox(dir)) byId.set(record.id as string, [...(byId.get(record.id as string) ?? []), record.state as string]);
  return byId;
}

test('a message whose consumer was SIGKILLed before acking goes to another consumer after the visibility timeout, counted as a second delivery, while acked messages never come back', async (t) => {
  const { dir, node: b } = await node(t);
  const ids = await append(b, ['first', 'second', 'third', 'fourth', 'fifth']);

  // A consumer process takes one message and holds it without acking.
  const victim = startConsumer(t, dir, ['--limit', '1', '--hold']);
  await waitFor(() => victim.printed.some((p) => p.holding === true), { message: `the consumer to take a message: ${victim.stderr()}` });
  const held = victim.printed[0]!;
  assert.equal(held.id, ids[0], 'oldest first within a priority');
  assert.equal(held.deliveries, 1);
  assert.ok(held.leaseUntil! > held.at! && held.leaseUntil! <= held.at! + VISIBILITY_MS, `leased for the visibility timeout (${held.leaseUntil! - held.at!} ms left)`);
  victim.child.kill('SIGKILL');
  assert.equal((await exited(victim.child)).signal, 'SIGKILL');

  // While its lease runs, everybody else gets the other four, and acks them.
  const others = await takeAll(b);
  const checkedAt = Date.now();
  if (checkedAt < held.leaseUntil!) {
    assert.deepEqual(others.map((d) => d.id), ids.slice(1), 'the leased message is not handed out before its lease lapses');
  } else {
    t.diagnostic(`too slow to look before the lease lapsed (${checkedAt - held.leaseUntil!} ms late)`);
  }
  for (const d of others) await d.ack();
  const leases = others.map((d) => d.leaseUntil);
  const late = others.find((d) => d.id === held.id);

  if (late !== undefined) {
    // Only when this process looked after the lease lapsed: then it was the other consumer.
    assert.equal(late.deliveries, 2);
  } else {
    // Once the lease lapsed, another consumer process gets the killed one's message: second delivery.
    await waitFor(() => Date.now() > held.leaseUntil!, { message: 'the lease to lapse' });
    const rescuer = startConsumer(t, dir, ['--limit', '1', '--ack']);
    assert.equal((await exited(rescuer.child)).code, 0, rescuer.stderr());
    assert.deepEqual(rescuer.printed.map((p) => [p.id, p.body, p.deliveries]), [[held.id, 'first', 2]]);
    leases.push(rescuer.printed[0]!.leaseUntil!);
  }

  // After every lease handed out so far has lapsed, nothing comes back: all five are acked.
  const lastLeaseUntil = Math.max(...leases);
  await waitFor(() => Date.now() > lastLeaseUntil + 100, { message: 'every lease to lapse' });
  const tail = await mqlog(['tail', '--data', dir, '--json']);
  assert.equal(tail.code, 0, tail.stderr);
  assert.deepEqual(jsonLines(tail.stdout), [], 'acked messages are not handed out again');
  assert.equal((await takeAll(b)).length, 0);
  const byId = await states(dir);
  assert.deepEqual(ids.map((id) => byId.get(id)), ids.map(() => ['acked']));
});

test('two consumer processes on one channel ack each of 5 000 messages exactly once between them', async (t) => {
  const { dir, node: b } = await node(t, { visibilityTimeoutMs: 60_000 });
  const COUNT = 5000;
  const ids = await append(b, Array.from({ length: COUNT }, (_, i) => `job ${i}`), 'jobs');
  await b.close();

  const consumers = [0, 1].map(() => startConsumer(t, dir, ['--channel', 'jobs', '--follow', '--idle-ms', '3000', '--ack', '--ack-window', '32', '--prefetch', '32', '--barrier']));
  await waitFor(() => consumers.every((c) => c.printed.some((p) => p.ready === true)), { message: 'both consumers to be ready' });
  for (const c of consumers) c.child.stdin!.write('go\n');
  const codes = await Promise.all(consumers.map((c) => exited(c.child)));
  consumers.forEach((c, i) => assert.equal(codes[i]!.code, 0, `consumer ${i}: ${c.stderr()}`));

  const got = consumers.map((c) => c.printed.filter((p) => p.ready !== true));
  t.diagnostic(`consumer 0 acked ${got[0]!.length}, consumer 1 acked ${got[1]!.length}`);
  const errors = got.flat().filter((p) => p.error !== undefined);
  assert.deepEqual(errors, [], 'no ack was refused');
  const all = got.flat().map((p) => p.id!);
  const seen = new Set<string>();
  const twice = all.filter((id) => (seen.has(id) ? true : (seen.add(id), false)));
  assert.deepEqual(twice, [], 'no message was handed to both');
  assert.equal(seen.size, COUNT, 'every message was acked');
  assert.deepEqual([...seen].sort(), [...ids].sort());
  assert.ok(got.flat().every((p) => p.deliveries === 1), 'each handed out once');

  const records = await allInbox(dir);
  assert.equal(records.length, COUNT);
  const notAcked = records.filter((r) => r.state !== 'acked');
  assert.deepEqual(notAcked.map((r) => [r.id, r.state]), [], 'dump shows every inbox message acked');
});

test('a nacked message comes back only after the nack delay, as a second delivery', async (t) => {
  const { dir, node: b } = await node(t);
  const [id] = await append(b, ['retry me']);
  const first = await takeOne(b);
  assert.ok(first, 'the message is ready');
  assert.equal(first.id, id);
  assert.equal(first.deliveries, 1);

  const DELAY_MS = 1500;
  const nackedAt = Date.now();
  await first.nack({ delayMs: DELAY_MS, reason: 'not now' });
  let emptyLooks = 0;
  const again = await waitFor(async () => {
    const d = await takeOne(b);
    if (d === undefined) {
      if (Date.now() < nackedAt + DELAY_MS) emptyLooks++;
      return undefined;
    }
    return { delivery: d, at: Date.now() };
  }, { intervalMs: 50, message: 'the nacked message to come back' });
  assert.ok(again.at >= nackedAt + DELAY_MS, `handed out again ${again.at - nackedAt} ms after the nack, before the ${DELAY_MS} ms delay`);
  assert.ok(emptyLooks > 0, 'looked at least once while the delay ran');
  assert.equal(again.delivery.id, id);
  assert.equal(again.delivery.deliveries, 2);
  await again.delivery.ack();
  assert.deepEqual((await states(dir)).get(id!), ['acked']);
});

test('an ack after the lease lapsed and the message went to another consumer is refused with ERR_LEASE_EXPIRED', async (t) => {
  // Without renewal, as a consumer paused past its timeout (or a renewal that could not be written) is.
  const { dir, node: b } = await node(t, { renewLeases: false });
  const [id] = await append(b, ['slow job']);
  const mine = await takeOne(b);
  assert.ok(mine, 'the message is ready');
  assert.equal(mine.id, id);

  await waitFor(() => Date.now() > mine.leaseUntil, { message: 'the lease to lapse' });
  // Another process takes it (and leaves it unacked).
  const other = await mqlog(['tail', '--data', dir, '--json', '--limit', '1']);
  assert.equal(other.code, 0, other.stderr);
  assert.deepEqual(jsonLines(other.stdout).map((m) => [m.id, m.deliveries]), [[id, 2]]);

  await assert.rejects(mine.ack(), { code: 'ERR_LEASE_EXPIRED' });
  await assert.rejects(mine.nack(), { code: 'ERR_LEASE_EXPIRED' });
  assert.deepEqual((await states(dir)).get(id!), ['pending'], 'the refused ack changed nothing');

  // The other consumer's lease lapses too: the message goes out a third time, and that ack counts.
  const again = await waitFor(() => takeOne(b), { intervalMs: 100, message: 'the third delivery' });
  assert.equal(again.id, id);
  assert.equal(again.deliveries, 3);
  await again.ack();
  await assert.rejects(mine.ack(), { code: 'ERR_ALREADY_ACKED' });
  assert.deepEqual((await states(dir)).get(id!), ['acked']);
});

test('an ack after the lease lapsed is still accepted while nobody else took the message', async (t) => {
  const { dir, node: b } = await node(t, { renewLeases: false });
  const [id] = await append(b, ['late but alone']);
  const mine = await takeOne(b);
  assert.ok(mine, 'the message is ready');
  assert.equal(mine.id, id);
  await waitFor(() => Date.now() > mine.leaseUntil + 50, { message: 'the lease to lapse' });
  await mine.ack();
  assert.deepEqual((await states(dir)).get(id!), ['acked']);
  const tail = await mqlog(['tail', '--data', dir, '--json']);
  assert.deepEqual(jsonLines(tail.stdout), []);
});

test('a consumer whose scan lags behind messages another consumer already acked still gets the ready ones at once', async (t) => {
  const { dir, node: b } = await node(t, { visibilityTimeoutMs: 60_000 });
  const ids = await append(b, Array.from({ length: 1000 }, (_, i) => `job ${i}`));
  // This process's consumer takes one message: its scan has read ahead of it.
  const first = await takeOne(b);
  assert.ok(first, 'the message is ready');
  assert.equal(first.id, ids[0]);
  await first.ack();
  // Meanwhile another consumer process acks the next 500.
  const other = await mqlog(['tail', '--data', dir, '--json', '--ack', '--limit', '500']);
  assert.equal(other.code, 0, other.stderr);
  assert.deepEqual(jsonLines(other.stdout).map((m) => m.id), ids.slice(1, 501));
  // The 499 left are ready now: a look that stops at the first empty take must find them all.
  const rest = await takeAll(b);
  assert.equal(rest.length, 499, `take() came back empty-handed with ${499 - rest.length} messages ready`);
  assert.deepEqual(rest.map((d) => d.id), ids.slice(501));
  for (const d of rest) await d.ack();
});

test('a message whose leases keep lapsing goes to the dead letters after maxDeliveries hand-outs', async (t) => {
  const { dir, node: b } = await node(t, { maxDeliveries: 2, renewLeases: false });
  const [id] = await append(b, ['crashes every consumer']);
  for (const expected of [1, 2]) {
    const d = await waitFor(() => takeOne(b), { intervalMs: 50, message: `hand-out ${expected}` });
    assert.equal(d.id, id);
    assert.equal(d.deliveries, expected);
    await waitFor(() => Date.now() > d.leaseUntil, { message: 'the lease to lapse' });
  }
  // A third hand-out would exceed maxDeliveries: the message goes to the dead letters instead.
  assert.equal(await takeOne(b), undefined);
  const records = jsonLines((await mqlog(['dump', dir, '--json'])).stdout);
  assert.deepEqual(records.filter((r) => r.id === id).map((r) => [r.queue, r.state]).sort(), [['dead/common', 'dead'], ['inbox/common', 'dead']]);
  const dead = records.find((r) => r.queue === 'dead/common') as { headers?: Record<string, string> } | undefined;
  assert.match(dead?.headers?.['mqlog-dead-reason'] ?? '', /lease expired/);
  const tail = await mqlog(['tail', '--data', dir, '--json']);
  assert.deepEqual(jsonLines(tail.stdout), []);
});

test('messages leased ahead but never handed out are given back at once when a consumer stops early, without counting a delivery', async (t) => {
  const { dir, node: b } = await node(t, { visibilityTimeoutMs: 60_000 });
  const ids = await append(b, Array.from({ length: 10 }, (_, i) => `job ${i}`));
  let first: Delivery | undefined;
  for await (const d of b.tail({ prefetch: 10 })) {
    first = d;
    break;
  }
  assert.equal(first?.id, ids[0]);
  // Another consumer gets the nine others right away, each as a first delivery.
  const other = await mqlog(['tail', '--data', dir, '--json', '--ack']);
  assert.equal(other.code, 0, other.stderr);
  assert.deepEqual(jsonLines(other.stdout).map((m) => [m.id, m.deliveries]), ids.slice(1).map((id) => [id, 1]));
  await first!.ack();
});

test('a ready message behind a run of expired ones is tailed, and the expired ones are marked expired', async (t) => {
  const { dir, node: b } = await node(t);
  const stale = await append(b, Array.from({ length: 200 }, (_, i) => `stale ${i}`), 'common', { expiresAt: Date.now() - 1 });
  const [fresh] = await append(b, ['fresh']);
  await b.close();
  const tail = await mqlog(['tail', '--data', dir, '--json', '--ack']);
  assert.equal(tail.code, 0, tail.stderr);
  assert.deepEqual(jsonLines(tail.stdout).map((m) => m.id), [fresh], 'expired messages are skipped, and do not hide the ready one');
  const byId = await states(dir);
  assert.deepEqual(stale.filter((id) => byId.get(id)?.[0] !== 'expired'), [], 'every stale message is marked expired');
});

test('a ready message behind a run of delayed ones is tailed at once', async (t) => {
  const { dir, node: b } = await node(t);
  const later = await append(b, Array.from({ length: 200 }, (_, i) => `later ${i}`), 'common', { notBefore: Date.now() + 3_600_000 });
  const [now] = await append(b, ['now']);
  await b.close();
  const tail = await mqlog(['tail', '--data', dir, '--json', '--ack']);
  assert.equal(tail.code, 0, tail.stderr);
  assert.deepEqual(jsonLines(tail.stdout).map((m) => m.id), [now], 'delayed messages wait, and do not hide the ready one');
  const byId = await states(dir);
  assert.deepEqual(later.filter((id) => byId.get(id)?.[0] !== 'pending'), [], 'the delayed ones are still pending');
});

test('processes that only read the consumer state (stat, dump, a starting consumer) never see corruption while another process acks', async (t) => {
  const { dir, node: b } = await node(t, { visibilityTimeoutMs: 60_000 });
  const COUNT = 400;
  await append(b, Array.from({ length: COUNT }, (_, i) => `job ${i}`));
  await b.close();

  // One message at a time, one ack at a time: a steady stream of small appends to the consumer journal.
  const acking = startConsumer(t, dir, ['--follow', '--idle-ms', '2000', '--ack', '--prefetch', '1']);
  const done = exited(acking.child);
  let finished = false;
  void done.then(() => (finished = true));
  await waitFor(() => acking.printed.length > 0, { message: `the consumer to ack: ${acking.stderr()}` });

  const problems: string[] = [];
  let looks = 0;
  // In this process: a node opened afresh each round reads the state without the lock, as dump and stat do.
  const library = (async () => {
    while (!finished) {
      const reader = await openNode({ data: dir });
      try {
        const journal = await (await reader.inbox()).state();
        for (let i = 0; i < 20 && !finished; i++) {
          await journal.refresh();
          looks++;
        }
      } catch (err) {
        problems.push(`library: ${(err as { code?: string }).code ?? ''} ${(err as Error).message}`);
      } finally {
        await reader.close();
      }
    }
  })();
  const cli = (async () => {
    while (!finished) {
      for (const args of [['stat', '--data', dir, '--json'], ['dump', dir, '--json']]) {
        const result = await mqlog(args);
        if (result.code !== 0) problems.push(`${args[0]}: ${result.stderr.trim()}`);
      }
    }
  })();
  await Promise.all([library, cli]);
  assert.equal((await done).code, 0, acking.stderr());
  t.diagnostic(`${looks} looks at the state while ${acking.printed.length} messages were acked`);
  const cliProblems = problems.filter((p) => !p.startsWith('library:')).length;
  assert.deepEqual(problems.slice(0, 3), [], `${problems.length} reads failed (${cliProblems} of them stat or dump)`);
  assert.equal(acking.printed.filter((p) => p.error === undefined).length, COUNT);
});
