/**
 * The outbox's dead letters (`DIR/outbox-dead/`): copies of messages a peer refused for good, kept with
 * the peer's reason instead of being retried forever. Each entry is the message as it was, plus the
 * header `mqlog-dead-reason` and an origin naming the outbox stream, offset and destination it was refused
 * for. That the message is dead for that destination is recorded in the outbox state (outbox-state.ts);
 * this queue keeps what a person needs to look at it. Only the daemon writes here.
 */
import { FrameType } from '../log/frame.js';
import type { LogStore, LogWriter } from '../log/log-store.js';
import { DEAD_REASON_HEADER, encodeMessage, type MessageRecord } from './codec.js';
import { ensureQueue, type QueueInfo } from './layout.js';
import { priorityKey } from './priority.js';

export class OutboxDeadLetters {
  readonly info: QueueInfo;
  private readonly store: LogStore;
  private writer: Promise<LogWriter> | undefined;
  private closing: Promise<void> | undefined;

  constructor(store: LogStore, info: QueueInfo) {
    this.store = store;
    this.info = info;
  }

  /** Stores a refused message durably. */
  async append(message: MessageRecord, origin: { stream: string; offset: number; destination: string; node: string }, reason: string): Promise<void> {
    this.writer ??= ensureQueue(this.info).then(() => this.store.claimWriter(this.info.queue));
    const writer = await this.writer;
    const { body, ...meta } = message;
    const headers = { ...meta.headers, [DEAD_REASON_HEADER]: reason.slice(0, 4000) };
    await writer.append(priorityKey(meta.priority), FrameType.MESSAGE, encodeMessage({ ...meta, headers, origin }, body));
  }

  close(): Promise<void> {
    this.closing ??= (async () => {
      const writer = await this.writer?.catch(() => undefined);
      await writer?.close();
    })();
    return this.closing;
  }
}
