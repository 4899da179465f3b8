/**
 * The LogStore of one process's memory (log-store.ts): every queue's streams held as segments of encoded
 * frames, no file written. It behaves like FileLogStore as seen through the interface — the same
 * offsets, segment rolls, sealed/last segment rules for compaction, slot claims and change feeds — so
 * that the queue layer and its tests run unchanged on either store. Nothing here is durable: an append
 * is "stored" when it returns, and gone with the process.
 *
 * Concurrency contract: single-threaded like all of Node.js. Every change to a stream (append, roll,
 * segment removal or rewrite) happens synchronously inside one call, so readers, writers and
 * compaction never see half a change; the only awaits are compaction's `keep` calls, after which
 * compaction re-checks what it is about to change. Invariants of a stream:
 * - segment bases rise; a segment's base is at most the offset of its first frame;
 * - frame offsets rise across the stream and are below `nextOffset`, which never goes down;
 * - every segment but the last is sealed (never appended to again) and holds at least one frame;
 *   compaction replaces a sealed segment object, never changes it in place.
 */
import { MqlogError, abortError, withDetails } from '../errors.js';
import { FRAME_HEADER_BYTES, encodeFrameHeader, frameChecksum, payloadLength, type Payload } from './frame.js';
import { DEFAULT_ROLL_IDLE_MS } from './log-store.js';
import type { AppendResult, FrameToAppend, ChangeFeed, CompactOptions, FrameHint, KeepFrame, LogReader, LogStore, LogWriter, QueueUsage } from './log-store.js';
import type { ReadLimits, ReaderOptions, SegmentSummary, SkimmedFrame, StoredFrame, StreamCompaction, StreamId, StreamPosition, StreamRead, StreamRepair, StreamSkim, VerifyEvent, WriterOptions } from './log-store.js';
import { IndexBuilder, summarize } from './segment-index.js';
import { STREAM_KEY, compareStreams, parseStreamName, streamName } from './stream-id.js';

/** The file store's default and lower bound (stream-writer.ts), so that both roll alike. */
const DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024;
const MIN_SEGMENT_BYTES = 1024;
/** The change feed's wake-up interval when nothing happens (as the file store's watch.ts). */
const FALLBACK_MS = 1000;

interface Segment {
  /** The stream's next offset when it was started: the offset its first frame got. */
  readonly base: number;
  /** Offsets rising; the `position` of each is the sum of the bytes before it, `bytes` the sum of all. */
  readonly frames: StoredFrame[];
  bytes: number;
  /** What the file store's index would say of these frames (kept as frames are appended). */
  readonly index: IndexBuilder;
}

interface Stream {
  readonly id: StreamId;
  /** Bases rising; only the last one is appended to. */
  readonly segments: Segment[];
  /** Kept apart from the frames: a retired or compacted stream never reuses an offset. */
  nextOffset: number;
}

interface Queue {
  readonly name: string;
  readonly streams: Map<string, Stream>;
  /** Slots held by open writers of this store. */
  readonly slots: Set<number>;
  readonly feeds: Set<MemoryChangeFeed>;
  /** Bytes of every frame of every stream (what `maxBytes` and `usage` count). */
  bytes: number;
}

const NO_COMPACTION: StreamCompaction = { segmentsDeleted: 0, segmentsRewritten: 0, framesRemoved: 0, bytesReclaimed: 0 };

/**
 * A LogStore in memory, for tests and for a node that needs no durability. Appends resolve at once;
 * errors are those of FileLogStore that memory can raise (ERR_INVALID_ARG, ERR_QUEUE_FULL,
 * ERR_FRAME_TOO_LARGE, ERR_CLOSED), never corruption or torn tails.
 */
export class MemoryLogStore implements LogStore {
  readonly location = 'memory:';
  private readonly queues = new Map<string, Queue>();
  private closing: Promise<void> | undefined;

  /** The streams of a queue, by key then slot; empty for a queue never written. */
  async streams(queue: string): Promise<StreamId[]> {
    return [...(this.existing(queue)?.streams.values() ?? [])].map((s) => s.id).sort(compareStreams);
  }

  /**
   * A reader of one stream from `from` (default: its start); the stream need not exist yet.
   * @throws ERR_INVALID_ARG for a name that is not a stream's.
   */
  reader(queue: string, stream: string, from: StreamPosition = { offset: 0 }, options: ReaderOptions = {}): LogReader {
    checkStreamName(stream);
    checkQueueName(queue);
    return new MemoryLogReader(() => this.existing(queue)?.streams.get(stream), stream, from, options);
  }

  /** Each segment's summary, as the file store's indexes give it (all of the last segment's frames are described). */
  async segments(queue: string, stream: string, options: { readonly signal?: AbortSignal } = {}): Promise<SegmentSummary[]> {
    checkStreamName(stream);
    if (options.signal?.aborted === true) throw abortError(options.signal);
    const segments = this.existing(queue)?.streams.get(stream)?.segments ?? [];
    return segments.map((segment, i) => {
      const sealed = i < segments.length - 1;
      return summarize(stream, segment.base, sealed, segment.bytes, segment.index.build(sealed ? 'sealed' : 'partial', segment.bytes));
    });
  }

  /**
   * The frame with exactly `offset`, or undefined. The hint is not needed: finding an offset is a binary
   * search, and a hint naming another frame could not change the answer.
   */
  async frameAt(queue: string, stream: string, offset: number): Promise<StoredFrame | undefined> {
    checkStreamName(stream);
    const found = this.existing(queue)?.streams.get(stream);
    if (found === undefined) return undefined;
    for (const frame of framesFrom(found, offset)) return frame.offset === offset ? frame : undefined;
    return undefined;
  }

  /**
   * Claims the lowest slot of `queue` no open writer of this store holds; released by the writer's close().
   * @throws ERR_INVALID_ARG for a bad queue name or segment size, ERR_CLOSED after close().
   */
  async claimWriter(queue: string, options: WriterOptions = {}): Promise<LogWriter> {
    if (this.closing !== undefined) throw new MqlogError('ERR_CLOSED', 'memory log store is closed');
    const segmentBytes = options.segmentBytes ?? DEFAULT_SEGMENT_BYTES;
    if (!Number.isSafeInteger(segmentBytes) || segmentBytes < MIN_SEGMENT_BYTES) {
      throw new MqlogError('ERR_INVALID_ARG', `segmentBytes must be an integer >= ${MIN_SEGMENT_BYTES}, got ${segmentBytes}`);
    }
    const q = this.queueOf(queue);
    let slot = 0;
    while (q.slots.has(slot)) slot++;
    q.slots.add(slot);
    return new MemoryLogWriter(q, slot, segmentBytes, options);
  }

  /**
   * Reclaims the frames `keep` rejects, in whole segments, as FileLogStore does (spec/log-format.md §13):
   * a sealed segment with nothing kept is deleted, one keeping less than `rewriteBelowShare` of its bytes
   * is rewritten (kept frames unchanged, offsets included; positions recomputed); the last segment is
   * retired only when no writer of this store holds the stream's slot and nothing in it is kept.
   * @throws ERR_INVALID_ARG for a name that is not a stream's; whatever `keep` throws.
   */
  async compact(queue: string, stream: string, keep: KeepFrame, options: CompactOptions = {}): Promise<StreamCompaction> {
    checkStreamName(stream);
    const q = this.existing(queue);
    const s = q?.streams.get(stream);
    if (q === undefined || s === undefined) return NO_COMPACTION;
    const share = options.rewriteBelowShare ?? 0.5;
    const result = { ...NO_COMPACTION };
    // The segments as they are now: a segment appended (or rolled) to meanwhile stays this round's tail.
    const segments = [...s.segments];
    for (const [index, segment] of segments.entries()) {
      if (options.signal?.aborted === true) break;
      if (options.keepFrom !== undefined && segment.base >= options.keepFrom) continue;
      const sealed = index < segments.length - 1;
      let action: 'kept' | 'deleted' | 'rewritten' | 'retired' = 'kept';
      const decision = options.decide === undefined ? 'read' : await options.decide(summarize(stream, segment.base, sealed, segment.bytes, segment.index.build(sealed ? 'sealed' : 'partial', segment.bytes)));
      // An open writer appends to the tail: not even worth asking `keep` about it.
      if (decision !== 'keep' && (sealed || !q.slots.has(s.id.slot))) {
        const frames = segment.frames.slice();
        const kept: StoredFrame[] = [];
        if (decision !== 'drop' || !sealed) {
          for (const frame of frames) {
            // A shutdown does not wait for the segment: it is left as it is, and the round ends.
            if (stopped(options.signal)) return result;
            if (await keep(frame)) kept.push(frame);
          }
        }
        const keptBytes = kept.reduce((n, f) => n + f.bytes, 0);
        const at = s.segments.indexOf(segment);
        // Re-checked after the awaits: another compaction may have replaced the segment, and a writer may
        // have claimed the slot and appended to the tail.
        const unchanged = at >= 0 && segment.frames.length === frames.length;
        if (unchanged && kept.length < frames.length) {
          if (sealed && kept.length === 0) action = 'deleted';
          else if (sealed && keptBytes < segment.bytes * share) action = 'rewritten';
          else if (!sealed && kept.length === 0 && at === s.segments.length - 1 && !q.slots.has(s.id.slot)) action = 'retired';
        }
        if (action !== 'kept') {
          // Retiring starts an empty successor named by the next offset, as the file store does: the
          // segments before stay sealed, and the next append continues the offsets.
          const replacement: Segment[] =
            action === 'rewritten' ? [rebuilt(segment.base, kept)] : action === 'retired' ? [emptySegment(s.nextOffset)] : [];
          s.segments.splice(at, 1, ...replacement);
          const reclaimed = segment.bytes - keptBytes;
          q.bytes -= reclaimed;
          result.segmentsDeleted += action === 'deleted' || action === 'retired' ? 1 : 0;
          result.segmentsRewritten += action === 'rewritten' ? 1 : 0;
          result.framesRemoved += frames.length - kept.length;
          result.bytesReclaimed += reclaimed;
          bump(q);
        }
      }
      options.onSegment?.(`memory:${queue}/${stream}/${segment.base}`, action);
    }
    return result;
  }

  /** Bytes of every frame of the queue's streams, and their number of segments. */
  async usage(queue: string): Promise<QueueUsage> {
    const q = this.existing(queue);
    const segments = [...(q?.streams.values() ?? [])].reduce((n, s) => n + s.segments.length, 0);
    return { bytes: q?.bytes ?? 0, segments };
  }

  /** Every frame of each segment, then the segment's totals. Memory holds nothing corrupt or torn. */
  /** Memory holds nothing damaged: nothing to repair. */
  repair(): Promise<StreamRepair> {
    return Promise.resolve({ repaired: [], left: [] });
  }

  async *verify(queue: string, only: { readonly stream?: string; readonly segment?: number } = {}): AsyncGenerator<VerifyEvent> {
    const names = only.stream === undefined ? (await this.streams(queue)).map((s) => s.name) : [checkStreamName(only.stream)];
    for (const name of names) {
      // A copy: the caller may append or compact between two events.
      const segments = [...(this.existing(queue)?.streams.get(name)?.segments ?? [])];
      for (const segment of segments) {
        if (only.segment !== undefined && segment.base !== only.segment) continue;
        const path = `memory:${queue}/${name}/${segment.base}`;
        const frames = segment.frames.slice();
        for (const frame of frames) yield { kind: 'frame', path, frame };
        yield { kind: 'segment', path, frames: frames.length, bytes: frames.reduce((n, f) => n + f.bytes, 0) };
      }
    }
  }

  /**
   * A change feed of `queue`, bumped by every append, roll and compaction change through this store.
   * @throws ERR_CLOSED after close().
   */
  changes(queue: string): ChangeFeed {
    if (this.closing !== undefined) throw new MqlogError('ERR_CLOSED', 'memory log store is closed');
    const q = this.queueOf(queue);
    const feed: MemoryChangeFeed = new MemoryChangeFeed(() => q.feeds.delete(feed));
    q.feeds.add(feed);
    return feed;
  }

  /** Closes every change feed (which wakes their waiters). Writers and readers stay the caller's. Idempotent. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      for (const q of this.queues.values()) for (const feed of [...q.feeds]) await feed.close();
    })();
    return this.closing;
  }

  private existing(queue: string): Queue | undefined {
    return this.queues.get(checkQueueName(queue));
  }

  private queueOf(queue: string): Queue {
    const q = this.existing(queue) ?? { name: queue, streams: new Map(), slots: new Set(), feeds: new Set(), bytes: 0 };
    this.queues.set(queue, q);
    return q;
  }
}

/** One claimed slot of a queue. Appends are synchronous underneath, so they keep the order of the calls. */
class MemoryLogWriter implements LogWriter {
  readonly slot: number;
  private readonly queue: Queue;
  private readonly segmentBytes: number;
  private readonly options: WriterOptions;
  /** Per key, the clock that rolls its open segment after rollIdleMs without an append. */
  private readonly idleTimers = new Map<string, NodeJS.Timeout>();
  private closing: Promise<void> | undefined;

  constructor(queue: Queue, slot: number, segmentBytes: number, options: WriterOptions) {
    this.queue = queue;
    this.slot = slot;
    this.segmentBytes = segmentBytes;
    this.options = options;
  }

  async append(key: string, type: number, payload: Payload): Promise<AppendResult> {
    const name = this.streamNameOf(key);
    const q = this.queue;
    const bytes = FRAME_HEADER_BYTES + payloadLength(payload);
    const maxBytes = this.options.maxBytes;
    if (maxBytes !== undefined && maxBytes !== null && q.bytes + bytes > maxBytes) {
      throw new MqlogError('ERR_QUEUE_FULL', `memory:${q.name} reached its size limit of ${maxBytes} bytes (maxQueueBytes)`, { details: { queue: q.name, maxBytes } });
    }
    const existing = q.streams.get(name);
    const offset = existing?.nextOffset ?? 0;
    // Encoded before anything changes: a bad type or an oversized payload leaves the stream as it was.
    const header = encodeFrameHeader(type, offset, payload);
    // The one copy, into one buffer as a file holds it: the caller may reuse its buffers once this resolves.
    const raw = Buffer.concat([header, ...(payload instanceof Uint8Array ? [payload] : payload)], bytes);
    const stream = existing ?? { id: { name, key, slot: this.slot }, segments: [], nextOffset: 0 };
    if (existing === undefined) q.streams.set(name, stream);
    let segment = stream.segments.at(-1);
    // A segment always takes its first frame, however large; later ones only while they fit.
    if (segment === undefined || (segment.frames.length > 0 && segment.bytes + bytes > this.segmentBytes)) {
      segment = emptySegment(offset);
      stream.segments.push(segment);
    }
    const frame: StoredFrame = { stream: name, type, offset, payload: raw.subarray(FRAME_HEADER_BYTES), raw, bytes, segment: segment.base, position: segment.bytes };
    segment.frames.push(frame);
    segment.index.add({ type, offset, position: frame.position, bytes, crc: frameChecksum(header) });
    segment.bytes += bytes;
    stream.nextOffset = offset + 1;
    q.bytes += bytes;
    this.options.onFlush?.(1, bytes, 0);
    bump(q);
    this.armIdleRoll(key);
    return { stream: name, offset, segment: frame.segment, position: frame.position, bytes };
  }

  async appendMany(key: string, frames: readonly FrameToAppend[]): Promise<AppendResult[]> {
    const results: AppendResult[] = [];
    for (const { type, payload } of frames) {
      try {
        results.push(await this.append(key, type, payload));
      } catch (err) {
        throw withDetails(err, { stored: results.length });
      }
    }
    return results;
  }

  private armIdleRoll(key: string): void {
    const idleMs = this.options.rollIdleMs ?? DEFAULT_ROLL_IDLE_MS;
    if (idleMs === 0) return;
    const timer = this.idleTimers.get(key);
    if (timer !== undefined) {
      timer.refresh();
      return;
    }
    const next = setTimeout(() => {
      this.idleTimers.delete(key);
      if (this.closing === undefined) void this.roll(key);
    }, idleMs);
    next.unref();
    this.idleTimers.set(key, next);
  }

  /** Seals the open segment of `key`'s stream if it holds a frame: the next append starts a new one. */
  async roll(key: string): Promise<void> {
    const stream = this.queue.streams.get(this.streamNameOf(key));
    const last = stream?.segments.at(-1);
    if (stream === undefined || last === undefined || last.frames.length === 0) return;
    // An empty last segment, as the file store creates: the one just ended is sealed (compactable) now.
    stream.segments.push(emptySegment(stream.nextOffset));
    bump(this.queue);
  }

  /** Releases the slot. Idempotent. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      for (const timer of this.idleTimers.values()) clearTimeout(timer);
      this.queue.slots.delete(this.slot);
    })();
    return this.closing;
  }

  /** @throws ERR_CLOSED after close(), ERR_INVALID_ARG for a bad key. */
  private streamNameOf(key: string): string {
    if (this.closing !== undefined) throw new MqlogError('ERR_CLOSED', 'log writer is closed');
    if (!STREAM_KEY.test(key)) throw new MqlogError('ERR_INVALID_ARG', `stream key must match ${STREAM_KEY}, got ${key}`);
    return streamName(key, this.slot);
  }
}

/** Sequential reading of one stream. Holds only a position: each read finds its place by offset anew. */
class MemoryLogReader implements LogReader {
  readonly stream: string;
  private readonly lookup: () => Stream | undefined;
  private readonly skipTypes: ReadonlySet<number> | undefined;
  private next: number;
  private hint: FrameHint | undefined;
  private closed = false;

  constructor(lookup: () => Stream | undefined, stream: string, from: StreamPosition, options: ReaderOptions) {
    this.lookup = lookup;
    this.stream = stream;
    this.next = from.offset;
    this.hint = from.hint;
    this.skipTypes = options.skipTypes;
  }

  get position(): StreamPosition {
    return { offset: this.next, hint: this.hint };
  }

  /**
   * The frames stored now from the position, up to the limits: as the file store, it stops once either
   * limit is reached (so the last frame may pass `maxBytes`) and then says `more`. `durable` needs nothing.
   * @throws ERR_CLOSED after close().
   */
  async read(limits: ReadLimits = {}): Promise<StreamRead> {
    // Passed over, but the position moves past it (as the file store's reader does).
    const { items: frames, state } = this.walk(limits, (frame) => (this.skipTypes?.has(frame.type) === true ? undefined : frame));
    return { frames, state };
  }

  /** Lists the frames stored now from the position, up to the limits, and moves past them (see LogReader.skim). */
  async skim(limits: ReadLimits = {}): Promise<StreamSkim> {
    const { items: frames, state } = this.walk(limits, (frame): SkimmedFrame => ({ type: frame.type, offset: frame.offset, segment: frame.segment, position: frame.position, bytes: frame.bytes }));
    return { frames, state };
  }

  /** The frames stored now from the position as `pick` makes them (undefined: passed over), up to the limits. */
  private walk<T extends { readonly bytes: number }>(limits: ReadLimits, pick: (frame: StoredFrame) => T | undefined): { items: T[]; state: 'more' | 'end' } {
    if (this.closed) throw new MqlogError('ERR_CLOSED', 'stream reader is closed');
    const maxFrames = limits.maxFrames ?? Number.POSITIVE_INFINITY;
    const maxBytes = limits.maxBytes ?? Number.POSITIVE_INFINITY;
    const items: T[] = [];
    const stream = this.lookup();
    if (stream === undefined) return { items, state: 'end' };
    const source = framesFrom(stream, this.next);
    let bytes = 0;
    while (items.length < maxFrames && bytes < maxBytes) {
      const step = source.next();
      if (step.done === true) return { items, state: 'end' };
      const frame = step.value;
      this.next = frame.offset + 1;
      const item = pick(frame);
      if (item === undefined) continue;
      items.push(item);
      bytes += item.bytes;
      this.hint = { segment: frame.segment, position: frame.position, offset: frame.offset };
    }
    return { items, state: 'more' };
  }

  /** Moves to `to`: each read finds its place by offset, so the hint is only kept for `position`. */
  async seek(to: StreamPosition): Promise<void> {
    if (this.closed) throw new MqlogError('ERR_CLOSED', 'stream reader is closed');
    this.next = to.offset;
    this.hint = to.hint;
  }

  /** Memory holds nothing that a crash could lose and a sync keep: nothing to do. */
  async sync(): Promise<void> {
    if (this.closed) throw new MqlogError('ERR_CLOSED', 'log reader is closed');
  }

  /** Frames are views of the stored frames, which stay: nothing to take back. */
  release(): void {}

  async close(): Promise<void> {
    this.closed = true;
  }
}

/** The memory store's ChangeFeed: nothing to watch, every change comes through bump(). */
class MemoryChangeFeed implements ChangeFeed {
  private changes = 0;
  private waiters = new Set<() => void>();
  private readonly listeners = new Set<() => void>();
  private readonly onClose: () => void;
  private closing: Promise<void> | undefined;

  constructor(onClose: () => void) {
    this.onClose = onClose;
  }

  get generation(): number {
    return this.changes;
  }

  /** At once: there is no watch to set up. */
  async whenReady(): Promise<void> {}

  /** Counts a change and wakes every waiter and listener. */
  bump(): void {
    this.changes++;
    this.wake();
    for (const listener of [...this.listeners]) listener();
  }

  onChange(listener: () => void): () => void {
    this.listeners.add(listener);
    return () => void this.listeners.delete(listener);
  }

  /**
   * Resolves at once if the generation moved past `seen`, else on the next change or after the fallback.
   * @throws ERR_ABORTED / ERR_TIMEOUT when the signal fires, ERR_CLOSED after close().
   */
  async changedSince(seen: number, signal?: AbortSignal): Promise<void> {
    if (this.closing !== undefined) throw new MqlogError('ERR_CLOSED', 'change feed is closed');
    if (signal?.aborted === true) throw abortError(signal);
    if (this.changes !== seen) return;
    await new Promise<void>((resolve, reject) => {
      const settle = (error?: MqlogError): void => {
        clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
        this.waiters.delete(done);
        if (error === undefined) resolve();
        else reject(error);
      };
      const done = (): void => settle();
      const onAbort = (): void => settle(abortError(signal as AbortSignal));
      const timer = setTimeout(done, FALLBACK_MS);
      this.waiters.add(done);
      signal?.addEventListener('abort', onAbort, { once: true });
    });
  }

  /** Unregisters the feed and wakes its waiters. Idempotent. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      this.onClose();
      this.wake();
    })();
    return this.closing;
  }

  private wake(): void {
    const waiters = this.waiters;
    this.waiters = new Set();
    for (const wake of waiters) wake();
  }
}

/** Wakes every open feed of the queue. */
function bump(queue: Queue): void {
  for (const feed of [...queue.feeds]) feed.bump();
}

/** The frames of a stream from the first with an offset at or past `offset`. */
function* framesFrom(stream: Stream, offset: number): Generator<StoredFrame> {
  const segments = stream.segments;
  // The last segment whose base is at or below `offset` is the first that may hold it (bases rise).
  for (let i = Math.max(0, firstIndex(segments, (s) => s.base > offset) - 1); i < segments.length; i++) {
    const frames = (segments[i] as Segment).frames;
    for (let j = firstIndex(frames, (f) => f.offset >= offset); j < frames.length; j++) yield frames[j] as StoredFrame;
  }
}

/** The first index whose item satisfies `test`, for a test false then true along the array (or its length). */
function firstIndex<T>(items: readonly T[], test: (item: T) => boolean): number {
  let low = 0;
  let high = items.length;
  while (low < high) {
    const mid = (low + high) >>> 1;
    if (test(items[mid] as T)) high = mid;
    else low = mid + 1;
  }
  return low;
}

function stopped(signal: AbortSignal | undefined): boolean {
  return signal?.aborted === true;
}

function emptySegment(base: number): Segment {
  return { base, frames: [], bytes: 0, index: new IndexBuilder(base) };
}

/** A rewritten segment holding only `kept`: the same frames and offsets, positions packed from 0. */
function rebuilt(base: number, kept: readonly StoredFrame[]): Segment {
  const segment = emptySegment(base);
  for (const frame of kept) {
    const moved = { ...frame, position: segment.bytes };
    segment.frames.push(moved);
    segment.index.add({ type: frame.type, offset: frame.offset, position: moved.position, bytes: frame.bytes, crc: frameChecksum(frame.raw) });
    segment.bytes += frame.bytes;
  }
  return segment;
}

function checkStreamName(stream: string): string {
  if (parseStreamName(stream) === undefined) throw new MqlogError('ERR_INVALID_ARG', `not a stream name: ${stream}`);
  return stream;
}

function checkQueueName(queue: string): string {
  if (queue === '') throw new MqlogError('ERR_INVALID_ARG', `not a queue name: ${JSON.stringify(queue)}`);
  return queue;
}
