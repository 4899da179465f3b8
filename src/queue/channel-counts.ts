/**
 * What the daemon's metrics and status page show of one channel, kept up to date without rereading its
 * files: the messages in its inbox and dead letters (from the log's segment summaries, plus the frames
 * appended since, read once: stored-messages.ts) and their consumer states (re-read as they grow, by
 * whichever process wrote them, the acks in consumers' own journals included). Pending = messages not done; dead letters = dead-letter messages not
 * redriven. Received and acked count the inbox's whole life, from what the queue keeps (its consumer
 * state's done offsets, never pruned, and its messages): received = messages done + messages pending
 * (every message stored ever is one or the other), acked = messages done by an ack. They go on from where
 * they were across restarts (a SIGKILL included: an ack and a stored message are durable before they are
 * answered). Starting costs a look at each segment's index, never a read of the queue.
 *
 * Memory: a few ranges per segment, and the consumer states' own (gaps and messages in flight).
 */
import type { LogStore } from '../log/log-store.js';
import { ConsumerJournal } from './consumer-journal.js';
import type { DoneKind } from './consumer-state.js';
import type { QueueInfo } from './layout.js';
import { StoredMessages } from './stored-messages.js';

export interface ChannelStatus {
  readonly channel: string;
  readonly pending: number;
  readonly dead: number;
  /** Messages stored in the inbox in its whole life (a redriven dead letter again). */
  readonly received: number;
  /** Messages acked in the inbox's whole life. */
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

  async refresh(onDone?: (kind: DoneKind, count: number) => void): Promise<void> {
    this.journal ??= await ConsumerJournal.open(this.info.dir, onDone === undefined ? {} : { onDone });
    await this.journal.refresh();
    await this.messages.refresh();
  }

  /** Messages done since the queue began, by how. */
  doneTotals(): Record<DoneKind, number> {
    return this.journal?.state.doneTotals() ?? { acked: 0, dead: 0, expired: 0 };
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
  private readonly onDone: ((kind: DoneKind, count: number) => void) | undefined;
  private started = false;

  /** `onDone` hears how many inbox messages became done, and how, as they are seen. */
  constructor(store: LogStore, inbox: QueueInfo, dead: QueueInfo, onDone?: (kind: DoneKind, count: number) => void) {
    this.channel = inbox.channel ?? '';
    this.inbox = new FollowedQueue(store, inbox);
    this.dead = new FollowedQueue(store, dead);
    this.onDone = onDone;
  }

  /** Re-reads what changed. `counting`: what is found now happened while this daemon ran. */
  async refresh(counting: boolean): Promise<void> {
    await this.inbox.refresh((kind, count) => {
      // What is found at the first look happened before: onDone hears only what happens while it follows.
      if (!this.started && !counting) return;
      this.onDone?.(kind, count);
    });
    this.started = true;
    await this.dead.refresh();
  }

  status(): ChannelStatus {
    const pending = this.inbox.notDone();
    const done = this.inbox.doneTotals();
    return { channel: this.channel, pending, dead: this.dead.notDone(), received: done.acked + done.dead + done.expired + pending, acked: done.acked };
  }

  async close(): Promise<void> {
    await this.inbox.close();
    await this.dead.close();
  }
}
