/**
 * Property test of the outbox summaries' blocks (spec/log-format.md §17.1, src/queue/message-blocks.ts):
 * a segment's messages summarised by several processes one after the other — each going on from the
 * summary file the previous one kept when it stopped (its last block not full), as `mqlog stat` runs do —
 * give the same blocks as one pass over all of them: the same boundaries, counts, groups and times, so
 * that stopping and going on leaves no trail of small blocks and counts nothing twice or not at all.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { BLOCK_MESSAGES, BlockBuilder, decodeSegmentMessages, encodeSegmentMessages, segmentTotal, type MessageBlock, type SegmentMessages, type SummarisedMessage } from '../../src/queue/message-blocks.ts';
import { fuzzRuns, fuzzSeed } from '../helpers/security.ts';

interface Input {
  readonly to: readonly string[];
  readonly ttl: number | undefined;
  readonly receipt: boolean;
  readonly streamed: boolean;
  readonly ts: number;
  readonly bytes: number;
}

const input: fc.Arbitrary<Input> = fc.record({
  to: fc.subarray(['b', 'c', 'd'], { minLength: 1 }),
  ttl: fc.option(fc.integer({ min: 1, max: 1_000_000 }), { nil: undefined }),
  receipt: fc.boolean(),
  streamed: fc.boolean(),
  ts: fc.integer({ min: 0, max: 1_000_000 }),
  // Mostly small frames; sometimes large ones, so that blocks also end at BLOCK_BYTES.
  bytes: fc.oneof({ weight: 9, arbitrary: fc.integer({ min: 100, max: 2_000 }) }, { weight: 1, arbitrary: fc.integer({ min: 20_000, max: 120_000 }) }),
});

function add(builder: BlockBuilder, offset: number, m: Input): void {
  const message: SummarisedMessage = { offset, meta: { to: m.to, ts: m.ts, receipt: m.receipt, ...(m.ttl === undefined ? {} : { expiresAt: m.ts + m.ttl }), streamed: m.streamed } };
  builder.add(message, m.bytes, { offset, position: offset * 10, crc: offset });
}

/** A block with its groups in one order (merging may list them in another). */
function normal(block: MessageBlock): unknown {
  return { ...block, groups: [...block.groups].map((g) => ({ ...g, to: [...g.to] })).sort((a, b) => JSON.stringify(a.to).localeCompare(JSON.stringify(b.to))) };
}

test('summaries kept by processes that stop and go on give the blocks of one pass', (t) => {
  fc.assert(
    fc.property(fc.array(input, { minLength: 1, maxLength: 3 * BLOCK_MESSAGES }), fc.array(fc.nat(), { maxLength: 8 }), (messages, cuts) => {
      // Offsets with gaps (other frames between messages), as in a segment.
      const offsets = messages.map((_, i) => 7 + 2 * i);
      const whole = new BlockBuilder('p0.w0', 7);
      messages.forEach((m, i) => add(whole, offsets[i] as number, m));
      const expected = whole.summary();

      const stops = [...new Set(cuts.map((c) => c % messages.length))].sort((a, b) => a - b);
      let kept: SegmentMessages | undefined;
      let from = 0;
      for (const stop of [...stops, messages.length]) {
        // The file as the next process reads it.
        const file = kept === undefined ? undefined : decodeSegmentMessages(encodeSegmentMessages(kept), 'p0.w0', 7);
        const builder = new BlockBuilder('p0.w0', 7, file);
        for (let i = from; i < stop; i++) add(builder, offsets[i] as number, messages[i] as Input);
        from = Math.max(from, stop);
        kept = builder.summary();
        // What a follower keeps while it runs describes a prefix that ends where its `last` says.
        const finished = builder.finishedSummary();
        const finishedMessages = finished.blocks.reduce((n, b) => n + b.messages, 0);
        assert.equal(finished.last?.offset, finishedMessages === 0 ? undefined : offsets[finishedMessages - 1]);
      }
      const got = kept as SegmentMessages;
      assert.deepEqual(got.last, expected.last);
      assert.deepEqual(got.blocks.map(normal), expected.blocks.map(normal));
    }),
    { numRuns: fuzzRuns(60), seed: fuzzSeed(t, 0x5eed17) },
  );
});

test('a summary file read back has the same blocks, and its first line alone the totals of all of them', (t) => {
  fc.assert(
    fc.property(fc.array(input, { minLength: 0, maxLength: 3 * BLOCK_MESSAGES }), (messages) => {
      const builder = new BlockBuilder('p0.w0', 7);
      messages.forEach((m, i) => add(builder, 7 + 2 * i, m));
      const written = builder.summary('7:1:7:1');
      const text = encodeSegmentMessages(written);
      const read = decodeSegmentMessages(text, 'p0.w0', 7) as SegmentMessages;
      assert.ok(read !== undefined);
      // The totals come from the first line: the same whether or not the blocks were parsed.
      const total = segmentTotal(read);
      assert.equal(total?.messages ?? 0, messages.length);
      assert.deepEqual(total === undefined ? undefined : normal(total), written.blocks.length === 0 ? undefined : normal(written.blocks.reduce((a, b) => ({ ...mergedOf(a, b) }))));
      assert.deepEqual(read.blocks.map(normal), written.blocks.map(normal));
      assert.deepEqual(read.last, written.last);
      assert.equal(read.id, '7:1:7:1');
    }),
    { numRuns: fuzzRuns(30), seed: fuzzSeed(t, 0x5eed18) },
  );
});

test('a summary file whose blocks line was cut or changed is not used', () => {
  const builder = new BlockBuilder('p0.w0', 7);
  for (let i = 0; i < 700; i++) add(builder, 7 + i, { to: ['b'], ttl: undefined, receipt: false, streamed: false, ts: i, bytes: 100 });
  const text = encodeSegmentMessages(builder.summary());
  assert.ok(decodeSegmentMessages(text, 'p0.w0', 7) !== undefined);
  assert.equal(decodeSegmentMessages(text.slice(0, -10), 'p0.w0', 7), undefined, 'cut');
  const at = text.lastIndexOf('512');
  assert.equal(decodeSegmentMessages(`${text.slice(0, at)}513${text.slice(at + 3)}`, 'p0.w0', 7), undefined, 'a count changed');
  assert.equal(decodeSegmentMessages(text.slice(0, text.indexOf('\n')), 'p0.w0', 7), undefined, 'first line only');
  assert.equal(decodeSegmentMessages(text, 'p0.w0', 8), undefined, 'another segment');
});

/** Two blocks' counts added up, as one block spanning both (the groups merged by destination set). */
function mergedOf(a: MessageBlock, b: MessageBlock): MessageBlock {
  const groups = new Map<string, MessageBlock['groups'][number]>();
  for (const g of [...a.groups, ...b.groups]) {
    const key = JSON.stringify(g.to);
    const had = groups.get(key);
    groups.set(key, had === undefined ? g : {
      to: g.to,
      messages: had.messages + g.messages,
      ttl: had.ttl + g.ttl,
      minExpiresAt: had.ttl === 0 ? g.minExpiresAt : g.ttl === 0 ? had.minExpiresAt : Math.min(had.minExpiresAt, g.minExpiresAt),
      maxExpiresAt: Math.max(had.maxExpiresAt, g.maxExpiresAt),
    });
  }
  return { from: a.from, to: b.to, messages: a.messages + b.messages, bytes: a.bytes + b.bytes, receipts: a.receipts + b.receipts, streamed: a.streamed + b.streamed, maxTs: Math.max(a.maxTs, b.maxTs), groups: [...groups.values()] };
}
