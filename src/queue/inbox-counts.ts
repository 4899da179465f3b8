/**
 * What `stat` shows of an inbox or a channel's dead letters, without reading the queue: its messages
 * from the log's segment summaries (stored-messages.ts), its pending ones from the consumer state's done
 * offsets. The same numbers as a read of every message with its state (queue-scan.ts statQueue).
 */
import type { LogStore } from '../log/log-store.js';
import type { ConsumerState } from './consumer-state.js';
import type { QueueInfo } from './layout.js';
import type { QueueStat } from './queue-scan.js';
import { StoredMessages } from './stored-messages.js';

/**
 * Counts a consumed queue: messages stored, and those pending (not done; a dead-letter queue's messages
 * are `dead` until redriven, never pending).
 */
export async function countInbox(store: LogStore, info: QueueInfo, state: Pick<ConsumerState, 'doneCount'>): Promise<QueueStat> {
  const stored = new StoredMessages(store, info.queue);
  try {
    await stored.refresh();
  } finally {
    await stored.close();
  }
  const pending = info.kind === 'dead' ? 0 : stored.notDone((stream, from, to) => state.doneCount(stream, from, to));
  const usage = await store.usage(info.queue);
  return { queue: info.queue, kind: info.kind, channel: info.channel, messages: stored.count(), pending, bytes: usage.bytes, segments: usage.segments };
}
