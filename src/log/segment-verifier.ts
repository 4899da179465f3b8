/**
 * Checking a stream's segment files byte by byte (spec/log-format.md §3): every frame's header and CRC,
 * offsets rising within and across segments. After a corrupt frame it searches for the next valid one,
 * so one bad byte does not hide the rest of the file. A torn tail at the very end of a stream (the
 * unsynced last write of a killed writer or a power cut, cut off by the next writer) is a note, not
 * corruption; so is every tail recovery already cut off and kept in a `.torn` file. A segment index
 * that does not describe its segment is a note too (`index`): it is a cache, rebuilt when next needed.
 *
 * Read-only; safe while writers append and compaction rewrites.
 */
import { open, readdir, stat } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { isMqlogError } from '../errors.js';
import { frameChecksum } from './frame.js';
import type { VerifyEvent } from './log-store.js';
import { parseTornFileName } from './recovery.js';
import { SegmentReader, storedFrame } from './segment.js';
import { IndexBuilder, type SegmentIndex } from './segment-index.js';
import { indexPathOf, loadSegmentIndex } from './segment-index-file.js';
import { SegmentSet } from './segment-set.js';
import { nextValidFrame } from './stream-reader.js';

/** Checks the segments of the stream in `dir` (or only the one with base offset `onlySegment`). */
export async function* verifyStream(dir: string, onlySegment?: number): AsyncGenerator<VerifyEvent> {
  const stream = basename(dir);
  const segments = await new SegmentSet(dir).list();
  let previous = -1;
  for (const [i, segment] of segments.entries()) {
    if (onlySegment !== undefined && segment.baseOffset !== onlySegment) continue;
    const isLast = i === segments.length - 1;
    let frames = 0;
    let bytes = 0;
    if (segment.baseOffset <= previous) {
      yield { kind: 'corrupt', path: segment.path, position: 0, reason: `base offset ${segment.baseOffset} not above the previous segment's last offset ${previous}` };
    }
    previous = Math.max(previous, segment.baseOffset - 1);
    let position = 0;
    // What the segment's index should say, built from the frames as they are read.
    const index = new IndexBuilder(segment.baseOffset);
    const onDisk = await storedIndex(segment.path, segment.baseOffset);
    let atCovered: SegmentIndex | undefined;
    let damaged = false;
    for (;;) {
      let reader: SegmentReader;
      try {
        reader = await SegmentReader.open(segment.path, { position });
      } catch (err) {
        // Compaction removed it since the listing: nothing left to check there.
        if (isMqlogError(err, 'ERR_NOT_FOUND')) break;
        throw err;
      }
      let resumeAt: number | undefined;
      try {
        for (;;) {
          let step;
          try {
            step = await reader.next();
          } catch (err) {
            if (!isMqlogError(err) || (err.code !== 'ERR_CORRUPT_FRAME' && err.code !== 'ERR_UNSUPPORTED_VERSION')) throw err;
            const at = Number(err.details?.position ?? reader.nextPosition);
            const { next } = await nextValidFrame(segment.path, at + 1);
            const reason = typeof err.details?.reason === 'string' ? err.details.reason : err.message;
            yield { kind: 'corrupt', path: segment.path, position: at, reason: `${reason}${next === undefined ? '; no valid frame after it' : `; ${next - at} bytes unreadable up to the next valid frame at ${next}`}` };
            resumeAt = next;
            damaged = true;
            break;
          }
          // The data ends at or past the bytes the index covers (a writer's sync mark may follow them):
          // every frame read so far lies before them.
          if ((step.kind === 'end' || step.kind === 'torn') && onDisk !== undefined && 'index' in onDisk && step.position >= onDisk.index.coveredBytes) {
            atCovered ??= index.build(onDisk.index.state, onDisk.index.coveredBytes);
          }
          if (step.kind === 'end') break;
          if (step.kind === 'torn') {
            if (isLast) yield { kind: 'torn', path: segment.path, position: step.position, reason: `${step.reason} (${step.tornBytes} bytes; cut off when a writer next opens this stream)`, recovered: false };
            else yield { kind: 'corrupt', path: segment.path, position: step.position, reason: `${step.reason} in a sealed segment` };
            break;
          }
          if (step.kind !== 'frame') continue; // nothing is skipped here: never happens
          const { frame } = step;
          frames++;
          bytes += frame.bytes;
          if (onDisk !== undefined && 'index' in onDisk && frame.position >= onDisk.index.coveredBytes) atCovered ??= index.build(onDisk.index.state, onDisk.index.coveredBytes);
          index.add({ type: frame.type, offset: frame.offset, position: frame.position, bytes: frame.bytes, crc: frameChecksum(frame.raw) });
          if (frame.offset < segment.baseOffset) {
            yield { kind: 'corrupt', path: segment.path, position: frame.position, reason: `offset ${frame.offset} below the segment's base offset ${segment.baseOffset}` };
          } else if (frame.offset <= previous) {
            yield { kind: 'corrupt', path: segment.path, position: frame.position, reason: `offset ${frame.offset} not above the previous frame's ${previous}` };
          }
          previous = Math.max(previous, frame.offset);
          yield { kind: 'frame', path: segment.path, frame: storedFrame(stream, segment.baseOffset, frame) };
        }
      } finally {
        await reader.close();
      }
      if (resumeAt === undefined) break;
      position = resumeAt;
    }
    if (!damaged && onDisk !== undefined) {
      const problem = 'index' in onDisk ? (atCovered?.equals(onDisk.index) === true ? undefined : `does not match the frames of the segment (${describe(onDisk.index)})`) : onDisk.problem;
      if (problem !== undefined) yield { kind: 'index', path: indexPathOf(segment.path), reason: `${problem}; rebuilt when next needed` };
    }
    yield { kind: 'segment', path: segment.path, frames, bytes };
  }
  yield* recoveredTails(dir, onlySegment === undefined ? undefined : basename(new SegmentSet(dir).pathOf(onlySegment)));
}

/** Every tail that recovery cut off in `dir` and kept in a `.torn` file beside its segment. */
async function* recoveredTails(dir: string, onlyFile?: string): AsyncGenerator<VerifyEvent> {
  let names: string[];
  try {
    names = (await readdir(dir)).sort();
  } catch {
    return;
  }
  for (const name of names) {
    const torn = parseTornFileName(name);
    if (torn === undefined || (onlyFile !== undefined && torn.file !== onlyFile)) continue;
    const bytes = await stat(join(dir, name)).then((s) => s.size, () => 0);
    yield { kind: 'torn', path: join(dir, torn.file), position: torn.position, reason: `${bytes} bytes of a write that never completed its fsync were cut off and kept in ${join(dir, name)}`, recovered: true };
  }
}

/** The index file of a segment as loaded and checked now; undefined when there is none (or no segment). */
async function storedIndex(path: string, base: number): Promise<{ readonly index: SegmentIndex } | { readonly problem: string } | undefined> {
  let handle;
  try {
    handle = await open(path, 'r');
  } catch {
    return undefined;
  }
  try {
    const loaded = loadSegmentIndex(path, handle.fd, (await handle.stat()).size, base);
    return 'missing' in loaded ? undefined : loaded;
  } finally {
    await handle.close();
  }
}

function describe(index: SegmentIndex): string {
  return `${index.state}, ${index.frames} frames up to offset ${index.lastOffset ?? '-'} in ${index.coveredBytes} bytes`;
}
