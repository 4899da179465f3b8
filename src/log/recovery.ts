/**
 * Recovery of a stream before appending to it (spec/log-format.md §5).
 *
 * Only the last segment is scanned: every earlier one was sealed (truncated to its last frame and
 * fsync'd) before its successor was created. A torn final frame is cut off and reported; an invalid
 * frame with data after it is corruption and stops recovery with ERR_CORRUPT_FRAME.
 *
 * The caller must be the stream's only writer (it holds the writer-slot lock).
 */
import { stat, truncate } from 'node:fs/promises';
import { MqlogError, ioError } from '../errors.js';
import { SegmentReader, corrupt } from './segment.js';
import type { SegmentSet } from './segment-set.js';

/** What recovery cut off; always reported to the caller, never silent. */
export interface TruncatedTail {
  readonly path: string;
  readonly position: number;
  readonly bytes: number;
  readonly reason: string;
}

export interface RecoveredStream {
  /** Base offset of the last segment, or undefined when the stream has none. */
  readonly lastBaseOffset: number | undefined;
  /** End of the frames in the last segment. */
  readonly dataEnd: number;
  /** Offset the next appended frame gets. */
  readonly nextOffset: number;
  readonly truncated: TruncatedTail | undefined;
}

/**
 * Finds the end of data of a stream and truncates a torn tail.
 * @throws ERR_CORRUPT_FRAME when the last segment holds an invalid frame followed by more data.
 */
export async function recoverStream(set: SegmentSet): Promise<RecoveredStream> {
  const segments = await set.list();
  const last = segments.at(-1);
  if (last === undefined) return { lastBaseOffset: undefined, dataEnd: 0, nextOffset: 0, truncated: undefined };

  const reader = await SegmentReader.open(last.path);
  let nextOffset = last.baseOffset;
  let truncated: TruncatedTail | undefined;
  let dataEnd: number;
  try {
    for (;;) {
      const step = await reader.next();
      if (step.kind === 'frame') {
        if (step.frame.offset < nextOffset) {
          throw corrupt(last.path, step.frame.position, `offset ${step.frame.offset} not above ${nextOffset - 1}`);
        }
        nextOffset = step.frame.offset + 1;
        continue;
      }
      dataEnd = step.position;
      if (step.kind === 'torn') {
        truncated = { path: last.path, position: step.position, bytes: step.tornBytes, reason: step.reason };
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
  return { lastBaseOffset: last.baseOffset, dataEnd, nextOffset, truncated };
}
