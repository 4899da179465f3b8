/**
 * Segment indexes (spec/log-format.md §16): written beside every sealed segment and as checkpoints of
 * the open one, used to start reading inside a segment and to reopen a stream without reading what the
 * writer already described; checked on use, rebuilt when missing, stale or damaged, never trusted
 * blindly.
 */
import assert from 'node:assert/strict';
import { readFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { test } from 'node:test';
import { FileLogStore } from '../../src/log/file-log-store.ts';
import { FrameType } from '../../src/log/frame.ts';
import type { DamagedRange, StoredFrame } from '../../src/log/log-store.ts';
import { SegmentIndex } from '../../src/log/segment-index.ts';
import { StreamWriter } from '../../src/log/stream-writer.ts';
import { flipByte, framesOf } from '../helpers/crash.ts';
import { mqlog, tempDir, waitFor } from '../helpers/index.ts';

const SEGMENT_BYTES = 64 * 1024;
/** Frames of mixed sizes and types, so that entries, runs and totals all have something to say. */
function payloadOf(i: number): Buffer {
  return Buffer.alloc(100 + ((i * 37) % 900), i % 251);
}
function typeOf(i: number): number {
  return i % 7 === 3 ? FrameType.BODY_CHUNK : FrameType.MESSAGE;
}

async function writeStream(dir: string, count: number, segmentBytes = SEGMENT_BYTES, type = typeOf): Promise<void> {
  const writer = await StreamWriter.open(dir, { segmentBytes });
  for (let i = 0; i < count; i += 50) await Promise.all(Array.from({ length: Math.min(50, count - i) }, (_, j) => writer.append(type(i + j), payloadOf(i + j))));
  await writer.close();
}

async function segmentsOf(dir: string): Promise<string[]> {
  return (await readdir(dir)).filter((n) => n.endsWith('.seg')).sort().map((n) => join(dir, n));
}

function indexOf(segment: string): string {
  return segment.replace(/\.seg$/, '.idx');
}

/** Reads a stream `…/q/<stream>` to its end from `offset`, through a FileLogStore (which has the indexes). */
async function readAllFrom(dir: string, offset: number, damaged: DamagedRange[] = []): Promise<StoredFrame[]> {
  const store = new FileLogStore(join(dir, '..', '..'));
  const reader = store.reader('q', basename(dir), { offset });
  try {
    const frames: StoredFrame[] = [];
    for (;;) {
      const read = await reader.read({ maxFrames: 100 });
      frames.push(...read.frames);
      damaged.push(...(read.damaged ?? []));
      if (read.state !== 'more') return frames;
    }
  } finally {
    await reader.close();
    await store.close();
  }
}

/** The index a scan of the segment file finds (what the writer's must equal). */
async function scannedIndexOf(segment: string): Promise<{ frames: number; types: Map<number, { frames: number; bytes: number }>; first: number | undefined; last: number | undefined }> {
  const { frames } = await framesOf(segment);
  const types = new Map<number, { frames: number; bytes: number }>();
  for (const f of frames) {
    const t = types.get(f.type) ?? { frames: 0, bytes: 0 };
    types.set(f.type, { frames: t.frames + 1, bytes: t.bytes + f.bytes });
  }
  return { frames: frames.length, types, first: frames[0]?.offset, last: frames.at(-1)?.offset };
}

test('every sealed segment gets an index that describes its frames and finds each frame by offset', async (t) => {
  const dir = join(await tempDir(t), 'q', 'p4.w0');
  await writeStream(dir, 600);
  const segments = await segmentsOf(dir);
  assert.ok(segments.length >= 4, `several segments, got ${segments.length}`);
  for (const [i, segment] of segments.entries()) {
    const base = Number(segment.slice(-24, -4));
    const index = SegmentIndex.decode(await readFile(indexOf(segment)), base);
    assert.ok(index instanceof SegmentIndex, `${segment}: ${typeof index === 'string' ? index : ''}`);
    assert.equal(index.state, i < segments.length - 1 ? 'sealed' : 'partial', 'sealed beside a sealed segment; a checkpoint beside the open one');
    assert.equal(index.coveredBytes, (await stat(segment)).size, 'describes the whole file');
    const scanned = await scannedIndexOf(segment);
    assert.equal(index.frames, scanned.frames);
    assert.deepEqual(new Map(index.types), scanned.types);
    assert.equal(index.firstOffset, scanned.first);
    assert.equal(index.lastOffset, scanned.last);
    assert.equal(index.runs.reduce((n, r) => n + r.to - r.from, 0), scanned.frames, 'runs hold every frame once');
    const { frames } = await framesOf(segment);
    for (const entry of index.entries) {
      const frame = frames.find((f) => f.position === entry.position);
      assert.equal(frame?.offset, entry.offset, `entry ${entry.offset} points at a frame with that offset`);
    }
    assert.ok(index.entries.length >= Math.floor(index.coveredBytes / (16 * 1024)), 'an entry every 16 KiB');
  }
});

test('a reader opening at an offset inside a sealed segment starts at an index entry, not at byte 0', async (t) => {
  const dir = join(await tempDir(t), 'q', 'p4.w0');
  await writeStream(dir, 600);
  const [first] = await segmentsOf(dir);
  const { frames } = await framesOf(first!);
  const late = frames.at(-3)!;
  // Damage the first frame: a reader that read the segment from byte 0 would meet it (and report it).
  await flipByte(first!, 30);
  const damaged: DamagedRange[] = [];
  const read = await readAllFrom(dir, late.offset, damaged);
  assert.equal(read[0]?.offset, late.offset, 'the frame asked for, read from near its place');
  assert.equal(read.length, 600 - late.offset);
  assert.deepEqual(damaged, [], 'the damaged frame at the start was never read');
  // Without the index, the reader has to read from byte 0 and meets the damage (and passes over it).
  await rm(indexOf(first!));
  const scanned = await readAllFrom(dir, late.offset, damaged);
  assert.equal(read[0]?.offset, late.offset);
  assert.equal(scanned.length, 600 - late.offset);
  assert.equal(damaged.length, 1, 'the scan from byte 0 met the damage');
});

test('a stale or damaged index is never trusted: the frame it points at is checked, and reading falls back to a scan', async (t) => {
  const root = await tempDir(t);
  const dir = join(root, 'q', 'p4.w0');
  await writeStream(dir, 600);
  const [first] = await segmentsOf(dir);
  // An index whose entries name earlier offsets than the frames they point at (what an index of other
  // frames under this name would say): a reader that believed it would skip the frames in between.
  const real = SegmentIndex.decode(await readFile(indexOf(first!)), 0) as SegmentIndex;
  const forged = new SegmentIndex({ ...real, types: real.types, runs: real.runs, last: real.last, entries: real.entries.map((e, i) => (i === 0 ? e : { offset: e.offset - 10, position: e.position })) });
  await writeFile(indexOf(first!), forged.encode());
  const { frames } = await framesOf(first!);
  for (const entry of real.entries.slice(1, 4)) {
    const wanted = entry.offset - 5;
    const read = await readAllFrom(dir, wanted);
    assert.deepEqual(read.map((f) => f.offset), Array.from({ length: 600 - wanted }, (_, i) => wanted + i), `from ${wanted}`);
  }
  // A damaged file: rebuilt by the next store that needs it, and then right again.
  await flipByte(indexOf(first!), 70);
  const store = new FileLogStore(root);
  t.after(() => store.close());
  const summaries = await store.segments('q', 'p4.w0');
  assert.equal(summaries[0]?.frames, frames.length);
  const rebuilt = SegmentIndex.decode(await readFile(indexOf(first!)), 0);
  assert.ok(rebuilt instanceof SegmentIndex, 'a good index was written in its place');
  assert.equal(rebuilt.frames, frames.length);
});

test('a missing index of a sealed segment is rebuilt by a scan when a reader or a summary needs it', async (t) => {
  const root = await tempDir(t);
  const dir = join(root, 'q', 'p4.w0');
  await writeStream(dir, 600);
  const segments = await segmentsOf(dir);
  const written = await Promise.all(segments.map((s) => readFile(indexOf(s))));
  for (const s of segments) await rm(indexOf(s));
  const store = new FileLogStore(root);
  t.after(() => store.close());
  const summaries = await store.segments('q', 'p4.w0');
  assert.deepEqual(summaries.map((s) => s.complete), segments.map((_, i) => i < segments.length - 1));
  for (const [i, s] of segments.entries()) {
    if (i === segments.length - 1) {
      await assert.rejects(stat(indexOf(s)), { code: 'ENOENT' }, 'the open segment is its writer\'s to index');
      continue;
    }
    assert.deepEqual(await readFile(indexOf(s)), written[i], `${s}: the rebuilt index is the one its writer wrote`);
  }
  for (const [i, summary] of summaries.entries()) {
    if (summary.complete) assert.deepEqual(new Map(summary.types), (await scannedIndexOf(segments[i]!)).types, `${segments[i]}: counts per type`);
  }
});

test('reopening a stream reads its last segment only past the checkpoint its writer left', async (t) => {
  const dir = join(await tempDir(t), 'q', 'p4.w0');
  await writeStream(dir, 40, 1024 * 1024);
  const [segment] = await segmentsOf(dir);
  // Damage inside the described part: a writer that read it at reopening would refuse the stream.
  await flipByte(segment!, 30);
  const writer = await StreamWriter.open(dir);
  assert.equal(writer.nextOffset, 40, 'offsets continue from the checkpoint');
  await writer.append(FrameType.MESSAGE, Buffer.from('after'));
  await writer.close();
  // Readers still meet the damage and report it: a checkpoint hides nothing from them.
  const damaged: DamagedRange[] = [];
  const all = await readAllFrom(dir, 0, damaged);
  assert.equal(damaged.length, 1, 'the damaged frame is reported');
  assert.equal(all.at(-1)?.offset, 40, 'and reading goes on after it');
  const read = await readAllFrom(dir, 39);
  assert.deepEqual(read.map((f) => f.offset), [39, 40]);
});

test('verify notes an index that does not describe its segment, and passes', async (t) => {
  const root = await tempDir(t);
  const dir = join(root, 'outbox', 'p4.w0');
  await writeFile(join(root, 'mqlog.json'), '{}');
  // Records: frames verify checks byte by byte without reading them as messages.
  await writeStream(dir, 600, SEGMENT_BYTES, () => FrameType.RECORD);
  await writeFile(join(root, 'outbox', 'queue.json'), JSON.stringify({ kind: 'outbox', channel: null }));
  const [first] = await segmentsOf(dir);
  const clean = await mqlog(['verify', root]);
  assert.equal(clean.code, 0, clean.stdout + clean.stderr);
  assert.doesNotMatch(clean.stdout, /^INDEX /m, 'the indexes writers write check out');
  await flipByte(indexOf(first!), 70);
  const noted = await mqlog(['verify', root]);
  assert.equal(noted.code, 0, noted.stdout + noted.stderr);
  assert.match(noted.stdout, new RegExp(`^INDEX ${indexOf(first!)} damaged: CRC mismatch; rebuilt when next needed$`, 'm'));
  assert.match(noted.stdout, /1 stale index\(es\) noted/);
});

test('the checkpoint of an open segment whose writer is still appending (or was killed) describes it: verify has nothing to note', async (t) => {
  const root = await tempDir(t);
  const dir = join(root, 'outbox', 'p4.w0');
  await writeFile(join(root, 'mqlog.json'), '{}');
  const writer = await StreamWriter.open(dir);
  t.after(() => writer.close());
  for (let i = 0; i < 50; i++) await writer.append(FrameType.RECORD, payloadOf(i));
  await writeFile(join(root, 'outbox', 'queue.json'), JSON.stringify({ kind: 'outbox', channel: null }));
  const index = join(dir, '00000000000000000000.idx');
  // Left open, as a killed writer leaves it: its checkpoint comes within a second of the last append.
  await waitFor(() => stat(index).then(() => true, () => false), { message: 'the checkpoint' });
  const checkpoint = SegmentIndex.decode(await readFile(index), 0) as SegmentIndex;
  assert.equal(checkpoint.state, 'partial');
  assert.equal(checkpoint.frames, 50);
  const verified = await mqlog(['verify', root]);
  assert.equal(verified.code, 0, verified.stdout + verified.stderr);
  assert.doesNotMatch(verified.stdout, /^INDEX /m, 'the checkpoint describes the frames before its end');
});

test('an index is decoded for its summary without its entries; entries out of order are found when first used, and not used', () => {
  const fields = { base: 100, state: 'sealed' as const, coveredBytes: 50_000, types: new Map([[FrameType.MESSAGE, { frames: 3, bytes: 45_000 }]]), runs: [{ type: FrameType.MESSAGE, from: 100, to: 103 }], last: { offset: 102, position: 40_000, crc: 7 } };
  const good = SegmentIndex.decode(new SegmentIndex({ ...fields, entries: [{ offset: 100, position: 0 }, { offset: 101, position: 20_000 }, { offset: 102, position: 40_000 }] }).encode(), 100);
  assert.ok(good instanceof SegmentIndex);
  assert.deepEqual(good.seek(101), { offset: 101, position: 20_000 });
  const disordered = SegmentIndex.decode(new SegmentIndex({ ...fields, entries: [{ offset: 100, position: 0 }, { offset: 102, position: 40_000 }, { offset: 101, position: 20_000 }] }).encode(), 100);
  assert.ok(disordered instanceof SegmentIndex, 'its summary (types, runs, last frame) is usable');
  assert.equal(disordered.id, good.id);
  assert.equal(disordered.seek(102), undefined, 'no entry is trusted: a reader starts at the segment start');
  assert.equal(disordered.entryCount, 0);
  // What is checked at once: the entry count against the frames, and the first entry.
  assert.equal(typeof SegmentIndex.decode(new SegmentIndex({ ...fields, entries: [{ offset: 101, position: 0 }] }).encode(), 100), 'string');
});
