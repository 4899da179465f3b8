/**
 * The consumer state machine (spec/log-format.md §11.3) record by record, its checkpoint, and the
 * layout of before claims (version-1 checkpoint, lease records) still read and consumed.
 */
import assert from 'node:assert/strict';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { openNode } from '../../src/daemon/node.ts';
import { ConsumerJournal } from '../../src/queue/consumer-journal.ts';
import { ConsumerState, type StateRecord } from '../../src/queue/consumer-state.ts';
import { newId } from '../../src/util/ids.ts';
import { defer, tempDir } from '../helpers/index.ts';

const S = 'p4.w0';

function claim(t: string, from: number, to: number, extra: Partial<Extract<StateRecord, { k: 'C' }>> = {}): StateRecord {
  return { k: 'C', t, s: S, j: '00000000000000aa', u: 1000, n: 1, p: 4, r: [from, to], ...extra };
}

function kinds(state: ConsumerState, from: number, to: number): (string | undefined)[] {
  return Array.from({ length: to - from }, (_, i) => state.doneKind(S, from + i));
}

test('claims: acks read from a holder\'s journal count until the shared journal settles or overrules them', () => {
  const state = new ConsumerState();
  const done: [string, number][] = [];
  state.onDone = (kind, n) => done.push([kind, n]);
  state.apply(claim('a', 0, 4));
  state.apply({ k: 'F', s: S, o: 4, h: [0, 300, 3] });
  assert.equal(state.frontier(S)?.offset, 4);
  assert.equal(state.rangeOf(S, 2)?.holder?.journal, '00000000000000aa');
  assert.equal(state.inFlight, 4);
  // Acks in the holder's journal: done for whoever reads them, while the claim is held.
  assert.equal(state.ackInJournal('a', 0, 2), true);
  assert.deepEqual(kinds(state, 0, 4), ['acked', 'acked', undefined, undefined]);
  assert.equal(state.doneCount(S, 0, 4), 2);
  assert.equal(state.ackInJournal('unknown', 0, 1), false, 'an ack of a claim not seen yet is kept by the caller');
  // A takeover that found only offset 0 acked overrules the ack of 1 read before; 1..3 wait as a range.
  state.apply({ k: 'T', t: 'a', a: [0, 1] });
  assert.deepEqual(kinds(state, 0, 4), ['acked', undefined, undefined, undefined]);
  const range = state.range('a');
  assert.deepEqual([range?.holder, range?.members.toFlat(), range?.deliveries, range?.availableAt], [undefined, [1, 4], 1, 1000]);
  assert.deepEqual(state.nextDue(0), 1000);
  // Claimed again, in part: from the range, one more hand-out.
  state.apply(claim('b', 1, 3, { n: 2, g: 'a', u: 2000 }));
  assert.deepEqual(state.range('a')?.members.toFlat(), [3, 4]);
  assert.equal(state.deliveries(S, 1), 2);
  // Nack one (a retry of its own), give one back without counting (a range), settle the claim.
  state.apply(claim('c', 3, 4, { n: 2, g: 'a', u: 2000 }));
  assert.equal(state.range('a'), undefined, 'an empty range is dropped');
  state.apply({ k: 'N', s: S, o: 1, t: 'b', a: 5000, i: 'id-1', h: [0, 100] });
  assert.deepEqual(state.retryOf(S, 1), { deliveries: 2, availableAt: 5000, priority: 4, id: 'id-1', hint: { segment: 0, position: 100 }, reason: 'nacked' });
  state.apply({ k: 'U', s: S, o: 3, t: 'c', a: 3000, g: 'back' });
  assert.deepEqual([state.range('back')?.members.toFlat(), state.range('back')?.deliveries], [[3, 4], 1]);
  assert.equal(state.ackInJournal('b', 2, 3), true);
  state.apply({ k: 'S', t: 'b' });
  assert.deepEqual(kinds(state, 0, 4), ['acked', undefined, 'acked', undefined]);
  assert.equal(state.range('b'), undefined);
  // A late renewal or settle of a claim no longer held changes nothing.
  state.apply({ k: 'R', t: 'b', u: 9000 });
  state.apply({ k: 'S', t: 'c' });
  assert.deepEqual(kinds(state, 0, 4), ['acked', undefined, 'acked', undefined]);
  // Acks counted once each, however they became known.
  assert.deepEqual(done, [['acked', 2], ['acked', 1]]);
});

test('claims: dead, expired and purged messages leave whatever holds them; the checkpoint keeps everything in flight', () => {
  const state = new ConsumerState();
  state.apply(claim('a', 0, 6));
  state.apply({ k: 'F', s: S, o: 6 });
  state.apply({ k: 'D', s: S, o: 1, r: 'bad' });
  state.apply({ k: 'X', s: S, o: 2 });
  state.apply({ k: 'U', s: S, o: 5, t: 'a', a: 7000, i: 'later', h: [0, 500] });
  state.apply({ k: 'K', j: 'ffffffffffffffff' });
  assert.deepEqual(kinds(state, 0, 6), [undefined, 'dead', 'expired', undefined, undefined, undefined]);
  assert.deepEqual(state.range('a')?.members.toFlat(), [0, 1, 3, 5]);
  assert.deepEqual(state.retryOf(S, 5)?.availableAt, 7000, 'a delayed member waits alone until it is due');
  assert.deepEqual([...state.journals], ['00000000000000aa']);
  const copy = ConsumerState.fromCheckpoint(JSON.parse(JSON.stringify(state.toCheckpoint(3))) as ReturnType<ConsumerState['toCheckpoint']>);
  for (const s of [state, copy]) {
    assert.deepEqual(kinds(s, 0, 6), [undefined, 'dead', 'expired', undefined, undefined, undefined]);
    assert.deepEqual([s.range('a')?.members.toFlat(), s.range('a')?.holder], [[0, 1, 3, 5], { journal: '00000000000000aa', until: 1000 }]);
    assert.equal(s.frontier(S)?.offset, 6);
    assert.equal(s.retryOf(S, 5)?.id, 'later');
    assert.equal(s.claimsIn('00000000000000aa'), 1);
  }
  // As `mqlog purge` writes them: runs of messages not done.
  copy.apply({ k: 'P', s: S, o: 0, e: 1 });
  copy.apply({ k: 'P', s: S, o: 3, e: 6 });
  assert.equal(copy.range('a'), undefined, 'a purge empties the claim');
  assert.equal(copy.retryOf(S, 5), undefined);
  assert.deepEqual(kinds(copy, 0, 6), ['acked', 'dead', 'expired', 'acked', 'acked', 'acked']);
});

test('the layout of before claims (version-1 checkpoint, lease records) opens, and its messages are consumed as they stood', async (t) => {
  const dir = await tempDir(t);
  const node = await openNode({ data: dir, config: { visibilityTimeoutMs: 30_000 } });
  defer(t, () => node.close());
  const inbox = await node.inbox('jobs');
  const ids: string[] = [];
  for (let i = 0; i < 6; i++) {
    const id = newId();
    ids.push(id);
    await inbox.append({ id, ts: Date.now(), channel: 'jobs', priority: 4, to: ['b'], from: 'a' }, Buffer.from(`m${i}`));
  }
  // Offset 0 acked in the checkpoint; in the journal: 1 leased and lapsed (handed out twice), 2 leased
  // and acked, 3 leased until far ahead, 4 nacked for later.
  const consumerDir = join(inbox.info.dir, 'consumer');
  await mkdir(consumerDir, { recursive: true });
  await writeFile(join(consumerDir, 'checkpoint.json'), JSON.stringify({ version: 1, generation: 0, streams: { [S]: { acked: [[0, 1]], dead: [], expired: [] } }, leases: [], retries: [] }));
  const old = await ConsumerJournal.open(inbox.info.dir);
  const lease = (o: number, t: string, u: number, n: number): StateRecord => ({ k: 'L', s: S, o, t, u, n, p: 4, i: ids[o]!, h: [0, 0] });
  const far = Date.now() + 3_600_000;
  await old.transact(() => ({
    records: [lease(1, 'l1', 1, 2), lease(2, 'l2', far, 1), { k: 'A', s: S, o: 2, t: 'l2' }, lease(3, 'l3', far, 1), lease(4, 'l4', far, 1), { k: 'N', s: S, o: 4, t: 'l4', a: far }],
    result: undefined,
  }));
  await old.close();
  const handed = new Map<string, number>();
  for await (const d of node.tail({ channel: 'jobs', prefetch: 8 })) {
    handed.set(d.id, d.deliveries);
    await d.ack();
  }
  assert.deepEqual(handed, new Map([[ids[1]!, 3], [ids[5]!, 1]]), 'the lapsed lease goes out a third time, the never-handed-out one once; nothing else');
  const view = await ConsumerJournal.open(inbox.info.dir);
  try {
    assert.deepEqual(ids.map((_, o) => view.state.doneKind(S, o)), ['acked', 'acked', 'acked', undefined, undefined, 'acked']);
  } finally {
    await view.close();
  }
});

test('a claim of new messages stops at 4 MiB of their frames, whatever the prefetch', async (t) => {
  const dir = await tempDir(t);
  const node = await openNode({ data: dir });
  defer(t, () => node.close());
  const inbox = await node.inbox('big');
  const body = Buffer.alloc(1024 * 1024, 7);
  const count = 24;
  for (let i = 0; i < count; i++) await inbox.append({ id: newId(), ts: Date.now(), channel: 'big', priority: 0, to: ['b'], from: 'a' }, body);
  let handed = 0;
  for await (const d of node.tail({ channel: 'big' })) {
    assert.equal(d.body.length, body.length);
    handed++;
    await d.ack();
  }
  assert.equal(handed, count);
  // Every claim the consumer made, read back from the shared journal.
  const sizes: number[] = [];
  const view = await ConsumerJournal.open(inbox.info.dir, {
    onApplied: (record) => {
      if (record.k !== 'C') return;
      let n = 0;
      for (let i = 0; i < record.r.length; i += 2) n += (record.r[i + 1] as number) - (record.r[i] as number);
      sizes.push(n);
    },
  });
  await view.close();
  assert.equal(sizes.reduce((a, b) => a + b, 0), count, 'each message claimed once');
  assert.ok(Math.max(...sizes) > 1, `claims of more than one message once the caller's pace is known: ${sizes.join(', ')}`);
  assert.ok(Math.max(...sizes) <= 4, `no claim holds more than 4 MiB of frames: ${sizes.join(', ')}`);
});

test('consumers that share a channel split the end of a backlog between them; a lone consumer takes all it asks for', async (t) => {
  const dir = await tempDir(t);
  const a = await openNode({ data: dir });
  defer(t, () => a.close());
  const b = await openNode({ data: dir });
  defer(t, () => b.close());
  const inbox = await a.inbox('jobs');
  await Promise.all(Array.from({ length: 1000 }, () => inbox.append({ id: newId(), ts: Date.now(), channel: 'jobs', priority: 0, to: ['b'], from: 'a' }, Buffer.from('job'))));
  const first = await (await a.inbox('jobs')).consumer();
  const second = await (await b.inbox('jobs')).consumer();
  assert.equal((await second.take(1)).length, 1, 'the second consumer registers by claiming');
  assert.equal((await first.take(1024)).length, 500, 'two sharers, the whole backlog (999) in reach: half of it');
  assert.equal((await second.take(1024)).length, 250, 'half of the 499 left');
  assert.equal((await first.take(1024)).length, 125, 'half of the 249 left');
  assert.equal((await second.take(1)).length, 1, 'a claim of one is not split');

  const lone = await a.inbox('alone');
  await Promise.all(Array.from({ length: 300 }, () => lone.append({ id: newId(), ts: Date.now(), channel: 'alone', priority: 0, to: ['b'], from: 'a' }, Buffer.from('job'))));
  assert.equal((await (await lone.consumer()).take(1024)).length, 300, 'a lone consumer takes the whole backlog');
});
