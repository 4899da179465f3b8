/**
 * Recovery of a stream before appending to it (spec/log-format.md §5), and setting torn bytes aside.
 *
 * Only the last segment is scanned: every earlier one was sealed (truncated to its last frame and
 * fsync'd) before its successor was created; and only past what its index describes (a checkpoint its
 * writer took of frames already fsync'd, spec/log-format.md §16), so reopening after a crash reads at
 * most what was appended since the last checkpoint. A torn tail — the bytes of a write that never completed
 * its fsync (§3.2) — is moved to a `.torn` file beside the segment, cut off and reported; damage that a
 * SYNC frame shows to lie in fsync'd data is corruption and stops recovery with ERR_CORRUPT_FRAME.
 *
 * The caller must be the stream's only writer (it holds the writer-slot lock).
 */
import { open, rename, rm, stat, truncate } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { MqlogError, ioError } from '../errors.js';
import { FILE_MODE, fsyncDir } from '../util/fs.js';
import { frameChecksum } from './frame.js';
import type { TruncatedTail } from './log-store.js';
import { SegmentReader, corrupt } from './segment.js';
import { IndexBuilder, type SegmentIndex } from './segment-index.js';
import { loadSegmentIndex } from './segment-index-file.js';
import type { SegmentSet } from './segment-set.js';


/** Suffix of the files that keep torn bytes cut off by recovery: `<file>.<byte position>.torn`. */
export const TORN_SUFFIX = '.torn';

/** `00000000000000000000.seg.1234.torn` for a tail cut at byte 1234 of that segment. */
export function tornFileName(file: string, position: number): string {
  return `${basename(file)}.${position}${TORN_SUFFIX}`;
}

/** The file and position a `.torn` file name speaks of, or undefined for any other name. */
export function parseTornFileName(name: string): { file: string; position: number } | undefined {
  const match = /^(.+)\.(\d+)\.torn$/.exec(name);
  if (match === null) return undefined;
  return { file: match[1] as string, position: Number(match[2]) };
}

const COPY_BYTES = 1024 * 1024;

/**
 * Copies the bytes of `path` from `position` up to its last non-zero byte into `<path>.<position>.torn`,
 * durably (temp file, fsync, rename, dir fsync), before the caller cuts them off. Returns the new file's
 * path, or undefined when there is nothing but zeros to keep. Copying the same cut twice (a crash
 * between copy and cut) writes the same file again.
 */
export async function setAsideTorn(path: string, position: number): Promise<string | undefined> {
  const source = await open(path, 'r');
  try {
    const end = await lastNonZeroEnd(source, position, (await source.stat()).size);
    if (end <= position) return undefined;
    const target = join(dirname(path), tornFileName(path, position));
    const tmp = `${target}.${process.pid}.tmp`;
    const out = await open(tmp, 'w', FILE_MODE);
    try {
      const buffer = Buffer.allocUnsafe(Math.min(COPY_BYTES, end - position));
      for (let at = position; at < end; ) {
        const { bytesRead } = await source.read(buffer, 0, Math.min(buffer.length, end - at), at);
        if (bytesRead === 0) break;
        await out.write(buffer, 0, bytesRead, at - position);
        at += bytesRead;
      }
      await out.datasync();
    } catch (err) {
      await out.close();
      await rm(tmp, { force: true });
      throw ioError(err, `cannot keep the torn tail of ${path} in ${target}`, { path });
    }
    await out.close();
    await rename(tmp, target);
    await fsyncDir(dirname(path));
    return target;
  } finally {
    await source.close();
  }
}

/** The end of the last non-zero byte in [from, to) of a file, or `from` when all are zero. */
async function lastNonZeroEnd(handle: import('node:fs/promises').FileHandle, from: number, to: number): Promise<number> {
  const buffer = Buffer.allocUnsafe(Math.min(COPY_BYTES, Math.max(1, to - from)));
  for (let end = to; end > from; ) {
    const start = Math.max(from, end - buffer.length);
    const { bytesRead } = await handle.read(buffer, 0, end - start, start);
    for (let i = bytesRead - 1; i >= 0; i--) if (buffer[i] !== 0) return start + i + 1;
    end = start;
  }
  return from;
}

export interface RecoveredStream {
  /** Base offset of the last segment, or undefined when the stream has none. */
  readonly lastBaseOffset: number | undefined;
  /** End of the frames in the last segment. */
  readonly dataEnd: number;
  /** Offset the next appended frame gets. */
  readonly nextOffset: number;
  readonly truncated: TruncatedTail | undefined;
  /** The index of the last segment's frames (undefined when the stream has no segment). */
  readonly index: IndexBuilder | undefined;
  /** Frames recovery read (those its index did not describe yet). */
  readonly framesRead: number;
}

/**
 * Finds the end of data of a stream and cuts a torn tail off (kept in a `.torn` file).
 * @throws ERR_CORRUPT_FRAME when the last segment is damaged inside data a SYNC frame shows was fsync'd.
 */
export async function recoverStream(set: SegmentSet): Promise<RecoveredStream> {
  const segments = await set.list();
  const last = segments.at(-1);
  if (last === undefined) return { lastBaseOffset: undefined, dataEnd: 0, nextOffset: 0, truncated: undefined, index: undefined, framesRead: 0 };

  const from = await checkpointOf(last.path, last.baseOffset);
  const index = new IndexBuilder(last.baseOffset, from);
  const reader = await SegmentReader.open(last.path, { position: from?.coveredBytes ?? 0 });
  let nextOffset = from?.lastOffset === undefined ? last.baseOffset : from.lastOffset + 1;
  let truncated: TruncatedTail | undefined;
  let dataEnd: number;
  let framesRead = 0;
  try {
    for (;;) {
      const step = await reader.next();
      if (step.kind === 'frame') {
        const f = step.frame;
        if (f.offset < nextOffset) {
          throw corrupt(last.path, f.position, `offset ${f.offset} not above ${nextOffset - 1}`);
        }
        nextOffset = f.offset + 1;
        index.add({ type: f.type, offset: f.offset, position: f.position, bytes: f.bytes, crc: frameChecksum(f.raw) });
        framesRead++;
        continue;
      }
      dataEnd = step.position;
      if (step.kind === 'torn') {
        const savedAs = await setAsideTorn(last.path, step.position);
        truncated = { path: last.path, position: step.position, bytes: step.tornBytes, reason: step.reason, savedAs };
      }
      break;
    }
  } finally {
    await reader.close();
  }

  let size: number;
  try {
    size = (await stat(last.path)).size;
  } catch (err) {
    throw ioError(err, `cannot stat ${last.path}`, { path: last.path });
  }
  if (size > dataEnd) {
    // Cuts a torn frame and any zero-filled preallocation; the writer preallocates again as it goes.
    try {
      await truncate(last.path, dataEnd);
    } catch (err) {
      throw ioError(err, `cannot truncate ${last.path}`, { path: last.path });
    }
  }
  if (nextOffset < last.baseOffset) {
    throw new MqlogError('ERR_CORRUPT_FRAME', `${last.path}: offsets below the segment's base`, { details: { path: last.path } });
  }
  return { lastBaseOffset: last.baseOffset, dataEnd, nextOffset, truncated, index, framesRead };
}

/** The index of the last segment, when it checks out: what it describes need not be read again. */
async function checkpointOf(path: string, base: number): Promise<SegmentIndex | undefined> {
  const handle = await open(path, 'r');
  try {
    const loaded = loadSegmentIndex(path, handle.fd, (await handle.stat()).size, base);
    return 'index' in loaded ? loaded.index : undefined;
  } finally {
    await handle.close();
  }
}
