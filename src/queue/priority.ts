/**
 * Priorities: one stream key per priority (`p0`..`p9`), and a reader that serves a queue most urgent
 * first without scanning it (spec/log-format.md §9.2).
 *
 * The PriorityReader keeps a small read-ahead per stream and always hands out the head with the highest
 * priority; among streams of equal priority (several writer slots), the lowest order key first. What the
 * caller's `describe` made of a frame (its order key and decoded fields) travels with it, so no frame's
 * fields are decoded twice. Memory is bounded by the read-ahead limits times the number of streams,
 * whatever the queue size. One caller at a time.
 */
import { MqlogError } from '../errors.js';
import type { LogReader, LogStore, StoredFrame, StreamId, StreamPosition, TornTail } from '../log/log-store.js';
import { MAX_PRIORITY, MIN_PRIORITY } from './codec.js';

export function priorityKey(priority: number): string {
  return `p${priority}`;
}

/** The priority a stream key stands for, or undefined for keys that are not priorities. */
export function priorityOfKey(key: string): number | undefined {
  const match = /^p(\d)$/.exec(key);
  if (match === null) return undefined;
  const priority = Number(match[1]);
  return priority >= MIN_PRIORITY && priority <= MAX_PRIORITY ? priority : undefined;
}

export interface QueuedFrame<T> {
  readonly frame: StoredFrame;
  readonly priority: number;
  /** Sort key among equal priorities. */
  readonly order: string | number;
  /** Breaks ties of `order`. */
  readonly tie?: string | undefined;
  /** What `describe` decoded. */
  readonly info: T;
}

export interface PriorityReaderOptions<T> {
  /** Read-ahead per stream. */
  readonly readAheadFrames?: number;
  readonly readAheadBytes?: number;
  /**
   * Order key and decoded fields of a frame. Keys of one reader are all strings or all numbers (a
   * number: a frame's time, when frames of one millisecond may go in any order).
   */
  readonly describe: (frame: StoredFrame) => { readonly order: string | number; readonly tie?: string | undefined; readonly info: T };
  /** Called when a stream's data ends in a torn or unfinished write. */
  readonly onTorn?: (stream: string, torn: TornTail) => void;
  /** Frame types never handed out, passed over without reading them (consumers skip body chunks). */
  readonly skipTypes?: ReadonlySet<number>;
  /** Read with synchronous reads (see ReaderOptions.syncReads). */
  readonly syncReads?: boolean;
  /**
   * Hand out only durable frames (see ReaderOptions.durable): one sync per stream per take. `'later'`:
   * take() does not wait for it; the caller calls sync() before it lets anything out (and may do other
   * work meanwhile).
   */
  readonly durable?: boolean | 'later';
  /**
   * Each take holds frames of one priority: a batch carrying an urgent message is not also filled with
   * less urgent frames (whose storing at the receiver would delay it).
   */
  readonly onePriorityPerTake?: boolean;
  /** Frames are let go of soon after they are taken (see ReaderOptions.lend). */
  readonly lend?: boolean;
}

interface Lane<T> {
  readonly id: StreamId;
  /** Frames were taken from it since its last sync. */
  unsynced: boolean;
  readonly priority: number;
  readonly reader: LogReader;
  ahead: QueuedFrame<T>[];
  /** Nothing more stored at the last read. */
  drained: boolean;
}

/** What mostUrgent() says when a lane must be read ahead before it can choose. */
class Refill<T> {
  constructor(readonly lane: Lane<T>) {}
}

/** New streams (another writer slot, a first message of a priority) are looked for at most this often while busy. */
const DISCOVER_EVERY_MS = 100;

export class PriorityReader<T> {
  private readonly store: LogStore;
  private readonly queue: string;
  private readonly start: (stream: string) => StreamPosition;
  private readonly options: PriorityReaderOptions<T>;
  private readonly lanes = new Map<string, Lane<T>>();
  private discoveredAt = Number.NEGATIVE_INFINITY;
  private closed = false;
  private emptied = false;

  /** `start` gives the position each stream is read from when the reader first meets it. */
  constructor(store: LogStore, queue: string, start: (stream: string) => StreamPosition, options: PriorityReaderOptions<T>) {
    this.store = store;
    this.queue = queue;
    this.start = start;
    this.options = options;
  }

  /**
   * Takes up to `maxFrames` frames (and roughly `maxBytes`), most urgent first, among what is stored now.
   * An empty result means nothing is ready.
   */
  async take(maxFrames: number, maxBytes = Number.POSITIVE_INFINITY): Promise<QueuedFrame<T>[]> {
    if (this.closed) throw new MqlogError('ERR_CLOSED', 'priority reader is closed');
    const stale = performance.now() - this.discoveredAt >= DISCOVER_EVERY_MS;
    if (stale) await this.discover();
    let out = await this.collect(maxFrames, maxBytes);
    // Nothing in the streams known: a new one may have just appeared.
    if (out.length === 0 && !stale) {
      await this.discover();
      out = await this.collect(maxFrames, maxBytes);
    }
    return out;
  }

  /** Whether the last take() stopped because every stream had nothing more ready (not at a limit). */
  get drained(): boolean {
    return this.emptied;
  }

  /** The caller is done with these frames, which take() returned (LogReader.release). */
  release(frames: Iterable<StoredFrame>): void {
    for (const frame of frames) this.lanes.get(frame.stream)?.reader.release([frame]);
  }

  /** Forgets read-ahead and positions; streams are re-read from `start` on the next take(). */
  async reset(): Promise<void> {
    const lanes = [...this.lanes.values()];
    this.lanes.clear();
    this.discoveredAt = Number.NEGATIVE_INFINITY;
    for (const lane of lanes) await lane.reader.close();
  }

  async close(): Promise<void> {
    this.closed = true;
    await this.reset();
  }

  private async collect(maxFrames: number, maxBytes: number): Promise<QueuedFrame<T>[]> {
    for (const lane of this.lanes.values()) lane.drained = false;
    const out: QueuedFrame<T>[] = [];
    const used = new Set<Lane<T>>();
    let bytes = 0;
    this.emptied = false;
    while (out.length < maxFrames && bytes < maxBytes) {
      // Refill only when the choice needs it: no promise per frame taken from what was read ahead.
      let lane = this.mostUrgent();
      while (lane instanceof Refill) {
        await this.refill(lane.lane);
        lane = this.mostUrgent();
      }
      if (lane === undefined) {
        this.emptied = true;
        break;
      }
      if (this.options.onePriorityPerTake === true && out.length > 0 && lane.priority !== (out[0] as QueuedFrame<T>).priority) break;
      const queued = lane.ahead.shift() as QueuedFrame<T>;
      out.push(queued);
      used.add(lane);
      bytes += queued.frame.bytes;
    }
    // Durable before they are handed out: one sync per stream that gave frames (read-ahead included).
    for (const lane of used) lane.unsynced = true;
    if (this.options.durable === true) await this.sync();
    return out;
  }

  /** Makes every frame taken so far durable (one sync per stream that gave frames since the last one). */
  async sync(): Promise<void> {
    const lanes = [...this.lanes.values()].filter((lane) => lane.unsynced);
    for (const lane of lanes) lane.unsynced = false;
    await Promise.all(lanes.map((lane) => lane.reader.sync()));
  }

  private async discover(): Promise<void> {
    this.discoveredAt = performance.now();
    for (const id of await this.store.streams(this.queue)) {
      if (this.lanes.has(id.name)) continue;
      const priority = priorityOfKey(id.key);
      if (priority === undefined) continue;
      const reader = this.store.reader(this.queue, id.name, this.start(id.name), { ...(this.options.skipTypes === undefined ? {} : { skipTypes: this.options.skipTypes }), lend: this.options.lend === true, syncReads: this.options.syncReads === true });
      this.lanes.set(id.name, { id, priority, reader, ahead: [], drained: false, unsynced: false });
    }
  }

  /**
   * The lane whose head should go next, most urgent first, among what was read ahead; a Refill when a
   * lane it must look at has nothing read ahead and may have more.
   */
  private mostUrgent(): Lane<T> | undefined | Refill<T> {
    for (let priority = MAX_PRIORITY; priority >= MIN_PRIORITY; priority--) {
      let best: Lane<T> | undefined;
      for (const lane of this.lanes.values()) {
        if (lane.priority !== priority) continue;
        const head = lane.ahead[0];
        if (head === undefined) {
          if (!lane.drained) return new Refill(lane);
          continue;
        }
        if (best === undefined || comesBefore(head, best.ahead[0] as QueuedFrame<T>)) best = lane;
      }
      if (best !== undefined) return best;
    }
    return undefined;
  }

  private async refill(lane: Lane<T>): Promise<void> {
    const read = await lane.reader.read({
      maxFrames: this.options.readAheadFrames ?? 256,
      maxBytes: this.options.readAheadBytes ?? 1024 * 1024,
    });
    for (const frame of read.frames) {
      const { order, tie, info } = this.options.describe(frame);
      lane.ahead.push({ frame, priority: lane.priority, order, tie, info });
    }
    // Nothing read counts as nothing ready, whatever the reader says: mostUrgent() would ask again.
    if (read.state !== 'more' || read.frames.length === 0) lane.drained = true;
    if (read.state === 'torn' && read.torn !== undefined) this.options.onTorn?.(lane.id.name, read.torn);
  }
}

/** `a` goes before `b` (frames of equal priority): by order key, then by tie-breaker. */
function comesBefore<T>(a: QueuedFrame<T>, b: QueuedFrame<T>): boolean {
  if (a.order !== b.order) return a.order < b.order;
  return a.tie !== undefined && b.tie !== undefined && a.tie < b.tie;
}
