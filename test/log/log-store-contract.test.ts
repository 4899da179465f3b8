/**
 * The LogStore contract (log-store.ts), run against both stores: whatever the queue layer may rely on
 * must hold for FileLogStore and MemoryLogStore alike. Store-specific details (sync marks, preallocation,
 * segment paths) are tested in the stores' own tests; here only what the interface promises.
 */
import assert from 'node:assert/strict';
import { test, type TestContext } from 'node:test';
import { FileLogStore } from '../../src/log/file-log-store.ts';
import { FrameType, encodeFrame } from '../../src/log/frame.ts';
import type { AppendResult, LogStore, LogWriter, SegmentDecision, StoredFrame, VerifyEvent, WriterOptions } from '../../src/log/log-store.ts';
import { MemoryLogStore } from '../../src/log/memory-log-store.ts';
import { defer, tempDir, waitFor } from '../helpers/index.ts';

interface StoreFactory {
  readonly name: string;
  readonly make: (t: TestContext) => Promise<LogStore>;
}

const STORES: readonly StoreFactory[] = [
  { name: 'FileLogStore', make: async (t) => new FileLogStore(await tempDir(t)) },
  { name: 'MemoryLogStore', make: async () => new MemoryLogStore() },
];

const Q = 'outbox';
/** Small segments, so that a few frames fill several. */
const SEGMENT_BYTES = 1024;
/** 280 payload bytes + the 20-byte header: three frames fit in a 1024-byte segment, a fourth does not. */
const FRAME_BYTES = 300;

/** A payload of `FRAME_BYTES` frame bytes whose content tells frames apart. */
function body(n: number, bytes = FRAME_BYTES - 20): Buffer {
  const b = Buffer.alloc(bytes, n % 251);
  b.writeUInt32LE(n, 0);
  return b;
}

async function open(t: TestContext, make: StoreFactory['make']): Promise<LogStore> {
  const store = await make(t);
  // Registered after the temp dir: run before it is removed (defer runs in reverse order).
  defer(t, () => store.close());
  return store;
}

async function claim(t: TestContext, store: LogStore, options: WriterOptions = {}, queue = Q): Promise<LogWriter> {
  const writer = await store.claimWriter(queue, options);
  defer(t, () => writer.close());
  return writer;
}

async function appendMany(writer: LogWriter, key: string, from: number, count: number): Promise<AppendResult[]> {
  const results: AppendResult[] = [];
  for (let i = from; i < from + count; i++) results.push(await writer.append(key, FrameType.MESSAGE, body(i)));
  return results;
}

/** Every frame of a stream from `offset`, read to the end. */
async function readAll(store: LogStore, stream: string, offset = 0, queue = Q): Promise<StoredFrame[]> {
  const reader = store.reader(queue, stream, { offset });
  try {
    const frames: StoredFrame[] = [];
    for (;;) {
      const read = await reader.read({ maxFrames: 4 });
      frames.push(...read.frames);
      if (read.state !== 'more') return frames;
    }
  } finally {
    await reader.close();
  }
}

async function collect(events: AsyncIterable<VerifyEvent>): Promise<VerifyEvent[]> {
  const all: VerifyEvent[] = [];
  for await (const event of events) all.push(event);
  return all;
}

function offsets(frames: readonly { readonly offset: number }[]): number[] {
  return frames.map((f) => f.offset);
}

function range(from: number, to: number): number[] {
  return Array.from({ length: to - from }, (_, i) => from + i);
}

for (const { name, make } of STORES) {
  test(`${name}: appends get offsets rising by one per stream in call order, stored as encoded frames`, async (t) => {
    const store = await open(t, make);
    const writer = await claim(t, store);
    // Not awaited one by one: the order of the calls is what counts.
    const calls: Promise<AppendResult>[] = [];
    for (let i = 0; i < 12; i++) {
      calls.push(writer.append('a', FrameType.MESSAGE, body(i)));
      if (i % 2 === 0) calls.push(writer.append('b', FrameType.MESSAGE, body(100 + i)));
    }
    const results = await Promise.all(calls);
    assert.deepEqual(offsets(results.filter((r) => r.stream === 'a.w0')), range(0, 12));
    assert.deepEqual(offsets(results.filter((r) => r.stream === 'b.w0')), range(0, 6));
    const a = await readAll(store, 'a.w0');
    assert.deepEqual(a.map((f) => f.payload.readUInt32LE(0)), range(0, 12), 'payloads in call order');
    for (const frame of a) {
      assert.equal(frame.stream, 'a.w0');
      assert.equal(frame.type, FrameType.MESSAGE);
      assert.equal(frame.bytes, FRAME_BYTES);
      assert.ok(frame.raw.equals(encodeFrame(FrameType.MESSAGE, frame.offset, body(frame.offset))), `raw of ${frame.offset} is the encoded frame`);
      assert.ok(frame.payload.equals(body(frame.offset)));
    }
    // A payload in parts is stored as one, and the caller may reuse its buffers once the append resolved.
    const parts = [Buffer.from('hello '), Buffer.from('world')];
    const result = await writer.append('c', FrameType.MESSAGE, parts);
    parts[0]!.fill(0);
    const stored = await store.frameAt(Q, 'c.w0', result.offset);
    assert.equal(stored?.payload.toString(), 'hello world');
    assert.equal(result.bytes, 20 + 11);
    const single = body(7);
    const one = await writer.append('d', FrameType.MESSAGE, single);
    single.fill(0);
    assert.ok((await store.frameAt(Q, 'd.w0', one.offset))?.payload.equals(body(7)), 'the stored payload is a copy');
  });

  test(`${name}: writers of one queue get different slots and never share a stream; queues are apart`, async (t) => {
    const store = await open(t, make);
    const first = await claim(t, store);
    const second = await claim(t, store);
    assert.notEqual(first.slot, second.slot);
    const r1 = await first.append('b', FrameType.MESSAGE, body(1));
    const r2 = await second.append('a', FrameType.MESSAGE, body(2));
    const r3 = await first.append('a', FrameType.MESSAGE, body(3));
    assert.equal(r1.stream, `b.w${first.slot}`);
    assert.equal(r2.stream, `a.w${second.slot}`);
    assert.equal(r3.stream, `a.w${first.slot}`);
    assert.equal(r3.offset, 0, 'a stream of its own, not the other writer\'s');
    // By key, then slot.
    const slots = [first.slot, second.slot].sort((x, y) => x - y);
    assert.deepEqual((await store.streams(Q)).map((s) => s.name), [`a.w${slots[0]}`, `a.w${slots[1]}`, `b.w${first.slot}`]);
    assert.deepEqual((await store.streams(Q)).map((s) => [s.key, s.slot]), [['a', slots[0]], ['a', slots[1]], ['b', first.slot]]);
    // A released slot is claimed again; another queue has slots of its own.
    const released = first.slot;
    await first.close();
    const third = await claim(t, store);
    assert.equal(third.slot, released);
    const elsewhere = await claim(t, store, {}, 'inbox/jobs');
    assert.equal(elsewhere.slot, 0);
    assert.equal((await elsewhere.append('a', FrameType.MESSAGE, body(4))).offset, 0);
    assert.deepEqual(await store.streams('never-written'), []);
  });

  test(`${name}: a reader that reached the end sees frames appended later, also one made before the stream`, async (t) => {
    const store = await open(t, make);
    const early = store.reader(Q, 'a.w0');
    defer(t, () => early.close());
    assert.deepEqual(await early.read(), { frames: [], state: 'end' });
    const writer = await claim(t, store);
    await appendMany(writer, 'a', 0, 2);
    const first = await early.read();
    assert.deepEqual([offsets(first.frames), first.state], [[0, 1], 'end']);
    assert.deepEqual(offsets((await early.read()).frames), []);
    await appendMany(writer, 'a', 2, 3);
    const second = await early.read();
    assert.deepEqual([offsets(second.frames), second.state], [[2, 3, 4], 'end']);
    assert.equal(early.position.offset, 5);
    assert.equal(early.stream, 'a.w0');
  });

  test(`${name}: maxFrames and maxBytes stop a read with 'more', at least one frame each time; the rest ends with 'end'`, async (t) => {
    const store = await open(t, make);
    const writer = await claim(t, store);
    await appendMany(writer, 'a', 0, 6);
    const reader = store.reader(Q, 'a.w0');
    defer(t, () => reader.close());
    const byCount = await reader.read({ maxFrames: 2 });
    assert.deepEqual([offsets(byCount.frames), byCount.state], [[0, 1], 'more']);
    const bySize = await reader.read({ maxBytes: 2 * FRAME_BYTES });
    assert.deepEqual([offsets(bySize.frames), bySize.state], [[2, 3], 'more']);
    const tiny = await reader.read({ maxBytes: 1 });
    assert.deepEqual([offsets(tiny.frames), tiny.state], [[4], 'more'], 'a frame larger than maxBytes still comes, alone');
    const rest = await reader.read({ maxFrames: 10 });
    assert.deepEqual([offsets(rest.frames), rest.state], [[5], 'end']);
    assert.deepEqual(await reader.read(), { frames: [], state: 'end' });
  });

  test(`${name}: skipTypes frames are passed over and the position moves past them`, async (t) => {
    const store = await open(t, make);
    const writer = await claim(t, store);
    for (const type of [FrameType.MESSAGE, FrameType.RECORD, FrameType.MESSAGE, FrameType.RECORD]) await writer.append('a', type, body(type));
    const reader = store.reader(Q, 'a.w0', undefined, { skipTypes: new Set([FrameType.RECORD]) });
    defer(t, () => reader.close());
    const read = await reader.read();
    assert.deepEqual(offsets(read.frames), [0, 2]);
    assert.equal(reader.position.offset, 4, 'past the trailing skipped frame');
    await writer.append('a', FrameType.MESSAGE, body(9));
    assert.deepEqual(offsets((await reader.read()).frames), [4]);
  });

  test(`${name}: reading starts at an offset, resumes from a saved position with its hint, and does not trust a stale hint`, async (t) => {
    const store = await open(t, make);
    const writer = await claim(t, store, { segmentBytes: SEGMENT_BYTES });
    const results = await appendMany(writer, 'a', 0, 10);
    assert.deepEqual(offsets(await readAll(store, 'a.w0', 4)), range(4, 10));
    assert.deepEqual(offsets(await readAll(store, 'a.w0', 10)), []);
    const reader = store.reader(Q, 'a.w0');
    const read = await reader.read({ maxFrames: 5 });
    await reader.close();
    const four = results[4]!;
    assert.deepEqual(reader.position, { offset: 5, hint: { segment: four.segment, position: four.position, offset: 4 } });
    const resumed = store.reader(Q, 'a.w0', reader.position);
    defer(t, () => resumed.close());
    const rest = await resumed.read();
    assert.deepEqual(offsets(rest.frames), range(5, 10));
    assert.deepEqual(rest.frames.map((f) => f.payload.readUInt32LE(0)), range(5, 10));
    assert.equal(read.frames.length, 5);
    // A hint pointing into the middle of a frame (its segment rewritten since, say) falls back to the offset.
    const stale = store.reader(Q, 'a.w0', { offset: 5, hint: { segment: four.segment, position: four.position + 7, offset: 4 } });
    defer(t, () => stale.close());
    assert.deepEqual(offsets((await stale.read()).frames), range(5, 10));
  });

  test(`${name}: skim lists where each frame lies (skipTypes ones too) without reading it, across segments, and read goes on after it`, async (t) => {
    const store = await open(t, make);
    const writer = await claim(t, store, { segmentBytes: SEGMENT_BYTES });
    const results: AppendResult[] = [];
    for (let i = 0; i < 10; i++) results.push(await writer.append('a', i % 3 === 2 ? FrameType.BODY_CHUNK : FrameType.MESSAGE, body(i)));
    const reader = store.reader(Q, 'a.w0', { offset: 1 }, { skipTypes: new Set([FrameType.BODY_CHUNK]) });
    defer(t, () => reader.close());
    const first = await reader.skim({ maxFrames: 4 });
    assert.equal(first.state, 'more');
    assert.deepEqual(first.frames, results.slice(1, 5).map((r, i) => ({ type: (i + 1) % 3 === 2 ? FrameType.BODY_CHUNK : FrameType.MESSAGE, offset: r.offset, segment: r.segment, position: r.position, bytes: r.bytes })));
    const four = results[4]!;
    assert.deepEqual(reader.position, { offset: 5, hint: { segment: four.segment, position: four.position, offset: 4 } });
    // Reading goes on right after what was skimmed (skipTypes still apply to read).
    assert.deepEqual(offsets((await reader.read({ maxFrames: 2 })).frames), [6, 7]);
    const rest = await reader.skim({ maxBytes: 1 });
    assert.deepEqual(offsets(rest.frames), [8], 'maxBytes stops after the frame that crosses it');
    const end = await reader.skim();
    assert.deepEqual([offsets(end.frames), end.state], [[9], 'end']);
    await writer.append('a', FrameType.MESSAGE, body(10));
    assert.deepEqual(offsets((await reader.skim()).frames), [10], 'frames appended later are listed by the next skim');
  });

  test(`${name}: a reader that reads little at a time (bufferBytes) skims and reads the same frames`, async (t) => {
    const store = await open(t, make);
    const writer = await claim(t, store, { segmentBytes: 4 * SEGMENT_BYTES });
    const results = await appendMany(writer, 'a', 0, 20);
    const small = store.reader(Q, 'a.w0', { offset: 0 }, { bufferBytes: 400 });
    defer(t, () => small.close());
    const first = await small.read({ maxFrames: 1 });
    assert.deepEqual(offsets(first.frames), [0]);
    const skimmed = await small.skim({ maxFrames: 12 });
    assert.deepEqual(skimmed.frames.map((f) => [f.offset, f.segment, f.position]), results.slice(1, 13).map((r) => [r.offset, r.segment, r.position]));
    const rest = await small.read();
    assert.deepEqual(offsets(rest.frames), range(13, 20));
    assert.deepEqual(rest.frames.map((f) => f.payload.readUInt32LE(0)), range(13, 20));
  });

  test(`${name}: seek moves a reader to a reported position, back or forth, and does not trust a stale hint`, async (t) => {
    const store = await open(t, make);
    const writer = await claim(t, store, { segmentBytes: SEGMENT_BYTES });
    const results = await appendMany(writer, 'a', 0, 10);
    const reader = store.reader(Q, 'a.w0');
    defer(t, () => reader.close());
    const at = (n: number): { segment: number; position: number; offset: number } => ({ segment: results[n]!.segment, position: results[n]!.position, offset: n });
    assert.deepEqual(offsets((await reader.read({ maxFrames: 6 })).frames), range(0, 6));
    await reader.seek({ offset: 4, hint: at(3) });
    assert.deepEqual(offsets((await reader.read({ maxFrames: 3 })).frames), [4, 5, 6], 'back, within the open segment');
    await reader.seek({ offset: 3, hint: at(2) });
    assert.deepEqual(offsets((await reader.read({ maxFrames: 2 })).frames), [3, 4], 'back, to another segment');
    await reader.seek({ offset: 8, hint: at(7) });
    assert.deepEqual(offsets((await reader.read()).frames), [8, 9], 'forth, to another segment');
    await reader.seek({ offset: 1 });
    assert.deepEqual(offsets((await reader.read({ maxFrames: 1 })).frames), [1], 'an offset alone');
    await reader.seek({ offset: 6, hint: { ...at(5), position: at(5).position + 7 } });
    assert.deepEqual(offsets((await reader.read()).frames), range(6, 10), 'a hint into the middle of a frame falls back to the offset');
    await reader.seek({ offset: 2, hint: at(1) });
    assert.deepEqual(offsets((await reader.skim({ maxFrames: 2 })).frames), [2, 3], 'skim goes on from a seek too');
  });

  test(`${name}: frameAt returns the frame with exactly that offset, with or without a hint, or undefined`, async (t) => {
    const store = await open(t, make);
    const writer = await claim(t, store, { segmentBytes: SEGMENT_BYTES });
    const results = await appendMany(writer, 'a', 0, 8);
    for (const r of results) {
      const plain = await store.frameAt(Q, 'a.w0', r.offset);
      const hinted = await store.frameAt(Q, 'a.w0', r.offset, { segment: r.segment, position: r.position, offset: r.offset });
      for (const frame of [plain, hinted]) {
        assert.ok(frame !== undefined, `frame ${r.offset} found`);
        assert.equal(frame.offset, r.offset);
        assert.deepEqual([frame.segment, frame.position, frame.bytes], [r.segment, r.position, r.bytes]);
        assert.ok(frame.payload.equals(body(r.offset)));
      }
    }
    const six = results[6]!;
    const wrongHint = await store.frameAt(Q, 'a.w0', 5, { segment: six.segment, position: six.position, offset: 6 });
    assert.equal(wrongHint?.offset, 5, 'a hint naming another frame is not trusted');
    assert.equal(await store.frameAt(Q, 'a.w0', 8), undefined);
    assert.equal(await store.frameAt(Q, 'z.w0', 0), undefined);
  });

  test(`${name}: segments roll before a frame would pass segmentBytes, each named by its first offset`, async (t) => {
    const store = await open(t, make);
    const writer = await claim(t, store, { segmentBytes: SEGMENT_BYTES });
    const results = await appendMany(writer, 'a', 0, 10);
    const bySegment = new Map<number, AppendResult[]>();
    for (const r of results) bySegment.set(r.segment, [...(bySegment.get(r.segment) ?? []), r]);
    assert.ok(bySegment.size >= 4, `10 frames of ${FRAME_BYTES} bytes take at least 4 segments of ${SEGMENT_BYTES}, got ${bySegment.size}`);
    for (const [base, inSegment] of bySegment) {
      assert.equal(inSegment[0]!.offset, base, 'a segment is named by its first frame\'s offset');
      assert.equal(inSegment[0]!.position, 0);
      for (let i = 1; i < inSegment.length; i++) assert.ok(inSegment[i]!.position >= inSegment[i - 1]!.position + FRAME_BYTES);
      assert.ok(inSegment.at(-1)!.position + FRAME_BYTES <= SEGMENT_BYTES, `segment ${base} stays within segmentBytes`);
    }
    assert.equal((await store.usage(Q)).segments, bySegment.size);
    // A frame larger than a segment is written alone, in a segment of its own.
    const big = await writer.append('a', FrameType.MESSAGE, Buffer.alloc(2 * SEGMENT_BYTES, 1));
    const after = await writer.append('a', FrameType.MESSAGE, body(11));
    assert.deepEqual([big.segment, big.position], [10, 0]);
    assert.deepEqual([after.segment, after.position], [11, 0]);
    assert.equal((await store.frameAt(Q, 'a.w0', 10))?.payload.length, 2 * SEGMENT_BYTES);
    // After a roll, the empty segment takes the next frame, however large.
    await writer.roll('a');
    const rolled = await writer.append('a', FrameType.MESSAGE, Buffer.alloc(2 * SEGMENT_BYTES, 2));
    assert.deepEqual([rolled.segment, rolled.position], [12, 0]);
    assert.equal((await store.usage(Q)).segments, bySegment.size + 3);
  });

  test(`${name}: writer.roll(key) ends the open segment now if it holds a frame`, async (t) => {
    const store = await open(t, make);
    const writer = await claim(t, store);
    await writer.roll('a'); // nothing written yet: nothing to do
    await appendMany(writer, 'a', 0, 2);
    await writer.roll('a');
    await writer.roll('a'); // the new segment is empty: nothing to end
    const next = await writer.append('a', FrameType.MESSAGE, body(2));
    assert.deepEqual([next.offset, next.segment, next.position], [2, 2, 0]);
    assert.equal((await store.usage(Q)).segments, 2);
    assert.deepEqual(offsets(await readAll(store, 'a.w0')), [0, 1, 2]);
    // The rolled segment is sealed: compaction may reclaim it while the writer is open.
    const compaction = await store.compact(Q, 'a.w0', () => false);
    assert.deepEqual([compaction.segmentsDeleted, compaction.framesRemoved], [1, 2]);
    assert.deepEqual(offsets(await readAll(store, 'a.w0')), [2]);
  });

  test(`${name}: an open segment that gets no append for rollIdleMs is sealed, so compaction can reclaim it`, async (t) => {
    const store = await open(t, make);
    const writer = await claim(t, store, { rollIdleMs: 50 });
    await appendMany(writer, 'a', 0, 2);
    await waitFor(async () => (await store.usage(Q)).segments === 2, { message: 'the idle segment to be sealed' });
    const compaction = await store.compact(Q, 'a.w0', () => false);
    assert.deepEqual([compaction.segmentsDeleted, compaction.framesRemoved], [1, 2]);
    // Appends go on in the new segment, with the next offsets.
    const next = await writer.append('a', FrameType.MESSAGE, body(2));
    assert.deepEqual([next.offset, next.segment, next.position], [2, 2, 0]);
    assert.deepEqual(offsets(await readAll(store, 'a.w0')), [2]);
  });

  test(`${name}: an open segment that keeps getting appends is not rolled for being idle`, async (t) => {
    const store = await open(t, make);
    const rollIdleMs = 1000;
    const writer = await claim(t, store, { rollIdleMs });
    const started = Date.now();
    let last = started;
    let longGaps = 0;
    for (let n = 0; Date.now() - started < 2.5 * rollIdleMs; n++) {
      await appendMany(writer, 'a', n, 1);
      if (Date.now() - last >= rollIdleMs) longGaps++;
      last = Date.now();
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    // Only a pause of a whole idle period (a stalled machine) may have rolled it: at most one roll per pause.
    const segments = (await store.usage(Q)).segments;
    assert.ok(segments <= 1 + longGaps, `${segments} segments after appends with ${longGaps} pause(s) of ${rollIdleMs} ms`);
  });

  test(`${name}: compaction deletes a sealed segment nothing is kept of and rewrites one mostly dropped`, async (t) => {
    const store = await open(t, make);
    const writer = await claim(t, store, { segmentBytes: SEGMENT_BYTES });
    const results = await appendMany(writer, 'a', 0, 10);
    const bases = [...new Set(results.map((r) => r.segment))];
    assert.deepEqual(bases, [0, 3, 6, 9], 'three frames per segment (the layout this test relies on)');
    // Segment 0: nothing kept. Segment 3: one of three kept. Segment 6: two of three kept. Segment 9: open.
    const kept = new Set([4, 6, 7]);
    const before = await store.usage(Q);
    const actions: string[] = [];
    const asked: number[] = [];
    const result = await store.compact(Q, 'a.w0', (frame) => {
      asked.push(frame.offset);
      return kept.has(frame.offset);
    }, { onSegment: (_segment, action) => actions.push(action) });
    assert.deepEqual(actions, ['deleted', 'rewritten', 'kept', 'kept']);
    assert.deepEqual([result.segmentsDeleted, result.segmentsRewritten, result.framesRemoved], [1, 1, 5]);
    assert.ok(result.bytesReclaimed >= 5 * FRAME_BYTES, `reclaimed ${result.bytesReclaimed} bytes`);
    const after = await store.usage(Q);
    assert.equal(after.bytes, before.bytes - result.bytesReclaimed);
    assert.equal(after.segments, before.segments - 1);
    for (let i = 0; i < 9; i++) assert.ok(asked.includes(i), `keep was asked about sealed frame ${i}`);
    // Kept frames keep their offsets and payloads; the half-kept segment is left whole.
    const frames = await readAll(store, 'a.w0');
    assert.deepEqual(offsets(frames), [4, 6, 7, 8, 9]);
    for (const frame of frames) assert.ok(frame.payload.equals(body(frame.offset)), `payload of ${frame.offset}`);
    assert.deepEqual([frames[0]!.segment, frames[0]!.position], [3, 0], 'a rewritten segment holds its kept frames from byte 0');
    const oldHint = { segment: results[4]!.segment, position: results[4]!.position, offset: 4 };
    assert.equal((await store.frameAt(Q, 'a.w0', 4, oldHint))?.position, 0, 'a hint from before the rewrite is re-checked');
    assert.equal((await store.frameAt(Q, 'a.w0', 4))?.payload.readUInt32LE(0), 4);
    assert.equal(await store.frameAt(Q, 'a.w0', 3), undefined);
    assert.equal(await store.frameAt(Q, 'a.w0', 0), undefined);
    // The writer appends on where it was.
    assert.equal((await writer.append('a', FrameType.MESSAGE, body(10))).offset, 10);
  });

  test(`${name}: segments() describes each segment's frames by type and offset runs, as reading finds them, also after a rewrite`, async (t) => {
    const store = await open(t, make);
    const writer = await claim(t, store, { segmentBytes: SEGMENT_BYTES });
    // Messages with a record every third frame: runs of two types; three frames to a segment.
    for (let i = 0; i < 11; i++) await writer.append('a', i % 3 === 1 ? FrameType.RECORD : FrameType.MESSAGE, body(i));
    await store.compact(Q, 'a.w0', (frame) => frame.offset !== 4 && frame.offset !== 5);
    const summaries = await store.segments(Q, 'a.w0');
    const frames = await readAll(store, 'a.w0');
    assert.deepEqual(summaries.map((s) => s.base), [0, 3, 6, 9]);
    assert.deepEqual(summaries.map((s) => [s.sealed, s.complete]), [[true, true], [true, true], [true, true], [false, false]]);
    for (const summary of summaries) {
      const inSegment = frames.filter((f) => f.segment === summary.base);
      const described = inSegment.filter((f) => f.offset < summary.next.offset);
      if (summary.complete) assert.deepEqual(described, inSegment, `segment ${summary.base}: a complete summary describes every frame`);
      assert.equal(summary.frames, described.length, `segment ${summary.base}: frames`);
      const types = new Map<number, { frames: number; bytes: number }>();
      for (const f of described) types.set(f.type, { frames: (types.get(f.type)?.frames ?? 0) + 1, bytes: (types.get(f.type)?.bytes ?? 0) + f.bytes });
      assert.deepEqual(new Map(summary.types), types, `segment ${summary.base}: totals per type`);
      const inRuns = summary.runs.flatMap((r) => Array.from({ length: r.to - r.from }, (_, i) => [r.type, r.from + i]));
      assert.deepEqual(inRuns, described.map((f) => [f.type, f.offset]), `segment ${summary.base}: runs`);
      assert.equal(summary.firstOffset, described[0]?.offset);
      assert.equal(summary.lastOffset, described.at(-1)?.offset);
      // A reader from `next` finds the frames after the described ones.
      const rest = await readAll(store, 'a.w0', summary.next.offset);
      assert.deepEqual(offsets(rest), offsets(frames.filter((f) => f.offset >= summary.next.offset)));
    }
    assert.deepEqual(summaries[1]!.runs, [{ type: FrameType.MESSAGE, from: 3, to: 4 }], 'the rewritten segment holds offset 3 alone');
    assert.notEqual(summaries[1]!.id, summaries[2]!.id);
  });

  test(`${name}: compaction leaves the open segment while its writer is open, retires it after, and offsets go on`, async (t) => {
    const store = await open(t, make);
    const writer = await claim(t, store);
    await appendMany(writer, 'a', 0, 2);
    await writer.roll('a'); // segment 0 sealed: kept below, so that the tail is not the only segment
    await appendMany(writer, 'a', 2, 3);
    const keepSealed = (frame: StoredFrame): boolean => frame.offset < 2;
    const actions: string[] = [];
    const onSegment = (_segment: string, action: string): void => void actions.push(action);
    const whileOpen = await store.compact(Q, 'a.w0', keepSealed, { onSegment });
    assert.deepEqual([whileOpen.segmentsDeleted, whileOpen.segmentsRewritten, whileOpen.framesRemoved, whileOpen.bytesReclaimed], [0, 0, 0, 0]);
    assert.deepEqual(offsets(await readAll(store, 'a.w0')), [0, 1, 2, 3, 4]);
    await writer.close();
    const partly = await store.compact(Q, 'a.w0', (frame) => frame.offset < 2 || frame.offset === 3, { onSegment });
    assert.equal(partly.framesRemoved, 0, 'a last segment keeping a frame is left whole');
    assert.deepEqual(offsets(await readAll(store, 'a.w0')), [0, 1, 2, 3, 4]);
    const follower = store.reader(Q, 'a.w0', { offset: 5 });
    defer(t, () => follower.close());
    const sizeBefore = (await store.usage(Q)).bytes;
    const retired = await store.compact(Q, 'a.w0', keepSealed, { onSegment });
    assert.deepEqual(actions, ['kept', 'kept', 'kept', 'kept', 'kept', 'retired']);
    assert.deepEqual([retired.segmentsDeleted, retired.framesRemoved], [1, 3]);
    assert.ok(retired.bytesReclaimed >= 3 * FRAME_BYTES);
    assert.deepEqual(offsets(await readAll(store, 'a.w0')), [0, 1]);
    assert.equal((await store.usage(Q)).bytes, sizeBefore - retired.bytesReclaimed);
    assert.deepEqual((await store.streams(Q)).map((s) => s.name), ['a.w0']);
    // The next writer of the slot continues the offsets (none is ever given twice), in a segment of its own.
    const next = await claim(t, store);
    assert.equal(next.slot, 0);
    const appended = await next.append('a', FrameType.MESSAGE, body(5));
    assert.deepEqual([appended.offset, appended.segment, appended.position], [5, 5, 0]);
    assert.deepEqual(offsets((await follower.read()).frames), [5]);
    assert.deepEqual(offsets(await readAll(store, 'a.w0')), [0, 1, 5]);
  });

  test(`${name}: a writer that claims the slot while compaction looks at the tail keeps it from being retired`, async (t) => {
    const store = await open(t, make);
    const first = await claim(t, store);
    await appendMany(first, 'a', 0, 3);
    await first.close();
    let second: LogWriter | undefined;
    const result = await store.compact(Q, 'a.w0', async () => {
      second ??= await claim(t, store);
      return false;
    });
    assert.equal(second?.slot, 0);
    assert.deepEqual([result.segmentsDeleted, result.framesRemoved], [0, 0]);
    assert.deepEqual(offsets(await readAll(store, 'a.w0')), [0, 1, 2]);
    assert.equal((await second.append('a', FrameType.MESSAGE, body(3))).offset, 3);
  });

  test(`${name}: compaction skips segments from keepFrom on and stops when its signal fired`, async (t) => {
    const store = await open(t, make);
    const writer = await claim(t, store, { segmentBytes: SEGMENT_BYTES });
    await appendMany(writer, 'a', 0, 10);
    const aborted = await store.compact(Q, 'a.w0', () => false, { signal: AbortSignal.abort(), onSegment: () => assert.fail('no segment looked at') });
    assert.deepEqual([aborted.segmentsDeleted, aborted.framesRemoved], [0, 0]);
    const asked: number[] = [];
    const actions: string[] = [];
    const keepNone = (frame: StoredFrame): boolean => {
      asked.push(frame.offset);
      return false;
    };
    const result = await store.compact(Q, 'a.w0', keepNone, {
      keepFrom: 3,
      onSegment: (_segment, action) => actions.push(action),
    });
    assert.deepEqual(actions, ['deleted']);
    assert.deepEqual(asked, [0, 1, 2], 'segments starting at keepFrom are not even read');
    assert.equal(result.framesRemoved, 3);
    assert.deepEqual(offsets(await readAll(store, 'a.w0')), range(3, 10));
  });

  test(`${name}: compaction asks decide about each segment first: keep leaves it unread, drop removes a sealed one unread`, async (t) => {
    const store = await open(t, make);
    const writer = await claim(t, store, { segmentBytes: SEGMENT_BYTES });
    await appendMany(writer, 'a', 0, 10);
    await writer.close();
    const asked: number[] = [];
    const decisions = new Map<number, SegmentDecision>([[0, 'drop'], [3, 'keep'], [6, 'read'], [9, 'drop']]);
    const seen: { base: number; complete: boolean; frames: number }[] = [];
    const result = await store.compact(Q, 'a.w0', (frame) => {
      asked.push(frame.offset);
      return frame.offset !== 6 && frame.offset !== 7;
    }, {
      decide: (summary) => {
        seen.push({ base: summary.base, complete: summary.complete, frames: summary.frames });
        return decisions.get(summary.base) ?? 'read';
      },
    });
    assert.deepEqual(seen.map((s) => s.base), [0, 3, 6, 9]);
    assert.deepEqual(seen.slice(0, 3).map((s) => [s.complete, s.frames]), [[true, 3], [true, 3], [true, 3]], 'sealed segments described whole');
    assert.deepEqual([...new Set(asked)], [6, 7, 8, 9], 'kept and dropped segments unread; the last one read though asked to drop');
    assert.deepEqual([result.segmentsDeleted, result.segmentsRewritten, result.framesRemoved], [1, 1, 5], 'segment 0 dropped (3 frames), frames 6 and 7 removed from the segment read');
    assert.deepEqual(offsets(await readAll(store, 'a.w0')), [3, 4, 5, 8, 9]);
  });

  test(`${name}: usage counts the bytes and segments of every stream of the queue, and only of it`, async (t) => {
    const store = await open(t, make);
    assert.deepEqual(await store.usage(Q), { bytes: 0, segments: 0 });
    const writer = await claim(t, store, { segmentBytes: SEGMENT_BYTES });
    await appendMany(writer, 'a', 0, 4); // two segments
    await appendMany(writer, 'b', 0, 1); // one
    await writer.close();
    const usage = await store.usage(Q);
    assert.equal(usage.segments, 3);
    assert.ok(usage.bytes >= 5 * FRAME_BYTES, `${usage.bytes} bytes hold 5 frames of ${FRAME_BYTES}`);
    const other = await claim(t, store, {}, 'inbox');
    await appendMany(other, 'a', 0, 2);
    assert.deepEqual(await store.usage(Q), usage, 'another queue\'s data is not counted');
    const inbox = await store.usage('inbox');
    assert.equal(inbox.segments, 1);
    assert.ok(inbox.bytes >= 2 * FRAME_BYTES);
  });

  test(`${name}: verify lists every frame of every segment, and each segment's totals`, async (t) => {
    const store = await open(t, make);
    const writer = await claim(t, store, { segmentBytes: SEGMENT_BYTES });
    await appendMany(writer, 'a', 0, 7); // segments 0, 3, 6
    await appendMany(writer, 'b', 0, 2);
    const events = await collect(store.verify(Q));
    assert.deepEqual(events.filter((e) => e.kind === 'corrupt' || e.kind === 'torn'), []);
    const frames = events.flatMap((e) => (e.kind === 'frame' ? [`${e.frame.stream}@${e.frame.offset}`] : []));
    assert.deepEqual(frames, [...range(0, 7).map((o) => `a.w0@${o}`), 'b.w0@0', 'b.w0@1']);
    const segments = events.filter((e) => e.kind === 'segment');
    assert.deepEqual(segments.map((s) => [s.frames, s.bytes]), [[3, 900], [3, 900], [1, 300], [2, 600]]);
    assert.equal(new Set(segments.map((s) => s.path)).size, 4, 'each segment named apart');
    // Each segment's frames come before its totals, named by the same path.
    let pending: string[] = [];
    for (const e of events) {
      if (e.kind === 'frame') pending.push(e.path);
      if (e.kind === 'segment') {
        assert.deepEqual(pending, Array.from({ length: e.frames }, () => e.path));
        pending = [];
      }
    }
    const one = await collect(store.verify(Q, { stream: 'a.w0', segment: 3 }));
    assert.deepEqual(one.map((e) => (e.kind === 'frame' ? e.frame.offset : e.kind)), [3, 4, 5, 'segment']);
    const stream = await collect(store.verify(Q, { stream: 'b.w0' }));
    assert.deepEqual(stream.map((e) => (e.kind === 'frame' ? e.frame.offset : e.kind)), [0, 1, 'segment']);
  });

  test(`${name}: a change feed wakes its waiter at once after an append, and calls onChange`, async (t) => {
    const store = await open(t, make);
    const writer = await claim(t, store);
    await writer.append('a', FrameType.MESSAGE, body(0)); // the queue exists
    const feed = store.changes(Q);
    defer(t, () => feed.close());
    await feed.whenReady();
    let calls = 0;
    const stop = feed.onChange(() => calls++);
    const seen = feed.generation;
    const started = performance.now();
    const waiting = feed.changedSince(seen);
    await writer.append('a', FrameType.MESSAGE, body(1));
    await waiting;
    const elapsedMs = performance.now() - started;
    assert.ok(elapsedMs < 500, `woke after ${elapsedMs.toFixed(0)} ms, not at the 1 s fallback`);
    assert.ok(feed.generation > seen);
    assert.ok(calls >= 1, 'onChange fired');
    stop();
    // A change already past `seen` returns at once.
    const again = performance.now();
    await feed.changedSince(seen);
    assert.ok(performance.now() - again < 100);
  });

  test(`${name}: a compaction that removes a segment wakes the followers`, async (t) => {
    const store = await open(t, make);
    const writer = await claim(t, store);
    await appendMany(writer, 'a', 0, 2);
    await writer.roll('a');
    const feed = store.changes(Q);
    defer(t, () => feed.close());
    await feed.whenReady();
    const seen = feed.generation;
    const started = performance.now();
    const waiting = feed.changedSince(seen);
    assert.equal((await store.compact(Q, 'a.w0', () => false)).segmentsDeleted, 1);
    await waiting;
    assert.ok(performance.now() - started < 500, 'woke by the change, not the fallback');
  });

  test(`${name}: waiting on a change feed ends with the signal, and with close()`, async (t) => {
    const store = await open(t, make);
    const writer = await claim(t, store);
    await writer.append('a', FrameType.MESSAGE, body(0));
    const feed = store.changes(Q);
    defer(t, () => feed.close());
    await feed.whenReady();
    await assert.rejects(feed.changedSince(feed.generation, AbortSignal.abort()), { code: 'ERR_ABORTED' });
    const controller = new AbortController();
    const aborted = feed.changedSince(feed.generation, controller.signal);
    controller.abort();
    await assert.rejects(aborted, { code: 'ERR_ABORTED' });
    const started = performance.now();
    const waiting = feed.changedSince(feed.generation);
    await feed.close();
    await waiting;
    assert.ok(performance.now() - started < 500, 'close wakes the waiter');
    await feed.close();
    await assert.rejects(feed.changedSince(0), { code: 'ERR_CLOSED' });
  });

  test(`${name}: an append that would pass the queue's size limit fails with ERR_QUEUE_FULL and stores nothing`, async (t) => {
    const store = await open(t, make);
    const limit = 1000;
    const writer = await claim(t, store, { maxBytes: limit, segmentBytes: SEGMENT_BYTES });
    let accepted = 0;
    let refusal: unknown;
    for (let i = 0; i < 10 && refusal === undefined; i++) {
      try {
        await writer.append('a', FrameType.MESSAGE, body(i));
        accepted++;
      } catch (err) {
        refusal = err;
      }
    }
    assert.ok(accepted >= 1, 'an append within the limit is stored');
    assert.ok(accepted * FRAME_BYTES <= limit, `${accepted} frames stored under a limit of ${limit} bytes`);
    assert.equal((refusal as { code?: string } | undefined)?.code, 'ERR_QUEUE_FULL');
    assert.deepEqual(offsets(await readAll(store, 'a.w0')), range(0, accepted));
    // The limit is the queue's, over every writer; a writer without a limit is not held back.
    const second = await claim(t, store, { maxBytes: limit });
    await assert.rejects(second.append('a', FrameType.MESSAGE, body(0)), { code: 'ERR_QUEUE_FULL' });
    const unlimited = await claim(t, store);
    assert.equal((await unlimited.append('a', FrameType.MESSAGE, body(0))).offset, 0);
  });

  test(`${name}: a bad stream key is refused with ERR_INVALID_ARG and stores nothing`, async (t) => {
    const store = await open(t, make);
    const writer = await claim(t, store);
    for (const key of ['', 'A', '../x', 'a.w0', 'a'.repeat(17), 'a b']) {
      await assert.rejects(writer.append(key, FrameType.MESSAGE, body(0)), { code: 'ERR_INVALID_ARG' }, JSON.stringify(key));
    }
    assert.deepEqual(await store.streams(Q), []);
    assert.equal((await writer.append('a'.repeat(16), FrameType.MESSAGE, body(0))).offset, 0, 'the longest good key');
  });

  // FileLogStore.frameAt validates the name before it returns its promise, so it throws instead (reported).
  test(`${name}: a name that is not a stream's is refused with ERR_INVALID_ARG, by rejecting where a promise is due`, async (t) => {
    const store = await open(t, make);
    assert.throws(() => store.reader(Q, 'a'), { code: 'ERR_INVALID_ARG' });
    await assert.rejects(store.compact(Q, 'a.w', () => true), { code: 'ERR_INVALID_ARG' });
    await assert.rejects(collect(store.verify(Q, { stream: '../a.w0' })), { code: 'ERR_INVALID_ARG' });
    let found: Promise<unknown> | undefined;
    assert.doesNotThrow(() => void (found = store.frameAt(Q, 'A.w0', 0)), 'frameAt returns a promise, whatever its arguments');
    await assert.rejects(found!, { code: 'ERR_INVALID_ARG' });
  });

  test(`${name}: a closed writer rejects appends and rolls with ERR_CLOSED; close() is idempotent`, async (t) => {
    const store = await open(t, make);
    const writer = await claim(t, store);
    await writer.append('a', FrameType.MESSAGE, body(0));
    await writer.close();
    await writer.close();
    await assert.rejects(writer.append('a', FrameType.MESSAGE, body(1)), { code: 'ERR_CLOSED' });
    await assert.rejects(writer.roll('a'), { code: 'ERR_CLOSED' });
    assert.deepEqual(offsets(await readAll(store, 'a.w0')), [0]);
    const reader = store.reader(Q, 'a.w0');
    await reader.close();
    await reader.close();
    await assert.rejects(reader.read(), { code: 'ERR_CLOSED' });
  });
}
