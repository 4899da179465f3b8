/**
 * Reading a whole queue front to back, stream by stream, for inspection (dump, stat): each message with
 * the state its queue object gives it. Streams through the log with bounded memory. Never skips
 * silently: a torn tail and a corrupt frame are yielded as events saying where reading of that stream
 * stopped, and a frame whose fields do not decode as one.
 */
import { MqlogError, isMqlogError } from '../errors.js';
import { FrameType } from '../log/frame.js';
import type { DamagedRange, LogStore, StoredFrame, TornTail, VerifyEvent } from '../log/log-store.js';
import { scanStream } from '../log/stream-scan.js';
import { decodeMessage, type MessageMeta, type MessageRecord } from './codec.js';
import type { QueueInfo } from './layout.js';
import type { MessageState } from './outbox-state.js';

export type QueueEvent =
  | { readonly kind: 'message'; readonly frame: StoredFrame; readonly message: MessageRecord; readonly state: MessageState }
  /** A frame of another type (body chunk): counted, not shown as a message. */
  | { readonly kind: 'frame'; readonly frame: StoredFrame }
  | { readonly kind: 'torn'; readonly stream: string; readonly torn: TornTail }
  | { readonly kind: 'corrupt'; readonly stream: string; readonly error: MqlogError }
  /** Damaged bytes passed over: reading of the stream went on after them (spec/log-format.md §3.4). */
  | { readonly kind: 'damaged'; readonly stream: string; readonly range: DamagedRange };

export type StateOf = (stream: string, offset: number, meta: MessageMeta) => MessageState;

export interface ScanQueueOptions {
  /** Only this stream. */
  readonly stream?: string;
  /** Only this segment (base offset) of `stream`. */
  readonly segment?: number;
}

/** Every message of a queue with its state, in log order per stream. */
export async function* scanQueue(store: LogStore, queue: string, stateOf: StateOf, options: ScanQueueOptions = {}): AsyncGenerator<QueueEvent> {
  const streams = options.stream === undefined ? (await store.streams(queue)).map((s) => s.name) : [options.stream];
  for (const stream of streams) {
    for await (const event of scanStream(store, queue, stream, { from: { offset: options.segment ?? 0 } })) {
      if (event.kind === 'torn') yield { kind: 'torn', stream, torn: event.torn };
      else if (event.kind === 'corrupt') yield { kind: 'corrupt', stream, error: event.error };
      else if (event.kind === 'damaged') yield { kind: 'damaged', stream, range: event.range };
      else {
        const { frame } = event;
        if (options.segment !== undefined && frame.segment !== options.segment) break;
        if (frame.type !== FrameType.MESSAGE) {
          yield { kind: 'frame', frame };
          continue;
        }
        let message: MessageRecord;
        try {
          message = decodeMessage(frame.payload);
        } catch (err) {
          if (!isMqlogError(err)) throw err;
          yield { kind: 'corrupt', stream, error: new MqlogError(err.code, `${queue}/${stream} offset ${frame.offset} (segment ${frame.segment}, byte ${frame.position}): ${err.message}`, { details: { stream, offset: frame.offset, position: frame.position }, cause: err }) };
          continue;
        }
        yield { kind: 'message', frame, message, state: stateOf(stream, frame.offset, message) };
      }
    }
  }
}

/** Per queue, what `stat` shows. */
export interface QueueStat {
  readonly queue: string;
  readonly kind: string;
  readonly channel: string | null;
  readonly messages: number;
  readonly pending: number;
  readonly bytes: number;
  readonly segments: number;
}

/** Counts a queue: messages, pending ones, its size. `each` sees every message with its state. */
export async function statQueue(store: LogStore, info: QueueInfo, stateOf: StateOf, each?: (stream: string, offset: number, meta: MessageMeta, state: MessageState) => void): Promise<QueueStat> {
  let messages = 0;
  let pending = 0;
  for await (const event of scanQueue(store, info.queue, stateOf)) {
    if (event.kind !== 'message') continue;
    messages++;
    if (event.state === 'pending') pending++;
    each?.(event.frame.stream, event.frame.offset, event.message, event.state);
  }
  const usage = await store.usage(info.queue);
  return { queue: info.queue, kind: info.kind, channel: info.channel, messages, pending, bytes: usage.bytes, segments: usage.segments };
}

/**
 * Checks every frame of a queue byte by byte (the store's verify) and that every MESSAGE frame holds a
 * valid message: problems as `corrupt` events, with the file (or segment) and byte position.
 */
export async function* verifyQueue(store: LogStore, queue: string, only: ScanQueueOptions = {}): AsyncGenerator<VerifyEvent> {
  for await (const event of store.verify(queue, only)) {
    yield event;
    if (event.kind !== 'frame' || event.frame.type !== FrameType.MESSAGE) continue;
    try {
      decodeMessage(event.frame.payload);
    } catch (err) {
      if (!isMqlogError(err)) throw err;
      yield { kind: 'corrupt', path: event.path, position: event.frame.position, reason: `frame ${event.frame.offset}: ${err.message}` };
    }
  }
}
