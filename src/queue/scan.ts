/**
 * Reading a whole queue front to back, stream by stream, for inspection (dump, stat, verify).
 * Streams through the files with bounded memory. Never skips silently: a torn tail and a corrupt frame
 * are yielded as events saying where reading of that stream stopped.
 */
import { basename, dirname, join } from 'node:path';
import { MqlogError, isMqlogError } from '../errors.js';
import { FrameType } from '../log/frame.js';
import { FileLogStore, parseStreamName } from '../log/log-store.js';
import { StreamReader, type StreamFrame, type TornTail } from '../log/stream-reader.js';
import { segmentFileName } from '../log/segment.js';
import { decodeMessage, type MessageRecord } from './codec.js';
import type { QueueInfo } from './layout.js';

export type ScanEvent =
  | { readonly kind: 'message'; readonly stream: string; readonly frame: StreamFrame; readonly message: MessageRecord }
  /** A frame of another type (body chunk, record): counted, not shown as a message. */
  | { readonly kind: 'frame'; readonly stream: string; readonly frame: StreamFrame }
  | { readonly kind: 'torn'; readonly stream: string; readonly torn: TornTail }
  | { readonly kind: 'corrupt'; readonly stream: string; readonly error: MqlogError };

export interface ScanOptions {
  /** Only this stream. */
  readonly stream?: string;
  /** Only this segment (base offset) of `stream`. */
  readonly segment?: number;
}

const BATCH = { maxFrames: 512, maxBytes: 4 * 1024 * 1024 };

export async function* scanQueue(info: QueueInfo, options: ScanOptions = {}): AsyncGenerator<ScanEvent> {
  const store = new FileLogStore(info.dir);
  const streams = options.stream === undefined ? (await store.streams()).map((s) => s.name) : [options.stream];
  for (const stream of streams) {
    const reader = new StreamReader(join(info.dir, stream), { offset: options.segment ?? 0 });
    try {
      for (;;) {
        let read;
        try {
          read = await reader.read(BATCH);
        } catch (err) {
          if (isMqlogError(err) && (err.code === 'ERR_CORRUPT_FRAME' || err.code === 'ERR_UNSUPPORTED_VERSION')) {
            yield { kind: 'corrupt', stream, error: err };
            break;
          }
          throw err;
        }
        let leftSegment = false;
        for (const frame of read.frames) {
          if (options.segment !== undefined && frame.segment !== options.segment) {
            leftSegment = true;
            break;
          }
          if (frame.type !== FrameType.MESSAGE) {
            yield { kind: 'frame', stream, frame };
            continue;
          }
          let message: MessageRecord;
          try {
            message = decodeMessage(frame.payload);
          } catch (err) {
            if (!isMqlogError(err)) throw err;
            yield { kind: 'corrupt', stream, error: withPlace(err, join(info.dir, stream, segmentFileName(frame.segment)), frame.position) };
            continue;
          }
          yield { kind: 'message', stream, frame, message };
        }
        if (leftSegment) break;
        if (read.state === 'torn' && read.torn !== undefined) yield { kind: 'torn', stream, torn: read.torn };
        if (read.state !== 'more') break;
      }
    } finally {
      await reader.close();
    }
  }
}

/** For a segment file path: its queue directory, stream name and base offset, if it sits in a queue. */
export function locateSegment(path: string): { queueDir: string; stream: string } | undefined {
  const streamDir = dirname(path);
  const stream = basename(streamDir);
  if (parseStreamName(stream) === undefined) return undefined;
  return { queueDir: dirname(streamDir), stream };
}

function withPlace(err: MqlogError, path: string, position: number): MqlogError {
  return new MqlogError(err.code, `${path} at byte ${position}: ${err.message}`, { details: { path, position, reason: err.message }, cause: err });
}
