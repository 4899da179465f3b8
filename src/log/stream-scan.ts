/**
 * Reading a stream front to back through any LogStore: the one loop every whole-stream reader uses
 * (dump, stat, body chunks, duplicate-detection recovery, compaction surveys). Streams with bounded
 * memory, and releases its reader in `finally`, also when the caller leaves the loop early.
 */
import { isMqlogError, type MqlogError } from '../errors.js';
import type { DamagedRange, LogReader, LogStore, ReadLimits, SkimmedFrame, StoredFrame, StreamPosition, TornTail } from './log-store.js';

export type ScanEvent =
  | { readonly kind: 'frame'; readonly frame: StoredFrame }
  /** The stream's data ends in a torn (or unfinished) write: reading stopped there. */
  | { readonly kind: 'torn'; readonly torn: TornTail }
  /** Damaged data: reading of the stream stopped there. */
  | { readonly kind: 'corrupt'; readonly error: MqlogError }
  /** Damaged bytes passed over (spec/log-format.md §3.4): reading went on after them. */
  | { readonly kind: 'damaged'; readonly range: DamagedRange };

export interface ScanOptions {
  readonly from?: StreamPosition;
  readonly skipTypes?: ReadonlySet<number>;
  /** Frames per read (memory: about this many frames, or `maxBytes`, at a time). */
  readonly maxFrames?: number;
  readonly maxBytes?: number;
}

const BATCH = { maxFrames: 512, maxBytes: 4 * 1024 * 1024 };

/** Every frame of a stream from `from` to the end of its data, and where and why reading stopped early. */
export async function* scanStream(store: LogStore, queue: string, stream: string, options: ScanOptions = {}): AsyncGenerator<ScanEvent> {
  const reader = store.reader(queue, stream, options.from, options.skipTypes === undefined ? {} : { skipTypes: options.skipTypes });
  const limits = { maxFrames: options.maxFrames ?? BATCH.maxFrames, maxBytes: options.maxBytes ?? BATCH.maxBytes };
  try {
    for (;;) {
      let read;
      try {
        read = await reader.read(limits);
      } catch (err) {
        if (isMqlogError(err) && (err.code === 'ERR_CORRUPT_FRAME' || err.code === 'ERR_UNSUPPORTED_VERSION')) {
          yield { kind: 'corrupt', error: err };
          return;
        }
        throw err;
      }
      for (const range of read.damaged ?? []) yield { kind: 'damaged', range };
      for (const frame of read.frames) yield { kind: 'frame', frame };
      if (read.state === 'torn' && read.torn !== undefined) yield { kind: 'torn', torn: read.torn };
      if (read.state !== 'more') return;
    }
  } finally {
    await reader.close();
  }
}

/**
 * The frames of a stream from `from` to the end of its data (stopping quietly at a torn tail; damaged
 * ranges are passed over and reported to the store's and the caller's `onDamaged`).
 */
export async function* readFrames(store: LogStore, queue: string, stream: string, options: ScanOptions = {}): AsyncGenerator<StoredFrame> {
  for await (const event of scanStream(store, queue, stream, options)) {
    if (event.kind === 'frame') yield event.frame;
    else if (event.kind === 'corrupt') throw event.error;
  }
}

/**
 * The frames a reader finds now, batch by batch, to the end of what is stored; damaged data is passed
 * over by the reader (and reported to its `onDamaged`). The reader stays the caller's (a
 * follower calls this again after a change); leaving the loop early leaves it where it stopped.
 */
export function readAvailable(reader: LogReader, limits: ReadLimits = BATCH): AsyncGenerator<StoredFrame[]> {
  return available(() => reader.read(limits));
}

/**
 * As readAvailable, by the frames' headers alone (LogReader.skim): where frames of which type lie, for a
 * follower that needs no payload (counting a queue's messages).
 */
export function skimAvailable(reader: LogReader, limits: ReadLimits = BATCH): AsyncGenerator<SkimmedFrame[]> {
  return available(() => reader.skim(limits));
}

async function* available<F>(next: () => Promise<{ readonly frames: F[]; readonly state: 'more' | 'end' | 'torn' }>): AsyncGenerator<F[]> {
  for (;;) {
    let batch;
    try {
      batch = await next();
    } catch (err) {
      if (isMqlogError(err) && (err.code === 'ERR_CORRUPT_FRAME' || err.code === 'ERR_UNSUPPORTED_VERSION')) return;
      throw err;
    }
    yield batch.frames;
    if (batch.state !== 'more') return;
  }
}
