import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { readdir, readFile, rm, stat, truncate, appendFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { FrameType, encodeFrame } from '../../src/log/frame.js';
import { StreamReader } from '../../src/log/stream-reader.js';
import { StreamWriter } from '../../src/log/stream-writer.js';
import { smallDisk } from '../helpers/disk.ts';
import { tempDir } from '../helpers/index.js';

/** A SYNC frame: 20-byte header and an 8-byte synced length. */
const SYNC_FRAME_BYTES = 28;

async function readAll(dir: string): Promise<{ offset: number; payload: string }[]> {
  const reader = new StreamReader(dir);
  try {
    const read = await reader.read();
    return read.frames.map((f) => ({ offset: f.offset, payload: f.payload.toString() }));
  } finally {
    await reader.close();
  }
}

test('appends get consecutive offsets and are readable after close', async (t) => {
  const dir = join(await tempDir(t), 's');
  const writer = await StreamWriter.open(dir);
  for (let i = 0; i < 5; i++) {
    const result = await writer.append(FrameType.MESSAGE, Buffer.from(`m${i}`));
    assert.equal(result.offset, i);
  }
  await writer.close();
  assert.deepEqual(await readAll(dir), [0, 1, 2, 3, 4].map((i) => ({ offset: i, payload: `m${i}` })));
});

test('concurrent appends share fsyncs (group commit)', async (t) => {
  const dir = join(await tempDir(t), 's');
  let flushes = 0;
  const writer = await StreamWriter.open(dir, { onFlush: () => flushes++ });
  const results = await Promise.all(Array.from({ length: 200 }, (_, i) => writer.append(FrameType.MESSAGE, Buffer.from(`m${i}`))));
  await writer.close();
  assert.deepEqual(results.map((r) => r.offset), Array.from({ length: 200 }, (_, i) => i));
  assert.ok(flushes < 20, `expected few flushes for 200 concurrent appends, got ${flushes}`);
});

test('the zero-filled preallocation is trimmed on close, and a sync mark ends the segment', async (t) => {
  const dir = join(await tempDir(t), 's');
  const writer = await StreamWriter.open(dir);
  const { bytes } = await writer.append(FrameType.MESSAGE, Buffer.from('x'));
  const segment = join(dir, '00000000000000000000.seg');
  assert.ok((await stat(segment)).size > bytes, 'expected a preallocated tail while open');
  await writer.close();
  const image = await readFile(segment);
  assert.equal(image.length, bytes + SYNC_FRAME_BYTES);
  // The closing mark states that everything before it was fsync'd, and takes no offset of its own.
  assert.equal(image[bytes + 2], FrameType.SYNC);
  assert.equal(Number(image.readBigUInt64LE(bytes + 8)), 1, 'the mark carries the next offset');
  assert.equal(Number(image.readBigUInt64LE(bytes + 20)), bytes, 'the mark states the synced length');
});

test('a lone append is followed by its sync mark before the event loop turns', async (t) => {
  // A follower in another process hands a frame out once a mark covers it; without one it fdatasyncs
  // the segment itself. The writer's process may be busy after the fsync (a receiver answering its
  // peer): the mark must not wait for a later turn.
  const dir = join(await tempDir(t), 's');
  const writer = await StreamWriter.open(dir);
  t.after(() => writer.close());
  const segment = join(dir, '00000000000000000000.seg');
  const first = await writer.append(FrameType.MESSAGE, Buffer.from('first'));
  const second = await writer.append(FrameType.MESSAGE, Buffer.from('second'));
  // The first turn of the loop after the append resolved: I/O callbacks queued by then have not run.
  await new Promise((resolve) => setImmediate(resolve));
  const image = readFileSync(segment);
  const end = second.position + second.bytes;
  assert.equal(image[end + 2], FrameType.SYNC, `expected a sync mark right after the second frame (the first ended at ${first.position + first.bytes})`);
  assert.equal(Number(image.readBigUInt64LE(end + 20)), end, 'the mark states the synced length');
});

test('a stream rolls to a new segment named by its base offset at segmentBytes', async (t) => {
  const dir = join(await tempDir(t), 's');
  const writer = await StreamWriter.open(dir, { segmentBytes: 1024 });
  for (let i = 0; i < 20; i++) await writer.append(FrameType.MESSAGE, Buffer.alloc(200, i));
  await writer.close();
  const names = (await readdir(dir)).filter((name) => name.endsWith('.seg')).sort();
  assert.ok(names.length >= 4, `expected several segments, got ${names.join(' ')}`);
  assert.equal(names[0], '00000000000000000000.seg');
  for (const name of names.slice(0, -1)) assert.ok((await stat(join(dir, name))).size <= 1024);
  const frames = await readAll(dir);
  assert.deepEqual(frames.map((f) => f.offset), Array.from({ length: 20 }, (_, i) => i));
  // Each segment's name is the offset of its first frame.
  const reader = new StreamReader(dir);
  const read = await reader.read();
  await reader.close();
  const firstOfSegment = new Map<number, number>();
  for (const f of read.frames) if (!firstOfSegment.has(f.segment)) firstOfSegment.set(f.segment, f.offset);
  assert.deepEqual([...firstOfSegment.keys()].map((base) => `${String(base).padStart(20, '0')}.seg`), names);
  for (const [base, first] of firstOfSegment) assert.equal(base, first);
});

test('offsets continue after reopening', async (t) => {
  const dir = join(await tempDir(t), 's');
  let writer = await StreamWriter.open(dir, { segmentBytes: 1024 });
  for (let i = 0; i < 7; i++) await writer.append(FrameType.MESSAGE, Buffer.alloc(300));
  await writer.close();
  writer = await StreamWriter.open(dir, { segmentBytes: 1024 });
  assert.equal(writer.nextOffset, 7);
  assert.equal((await writer.append(FrameType.MESSAGE, Buffer.from('next'))).offset, 7);
  await writer.close();
});

test('reopening cuts a torn final frame and reports it', async (t) => {
  const dir = join(await tempDir(t), 's');
  let writer = await StreamWriter.open(dir);
  for (let i = 0; i < 3; i++) await writer.append(FrameType.MESSAGE, Buffer.from(`m${i}`));
  await writer.close();
  const segment = join(dir, '00000000000000000000.seg');
  const goodSize = (await stat(segment)).size;
  await appendFile(segment, encodeFrame(FrameType.MESSAGE, 3, Buffer.alloc(100, 7)).subarray(0, 60));
  writer = await StreamWriter.open(dir);
  assert.deepEqual(writer.recoveredTruncation && { position: writer.recoveredTruncation.position, bytes: writer.recoveredTruncation.bytes }, {
    position: goodSize,
    bytes: 60,
  });
  assert.equal(writer.nextOffset, 3);
  await writer.append(FrameType.MESSAGE, Buffer.from('m3'));
  await writer.close();
  assert.deepEqual((await readAll(dir)).map((f) => f.payload), ['m0', 'm1', 'm2', 'm3']);
});

test('a corrupt frame before the end stops recovery with ERR_CORRUPT_FRAME', async (t) => {
  const dir = join(await tempDir(t), 's');
  const writer = await StreamWriter.open(dir);
  for (let i = 0; i < 3; i++) await writer.append(FrameType.MESSAGE, Buffer.from(`message ${i}`));
  await writer.close();
  const segment = join(dir, '00000000000000000000.seg');
  // Without the index the closing writer left (as a node written before indexes had), recovery reads
  // the segment from byte 0.
  await rm(join(dir, '00000000000000000000.idx'));
  const { open } = await import('node:fs/promises');
  const handle = await open(segment, 'r+');
  await handle.write(Buffer.from([0xff]), 0, 1, 25); // inside the first frame's payload
  await handle.close();
  await assert.rejects(StreamWriter.open(dir), (err: { code?: string; details?: { position?: number } }) => {
    assert.equal(err.code, 'ERR_CORRUPT_FRAME');
    assert.equal(err.details?.position, 0);
    return true;
  });
});

test('a truncated zero-length segment is recovered as empty', async (t) => {
  const dir = join(await tempDir(t), 's');
  let writer = await StreamWriter.open(dir);
  await writer.append(FrameType.MESSAGE, Buffer.from('gone'));
  await writer.close();
  await truncate(join(dir, '00000000000000000000.seg'), 0);
  writer = await StreamWriter.open(dir);
  assert.equal(writer.nextOffset, 0);
  await writer.close();
});

test('append after close is refused with ERR_CLOSED', async (t) => {
  const dir = join(await tempDir(t), 's');
  const writer = await StreamWriter.open(dir);
  await writer.close();
  await assert.rejects(writer.append(FrameType.MESSAGE, Buffer.from('x')), { code: 'ERR_CLOSED' });
  await writer.close(); // idempotent
});

test('on a full disk, what a writer acknowledges is a prefix of the appends made to it', async (t) => {
  const MiB = 1024 * 1024;
  const disk = await smallDisk(t, 10 * MiB);
  const writer = await StreamWriter.open(join(disk, 's'), { segmentBytes: 64 * MiB });
  t.after(() => writer.close());
  // 100 appends of 256 KiB at once go out as writes of up to 8 MiB: 32, 32, 32 and 4 frames. The first
  // fits, the second does not, nor the third; the last, small one would fit again after the others were
  // cut back - but it was made after a refused one, so it is refused too.
  const outcomes = await Promise.allSettled(Array.from({ length: 100 }, (_, i) => writer.append(FrameType.MESSAGE, Buffer.alloc(256 * 1024, i & 0xff))));
  const stored = outcomes.findIndex((o) => o.status === 'rejected');
  assert.ok(stored > 0 && stored < outcomes.length, `${stored} of ${outcomes.length} appends stored: the disk should have filled part-way`);
  for (const [i, o] of outcomes.entries()) {
    if (i < stored) continue;
    assert.equal(o.status, 'rejected', `append ${i} was stored after append ${stored} was refused`);
    assert.equal((o).reason.code, 'ERR_DISK_FULL');
  }
});
