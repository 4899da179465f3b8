/**
 * Repair of a stream's damaged ranges (spec/log-format.md §3.4): each range a reader would pass over is
 * moved out of its segment into a `.bad` file beside it, so that readers no longer meet it. Nothing is
 * deleted, offsets never change, and every range moved is recorded in the stream's `repairs.log`.
 *
 * Safe against crashes: the `.bad` copy is durable before the segment is replaced, and the segment is
 * replaced by rename (the old or the new one is in force, never neither). A stream's last segment is
 * repaired only while its writer slot is free (the slot's lock is held meanwhile); a sealed segment is
 * never written again by a writer.
 */
import { appendFile, open, rename, rm, type FileHandle } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { ioError } from '../errors.js';
import { FILE_MODE, fsyncDir } from '../util/fs.js';
import { Lock } from './lock.js';
import type { DamagedRange, RepairedRange, StreamRepair } from './log-store.js';
import { indexPathOf } from './segment-index-file.js';
import { SegmentSet } from './segment-set.js';
import { parseStreamName } from './stream-id.js';
import { StreamReader } from './stream-reader.js';

/** Suffix of the files that keep a damaged range moved out by repair: `<file>.<byte position>.bad`. */
export const BAD_SUFFIX = '.bad';
/** The stream's record of what repair did: one JSON object per line. */
export const REPAIRS_LOG = 'repairs.log';

const COPY_BYTES = 1024 * 1024;

/** `00000000000000000000.seg.1234.bad` for a range starting at byte 1234 of that segment. */
export function badFileName(file: string, position: number): string {
  return `${basename(file)}.${position}${BAD_SUFFIX}`;
}

/** Moves every damaged range of the stream in `dir` (a queue's stream directory) aside. */
export async function repairStream(dir: string): Promise<StreamRepair> {
  const ranges = await damagedRanges(dir);
  if (ranges.length === 0) return { repaired: [], left: [] };
  const segments = await new SegmentSet(dir).list();
  const last = segments.at(-1)?.path;
  const repaired: RepairedRange[] = [];
  const left: { range: DamagedRange; why: string }[] = [];
  for (const path of [...new Set(ranges.map((r) => r.path))]) {
    const inSegment = ranges.filter((r) => r.path === path).sort((a, b) => a.position - b.position);
    let lock: Lock | undefined;
    if (path === last) {
      const slot = parseStreamName(basename(dir))?.slot;
      lock = slot === undefined ? undefined : await Lock.tryAcquire(join(dirname(dir), `w${slot}.lock`));
      if (lock === undefined) {
        for (const range of inSegment) left.push({ range, why: 'the last segment of a stream whose writer slot is in use' });
        continue;
      }
    }
    try {
      repaired.push(...(await moveOut(dir, path, inSegment)));
    } finally {
      await lock?.release();
    }
  }
  return { repaired, left };
}

/** The damaged ranges a reader of the whole stream passes over. */
async function damagedRanges(dir: string): Promise<DamagedRange[]> {
  const reader = new StreamReader(dir, { offset: 0 }, { lend: true });
  const ranges: DamagedRange[] = [];
  try {
    for (;;) {
      const read = await reader.read({ maxFrames: 512, maxBytes: 4 * 1024 * 1024 });
      ranges.push(...(read.damaged ?? []));
      if (read.state !== 'more') return ranges;
    }
  } finally {
    await reader.close();
  }
}

/** Keeps each range in a `.bad` file, then replaces the segment by a copy without them (§3.4 steps 1–3). */
async function moveOut(dir: string, path: string, ranges: readonly DamagedRange[]): Promise<RepairedRange[]> {
  const source = await open(path, 'r');
  const tmp = `${path}.tmp`;
  try {
    const size = (await source.stat()).size;
    const saved: RepairedRange[] = [];
    for (const range of ranges) {
      const savedAs = join(dir, badFileName(path, range.position));
      await copyRange(source, range.position, range.position + range.bytes, savedAs);
      saved.push({ ...range, savedAs });
    }
    await fsyncDir(dir);
    const out = await open(tmp, 'w', FILE_MODE);
    try {
      let written = 0;
      let at = 0;
      for (const range of [...ranges, { position: size, bytes: 0 }]) {
        written += await copyInto(source, at, range.position, out, written);
        at = range.position + range.bytes;
      }
      await out.datasync();
    } finally {
      await out.close();
    }
    await rename(tmp, path);
    await rm(indexPathOf(path), { force: true });
    await fsyncDir(dir);
    const at = Date.now();
    const lines = saved.map((r) => JSON.stringify({ at, segment: basename(path), position: r.position, bytes: r.bytes, reason: r.reason, savedAs: basename(r.savedAs) })).join('\n');
    await appendFile(join(dir, REPAIRS_LOG), `${lines}\n`, { mode: FILE_MODE });
    return saved;
  } catch (err) {
    await rm(tmp, { force: true });
    throw ioError(err, `cannot repair ${path}`, { path });
  } finally {
    await source.close();
  }
}

/** Writes bytes [from, to) of `source` durably to `target` (temp file, fsync, rename). */
async function copyRange(source: FileHandle, from: number, to: number, target: string): Promise<void> {
  const tmp = `${target}.${process.pid}.tmp`;
  const out = await open(tmp, 'w', FILE_MODE);
  try {
    await copyInto(source, from, to, out, 0);
    await out.datasync();
  } finally {
    await out.close();
  }
  await rename(tmp, target);
}

/** Copies bytes [from, to) of `source` to `out` at `at`; returns how many were copied. */
async function copyInto(source: FileHandle, from: number, to: number, out: FileHandle, at: number): Promise<number> {
  const buffer = Buffer.allocUnsafe(Math.max(1, Math.min(COPY_BYTES, to - from)));
  let copied = 0;
  while (from + copied < to) {
    const { bytesRead } = await source.read(buffer, 0, Math.min(buffer.length, to - from - copied), from + copied);
    if (bytesRead === 0) break;
    await out.write(buffer, 0, bytesRead, at + copied);
    copied += bytesRead;
  }
  return copied;
}
