/**
 * The delivery state of a stored message, as `dump` and `stat` show it:
 *
 * - outbox: `sent` once every destination's cursor is past it, `dead` when a peer refused it for good,
 *   `expired` when its TTL passed before it was sent, else `pending`;
 * - inbox: `acked`, `dead` (moved to the dead letters) or `expired` from the consumer state, else `pending`
 *   (leased messages are pending: they come back unless acked);
 * - dead letters: `dead`, or `acked` once redriven.
 *
 * A StateView reads the small state files of one queue once, then answers without further I/O.
 */
import type { MessageMeta } from './codec.js';
import { ConsumerJournal } from './consumer-journal.js';
import { readAllCursors } from './cursors.js';
import type { QueueInfo } from './layout.js';
import { deadLetteredKeys } from './outbox-dead.js';

export type MessageState = 'pending' | 'sent' | 'acked' | 'dead' | 'expired';

export interface StateView {
  stateOf(stream: string, offset: number, meta: MessageMeta): MessageState;
}

/**
 * Opens the state view of a queue. `dataDir` is the node directory the queue belongs to (needed for the
 * outbox's cursors and dead letters); without it, outbox messages show as pending or expired.
 */
export async function openStateView(info: QueueInfo, dataDir?: string, now = Date.now()): Promise<StateView> {
  if (info.kind === 'outbox') return outboxView(dataDir, now);
  if (info.queue === 'outbox-dead' || info.queue.endsWith('/outbox-dead')) return { stateOf: () => 'dead' };
  const journal = await ConsumerJournal.open(info.dir);
  const state = journal.state;
  await journal.close();
  if (info.kind === 'dead') {
    return { stateOf: (stream, offset) => (state.doneKind(stream, offset) === undefined ? 'dead' : 'acked') };
  }
  return {
    stateOf: (stream, offset) => state.doneKind(stream, offset) ?? 'pending',
  };
}

async function outboxView(dataDir: string | undefined, now: number): Promise<StateView> {
  const cursors = new Map<string, Record<string, { offset: number }>>();
  const dead = new Set<string>();
  if (dataDir !== undefined) {
    for (const cursor of await readAllCursors(dataDir)) cursors.set(cursor.destination, cursor.streams);
    for (const key of await deadLetteredKeys(dataDir)) dead.add(key);
  }
  return {
    stateOf(stream, offset, meta) {
      if (dead.has(`${stream}@${offset}`)) return 'dead';
      const sent = meta.to.every((to) => (cursors.get(to)?.[stream]?.offset ?? 0) > offset);
      if (sent) return 'sent';
      if (meta.expiresAt !== undefined && meta.expiresAt <= now) return 'expired';
      return 'pending';
    },
  };
}
