/**
 * Counting the outbox's messages by state — per destination pending, sent, dead and expired, and the
 * messages pending for any — without reading them: from the outbox summaries (message-blocks.ts), kept
 * one file per segment and read once, and the outbox state (outbox-state.ts, the one answer for a
 * message's state, applied here to whole blocks at a time by DestinationCursor.statesIn). Only blocks
 * that a cursor, a dead or expired list or an expiry time cuts through are read, a message at a time.
 *
 *   DIR/outbox/summaries/<stream>/<20-digit base>.json   one per segment (outbox-summaries.ts)
 *
 * A sealed segment's summary is built once (by reading its messages, or taken over from the follower
 * that read them as they were appended) and written with the log's id of the segment: a rewritten
 * segment has another id, and its summary is built again. The open segment of each stream is followed
 * (its new frames read once, or taken from a forwarder that read them: observe); with `persist`, its
 * finished blocks are written as they come (at most once a second), so that the next process reads
 * only what came after them. Summary files are a cache: a missing or stale one is
 * built again, and failing to write one only costs the next caller a read.
 *
 * Several callers may share one counter (the daemon's backlog and its compactor): refresh() and count()
 * take turns. Memory: a few numbers per block of 512 messages, and the messages of the blocks being filled.
 */
import { FrameType, frameChecksum } from '../log/frame.js';
import type { LogReader, LogStore, SegmentSummary, StoredFrame } from '../log/log-store.js';
import { readAvailable } from '../log/stream-scan.js';
import { nextTurn } from '../util/backoff.js';
import { decodeRouting, type MessageRouting } from './codec.js';
import type { QueueInfo } from './layout.js';
import { BlockBuilder, destinationSet, segmentTotal, type MessageBlock, type SegmentMessages, type SummarisedMessage } from './message-blocks.js';
import { OutboxSummaries } from './outbox-summaries.js';
import type { DeliveryCounts, OutboxState } from './outbox-state.js';

const CHUNKS: ReadonlySet<number> = new Set([FrameType.BODY_CHUNK]);
const READ = { maxFrames: 1024, maxBytes: 8 * 1024 * 1024 };
/** Blocks read to be looked into, kept for the next count (the ones cursors are moving through). */
const BLOCK_CACHE = 64;

export interface OutboxCounts {
  /** Messages stored (frames that do not decode as messages are not). */
  readonly messages: number;
  /** Messages pending for at least one of their destinations. */
  readonly pending: number;
  /** Per destination, the state of every stored message that names it. */
  readonly destinations: ReadonlyMap<string, DeliveryCounts>;
}

export interface RefreshOptions {
  /**
   * Read what was appended to the open segments (default true). False: only what was seen (observe) is
   * taken, and the counts may lag what is stored; for a refresh that runs often while a reader of this
   * process keeps reading the outbox anyway.
   */
  readonly read?: boolean;
}

export interface OutboxCounterOptions {
  /** Write summary files (default true); false for a caller that must change nothing. */
  readonly persist?: boolean;
  /** Called with each message the followers read, in log order per stream (the daemon's appended counter). */
  readonly onMessage?: (meta: MessageRouting) => void;
}

/** A frame someone else read (a forwarder), as the follower needs it. */
interface SeenFrame {
  readonly type: number;
  readonly offset: number;
  readonly segment: number;
  readonly position: number;
  readonly bytes: number;
  readonly crc: number;
  readonly meta: MessageRouting | undefined;
}

/**
 * A follower writes the finished blocks of the open segments it follows at most this often: a process
 * that starts after a crash reads at most that much of the outbox again.
 */
const PERSIST_INTERVAL_MS = 1000;
/** Frames seen (observe) kept per stream at most, waiting for the next refresh. */
const MAX_SEEN = 64 * 1024;

/** The follower of a stream's open segment: one block builder per segment it read into. */
interface Follower {
  readonly reader: LogReader;
  /**
   * Frames another reader of this process read (observe), from where this reader stands on, one
   * offset after another: taken as read at the next refresh, and not read again.
   */
  seen: SeenFrame[];
  /** By segment base, in the order read; the last one is being filled. */
  readonly builders: Map<number, BlockBuilder>;
  /** Finished blocks of each builder already written. */
  readonly persisted: Map<number, number>;
  /** When they were last written (performance.now()). */
  persistedAt: number;
}

interface StreamView {
  /** Summaries of complete segments, by base. */
  readonly sealed: Map<number, SegmentMessages>;
  follower: Follower | undefined;
  /** Every segment's summary as of the last refresh, in offset order. */
  current: SegmentMessages[];
}

export class OutboxCounter {
  private readonly store: LogStore;
  private readonly info: QueueInfo;
  private readonly persist: boolean;
  private readonly onMessage: ((meta: MessageRouting) => void) | undefined;
  private readonly streams = new Map<string, StreamView>();
  private readonly blocks = new Map<string, readonly SummarisedMessage[]>();
  private readonly files: OutboxSummaries;
  /** Frames other readers of this process read (observe calls, taken or not): they are moving through the outbox. */
  observedFrames = 0;
  /** The call in progress: the next one waits for it. */
  private turn: Promise<unknown> = Promise.resolve();
  private closed = false;

  constructor(store: LogStore, info: QueueInfo, options: OutboxCounterOptions = {}) {
    this.store = store;
    this.info = info;
    this.persist = options.persist ?? true;
    this.files = new OutboxSummaries(store, info);
    this.onMessage = options.onMessage;
  }

  /**
   * Looks at the outbox as it is now: each stream's segments, the summaries of new sealed ones, and the
   * messages appended since the last look.
   * @throws ERR_ABORTED when `signal` fires; ERR_IO.
   */
  refresh(signal?: AbortSignal, options: RefreshOptions = {}): Promise<void> {
    const read = options.read ?? true;
    return this.inTurn(() => this.refreshStreams(signal, read));
  }

  private async refreshStreams(signal: AbortSignal | undefined, read: boolean): Promise<void> {
    // One stream after another, with a turn of the event loop between them: the segment listings are
    // synchronous reads, and a daemon counting a large outbox as it starts keeps answering meanwhile.
    for (const { name } of await this.store.streams(this.info.queue)) {
      let view = this.streams.get(name);
      if (view === undefined) {
        view = { sealed: new Map(), follower: undefined, current: [] };
        this.streams.set(name, view);
      }
      if (signal?.aborted === true) return;
      await this.refreshStream(name, view, signal, read);
      await nextTurn();
    }
  }

  /**
   * A frame another reader in this process read (in offset order per stream, a MESSAGE frame with its
   * routing fields, undefined when they did not decode): the next refresh takes the frames seen, one
   * offset after another from where this counter's follower stands, instead of reading them again. A
   * line that starts further on is kept too: the follower then reads on from where it stands, and takes
   * what it did not reach. Anything else (an earlier frame, one out of line, a stream not followed yet)
   * is ignored, and read as before.
   */
  observe(frame: StoredFrame, meta: MessageRouting | undefined): void {
    this.observedFrames++;
    const follower = this.streams.get(frame.stream)?.follower;
    if (follower === undefined) return;
    const seen = follower.seen;
    const last = seen.at(-1);
    // One offset after another, from where this follower stands or further on (it reads the gap first).
    const fits = last === undefined ? frame.offset >= follower.reader.position.offset : frame.offset === last.offset + 1;
    // A message whose routing fields the other reader could not decode is left to this one's read.
    if (!fits || seen.length >= MAX_SEEN || (frame.type === FrameType.MESSAGE && meta === undefined)) return;
    seen.push({ type: frame.type, offset: frame.offset, segment: frame.segment, position: frame.position, bytes: frame.bytes, crc: frameChecksum(frame.raw), meta });
  }

  /** The summaries of a stream's segments as of the last refresh (for compaction). */
  segmentsOf(stream: string): readonly SegmentMessages[] {
    return this.streams.get(stream)?.current ?? [];
  }

  /**
   * Counts every message by state at `now`, as of the last refresh. `destinations`: ones to report even
   * when no message names them.
   */
  count(state: OutboxState, now = Date.now(), destinations: Iterable<string> = []): Promise<OutboxCounts> {
    return this.inTurn(() => this.countNow(state, now, destinations));
  }

  private async countNow(state: OutboxState, now: number, destinations: Iterable<string>): Promise<OutboxCounts> {
    const per = new Map<string, DeliveryCounts>();
    const of = (d: string): DeliveryCounts => {
      let c = per.get(d);
      if (c === undefined) {
        c = { pending: 0, sent: 0, dead: 0, expired: 0 };
        per.set(d, c);
      }
      return c;
    };
    for (const d of destinations) of(d);
    let messages = 0;
    let pending = 0;
    /** Counts `block` if the rules decide it as a whole; false if something cuts through it. */
    const decided = (stream: string, block: MessageBlock): boolean => {
      const counts = decideBlock(state, stream, block, now);
      if (counts === undefined) return false;
      messages += block.messages;
      pending += counts.pending;
      for (const [d, c] of counts.destinations) add(of(d), c);
      return true;
    };
    for (const [stream, view] of this.streams) {
      for (const segment of view.current) {
        // The whole segment at once when nothing cuts through it; else block by block.
        const total = segmentTotal(segment);
        if (total === undefined || decided(stream, total)) continue;
        for (const block of segment.blocks) {
          if (decided(stream, block)) continue;
          messages += block.messages;
          // A cursor, a list or an expiry time cuts through the block: each message by the rules.
          for (const { offset, meta } of await this.messagesOf(stream, view, segment, block)) {
            if (state.stateOf(stream, offset, meta, now) === 'pending') pending++;
            for (const d of destinationSet(meta.to)) of(d)[state.stateFor(d, stream, offset, meta, now)]++;
          }
        }
      }
    }
    return { messages, pending, destinations: per };
  }

  /**
   * Stops following. With `persist`, what was read of each open segment is kept whole — the block being
   * filled too — so that the next process (a `stat`, a daemon starting) reads only what came after it.
   */
  async close(): Promise<void> {
    this.closed = true;
    await this.turn;
    for (const view of this.streams.values()) {
      const follower = view.follower;
      if (follower === undefined) continue;
      await follower.reader.close();
      const open = [...follower.builders.values()].at(-1);
      if (this.persist && open !== undefined && open.openCount > 0) await this.files.write(open.summary());
    }
  }

  private inTurn<T>(task: () => Promise<T>): Promise<T> {
    const run = this.turn.then(task, task);
    this.turn = run.catch(() => undefined);
    return run;
  }

  private async refreshStream(stream: string, view: StreamView, signal: AbortSignal | undefined, read: boolean): Promise<void> {
    const summaries = await this.store.segments(this.info.queue, stream, signal === undefined ? {} : { signal });
    const last = summaries.at(-1);
    // The open segment first: its follower reads what was appended, finishing the segments sealed since.
    const open = last !== undefined && !last.complete ? await this.follow(stream, view, last, signal, read) : [];
    const current: SegmentMessages[] = [];
    for (const [i, segment] of summaries.entries()) {
      if (segment.complete) {
        let messages = view.sealed.get(segment.base);
        if (messages?.id !== segment.id) {
          messages = await this.completeSummary(stream, view, segment, signal);
          view.sealed.set(segment.base, messages);
        }
        current.push(messages);
      } else if (segment !== last) {
        // A sealed segment that is damaged: what a read finds of it, every time.
        const builder = new BlockBuilder(stream, segment.base);
        await this.readInto(stream, { offset: segment.base }, signal, (base) => (base === segment.base ? builder : undefined), summaries[i + 1]?.base);
        current.push(builder.summary());
      }
    }
    current.push(...open);
    // Compacted away (or summarised as complete now): forgotten.
    const bases = new Set(summaries.map((s) => s.base));
    for (const base of view.sealed.keys()) if (!bases.has(base)) view.sealed.delete(base);
    const builders = view.follower?.builders;
    if (builders !== undefined && last !== undefined) for (const base of builders.keys()) if (base < last.base) builders.delete(base);
    view.current = current;
  }

  /** The summary of a complete segment: the one its follower built, its file, or one built by reading it. */
  private async completeSummary(stream: string, view: StreamView, segment: SegmentSummary, signal: AbortSignal | undefined): Promise<SegmentMessages> {
    const messageFrames = segment.types.get(FrameType.MESSAGE)?.frames ?? 0;
    const builders = view.follower?.builders;
    const followed = builders?.get(segment.base);
    // Followed to its end (the follower went on into a later segment): every message of it was read.
    if (followed !== undefined && builders !== undefined && [...builders.keys()].at(-1) !== segment.base) {
      builders.delete(segment.base);
      if (followed.frames === messageFrames) return this.keep(followed.summary(segment.id));
    }
    const file = await this.files.load(stream, segment.base);
    if (file?.id === segment.id) return file;
    // A summary of its first messages (written while it was open) spares reading them again.
    const from = file?.id === undefined && file !== undefined && (await this.files.checks(file)) ? file : undefined;
    const builder = new BlockBuilder(stream, segment.base, from);
    await this.readInto(stream, nextAfter(segment.base, from), signal, (base) => (base === segment.base ? builder : undefined));
    const summary = builder.summary(segment.id);
    // A rewrite while it was read: used now, not kept.
    return builder.frames === messageFrames ? this.keep(summary) : { ...summary, id: undefined };
  }

  /**
   * Follows the open segment `last`: reads what was appended since the last look (also into segments
   * the writer started since) and returns the summaries of `last` and of those later segments.
   */
  private async follow(stream: string, view: StreamView, last: SegmentSummary, signal: AbortSignal | undefined, read: boolean): Promise<SegmentMessages[]> {
    let follower = view.follower;
    if (follower === undefined) {
      if (this.closed) return [];
      const file = await this.files.load(stream, last.base);
      const from = file?.id === undefined && file !== undefined && (await this.files.checks(file)) ? file : undefined;
      follower = {
        reader: this.store.reader(this.info.queue, stream, nextAfter(last.base, from), { skipTypes: CHUNKS, lend: true }),
        seen: [],
        builders: new Map([[last.base, this.followed(new BlockBuilder(stream, last.base, from))]]),
        persisted: new Map([[last.base, from?.blocks.length ?? 0]]),
        persistedAt: Number.NEGATIVE_INFINITY,
      };
      view.follower = follower;
    }
    const builders = follower.builders;
    // A segment that was retired or compacted away is left behind: the reader finds the next by offset.
    const builderOf = (base: number): BlockBuilder | undefined => {
      let builder = builders.get(base);
      if (builder === undefined && base > ([...builders.keys()].at(-1) ?? -1)) {
        builder = this.followed(new BlockBuilder(stream, base));
        builders.set(base, builder);
      }
      return builder;
    };
    // Read also without `read` when not all that was seen went on from where the follower stood (it was
    // seen before this follower began, or while it was away), and when the writer went on to a segment
    // the follower has not reached (the one it is in is then complete, summarised from what it read).
    const tookAll = await this.takeSeen(follower, builderOf);
    if (read || !tookAll || ([...builders.keys()].at(-1) ?? -1) < last.base) await this.readFrames(follower.reader, signal, builderOf, true);
    // At most every PERSIST_INTERVAL_MS: each write holds every finished block of the segment so far.
    if (this.persist && performance.now() - follower.persistedAt >= PERSIST_INTERVAL_MS) {
      follower.persistedAt = performance.now();
      for (const [base, builder] of builders) {
        if (base < last.base || builder.finishedBlocks <= (follower.persisted.get(base) ?? 0)) continue;
        follower.persisted.set(base, builder.finishedBlocks);
        await this.files.write(builder.finishedSummary());
      }
    }
    return [...builders].filter(([base]) => base >= last.base).map(([, b]) => b.summary());
  }

  /**
   * Adds the frames seen since the last refresh that go on from the follower's position, and moves it
   * past them. False when some were left (a gap before them): the follower must read.
   */
  private async takeSeen(follower: Follower, builderOf: (base: number) => BlockBuilder | undefined): Promise<boolean> {
    const seen = follower.seen;
    follower.seen = [];
    let next = follower.reader.position.offset;
    let last: SeenFrame | undefined;
    let tookAll = true;
    for (const frame of seen) {
      if (frame.offset < next) continue;
      if (frame.offset > next) {
        tookAll = false;
        break;
      }
      // As readFrames takes what the follower reads (chunks are passed over unseen).
      if (!CHUNKS.has(frame.type)) {
        const builder = builderOf(frame.segment);
        if (builder === undefined) {
          tookAll = false;
          break;
        }
        if (frame.type === FrameType.MESSAGE && frame.meta !== undefined) {
          builder.add({ offset: frame.offset, meta: frame.meta }, frame.bytes, { offset: frame.offset, position: frame.position, crc: frame.crc });
          this.onMessage?.(frame.meta);
        }
      }
      next = frame.offset + 1;
      last = frame;
    }
    if (last !== undefined) await follower.reader.seek({ offset: next, hint: { segment: last.segment, position: last.position, offset: last.offset } });
    return tookAll;
  }

  /** Reads a stream from `from` to its end (or to `end`), adding each message to the builder of its segment. */
  private async readInto(stream: string, from: { offset: number; hint?: { segment: number; position: number; offset: number } }, signal: AbortSignal | undefined, builderOf: (base: number) => BlockBuilder | undefined, end?: number): Promise<void> {
    const reader = this.store.reader(this.info.queue, stream, from, { skipTypes: CHUNKS, lend: true });
    try {
      await this.readFrames(reader, signal, builderOf, false, end);
    } finally {
      await reader.close();
    }
  }

  private async readFrames(reader: LogReader, signal: AbortSignal | undefined, builderOf: (base: number) => BlockBuilder | undefined, following: boolean, end?: number): Promise<void> {
    // Damaged data: counted up to it (verify reports it).
    for await (const frames of readAvailable(reader, READ)) {
      if (signal?.aborted === true) return;
      for (const frame of frames) {
        if (end !== undefined && frame.offset >= end) return;
        const builder = builderOf(frame.segment);
        if (builder === undefined) return;
        if (frame.type !== FrameType.MESSAGE) continue;
        const at = { offset: frame.offset, position: frame.position, crc: frameChecksum(frame.raw) };
        const meta = metaOf(frame);
        if (meta === undefined) builder.addUndecodable(at);
        else {
          builder.add({ offset: frame.offset, meta }, frame.bytes, at);
          if (following) this.onMessage?.(meta);
        }
      }
    }
  }

  /** The messages of a block, from the follower that holds it open, from the cache, or read. */
  private async messagesOf(stream: string, view: StreamView, segment: SegmentMessages, block: MessageBlock): Promise<readonly SummarisedMessage[]> {
    const open = view.follower?.builders.get(segment.base)?.openMessages(block);
    if (open !== undefined) return open;
    const key = blockKey(stream, segment.base, block);
    const cached = this.blocks.get(key);
    if (cached !== undefined) {
      this.cacheBlock(key, cached);
      return cached;
    }
    const messages: SummarisedMessage[] = [];
    const reader = this.store.reader(this.info.queue, stream, { offset: block.from }, { skipTypes: CHUNKS, lend: true });
    try {
      reading: for await (const frames of readAvailable(reader, READ)) {
        for (const frame of frames) {
          if (frame.offset >= block.to) break reading;
          const meta = frame.type === FrameType.MESSAGE ? metaOf(frame) : undefined;
          if (meta !== undefined) messages.push({ offset: frame.offset, meta });
        }
      }
    } finally {
      await reader.close();
    }
    this.cacheBlock(key, messages);
    return messages;
  }

  /** Keeps a block's messages for the counts to come (the most recently used BLOCK_CACHE blocks). */
  private cacheBlock(key: string, messages: readonly SummarisedMessage[]): void {
    this.blocks.delete(key);
    this.blocks.set(key, messages);
    if (this.blocks.size > BLOCK_CACHE) this.blocks.delete(this.blocks.keys().next().value as string);
  }

  /**
   * A follower's builder keeps the messages of each block it finishes: a forwarder's cursor goes through
   * that block soon after (the follower goes on from what the forwarders read), and counting it then
   * needs its messages, which would otherwise be read again.
   */
  private followed(builder: BlockBuilder): BlockBuilder {
    builder.onFinished = (block, messages) => this.cacheBlock(blockKey(builder.stream, builder.base, block), messages);
    return builder;
  }

  private async keep(summary: SegmentMessages): Promise<SegmentMessages> {
    if (this.persist) await this.files.write(summary);
    return summary;
  }
}

/**
 * A block's key in the cache: its segment, its range and how many messages it holds. A rewrite of the
 * segment (compaction) only drops messages, so a block of the rewritten segment with the same range and
 * count holds the same messages.
 */
function blockKey(stream: string, base: number, block: MessageBlock): string {
  return `${stream}@${base}:${block.from}-${block.to}#${block.messages}`;
}

/** Where reading a segment goes on after a summary of its first messages (its start without one). */
function nextAfter(base: number, from: SegmentMessages | undefined): { offset: number; hint?: { segment: number; position: number; offset: number } } {
  const last = from?.last;
  return last === undefined ? { offset: base } : { offset: last.offset + 1, hint: { segment: base, position: last.position, offset: last.offset } };
}

function metaOf(frame: StoredFrame): MessageRouting | undefined {
  try {
    return decodeRouting(frame.payload);
  } catch {
    return undefined;
  }
}

/** A block's counts when every group's destinations decide it as a whole (DestinationCursor.statesIn); undefined otherwise. */
function decideBlock(state: OutboxState, stream: string, block: MessageBlock, now: number): { pending: number; destinations: Map<string, DeliveryCounts> } | undefined {
  const destinations = new Map<string, DeliveryCounts>();
  let pending = 0;
  for (const group of block.groups) {
    // Pending for one destination means: not passed and its time to live not over, the same messages
    // for every destination that has them pending; so the group's pending count is the largest.
    let groupPending = 0;
    for (const d of group.to) {
      const counts = state.statesIn(d, stream, block.from, block.to, group, now);
      if (counts === undefined) return undefined;
      groupPending = Math.max(groupPending, counts.pending);
      const sum = destinations.get(d);
      if (sum === undefined) destinations.set(d, { ...counts });
      else add(sum, counts);
    }
    pending += groupPending;
  }
  return { pending, destinations };
}

function add(into: DeliveryCounts, counts: DeliveryCounts): void {
  into.pending += counts.pending;
  into.sent += counts.sent;
  into.dead += counts.dead;
  into.expired += counts.expired;
}
