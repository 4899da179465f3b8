/**
 * What the daemon's metrics and status page show of one channel, kept up to date without rereading its
 * files: the messages in its inbox and dead letters (from the log's segment summaries, plus the frames
 * appended since, read once: stored-messages.ts) and their consumer states (re-read as they grow, by
 * whichever process wrote them). Pending = messages not done; dead letters = dead-letter messages not
 * redriven; acks made since this object started are counted. Starting costs a look at each segment's
 * index, never a read of the queue.
 *
 * Memory: a few ranges per segment, and the consumer states' own (gaps and messages in flight).
 */
import type { LogStore } from '../log/log-store.js';
import type { StateRecord } from './acks.js';
import { ConsumerJournal } from './consumer-journal.js';
import type { QueueInfo } from './layout.js';
import { StoredMessages } from './stored-messages.js';

export interface ChannelStatus {
  readonly channel: string;
  readonly pending: number;
  readonly dead: number;
  readonly acked: number;
}

/** One queue followed: the offsets of its messages and its consumer state. */
class FollowedQueue {
  readonly info: QueueInfo;
  private readonly messages: StoredMessages;
  journal: ConsumerJournal | undefined;

  constructor(store: LogStore, info: QueueInfo) {
    this.info = info;
    this.messages = new StoredMessages(store, info.queue);
  }

  async refresh(onApplied?: (record: StateRecord) => void): Promise<void> {
    this.journal ??= await ConsumerJournal.open(this.info.dir, onApplied === undefined ? {} : { onApplied });
    await this.journal.refresh();
    await this.messages.refresh();
  }

  /** Messages not done. */
  notDone(): number {
    const state = this.journal?.state;
    return this.messages.notDone((stream, from, to) => state?.doneCount(stream, from, to) ?? 0);
  }

  async close(): Promise<void> {
    await this.journal?.close();
    await this.messages.close();
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
