/**
 * A sender whose offsets go back (a lost outbox, a restored backup) sends new messages at offsets the
 * receiver already covered: they are stored and reported as a dedup gap, never dropped as duplicates,
 * and resending them is still recognised (spec/http-protocol.md §5.1).
 */
import assert from 'node:assert/strict';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import { openNode, type MqlogNode } from '../../src/daemon/node.ts';
import type { IncomingFrames, IntakeLimits } from '../../src/queue/intake.ts';
import { defer, tempDir } from '../helpers/index.ts';

const NOWHERE = 'http://127.0.0.1:9';
const PEERS = { a: { url: NOWHERE }, b: { url: NOWHERE } };
const LIMITS: IntakeLimits = { maxBodyBytes: 1024 * 1024, maxStreamedBodyBytes: 64 * 1024 * 1024, maxFrameBytes: 2 * 1024 * 1024 };

async function node(t: TestContext, dir: string, name: string): Promise<MqlogNode> {
  const opened = await openNode({ data: dir, config: { name, peers: PEERS } });
  defer(t, () => opened.close());
  return opened;
}

/** Everything `a` has for `b` now, as the receiver gets it. */
async function batchFor(t: TestContext, a: MqlogNode): Promise<IncomingFrames> {
  const queue = await a.outbox.destinationQueue('b');
  defer(t, () => queue.close());
  const batch = await queue.take(10_000, 64 * 1024 * 1024);
  assert.ok(batch !== undefined);
  return { node: a.nodeId, name: 'a', destination: 'b', peer: undefined, frames: batch.items.map((i) => ({ stream: i.frame.stream, frame: i.frame.raw })), covers: batch.covers };
}

async function inboxBodies(b: MqlogNode): Promise<string[]> {
  const out: string[] = [];
  for await (const event of (await b.inbox('common')).messages()) if (event.kind === 'message') out.push(event.message.body.toString());
  return out;
}

test('new messages of a sender whose outbox was lost are stored and reported as a dedup gap, and their resend is still a duplicate', async (t) => {
  const dirA = await tempDir(t);
  const dirB = await tempDir(t);
  const a1 = await node(t, dirA, 'a');
  const b = await node(t, dirB, 'b');
  const gaps: { stream: string; offset: number }[] = [];
  const intake = await b.openIntake(LIMITS, { onDedupGap: (gap) => gaps.push({ stream: gap.stream, offset: gap.offset }) });
  defer(t, () => intake.close());
  for (const body of ['old 0', 'old 1', 'old 2']) await a1.send('b', body);
  assert.deepEqual(await intake.accept(await batchFor(t, a1)), { stored: 3, duplicates: 0 });
  await a1.close();

  // The outbox is lost (the node's identity stays): offsets start again at 0.
  await rm(join(dirA, 'outbox'), { recursive: true });
  const a2 = await node(t, dirA, 'a');
  assert.equal(a2.nodeId, a1.nodeId);
  for (const body of ['new 0', 'new 1']) await a2.send('b', body);
  const fresh = await batchFor(t, a2);
  assert.deepEqual(await intake.accept(fresh), { stored: 2, duplicates: 0 }, 'the new messages are stored, not dropped as duplicates');
  assert.deepEqual(gaps.map((g) => g.offset), [0, 1], 'each is reported as a gap');
  assert.deepEqual(await intake.accept(fresh), { stored: 0, duplicates: 2 }, 'a resend of them is still a duplicate');
  assert.deepEqual((await inboxBodies(b)).sort(), ['new 0', 'new 1', 'old 0', 'old 1', 'old 2']);
  await intake.close();

  // After a restart of the receiver (its table from the checkpoint) a resend is still a duplicate.
  const again = await b.openIntake(LIMITS);
  defer(t, () => again.close());
  assert.deepEqual(await again.accept(fresh), { stored: 0, duplicates: 2 });
  assert.equal(gaps.length, 2);
});
