/**
 * What the daemon's metrics and status page show of one channel, kept up to date by following its
 * files rather than rescanning them: the messages in its inbox and dead letters (each stream followed
 * to its end once; body chunks are passed over, so a streamed body is one message) and their consumer
 * states (re-read as they grow, by whichever process wrote them). Pending = messages not done; dead
 * letters = dead-letter messages not redriven; acks made since this object started are counted.
 *
 * Memory: one reader per stream and the consumer states' own (gaps and messages in flight).
 */
import { FrameType } from '../log/frame.js';
import type { LogReader, LogStore } from '../log/log-store.js';
import type { StateRecord } from './acks.js';
import { ConsumerJournal } from './consumer-journal.js';
import type { QueueInfo } from './layout.js';

const READ = { maxFrames: 1024, maxBytes: 8 * 1024 * 1024 };
const CHUNKS: ReadonlySet<number> = new Set([FrameType.BODY_CHUNK]);

export interface ChannelStatus {
  readonly channel: string;
  readonly pending: number;
  readonly dead: number;
  readonly acked: number;
}

/** One queue followed: its messages per stream (offsets of MESSAGE frames seen) and its consumer state. */
class FollowedQueue {
  readonly info: QueueInfo;
  private readonly store: LogStore;
  private readonly readers = new Map<string, LogReader>();
  /** Offsets of the messages seen, per stream, as counts below each stream's read position. */
  private readonly messages = new Map<string, number>();
  journal: ConsumerJournal | undefined;

  constructor(store: LogStore, info: QueueInfo) {
    this.store = store;
    this.info = info;
  }

  async refresh(onApplied?: (record: StateRecord) => void): Promise<void> {
    this.journal ??= await ConsumerJournal.open(this.info.dir, onApplied === undefined ? {} : { onApplied });
    await this.journal.refresh();
    for (const { name } of await this.store.streams(this.info.queue)) {
      let reader = this.readers.get(name);
      if (reader === undefined) {
        reader = this.store.reader(this.info.queue, name, { offset: 0 }, { skipTypes: CHUNKS, lend: true });
        this.readers.set(name, reader);
      }
      for (;;) {
        const read = await reader.read(READ);
        let n = 0;
        for (const frame of read.frames) if (frame.type === FrameType.MESSAGE) n++;
        this.messages.set(name, (this.messages.get(name) ?? 0) + n);
        if (read.state !== 'more') break;
      }
    }
  }

  /** Messages not done (done offsets are only ever message offsets). */
  notDone(): number {
    const state = this.journal?.state;
    let n = 0;
    for (const [stream, reader] of this.readers) n += (this.messages.get(stream) ?? 0) - (state?.doneCount(stream, 0, reader.position.offset) ?? 0);
    return Math.max(0, n);
  }

  async close(): Promise<void> {
    await this.journal?.close();
    for (const reader of this.readers.values()) await reader.close();
  }
}

export class ChannelCounts {
  readonly channel: string;
  private readonly inbox: FollowedQueue;
  private readonly dead: FollowedQueue;
  private readonly onAck: ((record: StateRecord) => void) | undefined;
  /** Acks applied since the first refresh (records already there before are history). */
  acked = 0;
  private started = false;

  constructor(store: LogStore, inbox: QueueInfo, dead: QueueInfo, onRecord?: (record: StateRecord) => void) {
    this.channel = inbox.channel ?? '';
    this.inbox = new FollowedQueue(store, inbox);
    this.dead = new FollowedQueue(store, dead);
    this.onAck = onRecord;
  }

  /** Re-reads what changed. `counting`: records found now happened while this daemon ran. */
  async refresh(counting: boolean): Promise<void> {
    await this.inbox.refresh((record) => {
      if (!this.started && !counting) return;
      if (record.k === 'A') this.acked++;
      this.onAck?.(record);
    });
    this.started = true;
    await this.dead.refresh();
  }

  status(): ChannelStatus {
    return { channel: this.channel, pending: this.inbox.notDone(), dead: this.dead.notDone(), acked: this.acked };
  }

  async close(): Promise<void> {
    await this.inbox.close();
    await this.dead.close();
  }
}
