/**
 * Priorities: one stream key per priority (`p0`..`p9`), and a reader that serves a queue most urgent
 * first without scanning it (spec/log-format.md §9.2).
 *
 * The PriorityReader keeps a small read-ahead per stream and always hands out the head with the highest
 * priority; among streams of equal priority (several writer slots), the oldest message id first. Its
 * memory is bounded by the read-ahead limits times the number of streams, whatever the queue size.
 * One caller at a time.
 */
import { MqlogError } from '../errors.js';
import type { LogStore, StreamId } from '../log/log-store.js';
import type { StreamFrame, StreamPosition, StreamReader, TornTail } from '../log/stream-reader.js';
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

export interface QueuedFrame extends StreamFrame {
  readonly stream: string;
  readonly priority: number;
  /** Sort key among equal priorities; for messages, their id. */
  readonly order: string;
}

export interface PriorityReaderOptions {
  /** Read-ahead per stream. */
  readonly readAheadFrames?: number;
  readonly readAheadBytes?: number;
  /** Sort key of a frame among equal priorities (default: stream order). */
  readonly orderOf?: (frame: StreamFrame) => string;
  /** Called when a stream's data ends in a torn or unfinished frame. */
  readonly onTorn?: (stream: string, torn: TornTail) => void;
  /** Frame types never handed out, passed over without reading them (consumers skip body chunks). */
  readonly skipTypes?: ReadonlySet<number>;
  /** Hand out only frames that are durable (see ReadLimits.durable). */
  readonly durable?: boolean;
}

interface Lane {
  readonly id: StreamId;
  readonly priority: number;
  readonly reader: StreamReader;
  ahead: QueuedFrame[];
  /** Nothing more on disk at the last read. */
  drained: boolean;
}

export class PriorityReader {
  private readonly store: LogStore;
  private readonly start: (stream: string) => StreamPosition;
  private readonly options: PriorityReaderOptions;
  private readonly lanes = new Map<string, Lane>();
  private closed = false;

  /** `start` gives the position each stream is read from when the reader first meets it. */
  constructor(store: LogStore, start: (stream: string) => StreamPosition, options: PriorityReaderOptions = {}) {
    this.store = store;
    this.start = start;
    this.options = options;
  }

  /**
   * Takes up to `maxFrames` frames (and roughly `maxBytes`), most urgent first, among what is on disk now.
   * An empty result means nothing is ready.
   */
  async take(maxFrames: number, maxBytes = Number.POSITIVE_INFINITY): Promise<QueuedFrame[]> {
    if (this.closed) throw new MqlogError('ERR_CLOSED', 'priority reader is closed');
    await this.discover();
    for (const lane of this.lanes.values()) lane.drained = false;
    const out: QueuedFrame[] = [];
    let bytes = 0;
    while (out.length < maxFrames && bytes < maxBytes) {
      const lane = await this.mostUrgent();
      if (lane === undefined) break;
      const frame = lane.ahead.shift() as QueuedFrame;
      out.push(frame);
      bytes += frame.bytes;
    }
    return out;
  }

  /** Forgets read-ahead and positions; streams are re-read from `start` on the next take(). */
  async reset(): Promise<void> {
    const lanes = [...this.lanes.values()];
    this.lanes.clear();
    for (const lane of lanes) await lane.reader.close();
  }

  async close(): Promise<void> {
    this.closed = true;
    await this.reset();
  }

  private async discover(): Promise<void> {
    for (const id of await this.store.streams()) {
      if (this.lanes.has(id.name)) continue;
      const priority = priorityOfKey(id.key);
      if (priority === undefined) continue;
      const reader = this.store.reader(id.name, this.start(id.name), this.options.skipTypes === undefined ? {} : { skipTypes: this.options.skipTypes });
      this.lanes.set(id.name, { id, priority, reader, ahead: [], drained: false });
    }
  }

  /** The lane whose head should go next, refilling read-ahead as needed. */
  private async mostUrgent(): Promise<Lane | undefined> {
    for (let priority = MAX_PRIORITY; priority >= MIN_PRIORITY; priority--) {
      let best: Lane | undefined;
      for (const lane of this.lanes.values()) {
        if (lane.priority !== priority) continue;
        if (lane.ahead.length === 0 && !lane.drained) await this.refill(lane);
        const head = lane.ahead[0];
        if (head === undefined) continue;
        if (best === undefined || head.order < (best.ahead[0] as QueuedFrame).order) best = lane;
      }
      if (best !== undefined) return best;
    }
    return undefined;
  }

  private async refill(lane: Lane): Promise<void> {
    const read = await lane.reader.read({
      maxFrames: this.options.readAheadFrames ?? 256,
      maxBytes: this.options.readAheadBytes ?? 1024 * 1024,
      durable: this.options.durable === true,
    });
    const orderOf = this.options.orderOf;
    for (const frame of read.frames) {
      lane.ahead.push({ ...frame, stream: lane.id.name, priority: lane.priority, order: orderOf === undefined ? '' : orderOf(frame) });
    }
    if (read.state !== 'more') lane.drained = true;
    if (read.state === 'torn' && read.torn !== undefined) this.options.onTorn?.(lane.id.name, read.torn);
  }
}
