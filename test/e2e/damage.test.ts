/**
 * Damaged data never stops a channel (spec/log-format.md §3.4): every reader resynchronises at the next
 * valid frame and reports the range it passed over; `mqlog repair` moves damaged ranges aside.
 */
import assert from 'node:assert/strict';
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import { openNode } from '../../src/daemon/node.ts';
import type { DamagedRange } from '../../src/log/log-store.ts';
import { newId } from '../../src/util/ids.ts';
import { flipByte, framesOf, FRAME_HEADER_BYTES } from '../helpers/crash.ts';
import { mqlog, tempDir } from '../helpers/index.ts';

async function segmentsUnder(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const entry of await readdir(dir, { withFileTypes: true, recursive: true })) {
    if (entry.isFile() && entry.name.endsWith('.seg')) out.push(join(entry.parentPath, entry.name));
  }
  return out.sort();
}

/** A node whose inbox "common" holds `count` messages with bodies `b0`..; its one segment, and the frames in it. */
async function inboxWith(t: TestContext, count: number): Promise<{ dir: string; seg: string; bodies: string[] }> {
  const dir = await tempDir(t, 'mqlog-damage-');
  const node = await openNode({ data: dir });
  const bodies = Array.from({ length: count }, (_, i) => `b${i}`);
  try {
    const inbox = await node.inbox('common');
    for (const body of bodies) {
      const ts = Date.now();
      await inbox.append({ id: newId(ts), ts, channel: 'common', priority: 4, to: ['me'], from: 'peer' }, Buffer.from(body));
    }
  } finally {
    await node.close();
  }
  const segs = await segmentsUnder(join(dir, 'inbox'));
  assert.equal(segs.length, 1, `one inbox segment: ${segs.join(', ')}`);
  return { dir, seg: segs[0] as string, bodies };
}

test('a consumer reads on past a corrupt frame in its inbox, and the damaged range is reported', async (t) => {
  const { dir, seg, bodies } = await inboxWith(t, 10);
  const { frames } = await framesOf(seg);
  const bad = frames[4];
  assert.ok(bad !== undefined);
  await flipByte(seg, bad.position + FRAME_HEADER_BYTES + 3, 0x10);

  const damaged: DamagedRange[] = [];
  const node = await openNode({ data: dir, onDamaged: (_queue, range) => damaged.push(range) });
  t.after(() => node.close());
  const seen: string[] = [];
  for await (const delivery of node.tail({ channel: 'common', limit: 9 })) {
    seen.push(delivery.body.toString());
    await delivery.ack();
  }
  assert.deepEqual(seen.sort(), bodies.filter((_, i) => i !== 4).sort(), 'every intact message is delivered');
  assert.ok(damaged.length >= 1, 'the damaged range was reported');
  assert.ok(damaged.every((r) => r.path === seg && r.position === bad.position), JSON.stringify(damaged));
});

test('mqlog tail --ack prints every intact message of an inbox with a corrupt frame and warns about the range', async (t) => {
  const { dir, seg, bodies } = await inboxWith(t, 6);
  const { frames } = await framesOf(seg);
  const bad = frames[2];
  assert.ok(bad !== undefined);
  await flipByte(seg, bad.position + 1, 0x02);
  const tailed = await mqlog(['tail', '--data', dir, '--ack', '--json']);
  assert.equal(tailed.code, 0, tailed.stderr);
  const printed = tailed.stdout.trim().split('\n').map((line) => (JSON.parse(line) as { body: string }).body);
  assert.deepEqual(printed.sort(), bodies.filter((_, i) => i !== 2).sort());
  assert.match(tailed.stderr, new RegExp(`damaged bytes .* at byte ${bad.position} of ${seg}`));
});
