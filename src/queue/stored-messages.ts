/**
 * Which offsets of a queue's streams hold messages, known without reading the queue: from the log's
 * segment summaries (each segment's runs of MESSAGE frames, log-store.md "Segment summaries"), and, for
 * what no summary describes yet — the end of each stream's open segment — from those frames' headers
 * (LogReader.skim), once: a follower goes on with the frames appended later. With the done offsets of a
 * consumer state, how many messages are not done.
 *
 * The counts equal those of a read of every message (a frame whose fields do not decode counts here
 * too). Memory: a few ranges per segment (its runs), plus the offsets followed in each open segment.
 *
 * One caller at a time (refresh() is not re-entrant).
 */
import { FrameType } from '../log/frame.js';
import type { LogReader, LogStore, SegmentSummary } from '../log/log-store.js';
import { skimAvailable } from '../log/stream-scan.js';
import { IntervalSet } from '../util/interval-set.js';
import { nextTurn } from '../util/backoff.js';

const CHUNKS: ReadonlySet<number> = new Set([FrameType.BODY_CHUNK]);
const READ = { maxFrames: 4096, maxBytes: 8 * 1024 * 1024 };

/** Done messages of a stream within [from, to) (a consumer state's doneCount). */
export type DoneCount = (stream: string, from: number, to: number) => number;

interface FollowedStream {
  /** Reads what was appended to the stream's open segment since the last look. */
  reader: LogReader | undefined;
  /** Message offsets the reader found, from the open segment on. */
  readonly followed: IntervalSet;
  /** Every message offset of the stream, as of the last refresh. */
  messages: IntervalSet;
}

export class StoredMessages {
  private readonly store: LogStore;
  private readonly queue: string;
  private readonly streams = new Map<string, FollowedStream>();
  private closed = false;

  constructor(store: LogStore, queue: string) {
    this.store = store;
    this.queue = queue;
  }

  /**
   * Looks at the queue as it is now: its streams' segment summaries, and the frames appended since the
   * last look that no summary describes.
   * @throws ERR_ABORTED when `signal` fires; ERR_IO.
   */
  async refresh(signal?: AbortSignal): Promise<void> {
    // One stream after another, with a turn of the event loop between them (as OutboxCounter.refresh).
    for (const { name } of await this.store.streams(this.queue)) {
      let s = this.streams.get(name);
      if (s === undefined) {
        s = { reader: undefined, followed: new IntervalSet(), messages: new IntervalSet() };
        this.streams.set(name, s);
      }
      await this.refreshStream(name, s, signal);
      await nextTurn();
    }
  }

  /** Messages stored, as of the last refresh. */
  count(): number {
    let n = 0;
    for (const s of this.streams.values()) n += s.messages.size;
    return n;
  }

  /** Messages stored that `done` does not count, as of the last refresh. */
  notDone(done: DoneCount): number {
    let n = 0;
    for (const [stream, s] of this.streams) for (const [from, to] of s.messages.toPairs()) n += to - from - done(stream, from, to);
    return n;
  }

  /** The message offsets of each stream, as of the last refresh. */
  *offsets(): Generator<[stream: string, offsets: IntervalSet]> {
    for (const [stream, s] of this.streams) yield [stream, s.messages];
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const s of this.streams.values()) await s.reader?.close();
  }

  private async refreshStream(stream: string, s: FollowedStream, signal: AbortSignal | undefined): Promise<void> {
    const summaries = await this.store.segments(this.queue, stream, signal === undefined ? {} : { signal });
    const messages = new IntervalSet();
    const last = summaries.at(-1);
    for (const [i, summary] of summaries.entries()) {
      addRuns(messages, summary);
      // A sealed segment no summary describes whole (damaged): what a read finds of it, every time.
      if (!summary.complete && summary !== last) await this.readSegment(stream, summary, summaries[i + 1]?.base ?? Number.POSITIVE_INFINITY, messages);
    }
    if (last !== undefined) {
      if (s.reader === undefined && !this.closed) s.reader = this.store.reader(this.queue, stream, last.next, { skipTypes: CHUNKS, lend: true });
      // The open segment's summary went on past the follower (its writer is in this process): no need to read that part.
      else if (s.reader !== undefined && s.reader.position.offset < last.next.offset) await s.reader.seek(last.next);
      await this.follow(s);
      // What the follower found before the open segment is described by the summaries now (or gone).
      s.followed.deleteBelow(last.base);
      for (const [from, to] of s.followed.toPairs()) messages.addRange(from, to);
    }
    s.messages = messages;
  }

  /** Reads the stream's new frames, noting the message offsets (up to damaged data, where it waits). */
  private async follow(s: FollowedStream): Promise<void> {
    if (s.reader === undefined) return;
    for await (const frames of skimAvailable(s.reader, READ)) for (const frame of frames) if (frame.type === FrameType.MESSAGE) s.followed.add(frame.offset);
  }

  /** Adds the message offsets of one segment from `summary.next` up to `end` (the next segment's base). */
  private async readSegment(stream: string, summary: SegmentSummary, end: number, into: IntervalSet): Promise<void> {
    const reader = this.store.reader(this.queue, stream, summary.next, { skipTypes: CHUNKS, lend: true });
    try {
      for await (const frames of skimAvailable(reader, READ)) {
        for (const frame of frames) {
          if (frame.offset >= end) return;
          if (frame.type === FrameType.MESSAGE) into.add(frame.offset);
        }
      }
    } finally {
      await reader.close();
    }
  }
}

function addRuns(into: IntervalSet, summary: SegmentSummary): void {
  for (const run of summary.runs) if (run.type === FrameType.MESSAGE) into.addRange(run.from, run.to);
}
