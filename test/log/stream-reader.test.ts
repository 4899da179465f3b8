import assert from 'node:assert/strict';
import { open, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { FrameType, encodeFrame } from '../../src/log/frame.js';
import { SegmentReader } from '../../src/log/segment.js';
import { StreamReader } from '../../src/log/stream-reader.js';
import { StreamWriter } from '../../src/log/stream-writer.js';
import { tempDir } from '../helpers/index.js';

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
  const dir = join(await tempDir(t), 's');
  const writer = await StreamWriter.open(dir);
  const first = await writer.append(FrameType.MESSAGE, Buffer.from('whole'));
  await writer.close();
  const handle = await open(join(dir, '00000000000000000000.seg'), 'a');
  await handle.write(encodeFrame(FrameType.MESSAGE, 1, Buffer.alloc(64, 1)).subarray(0, 30));
  await handle.close();
  const reader = new StreamReader(dir);
  const read = await reader.read();
  await reader.close();
  assert.equal(read.state, 'torn');
  assert.equal(read.frames.length, 1);
  assert.equal(read.torn?.position, first.bytes);
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

test('an invalid frame with data after it is corruption, reported with file and byte offset', async (t) => {
  const dir = join(await tempDir(t), 's');
  const path = join(dir, 'x.seg');
  const { mkdir } = await import('node:fs/promises');
  await mkdir(dir);
  const a = encodeFrame(FrameType.MESSAGE, 0, Buffer.from('first'));
  const b = encodeFrame(FrameType.MESSAGE, 1, Buffer.from('second'));
  const c = encodeFrame(FrameType.MESSAGE, 2, Buffer.from('third'));
  b[b.length - 1] = b[b.length - 1]! ^ 0xff;
  await writeFile(path, Buffer.concat([a, b, c]));
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

test('non-zero bytes after a zero where a frame should start are corruption', async (t) => {
  const dir = join(await tempDir(t), 's');
  const path = join(dir, 'x.seg');
  const { mkdir } = await import('node:fs/promises');
  await mkdir(dir);
  const a = encodeFrame(FrameType.MESSAGE, 0, Buffer.from('first'));
  const b = encodeFrame(FrameType.MESSAGE, 1, Buffer.from('second'));
  b[0] = 0;
  await writeFile(path, Buffer.concat([a, b]));
  const reader = await SegmentReader.open(path);
  await reader.next();
  await assert.rejects(reader.next(), { code: 'ERR_CORRUPT_FRAME' });
  await reader.close();
});

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
