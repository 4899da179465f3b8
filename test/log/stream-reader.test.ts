import assert from 'node:assert/strict';
import { open, rename, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import { FrameType, encodeFrame, encodeSyncFrame } from '../../src/log/frame.js';
import { SegmentReader } from '../../src/log/segment.js';
import { StreamReader } from '../../src/log/stream-reader.js';
import { StreamWriter } from '../../src/log/stream-writer.js';
import { tempDir } from '../helpers/index.js';

/**
 * A stream of one frame (offset 0), closed by its writer, with `tail(end)` written after the end of its
 * data (a torn write, a frame without a mark, …).
 */
async function streamWithTail(t: TestContext, tail: (end: number) => Buffer): Promise<{ dir: string; end: number }> {
  const dir = join(await tempDir(t), 's');
  const writer = await StreamWriter.open(dir);
  await writer.append(FrameType.MESSAGE, Buffer.from('m0'));
  await writer.close();
  const segment = join(dir, '00000000000000000000.seg');
  const end = (await stat(segment)).size;
  const handle = await open(segment, 'r+');
  await handle.write(tail(end), 0, undefined, end);
  await handle.close();
  return { dir, end };
}

test('a reader picks up frames appended after it reached the end, across segment rolls', async (t) => {
  const dir = join(await tempDir(t), 's');
  const writer = await StreamWriter.open(dir, { segmentBytes: 2048 });
  t.after(() => writer.close());
  const reader = new StreamReader(dir);
  t.after(() => reader.close());
  const seen: number[] = [];
  for (let round = 0; round < 10; round++) {
    await Promise.all(Array.from({ length: 7 }, () => writer.append(FrameType.MESSAGE, Buffer.alloc(150, round))));
    for (;;) {
      const read = await reader.read({ maxFrames: 3 });
      seen.push(...read.frames.map((f) => f.offset));
      if (read.state !== 'more') break;
    }
  }
  assert.deepEqual(seen, Array.from({ length: 70 }, (_, i) => i));
});

test('a reader sees the zero-filled tail of an open segment as the end, not as data', async (t) => {
  const dir = join(await tempDir(t), 's');
  const writer = await StreamWriter.open(dir);
  t.after(() => writer.close());
  await writer.append(FrameType.MESSAGE, Buffer.from('only'));
  const reader = new StreamReader(dir);
  t.after(() => reader.close());
  const read = await reader.read();
  assert.equal(read.state, 'end');
  assert.equal(read.frames.length, 1);
});

test('reading starts at a given offset and honours a position hint that checks out', async (t) => {
  const dir = join(await tempDir(t), 's');
  const writer = await StreamWriter.open(dir);
  const results = [];
  for (let i = 0; i < 10; i++) results.push(await writer.append(FrameType.MESSAGE, Buffer.from(`m${i}`)));
  await writer.close();
  const five = results[5]!;
  const reader = new StreamReader(dir, { offset: 6, hint: { segment: 0, position: five.position, offset: 5 } });
  const read = await reader.read();
  await reader.close();
  assert.deepEqual(read.frames.map((f) => f.offset), [6, 7, 8, 9]);
});

test('a stale position hint (segment rewritten) falls back to scanning by offset', async (t) => {
  const dir = join(await tempDir(t), 's');
  const segment = join(dir, '00000000000000000000.seg');
  const writer = await StreamWriter.open(dir);
  const results = [];
  for (let i = 0; i < 10; i++) results.push(await writer.append(FrameType.MESSAGE, Buffer.from(`m${i}`)));
  await writer.close();
  // Rewrite the segment with only offsets 3, 6 and 8, as compaction would.
  const kept = Buffer.concat([3, 6, 8].map((o) => encodeFrame(FrameType.MESSAGE, o, Buffer.from(`m${o}`))));
  await writeFile(`${segment}.tmp`, kept);
  await rename(`${segment}.tmp`, segment);
  const reader = new StreamReader(dir, { offset: 6, hint: { segment: 0, position: results[5]!.position, offset: 5 } });
  const read = await reader.read();
  await reader.close();
  assert.deepEqual(read.frames.map((f) => f.offset), [6, 8]);
});

test('a torn final frame is reported as torn with its position and size', async (t) => {
  const { dir, end } = await streamWithTail(t, () => encodeFrame(FrameType.MESSAGE, 1, Buffer.alloc(64, 1)).subarray(0, 30));
  const reader = new StreamReader(dir);
  const read = await reader.read();
  await reader.close();
  assert.equal(read.state, 'torn');
  assert.equal(read.frames.length, 1);
  assert.equal(read.torn?.position, end);
  assert.equal(read.torn?.bytes, 30);
});

test('a partial header followed by zeros is a torn tail', async (t) => {
  const dir = join(await tempDir(t), 's');
  const path = join(dir, 'x.seg');
  const { mkdir } = await import('node:fs/promises');
  await mkdir(dir);
  const frame = encodeFrame(FrameType.MESSAGE, 0, Buffer.from('abc'));
  await writeFile(path, Buffer.concat([frame, frame.subarray(0, 2), Buffer.alloc(4096)]));
  const reader = await SegmentReader.open(path);
  assert.equal((await reader.next()).kind, 'frame');
  const step = await reader.next();
  await reader.close();
  assert.equal(step.kind, 'torn');
});

test('an invalid frame before a sync mark that covers it is corruption, reported with file and byte offset', async (t) => {
  const dir = join(await tempDir(t), 's');
  const path = join(dir, 'x.seg');
  const { mkdir } = await import('node:fs/promises');
  await mkdir(dir);
  const a = encodeFrame(FrameType.MESSAGE, 0, Buffer.from('first'));
  const b = encodeFrame(FrameType.MESSAGE, 1, Buffer.from('second'));
  const c = encodeFrame(FrameType.MESSAGE, 2, Buffer.from('third'));
  b[b.length - 1] = b[b.length - 1]! ^ 0xff;
  // The mark states that a, b and c were fsync'd: the damage to b is damage to acknowledged data.
  await writeFile(path, Buffer.concat([a, b, c, encodeSyncFrame(3, a.length + b.length + c.length)]));
  const reader = await SegmentReader.open(path);
  assert.equal((await reader.next()).kind, 'frame');
  await assert.rejects(reader.next(), (err: { code?: string; details?: { path?: string; position?: number } }) => {
    assert.equal(err.code, 'ERR_CORRUPT_FRAME');
    assert.equal(err.details?.path, path);
    assert.equal(err.details?.position, a.length);
    return true;
  });
  await reader.close();
});

test('non-zero bytes after a zero where a frame should start are corruption when a later sync mark covers them', async (t) => {
  const dir = join(await tempDir(t), 's');
  const path = join(dir, 'x.seg');
  const { mkdir } = await import('node:fs/promises');
  await mkdir(dir);
  const a = encodeFrame(FrameType.MESSAGE, 0, Buffer.from('first'));
  const b = encodeFrame(FrameType.MESSAGE, 1, Buffer.from('second'));
  b[0] = 0;
  await writeFile(path, Buffer.concat([a, b, encodeSyncFrame(2, a.length + b.length)]));
  const reader = await SegmentReader.open(path);
  await reader.next();
  await assert.rejects(reader.next(), { code: 'ERR_CORRUPT_FRAME' });
  await reader.close();
});

/**
 * What a power cut can leave of a write that never completed its fsync: each of these tails follows a
 * sync mark that states only the bytes before the write, so each is a torn tail, never corruption.
 */
const UNSYNCED_TAILS: readonly { name: string; tail: (write: Buffer) => Buffer }[] = [
  { name: 'a prefix of the write', tail: (w) => w.subarray(0, Math.floor(w.length / 3)) },
  { name: 'a suffix only (its first part still zeros)', tail: (w) => Buffer.concat([Buffer.alloc(Math.floor(w.length / 2)), w.subarray(Math.floor(w.length / 2))]) },
  { name: 'a hole, then the rest of the write', tail: (w) => Buffer.concat([w.subarray(0, 30), Buffer.alloc(100), w.subarray(130)]) },
  { name: 'a hole, then a whole valid frame', tail: (w) => Buffer.concat([Buffer.alloc(w.length - 60), w.subarray(w.length - 60)]) },
  { name: 'a multi-page write with its middle page missing', tail: (w) => Buffer.concat([w.subarray(0, 4096), Buffer.alloc(4096), w.subarray(8192)]) },
  { name: 'garbage', tail: (w) => Buffer.alloc(w.length, 0x5c) },
];

for (const { name, tail } of UNSYNCED_TAILS) {
  test(`an unsynced write that left ${name} is a torn tail, not corruption`, async (t) => {
    const dir = join(await tempDir(t), 's');
    const path = join(dir, 'x.seg');
    const { mkdir } = await import('node:fs/promises');
    await mkdir(dir);
    const synced = Buffer.concat([encodeFrame(FrameType.MESSAGE, 0, Buffer.from('acked 0')), encodeFrame(FrameType.MESSAGE, 1, Buffer.from('acked 1'))]);
    // The last write, as a writer makes it: a sync mark for what came before, then its frames (three
    // pages, the last frame 60 bytes), then the zero-filled preallocation it overwrote.
    const frames = [encodeSyncFrame(2, synced.length)];
    for (let i = 0; i < 3; i++) frames.push(encodeFrame(FrameType.MESSAGE, 2 + i, Buffer.alloc(4096 - 20, 0x41 + i)));
    frames.push(encodeFrame(FrameType.MESSAGE, 5, Buffer.alloc(40, 0x45)));
    const write = Buffer.concat(frames);
    await writeFile(path, Buffer.concat([synced, tail(write), Buffer.alloc(64 * 1024)]));
    const reader = await SegmentReader.open(path);
    const seen: string[] = [];
    let step;
    for (;;) {
      step = await reader.next();
      if (step.kind !== 'frame') break;
      seen.push(step.frame.payload.toString().slice(0, 7));
    }
    await reader.close();
    assert.equal(step.kind, 'torn', `expected a torn tail, got ${step.kind}`);
    assert.deepEqual(seen.slice(0, 2), ['acked 0', 'acked 1'], 'every acknowledged frame is read');
    assert.ok(step.kind === 'torn' && step.position >= synced.length, 'the torn tail starts after the synced data');
  });
}

test('frames larger than the read buffer are read whole', async (t) => {
  const dir = join(await tempDir(t), 's');
  const writer = await StreamWriter.open(dir);
  const big = Buffer.alloc(3 * 1024 * 1024, 0x5a);
  await writer.append(FrameType.MESSAGE, Buffer.from('small'));
  await writer.append(FrameType.MESSAGE, big);
  await writer.append(FrameType.MESSAGE, Buffer.from('after'));
  await writer.close();
  const reader = new StreamReader(dir);
  const read = await reader.read();
  await reader.close();
  assert.deepEqual(read.frames.map((f) => f.payload.length), [5, big.length, 5]);
  assert.ok(read.frames[1]!.payload.equals(big));
});

test('the buffer of a large frame released by the caller is used again for the next one, and only then', async (t) => {
  const dir = join(await tempDir(t), 's');
  const writer = await StreamWriter.open(dir);
  const chunks = [0x11, 0x22, 0x33, 0x44].map((fill) => Buffer.alloc(1024 * 1024, fill));
  for (const chunk of chunks) await writer.append(FrameType.BODY_CHUNK, chunk);
  await writer.close();
  const reader = new StreamReader(dir, { offset: 0 }, { lend: true });
  t.after(() => reader.close());
  const one = async () => (await reader.read({ maxFrames: 1 })).frames[0]!;
  const first = await one();
  const second = await one();
  // Not released: the next large frame gets memory of its own, and the first keeps its bytes.
  assert.notEqual(second.raw.buffer, first.raw.buffer);
  reader.release([first]);
  // Released twice, or something the reader never gave out: harmless.
  reader.release([first, { ...second, raw: Buffer.alloc(16) }]);
  const third = await one();
  assert.equal(third.raw.buffer, first.raw.buffer);
  const fourth = await one();
  assert.notEqual(fourth.raw.buffer, first.raw.buffer, 'given back once, used once');
  assert.ok(second.payload.equals(chunks[1]!));
  assert.ok(third.payload.equals(chunks[2]!));
  assert.ok(fourth.payload.equals(chunks[3]!));
});

test('frames of skipped types are passed over by their headers, and the position moves past them', async (t) => {
  const dir = join(await tempDir(t), 's');
  const writer = await StreamWriter.open(dir);
  await writer.append(FrameType.MESSAGE, Buffer.from('a'));
  await writer.append(FrameType.BODY_CHUNK, Buffer.alloc(2 * 1024 * 1024, 1));
  await writer.append(FrameType.BODY_CHUNK, Buffer.alloc(10, 2));
  await writer.append(FrameType.MESSAGE, Buffer.from('b'));
  await writer.close();
  const reader = new StreamReader(dir, { offset: 0 }, { skipTypes: new Set([FrameType.BODY_CHUNK]) });
  const read = await reader.read();
  await reader.close();
  assert.deepEqual(read.frames.map((f) => [f.offset, f.payload.toString()]), [[0, 'a'], [3, 'b']]);
  assert.equal(reader.position.offset, 4);
});

test("a writer marks each write durable after its fsync, so a durable reader needs no fsync of its own", async (t) => {
  const dir = join(await tempDir(t), 's');
  const writer = await StreamWriter.open(dir);
  t.after(() => writer.close());
  for (let i = 0; i < 3; i++) await writer.append(FrameType.MESSAGE, Buffer.from(`m${i}`));
  // The data ends with a sync mark stating everything before it: a plain reader sees it.
  const plain = await SegmentReader.open(join(dir, '00000000000000000000.seg'));
  t.after(() => plain.close());
  for (let step = await plain.next(); step.kind === 'frame'; step = await plain.next());
  assert.equal(plain.syncedBytes, plain.nextPosition - 28, 'the last write is followed by a mark stating the end of data before it');

  const reader = new StreamReader(dir, { offset: 0 }, { durable: true });
  t.after(() => reader.close());
  let fsyncs = 0;
  const segmentReader = (): { sync: () => Promise<void> } => (reader as unknown as { reader: { sync: () => Promise<void> } }).reader;
  const read = await reader.read();
  const original = segmentReader().sync.bind(segmentReader());
  segmentReader().sync = async () => {
    fsyncs++;
    await original();
  };
  assert.deepEqual(read.frames.map((f) => f.offset), [0, 1, 2]);
  const { position, bytes } = await writer.append(FrameType.MESSAGE, Buffer.from('m3'));
  // The mark follows the caller's resolution (the next write opens with it when one comes at once).
  const deadline = Date.now() + 30_000;
  for (;;) {
    const look = await SegmentReader.open(join(dir, '00000000000000000000.seg'));
    for (let step = await look.next(); step.kind === 'frame'; step = await look.next());
    await look.close();
    if (look.syncedBytes >= position + bytes) break;
    assert.ok(Date.now() < deadline, 'no mark came after the write');
    await new Promise((resolve) => setImmediate(resolve));
  }
  assert.deepEqual((await reader.read()).frames.map((f) => f.offset), [3]);
  assert.equal(fsyncs, 0);
});

test('a durable reader gives back frames no sync mark covers yet, and fsyncs them itself when no mark comes', async (t) => {
  // A killed writer's last write: fsync'd, maybe, but followed by no mark.
  const { dir } = await streamWithTail(t, () => encodeFrame(FrameType.MESSAGE, 1, Buffer.from('m1')));

  const reader = new StreamReader(dir, { offset: 0 }, { durable: true });
  t.after(() => reader.close());
  const first = await reader.read();
  assert.deepEqual(first.frames.map((f) => f.offset), [0], 'the unmarked frame is not handed out at once');
  assert.equal(first.state, 'end');
  const deadline = Date.now() + 30_000;
  let later: number[] = [];
  while (later.length === 0) {
    assert.ok(Date.now() < deadline, 'the unmarked frame was never handed out');
    await new Promise((resolve) => setImmediate(resolve));
    later = (await reader.read()).frames.map((f) => f.offset);
  }
  assert.deepEqual(later, [1], 'handed out once fsync\'d by the reader, and only once');
});

/** Counts the fdatasyncs a stream reader makes of its segment from now on. */
function countFsyncs(reader: StreamReader): { readonly count: number } {
  const counter = { count: 0 };
  const segmentReader = (reader as unknown as { reader: { sync: () => Promise<void> } }).reader;
  const original = segmentReader.sync.bind(segmentReader);
  segmentReader.sync = async () => {
    counter.count++;
    await original();
  };
  return counter;
}

test('a reader that stopped at a limit before the writer\'s sync mark finds the mark instead of fsyncing', async (t) => {
  const dir = join(await tempDir(t), 's');
  const writer = await StreamWriter.open(dir);
  t.after(() => writer.close());
  await writer.appendMany(Array.from({ length: 5 }, (_, i) => ({ type: FrameType.MESSAGE, payload: Buffer.from(`m${i}`) })));
  const reader = new StreamReader(dir);
  t.after(() => reader.close());
  const read = await reader.read({ maxFrames: 2 });
  assert.deepEqual(read.frames.map((f) => f.offset), [0, 1]);
  const fsyncs = countFsyncs(reader);
  await reader.sync();
  assert.equal(fsyncs.count, 0, 'the mark after frames 2–4 covers what was read');
  assert.deepEqual((await reader.read()).frames.map((f) => f.offset), [2, 3, 4], 'the look ahead did not move the reader');
});

test('a reader that stopped early in a large write finds the mark after it, and needs no look for the next reads of that write', async (t) => {
  const dir = join(await tempDir(t), 's');
  const writer = await StreamWriter.open(dir);
  t.after(() => writer.close());
  // One write of 1,000 frames of 1 KiB (about 1 MiB): its mark comes after all of them.
  await writer.appendMany(Array.from({ length: 1000 }, (_, i) => ({ type: FrameType.MESSAGE, payload: Buffer.alloc(1024, i % 256) })));
  const reader = new StreamReader(dir);
  t.after(() => reader.close());
  let fsyncs: { readonly count: number } | undefined;
  for (let from = 0; from < 1000; from += 50) {
    const read = await reader.read({ maxFrames: 50 });
    assert.deepEqual([read.frames[0]?.offset, read.frames.length], [from, 50]);
    fsyncs ??= countFsyncs(reader);
    await reader.sync();
  }
  assert.equal(fsyncs?.count, 0, 'the mark after the write covers every read of it');
});

for (const [name, damage] of [
  ['a mark whose CRC does not match', (mark: Buffer) => void mark.writeUInt8(mark.readUInt8(mark.length - 1) ^ 0xff, mark.length - 1)],
  ['a mark that states bytes after itself', (mark: Buffer) => void encodeSyncFrame(1, 1 << 20).copy(mark)],
] as const) {
  test(`a reader does not trust ${name}: it fsyncs the segment itself`, async (t) => {
    const { dir } = await streamWithTail(t, (end) => {
      const frame = encodeFrame(FrameType.MESSAGE, 1, Buffer.from('m1'));
      const mark = encodeSyncFrame(1, end + frame.length);
      damage(mark);
      return Buffer.concat([frame, mark]);
    });

    const reader = new StreamReader(dir);
    t.after(() => reader.close());
    assert.deepEqual((await reader.read({ maxFrames: 2 })).frames.map((f) => f.offset), [0, 1]);
    const fsyncs = countFsyncs(reader);
    await reader.sync();
    assert.equal(fsyncs.count, 1);
  });
}
