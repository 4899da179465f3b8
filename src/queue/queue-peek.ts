/**
 * Looking at a consumed queue without consuming it (`mqlog tail --peek`, `tail({ peek: true })`): the
 * messages ready now, most urgent first, as the next consumers would get them — nothing leased, no
 * hand-out counted (spec/log-format.md §11.7). Reads the whole state (the claims' acks included) as it
 * is, without the lock.
 */
import { MqlogError } from '../errors.js';
import { FrameType } from '../log/frame.js';
import type { LogStore, StoredFrame } from '../log/log-store.js';
import { bodyOf } from './claim-reader.js';
import { decodeMeta, type MessageMeta, type MessageRecord } from './codec.js';
import { ConsumerJournal } from './consumer-journal.js';
import type { QueueInfo } from './layout.js';
import { PriorityReader } from './priority.js';

/** A ready message as peek lists it: not leased, nothing to ack. */
export interface PeekedMessage extends MessageRecord {
  readonly stream: string;
  readonly offset: number;
  /** Hand-outs so far (0 for a message never handed out). */
  readonly deliveries: number;
  bodyStream(): AsyncIterable<Buffer>;
}

/** What a look decoded of a frame: its fields and where its body starts, or why it cannot be read. */
export type Decoded = { readonly meta: MessageMeta; readonly bodyStart: number } | { readonly error: MqlogError } | undefined;

export const CHUNK_TYPES: ReadonlySet<number> = new Set([FrameType.BODY_CHUNK]);

/** Up to `limit` messages ready at `now`, most urgent first. */
export async function* peekMessages(store: LogStore, info: QueueInfo, now: number, limit: number): AsyncGenerator<PeekedMessage> {
  const view = await ConsumerJournal.open(info.dir);
  const state = view.state;
  await view.close();
  const reader = new PriorityReader<Decoded>(store, info.queue, (stream) => ({ offset: state.firstNotDone(stream, 0) }), {
    describe: (frame) => {
      const decoded = decodeFrameMeta(frame);
      return { order: decoded !== undefined && 'meta' in decoded ? decoded.meta.id : '', info: decoded };
    },
    skipTypes: CHUNK_TYPES,
  });
  let listed = 0;
  try {
    while (listed < limit) {
      const queued = await reader.take(64);
      if (queued.length === 0) return;
      for (const { frame, info: decoded } of queued) {
        if (listed >= limit) return;
        if (frame.type !== FrameType.MESSAGE || decoded === undefined || 'error' in decoded) continue;
        if (state.isDone(frame.stream, frame.offset)) continue;
        const lease = state.leaseOf(frame.stream, frame.offset);
        const retry = state.retryOf(frame.stream, frame.offset);
        const range = state.rangeOf(frame.stream, frame.offset);
        if ((lease !== undefined && lease.until > now) || (retry !== undefined && retry.availableAt > now)) continue;
        if (range !== undefined && (range.holder?.until ?? range.availableAt) > now) continue;
        const { meta, bodyStart } = decoded;
        if ((meta.expiresAt !== undefined && meta.expiresAt <= now) || (meta.notBefore !== undefined && meta.notBefore > now)) continue;
        const message: MessageRecord = { ...meta, body: frame.payload.subarray(bodyStart) };
        listed++;
        yield {
          ...message,
          stream: frame.stream,
          offset: frame.offset,
          deliveries: retry?.deliveries ?? range?.deliveries ?? 0,
          bodyStream: () => bodyOf(store, info, message),
        };
      }
    }
  } finally {
    await reader.close();
  }
}

/** The fields of a MESSAGE frame (undefined for other frames), or why they cannot be read. */
export function decodeFrameMeta(frame: StoredFrame): Decoded {
  if (frame.type !== FrameType.MESSAGE) return undefined;
  try {
    return decodeMeta(frame.payload);
  } catch (err) {
    if (err instanceof MqlogError) return { error: err };
    throw err;
  }
}
