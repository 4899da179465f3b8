/**
 * Damaged data never stops a channel (spec/log-format.md §3.4): every reader resynchronises at the next
 * valid frame and reports the range it passed over; `mqlog repair` moves damaged ranges aside.
 */
import assert from 'node:assert/strict';
import { readdir, readFile, stat, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import { openNode } from '../../src/daemon/node.ts';
import type { DamagedRange } from '../../src/log/log-store.ts';
import { newId } from '../../src/util/ids.ts';
import { dump, flipByte, framesOf, FRAME_HEADER_BYTES, NOWHERE, verify } from '../helpers/crash.ts';
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

test('mqlog repair moves each damaged range into a .bad file beside its segment, records it, and leaves a sound log', async (t) => {
  const dir = await tempDir(t, 'mqlog-repair-');
  await writeFile(join(dir, 'mqlog.json'), JSON.stringify({ segmentBytes: 4096 }));
  const bodies = Array.from({ length: 40 }, (_, i) => `m-${i}-`.padEnd(200, 'x'));
  const sent = await mqlog(['send', '--data', dir, '--to', NOWHERE, '--lines'], { input: `${bodies.join('\n')}\n` });
  assert.equal(sent.code, 0, sent.stderr);
  const segs = await segmentsUnder(join(dir, 'outbox'));
  assert.ok(segs.length >= 4, `several segments: ${segs.length}`);
  const [first, second] = [segs[0] as string, segs[1] as string];
  const flipped = (await framesOf(first)).frames[2];
  assert.ok(flipped !== undefined);
  await flipByte(first, flipped.position + FRAME_HEADER_BYTES + 5, 0x08);
  const cutFrames = (await framesOf(second)).frames;
  const cut = cutFrames.at(-1);
  assert.ok(cut !== undefined);
  await truncate(second, cut.position + 25);
  const before = await Promise.all([first, second].map((p) => readFile(p)));
  const shown = (await dump(dir)).records.map((r) => r.id);

  const repaired = await mqlog(['repair', '--data', dir]);
  assert.equal(repaired.code, 0, repaired.stdout + repaired.stderr);
  const lines = [...repaired.stdout.matchAll(/^REPAIRED (\S+) (\d+) (\d+) (\S+)$/gm)].map((m) => ({ path: m[1] as string, position: Number(m[2]), bytes: Number(m[3]), savedAs: m[4] as string }));
  assert.deepEqual(lines.map((l) => [l.path, l.position]), [[first, flipped.position], [second, cut.position]], repaired.stdout);
  assert.equal(lines[0]?.savedAs, `${first}.${flipped.position}.bad`);
  // Nothing deleted: the segment without the range plus the .bad file are the bytes that were there.
  for (const [i, line] of lines.entries()) {
    const old = before[i] as Buffer;
    const kept = await readFile(line.savedAs);
    assert.deepEqual(kept, old.subarray(line.position, line.position + line.bytes), 'the .bad file holds the damaged bytes');
    const now = await readFile(line.path);
    assert.deepEqual(now, Buffer.concat([old.subarray(0, line.position), old.subarray(line.position + line.bytes)]), 'the segment lost exactly the range');
  }
  const log = (await readFile(join(first, '..', 'repairs.log'), 'utf8')).trim().split('\n').map((l) => JSON.parse(l) as { segment: string; position: number; bytes: number; savedAs: string });
  assert.deepEqual(log.map((e) => [e.segment, e.position, e.bytes]), lines.map((l) => [l.path.split('/').at(-1), l.position, l.bytes]));

  const verified = await verify(dir);
  assert.equal(verified.code, 0, verified.stdout + verified.stderr);
  const after = await dump(dir);
  assert.equal(after.code, 0, after.stderr);
  assert.deepEqual(after.records.map((r) => r.id), shown, 'the same messages as before the repair');
  assert.equal(shown.length, 38);
  // A second repair finds nothing to do.
  const again = await mqlog(['repair', '--data', dir]);
  assert.equal(again.code, 0);
  assert.equal(again.stdout, '');
  assert.ok((await stat(first)).size > 0);
});

test('mqlog repair --channel touches only that channel', async (t) => {
  const { dir, seg } = await inboxWith(t, 6);
  const bad = (await framesOf(seg)).frames[2];
  assert.ok(bad !== undefined);
  await flipByte(seg, bad.position + FRAME_HEADER_BYTES + 1, 0x01);
  const other = await mqlog(['repair', '--data', dir, '--channel', 'other']);
  assert.equal(other.code, 0, other.stderr);
  assert.equal(other.stdout, '');
  assert.equal((await verify(dir)).code, 1, 'the damage is still there');
  const mine = await mqlog(['repair', '--data', dir, '--channel', 'common', '--json']);
  assert.equal(mine.code, 0, mine.stderr);
  const [entry] = mine.stdout.trim().split('\n').map((l) => JSON.parse(l) as { action: string; path: string; position: number });
  assert.deepEqual([entry?.action, entry?.path, entry?.position], ['repaired', seg, bad.position]);
  assert.equal((await verify(dir)).code, 0);
});
