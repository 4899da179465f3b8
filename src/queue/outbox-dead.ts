/**
 * The outbox's dead letters (`DIR/outbox-dead/`): messages a peer refused for good, kept with the peer's
 * reason instead of being retried forever. Each entry is the message as it was, plus the header
 * `mqlog-dead-reason` and an origin naming the outbox stream, offset and destination it was refused for.
 * Only the daemon writes here.
 */
import { FrameType } from '../log/frame.js';
import { FileLogStore, type LogWriter } from '../log/log-store.js';
import { StreamReader } from '../log/stream-reader.js';
import { join } from 'node:path';
import { DEAD_REASON_HEADER, decodeMeta, encodeMessage, type MessageRecord } from './codec.js';
import { ensureQueue, outboxDeadInfo, type QueueInfo } from './layout.js';
import { priorityKey } from './priority.js';


export class OutboxDeadLetters {
  readonly info: QueueInfo;
  private readonly store: FileLogStore;
  private writer: Promise<LogWriter> | undefined;

  private constructor(dataDir: string) {
    this.info = outboxDeadInfo(dataDir);
    this.store = new FileLogStore(this.info.dir);
  }

  static async open(dataDir: string): Promise<OutboxDeadLetters> {
    const dead = new OutboxDeadLetters(dataDir);
    await ensureQueue(dead.info);
    return dead;
  }

  /** Stores a refused message durably. */
  async append(message: MessageRecord, origin: { stream: string; offset: number; destination: string; node: string }, reason: string): Promise<void> {
    this.writer ??= this.store.claimWriter();
    const writer = await this.writer;
    const { body, ...meta } = message;
    const headers = { ...meta.headers, [DEAD_REASON_HEADER]: reason.slice(0, 4000) };
    await writer.append(priorityKey(meta.priority), FrameType.MESSAGE, Buffer.concat(encodeMessage({ ...meta, headers, origin }, body)));
  }

  async close(): Promise<void> {
    const writer = this.writer;
    this.writer = undefined;
    if (writer !== undefined) await (await writer).close();
  }
}

/**
 * `stream@offset` of every outbox message dead-lettered (for `destination`, or for any), read without
 * writing anything.
 */
export async function deadLetteredKeys(dataDir: string, destination?: string): Promise<Set<string>> {
  const info = outboxDeadInfo(dataDir);
  const store = new FileLogStore(info.dir);
  const keys = new Set<string>();
  for (const stream of await store.streams()) {
    const reader = new StreamReader(join(info.dir, stream.name));
    try {
      for (;;) {
        const read = await reader.read({ maxFrames: 1024 });
        for (const frame of read.frames) {
          try {
            const { origin } = decodeMeta(frame.payload).meta;
            if (origin !== undefined && (destination === undefined || origin.destination === destination)) keys.add(`${origin.stream}@${origin.offset}`);
          } catch {
            // verify reports undecodable frames
          }
        }
        if (read.state !== 'more') break;
      }
    } finally {
      await reader.close();
    }
  }
  return keys;
}
