/**
 * The outbox's backlog per destination, kept up to date for the daemon's metrics and status page: the
 * number of messages pending for each destination, as the outbox state (outbox-state.ts) gives it, a
 * streamed body counting once. Counted by an OutboxCounter (outbox-counts.ts) from the outbox summaries
 * and the state the forwarders keep current in this process — never by reading the outbox: starting
 * costs a look at each segment's summary, and each later count reads only what was appended since
 * (once) and the few blocks a cursor is passing through.
 *
 * A count runs when asked (caughtUp), and after changes of the outbox (poke), at most every
 * POKE_INTERVAL_MS. The frames the forwarders read are counted from their reading
 * (OutboxCounter.observe); a count after a change reads the rest itself at most every
 * READ_INTERVAL_MS (BUSY_READ_INTERVAL_MS while the forwarders are reading), one when asked always
 * does. The open segments' finished blocks are written as summary files as they come (at most once a
 * second), so that a restart reads only what came after them.
 *
 * One process (the daemon) at a time.
 */
import type { LogStore } from '../log/log-store.js';
import type { QueueInfo } from './layout.js';
import { OutboxCounter } from './outbox-counts.js';
import type { OutboxState } from './outbox-state.js';

/** Changes of the outbox trigger a count at most this often (a request for the numbers always gets a fresh one). */
const POKE_INTERVAL_MS = 100;
/**
 * A count after a change reads the outbox itself at most this often; in between it takes what the
 * forwarders read (OutboxCounter.observe), which is nearly everything while they keep up.
 */
const READ_INTERVAL_MS = 1000;
/**
 * While the forwarders are reading (they read frames since the last count), at most this often: they
 * bring the counts up as they go, and a read of ours ahead of them would only make the blocks their
 * cursors pass through be read once more. The backlog shown lags what was appended beyond the fastest
 * forwarder by at most this long.
 */
const BUSY_READ_INTERVAL_MS = 10_000;

export interface BacklogEvents {
  /** Application messages sent since this object started (receipts do not count), per channel, as each count finds them. */
  appended?(channel: string, count: number): void;
  /** A destination's backlog changed. */
  changed?(destination: string, backlog: number): void;
}

export class OutboxBacklog {
  private readonly state: OutboxState;
  private readonly destinations: () => Iterable<string>;
  private readonly events: BacklogEvents;
  /** The outbox summaries it counts from (compaction may judge segments from them too). */
  readonly counter: OutboxCounter;
  private readonly backlog = new Map<string, number>();
  private readonly startedAt = Date.now();
  /** Messages the counter met since the last count ended, per channel: reported once per count. */
  private readonly appendedSince = new Map<string, number>();
  private counting: Promise<void> | undefined;
  /** When a count last read the outbox (performance.now()). */
  private readAt = Number.NEGATIVE_INFINITY;
  /** The counter's observedFrames when the last count began. */
  private observedAtCount = 0;
  private again = false;
  private timer: NodeJS.Timeout | undefined;
  private closed = false;

  /** `destinations`: every destination messages may name (those without a cursor file too). */
  constructor(store: LogStore, info: QueueInfo, state: OutboxState, destinations: () => Iterable<string>, events: BacklogEvents = {}) {
    this.state = state;
    this.destinations = destinations;
    this.events = events;
    this.counter = new OutboxCounter(store, info, {
      onMessage: (meta) => {
        if (meta.kind === undefined && meta.ts >= this.startedAt) this.appendedSince.set(meta.channel, (this.appendedSince.get(meta.channel) ?? 0) + 1);
      },
    });
  }

  /** Counts what is waiting now (from the summaries: no read of the outbox). */
  start(): Promise<void> {
    return this.caughtUp();
  }

  /** Resolves once every frame appended before the call is counted, with the state as it is now. */
  async caughtUp(): Promise<void> {
    // A count that began before this call may have missed what came just before it.
    await this.settled();
    if (this.closed) return;
    // One begun since (by another caller) did not.
    this.counting ??= this.count(true);
    await this.settled();
  }

  /** The outbox changed: count again soon. */
  poke(): void {
    if (this.closed) return;
    if (this.counting !== undefined) {
      this.again = true;
      return;
    }
    this.timer ??= setTimeout(() => {
      this.timer = undefined;
      if (this.closed || this.counting !== undefined) return;
      const busy = this.counter.observedFrames !== this.observedAtCount;
      this.counting = this.count(performance.now() - this.readAt >= (busy ? BUSY_READ_INTERVAL_MS : READ_INTERVAL_MS));
    }, POKE_INTERVAL_MS);
    this.timer.unref();
  }

  /** Messages pending for `destination`, as of the last count. */
  of(destination: string): number {
    return this.backlog.get(destination) ?? 0;
  }

  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.timer);
    await this.settled();
    await this.counter.close();
  }

  private async settled(): Promise<void> {
    for (let counting = this.counting; counting !== undefined; counting = this.counting) await counting;
  }

  /** `read`: read what the forwarders have not (else only what they read is counted). */
  private count(read: boolean): Promise<void> {
    return (async () => {
      if (read) this.readAt = performance.now();
      this.observedAtCount = this.counter.observedFrames;
      await this.counter.refresh(undefined, { read });
      for (const [channel, count] of this.appendedSince) this.events.appended?.(channel, count);
      this.appendedSince.clear();
      const counts = await this.counter.count(this.state, Date.now(), [...this.state.destinations(), ...this.destinations()]);
      for (const [destination, c] of counts.destinations) {
        if (this.backlog.get(destination) === c.pending) continue;
        this.backlog.set(destination, c.pending);
        this.events.changed?.(destination, c.pending);
      }
    })()
      .catch(() => undefined)
      .finally(() => {
        this.counting = undefined;
        if (this.again) {
          this.again = false;
          this.poke();
        }
      });
  }
}
