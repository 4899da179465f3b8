/**
 * The outbox's backlog per destination, kept up to date for the daemon's metrics and status page by
 * following the log rather than rescanning it. It gives the same answer as the outbox state
 * (outbox-state.ts): the number of messages pending for each destination, a streamed body counting once.
 *
 * - Each MESSAGE frame is read once (body chunks are passed over) and counted for each destination the
 *   outbox state says it is pending for at that moment. The first count reads each stream from the lowest
 *   cursor of every destination: nothing before it is waiting.
 * - The forwarders report each message they got rid of (sent, refused, expired) after recording it; it
 *   is taken off only if it had been counted — whichever of the two came first, the count is exact.
 * - A counted message with a time to live leaves the count when that time passes (rule 4 of
 *   log-format.md §10), and its later report changes nothing. Only such messages are remembered one by
 *   one; memory otherwise stays a few numbers per stream and destination.
 *
 * One process (the daemon) at a time.
 */
import { FrameType } from '../log/frame.js';
import type { LogReader, LogStore } from '../log/log-store.js';
import { decodeRouting, type MessageRouting } from './codec.js';
import type { OutboxState } from './outbox-state.js';

const READ = { maxFrames: 1024, maxBytes: 8 * 1024 * 1024 };
const CHUNKS: ReadonlySet<number> = new Set([FrameType.BODY_CHUNK]);

export interface BacklogEvents {
  /** An application message sent since this object started (receipts do not count). */
  appended?(meta: MessageRouting): void;
  /** A destination's backlog changed. */
  changed?(destination: string, backlog: number): void;
}

/** A counted message with a time to live, until it is reported or its time passes. */
interface Timed {
  readonly expiresAt: number;
  readonly key: string;
  /** Counted and still in the count; false once its time passed and it left the count. */
  counted: boolean;
}

export class OutboxBacklog {
  private readonly store: LogStore;
  private readonly queue: string;
  private readonly state: OutboxState;
  private readonly destinations: () => Iterable<string>;
  private readonly events: BacklogEvents;
  private readonly readers = new Map<string, LogReader>();
  private readonly backlog = new Map<string, number>();
  private readonly startedAt = Date.now();
  /** Where the follower began reading each stream: messages before it were never counted. */
  private readonly startedFrom = new Map<string, number>();
  /** Per stream, every message below this was looked at (and counted if pending then). */
  private readonly countedTo = new Map<string, number>();
  /** Counted messages with a time to live, by `destination|stream@offset`, and by time (a min-heap). */
  private readonly timed = new Map<string, Timed>();
  private readonly byTime: Timed[] = [];
  private reading: Promise<void> | undefined;
  private again = false;
  private closed = false;

  /** `destinations`: every destination messages may name (those without a cursor file too). */
  constructor(store: LogStore, queue: string, state: OutboxState, destinations: () => Iterable<string>, events: BacklogEvents = {}) {
    this.store = store;
    this.queue = queue;
    this.state = state;
    this.destinations = destinations;
    this.events = events;
  }

  /**
   * Counts what is waiting now; appends seen after it are counted as they come. Resolves when the first
   * count is done (forwarders should start after it).
   */
  start(): Promise<void> {
    this.poke(true);
    return this.reading ?? Promise.resolve();
  }

  /** Resolves once every frame appended before the call has been counted, and due expiries applied. */
  async caughtUp(): Promise<void> {
    await this.settled();
    this.poke();
    await this.settled();
  }

  /** Reads frames appended since the last look (call on outbox changes). */
  poke(first = false): void {
    if (this.closed) return;
    if (this.reading !== undefined) {
      this.again = true;
      return;
    }
    this.reading = this.readNew(first)
      .catch(() => undefined)
      .finally(() => {
        this.reading = undefined;
        if (this.again) {
          this.again = false;
          this.poke();
        }
      });
  }

  /**
   * The forwarder of `destination` got rid of the message at `stream@offset` — sent or refused (reported
   * in the same turn as the outbox state recorded it), or found `expired` — and it is taken off the count
   * if it is in it. A message with a time to live that was counted is remembered by key; any other
   * message was counted if and only if the follower had read past it.
   */
  done(destination: string, stream: string, offset: number, expired = false): void {
    const key = keyOf(destination, stream, offset);
    const timed = this.timed.get(key);
    if (timed !== undefined) {
      this.timed.delete(key);
      if (timed.counted) this.add(destination, -1);
      return;
    }
    // An expired message has a time to live: counted, it would be remembered above.
    if (expired) return;
    const counted = offset >= (this.startedFrom.get(stream) ?? Number.POSITIVE_INFINITY) && offset < (this.countedTo.get(stream) ?? 0);
    if (counted) this.add(destination, -1);
  }

  of(destination: string): number {
    this.expire(Date.now());
    return Math.max(0, this.backlog.get(destination) ?? 0);
  }

  async close(): Promise<void> {
    this.closed = true;
    await this.settled();
    for (const reader of this.readers.values()) await reader.close();
  }

  private async settled(): Promise<void> {
    for (let reading = this.reading; reading !== undefined; reading = this.reading) await reading;
  }

  private add(destination: string, delta: number): void {
    const value = (this.backlog.get(destination) ?? 0) + delta;
    this.backlog.set(destination, value);
    this.events.changed?.(destination, Math.max(0, value));
  }

  /** Takes counted messages whose time to live has passed off the count. */
  private expire(now: number): void {
    for (;;) {
      const head = this.byTime[0];
      if (head === undefined || head.expiresAt > now) return;
      popHeap(this.byTime);
      if (!head.counted || this.timed.get(head.key) !== head) continue;
      head.counted = false;
      this.add(head.key.slice(0, head.key.indexOf('|')), -1);
    }
  }

  private async readNew(first: boolean): Promise<void> {
    const now = Date.now();
    this.expire(now);
    const destinations = new Set([...this.state.destinations(), ...this.destinations()]);
    for (const { name } of await this.store.streams(this.queue)) {
      let reader = this.readers.get(name);
      if (reader === undefined) {
        const from = first ? this.state.lowestOffset(name, destinations) : 0;
        reader = this.store.reader(this.queue, name, { offset: from }, { skipTypes: CHUNKS, lend: true });
        this.startedFrom.set(name, from);
        this.countedTo.set(name, from);
        this.readers.set(name, reader);
      }
      for (;;) {
        const read = await reader.read(READ);
        for (const frame of read.frames) {
          this.countedTo.set(name, frame.offset + 1);
          if (frame.type !== FrameType.MESSAGE) continue;
          let meta: MessageRouting;
          try {
            meta = decodeRouting(frame.payload);
          } catch {
            continue;
          }
          if (meta.kind === undefined && meta.ts >= this.startedAt) this.events.appended?.(meta);
          for (const to of meta.to) {
            if (this.state.stateFor(to, name, frame.offset, meta, now) !== 'pending') continue;
            this.add(to, 1);
            if (meta.expiresAt !== undefined) {
              const timed: Timed = { expiresAt: meta.expiresAt, key: keyOf(to, name, frame.offset), counted: true };
              this.timed.set(timed.key, timed);
              pushHeap(this.byTime, timed);
            }
          }
        }
        if (read.state !== 'more') break;
      }
    }
  }
}

function keyOf(destination: string, stream: string, offset: number): string {
  return `${destination}|${stream}@${offset}`;
}

function pushHeap(heap: Timed[], item: Timed): void {
  heap.push(item);
  for (let i = heap.length - 1; i > 0; ) {
    const parent = (i - 1) >> 1;
    if ((heap[parent] as Timed).expiresAt <= item.expiresAt) break;
    heap[i] = heap[parent] as Timed;
    heap[parent] = item;
    i = parent;
  }
}

function popHeap(heap: Timed[]): void {
  const last = heap.pop();
  if (last === undefined || heap.length === 0) return;
  heap[0] = last;
  for (let i = 0; ; ) {
    const left = 2 * i + 1;
    const right = left + 1;
    let smallest = i;
    if (left < heap.length && (heap[left] as Timed).expiresAt < (heap[smallest] as Timed).expiresAt) smallest = left;
    if (right < heap.length && (heap[right] as Timed).expiresAt < (heap[smallest] as Timed).expiresAt) smallest = right;
    if (smallest === i) return;
    [heap[i], heap[smallest]] = [heap[smallest] as Timed, heap[i] as Timed];
    i = smallest;
  }
}
