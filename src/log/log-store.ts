/**
 * The storage interface: what the queue layer needs from the bytes on disk (spec/log-format.md §1, §7,
 * spec/log-store.md). Nothing above log/ reaches a segment any other way.
 *
 * A store holds the logs of one node. Each **queue** (a relative name such as `outbox` or `inbox/jobs`,
 * chosen by the queue layer) has its own log: a set of **streams**. A stream is a single-writer log
 * named `<key>.w<slot>`: the key is chosen by the caller (one per priority), the slot by the writer. Any
 * number of writers append to one queue at once without sharing a stream: each claims a writer slot and
 * appends only to the streams of its slot.
 *
 * Frames are opaque to the store (a type, an offset, payload bytes); what they mean is the queue layer's.
 * Implementations: FileLogStore (segment files, durable, shared by processes) and MemoryLogStore (one
 * process, nothing on disk).
 */
import type { MqlogError } from '../errors.js';
import type { Payload } from './frame.js';

export interface StreamId {
  /** `<key>.w<slot>`. */
  readonly name: string;
  readonly key: string;
  readonly slot: number;
}

/** Where a reader of a stream stands: the next offset it wants, and a hint to get there fast. */
export interface StreamPosition {
  readonly offset: number;
  /** The last frame consumed before `offset`: re-read and checked before its place is trusted. */
  readonly hint?: FrameHint | undefined;
}

/** Where a frame lies in its stream (segment base offset and byte position there), with its offset. */
export interface FrameHint {
  readonly segment: number;
  readonly position: number;
  readonly offset: number;
}

/** A frame as read from a stream. */
export interface StoredFrame {
  readonly stream: string;
  readonly type: number;
  readonly offset: number;
  readonly payload: Buffer;
  /** The whole frame as stored (header and payload): what a forwarder ships, unchanged. */
  readonly raw: Buffer;
  /** `raw.length`. */
  readonly bytes: number;
  /** Base offset of the segment holding it. */
  readonly segment: number;
  /** Byte position of the frame in its segment. */
  readonly position: number;
}

/** Frames and bytes of one frame type. */
export interface TypeTotals {
  readonly frames: number;
  readonly bytes: number;
}

/** The frames of one type at the consecutive offsets [from, to). */
export interface OffsetRun {
  readonly type: number;
  readonly from: number;
  readonly to: number;
}

/**
 * What the log knows of one segment of a stream without reading its frames (the file store: its index,
 * spec/log-format.md §16). The counts describe the segment's frames before `next`: all of them when
 * `complete`; for a stream's last segment (or a damaged one), a reader from `next` finds the rest.
 * SYNC frames are the log's own and never counted.
 */
export interface SegmentSummary {
  readonly stream: string;
  /** Base offset. */
  readonly base: number;
  /** Every segment but a stream's last: its frames no longer change, except by compaction. */
  readonly sealed: boolean;
  /** The counts describe every frame the segment holds and will ever hold (it is sealed). */
  readonly complete: boolean;
  /** Bytes the segment takes (file size, or memory held). */
  readonly bytes: number;
  /** Identifies the frames described: the same frames give the same id, a compaction rewrite another. */
  readonly id: string;
  readonly frames: number;
  /** Per frame type. */
  readonly types: ReadonlyMap<number, TypeTotals>;
  /** Which offsets hold frames of which type, in offset order. */
  readonly runs: readonly OffsetRun[];
  readonly firstOffset: number | undefined;
  readonly lastOffset: number | undefined;
  /** Where reading continues after the frames described (a hint names the last of them). */
  readonly next: StreamPosition;
}

/** Where a stream's data ends in a torn (or still unfinished) write. */
export interface TornTail {
  readonly path: string;
  readonly position: number;
  readonly bytes: number;
  readonly reason: string;
}

/** What recovery cut off; always reported to the owner, never silent. */
export interface TruncatedTail extends TornTail {
  /** The `.torn` file that keeps the cut bytes; undefined when they were all zeros. */
  readonly savedAs: string | undefined;
}

/**
 * Bytes of a segment that hold no readable frame, passed over by a reader (spec/log-format.md §3.4):
 * from the start of a corrupt frame (or a torn end of a sealed segment) to the next valid frame, or to
 * the end of the segment.
 */
export interface DamagedRange {
  readonly stream: string;
  /** Base offset of the segment. */
  readonly segment: number;
  readonly path: string;
  /** File byte offset where the damaged frame starts. */
  readonly position: number;
  readonly bytes: number;
  readonly reason: string;
}

/** A damaged range repair moved out of its segment (spec/log-format.md §3.4), and where its bytes are kept. */
export interface RepairedRange extends DamagedRange {
  /** The `.bad` file beside the segment. */
  readonly savedAs: string;
}

/** What repairing one stream did. */
export interface StreamRepair {
  readonly repaired: readonly RepairedRange[];
  /** Damaged ranges left in place (the last segment while a writer holds its slot), with why. */
  readonly left: readonly { readonly range: DamagedRange; readonly why: string }[];
}

export interface StreamRead {
  readonly frames: StoredFrame[];
  /** `more`: a limit stopped the read; `end`: all data read; `torn`: the data ends in a torn (or in-progress) write. */
  readonly state: 'more' | 'end' | 'torn';
  readonly torn?: TornTail;
  /** Damaged ranges this read passed over (resynchronising after each), in stream order. */
  readonly damaged?: readonly DamagedRange[];
}

/** A frame passed over by its header alone (LogReader.skim): what it is and where it lies, not what it holds. */
export interface SkimmedFrame {
  readonly type: number;
  readonly offset: number;
  /** Base offset of the segment holding it. */
  readonly segment: number;
  /** Byte position of the frame in its segment. */
  readonly position: number;
  /** Header plus payload bytes. */
  readonly bytes: number;
}

export interface StreamSkim {
  readonly frames: SkimmedFrame[];
  /** As StreamRead's. */
  readonly state: 'more' | 'end' | 'torn';
  readonly torn?: TornTail;
}

export interface ReadLimits {
  readonly maxFrames?: number;
  readonly maxBytes?: number;
}

export interface ReaderOptions {
  /** Frame types passed over by their header alone: never returned, payload neither read nor checked. */
  readonly skipTypes?: ReadonlySet<number>;
  /**
   * Return only frames that are durable. A reader can see a frame between its write and the writer's
   * fsync; acting on it then (forwarding it, acking it) and losing it in a power cut would let its offset
   * be reused by another frame.
   */
  readonly durable?: boolean;
  /**
   * Bytes read from a file at a time (the file store; default 256 KiB). A reader that is moved around
   * (seek) and reads a little at each place wants less: what it reads ahead is read again after a move.
   */
  readonly bufferBytes?: number;
  /**
   * Frames may be views into the reader's read blocks rather than copies (a block is never reused once
   * a frame came from it). For callers that let go of frames soon: a frame kept long keeps its block
   * (up to 256 KiB) in memory.
   */
  readonly lend?: boolean;
  /**
   * Read the file store's blocks with synchronous reads (the page cache copied on the caller's thread)
   * instead of a round trip through the thread pool. For a reader of recently written data whose
   * latency matters (a consumer's claimed messages): a block not in the page cache blocks the event
   * loop for the disk read.
   */
  readonly syncReads?: boolean;
  /** Called for each damaged range the reader passes over (also listed in its read's `damaged`). */
  readonly onDamaged?: (range: DamagedRange) => void;
}

/** Sequential reading of one stream; pulls what is stored now and remembers where it stopped. */
export interface LogReader {
  readonly stream: string;
  /** The position after the last frame returned. */
  readonly position: StreamPosition;
  /**
   * Reads the frames available now, from the current position, up to the limits. Damaged data does not
   * stop it: it resynchronises after it and lists what it passed over in the result's `damaged`.
   */
  read(limits?: ReadLimits): Promise<StreamRead>;
  /**
   * Passes over the frames available now, from the current position, by their headers alone (payloads
   * are neither returned nor checked), up to the limits (`maxBytes` counts whole frames), and moves the
   * position past them: where a stream's frames lie, without the cost of reading them. SYNC frames are
   * never returned (as by read). Frames of every type are listed, `skipTypes` ones included.
   * @throws ERR_CORRUPT_FRAME as read() does, for a header that cannot be passed over.
   */
  skim(limits?: ReadLimits): Promise<StreamSkim>;
  /**
   * Moves the reader to `to` (a position a reader of this stream reported, or an offset alone): the next
   * read or skim goes on from there, as a new reader from `to` would, reusing the open segment when the
   * hint lies in it. A hint that no longer checks out (the segment was rewritten) is not trusted.
   */
  seek(to: StreamPosition): Promise<void>;
  /**
   * The caller is done with these frames, which this reader returned: their memory may be used again
   * for frames read later (the file store reuses the buffers of frames larger than a read block). A
   * frame's bytes must not be touched once it is released. Releasing is optional; without it the
   * memory is left to the GC.
   */
  release(frames: Iterable<StoredFrame>): void;
  /**
   * Makes every frame this reader returned so far durable (the file store: fdatasync of the segment it
   * reads; earlier segments were sealed, so fsync'd). For callers that act on frames in batches.
   */
  sync(): Promise<void>;
  close(): Promise<void>;
}

export interface AppendResult {
  readonly stream: string;
  readonly offset: number;
  readonly segment: number;
  readonly position: number;
  readonly bytes: number;
}

/** A frame for LogWriter.appendMany. */
export interface FrameToAppend {
  readonly type: number;
  readonly payload: Payload;
}

/** A claimed writer slot of one queue: the only appender of its streams while it is open. */
export interface LogWriter {
  readonly slot: number;
  /**
   * Durable append: resolves after the frame is fsync'd (MemoryLogStore: at once). Once it settled, the
   * store holds no reference to `payload`: the caller may reuse its buffers.
   * @throws ERR_DISK_FULL, ERR_QUEUE_FULL, ERR_IO, ERR_CLOSED, ERR_INVALID_ARG (bad key).
   */
  append(key: string, type: number, payload: Payload): Promise<AppendResult>;
  /**
   * Durable append of several frames to the stream `key`, in order, as one group commit where they fit:
   * resolves with their results (in order) once all are fsync'd.
   * @throws as append(); the error's `details.stored` is how many of the first frames were stored
   *   (durable) before the failure: the stored frames are always a prefix.
   */
  appendMany(key: string, frames: readonly FrameToAppend[]): Promise<AppendResult[]>;
  /**
   * Ends the open segment of the stream `key` now (sealed and durable) if it holds any frame, so that
   * compaction may reclaim it: an idle or fully processed segment does not wait for more data to fill it.
   */
  roll(key: string): Promise<void>;
  close(): Promise<void>;
}

/** An open segment that got no append for this long is sealed, so compaction may reclaim it. */
export const DEFAULT_ROLL_IDLE_MS = 60_000;

export interface WriterOptions {
  /** Size at which a segment is sealed and the next one starts. */
  readonly segmentBytes?: number;
  /** Seal an open segment that got no append for this long (0: never); see StreamWriterOptions. */
  readonly rollIdleMs?: number;
  /** Called once per group commit with its size and duration, for metrics. */
  readonly onFlush?: (frames: number, bytes: number, durationMs: number) => void;
  /** Called when opening a stream cut off a torn tail (a killed writer, a power cut). */
  readonly onTruncated?: (stream: string, tail: TruncatedTail) => void;
  /** Called when a slot was given up because one of its streams is corrupt at its end. */
  readonly onSlotBroken?: (slot: number, reason: string) => void;
  /**
   * Size limit of the whole queue (all streams, all writers): an append that would pass it fails at once
   * with ERR_QUEUE_FULL. Other processes' appends and removals are seen within a second.
   */
  readonly maxBytes?: number | null;
}

/** A frame as compaction sees it: `keep` decides from type, offset and payload. */
export type KeepFrame = (frame: StoredFrame) => boolean | Promise<boolean>;

export interface StreamCompaction {
  readonly segmentsDeleted: number;
  readonly segmentsRewritten: number;
  readonly framesRemoved: number;
  readonly bytesReclaimed: number;
}

/** What compaction does with a segment before reading it (CompactOptions.decide). */
export type SegmentDecision = 'keep' | 'drop' | 'read';

export interface CompactOptions {
  /** Rewrite a sealed segment when its kept bytes are below this share of it. Default 0.5. */
  readonly rewriteBelowShare?: number;
  /** Every frame at or past this offset is kept: segments that start there are not even read. */
  readonly keepFrom?: number;
  /**
   * Asked about each segment from its summary before it is read: `keep` leaves it unread, `drop`
   * removes it whole unread (a sealed segment only; the last one is then read), `read` asks `keep`
   * about each of its frames. Default: `read`.
   */
  readonly decide?: (segment: SegmentSummary) => SegmentDecision | Promise<SegmentDecision>;
  /**
   * Stop when this fires (a shutdown does not wait for a round): between segments, and inside one (a
   * rewrite in progress is abandoned, its temp file removed). The call resolves with what was done.
   */
  readonly signal?: AbortSignal;
  /** Called after each segment looked at. */
  readonly onSegment?: (segment: string, action: 'kept' | 'deleted' | 'rewritten' | 'retired') => void;
}

export interface QueueUsage {
  /** Bytes of the queue's logs (files on disk, or memory held). */
  readonly bytes: number;
  readonly segments: number;
}

/** What checking a queue's logs byte by byte finds: every frame, each segment's totals, problems and notes. */
export type VerifyEvent =
  | { readonly kind: 'frame'; readonly path: string; readonly frame: StoredFrame }
  | { readonly kind: 'segment'; readonly path: string; readonly frames: number; readonly bytes: number }
  | { readonly kind: 'corrupt'; readonly path: string; readonly position: number; readonly reason: string }
  /** Data ending in a torn write not yet cut off (`recovered` false), or a tail already cut off and kept. */
  | { readonly kind: 'torn'; readonly path: string; readonly position: number; readonly reason: string; readonly recovered: boolean }
  /** A segment index that does not describe its segment (a note: it is rebuilt when next needed). */
  | { readonly kind: 'index'; readonly path: string; readonly reason: string };

/**
 * Change notification for the followers of a queue: appends (by this process at once, by others
 * within the platform's file-watch latency), rolls and removals. A fallback timer means a missed event
 * costs latency, never progress. Followers use the generation to close the race between "read found
 * nothing" and "wait":
 *
 *   const seen = feed.generation;
 *   const read = await reader.read();                     // finds nothing new
 *   if (nothing) await feed.changedSince(seen, signal);   // returns at once if a change came meanwhile
 */
export interface ChangeFeed {
  readonly generation: number;
  /** Resolves once the feed sees changes (the watch is in place). */
  whenReady(): Promise<void>;
  /**
   * Resolves when a change happened after generation `seen`, or after the fallback interval.
   * @throws ERR_ABORTED / ERR_TIMEOUT when the signal fires, ERR_CLOSED after close().
   */
  changedSince(seen: number, signal?: AbortSignal): Promise<void>;
  /** Calls `listener` on every change; returns the function that stops it. */
  onChange(listener: () => void): () => void;
  close(): Promise<void>;
}

/** The storage of one node: the logs of its queues. */
export interface LogStore {
  /** Where the store keeps its data, for messages (a directory, or `memory:`). */
  readonly location: string;
  /** The streams of a queue, by key then slot; empty for a queue never written. */
  streams(queue: string): Promise<StreamId[]>;
  /** A reader of one stream from `from` (default: its start). */
  reader(queue: string, stream: string, from?: StreamPosition, options?: ReaderOptions): LogReader;
  /**
   * What is known of each segment of a stream without reading its frames, in base-offset order (the
   * file store rebuilds a sealed segment's missing or stale index by a scan).
   * @throws ERR_ABORTED when `signal` fires; ERR_INVALID_ARG for a bad name.
   */
  segments(queue: string, stream: string, options?: { readonly signal?: AbortSignal }): Promise<SegmentSummary[]>;
  /** The frame with `offset`, at the hinted place when the hint checks out; undefined when gone. */
  frameAt(queue: string, stream: string, offset: number, hint?: FrameHint): Promise<StoredFrame | undefined>;
  /** Claims the lowest free writer slot of a queue. */
  claimWriter(queue: string, options?: WriterOptions): Promise<LogWriter>;
  /**
   * Reclaims the space of frames `keep` rejects, in whole segments: sealed segments are deleted or
   * rewritten (kept frames unchanged, offsets included), and the last segment of a stream whose writer
   * is gone is retired once nothing in it is kept. After a crash either the old or the new segment is
   * in force, never both or neither. Offsets never change.
   */
  compact(queue: string, stream: string, keep: KeepFrame, options?: CompactOptions): Promise<StreamCompaction>;
  usage(queue: string): Promise<QueueUsage>;
  /**
   * Moves every damaged range of a stream out of its segment into a `.bad` file beside it (spec/log-format.md
   * §3.4): nothing deleted, offsets unchanged, recorded in the stream's `repairs.log`. The last segment is
   * left alone while a writer holds the stream's slot. MemoryLogStore: nothing is ever damaged.
   * @throws ERR_IO when a file cannot be written.
   */
  repair(queue: string, stream: string): Promise<StreamRepair>;
  /** Checks every frame of a queue's logs (or of one stream, or one segment of it). */
  verify(queue: string, only?: { readonly stream?: string; readonly segment?: number }): AsyncIterable<VerifyEvent>;
  /** A change feed of one queue; close it when done. */
  changes(queue: string): ChangeFeed;
  close(): Promise<void>;
}

/** Error codes a corrupt stream is reported with. */
export type CorruptionCode = Extract<MqlogError['code'], 'ERR_CORRUPT_FRAME' | 'ERR_UNSUPPORTED_VERSION'>;
