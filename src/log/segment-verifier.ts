/**
 * Checking a stream's segment files byte by byte (spec/log-format.md §3): every frame's header and CRC,
 * offsets rising within and across segments. After a corrupt frame it searches for the next valid one,
 * so one bad byte does not hide the rest of the file. A torn tail at the very end of a stream (the
 * unsynced last write of a killed writer or a power cut, cut off by the next writer) is a note, not
 * corruption; so is every tail recovery already cut off and kept in a `.torn` file.
 *
 * Read-only; safe while writers append and compaction rewrites.
 */
import { open, readdir, stat } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { isMqlogError } from '../errors.js';
import type { VerifyEvent } from './log-store.js';
import { parseTornFileName } from './recovery.js';
import { SegmentReader, findNextFrame, storedFrame } from './segment.js';
import { SegmentSet } from './segment-set.js';

/** Checks the segments of the stream in `dir` (or only the one with base offset `onlySegment`). */
export async function* verifyStream(dir: string, onlySegment?: number): AsyncGenerator<VerifyEvent> {
  const stream = basename(dir);
  const segments = await new SegmentSet(dir).list();
  let previous = -1;
  for (const [index, segment] of segments.entries()) {
    if (onlySegment !== undefined && segment.baseOffset !== onlySegment) continue;
    const isLast = index === segments.length - 1;
    let frames = 0;
    let bytes = 0;
    if (segment.baseOffset <= previous) {
      yield { kind: 'corrupt', path: segment.path, position: 0, reason: `base offset ${segment.baseOffset} not above the previous segment's last offset ${previous}` };
    }
    previous = Math.max(previous, segment.baseOffset - 1);
    let position = 0;
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
            const next = await nextValidFrameIn(segment.path, at + 1);
            const reason = typeof err.details?.reason === 'string' ? err.details.reason : err.message;
            yield { kind: 'corrupt', path: segment.path, position: at, reason: `${reason}${next === undefined ? '; no valid frame after it' : `; ${next - at} bytes unreadable up to the next valid frame at ${next}`}` };
            resumeAt = next;
            break;
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

async function nextValidFrameIn(path: string, from: number): Promise<number | undefined> {
  const handle = await open(path, 'r');
  try {
    return await findNextFrame(handle, from, (await handle.stat()).size);
  } finally {
    await handle.close();
  }
}
