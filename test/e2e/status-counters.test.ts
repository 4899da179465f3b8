/**
 * The received and acked counts of /status.json come from the queues, not from the daemon's memory:
 * after compaction removed acked messages, after a SIGKILL and after a graceful restart, they go on from
 * where they were instead of starting again at 0.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { mqlog, tempDir, waitFor } from '../helpers/index.js';
import { daemons, makeNodes, type NodeSpec } from '../helpers/daemon.js';

interface ChannelCounts {
  readonly channel: string;
  readonly pending: number;
  readonly received: number;
  readonly acked: number;
}

async function channel(node: NodeSpec, name = 'common'): Promise<ChannelCounts | undefined> {
  try {
    const response = await fetch(`${node.url}/status.json`);
    if (response.status !== 200) return undefined;
    const status = (await response.json()) as { channels: ChannelCounts[] };
    return status.channels.find((c) => c.channel === name);
  } catch {
    return undefined;
  }
}

/** Waits until the channel's counts are exactly these; the last counts seen are in the failure message. */
async function counts(node: NodeSpec, expected: { received: number; acked: number; pending: number }, when: string): Promise<void> {
  let seen: ChannelCounts | undefined;
  await waitFor(
    async () => {
      seen = await channel(node);
      return seen !== undefined && seen.received === expected.received && seen.acked === expected.acked && seen.pending === expected.pending;
    },
    { timeoutMs: 60_000, intervalMs: 200, message: `${when}: ${JSON.stringify(expected)}` },
  ).catch((err: unknown) => {
    throw new Error(`${(err as Error).message} (last seen ${JSON.stringify(seen)})`);
  });
}

async function sendLines(from: NodeSpec, to: string, lines: string[]): Promise<void> {
  const result = await mqlog(['send', '--data', from.dir, '--to', to, '--lines'], { input: `${lines.join('\n')}\n` });
  assert.equal(result.code, 0, result.stderr);
}

async function ack(node: NodeSpec, count: number): Promise<void> {
  const result = await mqlog(['tail', '--data', node.dir, '--follow', '--ack', '--limit', String(count), '--timeout', '60s']);
  assert.equal(result.code, 0, result.stderr);
}

test('received and acked of status.json go on from where they were after compaction, a SIGKILL and a graceful restart', async (t) => {
  const root = await tempDir(t);
  // Small segments compacted often: acked messages leave the inbox while the counts must stay.
  const { a, b } = await makeNodes(root, ['a', 'b'], { segmentBytes: 1024, segmentRollIdleMs: 200, compactIntervalMs: 200 });
  const [da, db] = daemons(t, [a!, b!]);
  await da!.start();
  await db!.start();

  await sendLines(a!, 'b', Array.from({ length: 10 }, (_, i) => `first round ${i} ${'x'.repeat(100)}`));
  await counts(b!, { received: 10, acked: 0, pending: 10 }, 'ten received');
  await ack(b!, 6);
  await counts(b!, { received: 10, acked: 6, pending: 4 }, 'six acked');
  await waitFor(() => /"event":"compacted"/.test(db!.output), { timeoutMs: 60_000, message: 'b to compact its acked messages away' });
  await counts(b!, { received: 10, acked: 6, pending: 4 }, 'after compaction');

  await db!.kill();
  await db!.start();
  await counts(b!, { received: 10, acked: 6, pending: 4 }, 'after SIGKILL and a new start');

  await sendLines(a!, 'b', Array.from({ length: 4 }, (_, i) => `second round ${i}`));
  await ack(b!, 4);
  await counts(b!, { received: 14, acked: 10, pending: 4 }, 'four more received and acked');
  assert.equal(await db!.stop(), 0);
  await db!.start();
  await counts(b!, { received: 14, acked: 10, pending: 4 }, 'after a graceful restart');
});
