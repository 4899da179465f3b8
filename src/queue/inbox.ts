/**
 * The inbox of one channel: the receiver appends what peers deliver, applications consume it with
 * leases and acks (consumer.ts), and messages that keep failing move to the channel's dead letters
 * (spec/log-format.md §11).
 *
 * Appends are durable when they resolve (fdatasync, group commit). Consumers may run in any number of
 * processes; the consumer state files coordinate them.
 */
import { MqlogError } from '../errors.js';
import { FrameType } from '../log/frame.js';
import { FileLogStore, type LogWriter, type StoreAppendResult, type WriterOptions } from '../log/log-store.js';
import { ChangeWatcher } from '../log/watch.js';
import { DEAD_REASON_HEADER, checkChannel, encodeChunk, encodeMessage, type ChunkMeta, type MessageMeta, type MessageRecord } from './codec.js';
import { ConsumerJournal } from './consumer-journal.js';
import { Consumer, type ConsumerOptions, type Delivery } from './consumer.js';
import { deadInfo, ensureQueue, inboxInfo, type QueueInfo } from './layout.js';
import { priorityKey } from './priority.js';


export interface InboxOptions extends WriterOptions {
  readonly dataDir: string;
  readonly channel: string;
  readonly visibilityTimeoutMs?: number;
  readonly maxDeliveries?: number;
  /** Which queue of the channel: its inbox (default) or its dead letters. */
  readonly kind?: 'inbox' | 'dead';
  /** Reports the end of messages that asked for a receipt (see ConsumerOptions.onSettled). */
  readonly onSettled?: ConsumerOptions['onSettled'];
}

export interface ConsumeOptions {
  /** Wait for new messages instead of stopping when none is ready. */
  readonly follow?: boolean;
  /** Stop after this many messages. */
  readonly limit?: number;
  /** With follow: stop after this long without a new message. */
  readonly idleTimeoutMs?: number;
  /** Messages leased ahead of the caller (default 128). */
  readonly prefetch?: number;
  readonly signal?: AbortSignal;
}

export class Inbox {
  readonly info: QueueInfo;
  readonly channel: string;
  private readonly options: InboxOptions;
  private readonly store: FileLogStore;
  private writer: Promise<LogWriter> | undefined;
  private journal: Promise<ConsumerJournal> | undefined;
  private consumerInstance: Promise<Consumer> | undefined;
  private watcher: ChangeWatcher | undefined;
  private dead: Promise<Inbox> | undefined;
  private closing: Promise<void> | undefined;

  private constructor(options: InboxOptions) {
    checkChannel(options.channel);
    this.options = options;
    this.channel = options.channel;
    this.info = options.kind === 'dead' ? deadInfo(options.dataDir, options.channel) : inboxInfo(options.dataDir, options.channel);
    this.store = new FileLogStore(this.info.dir);
  }

  static async open(options: InboxOptions): Promise<Inbox> {
    const inbox = new Inbox(options);
    await ensureQueue(inbox.info);
    return inbox;
  }

  /**
   * Appends a message; resolves once it is fsync'd. The message's priority picks its stream.
   * @throws ERR_DISK_FULL, ERR_IO, ERR_CLOSED.
   */
  async append(meta: MessageMeta, body: Uint8Array): Promise<StoreAppendResult> {
    if (this.closing !== undefined) throw new MqlogError('ERR_CLOSED', 'inbox is closed');
    if (meta.channel !== this.channel) throw new MqlogError('ERR_INVALID_ARG', `message of channel ${meta.channel} appended to inbox ${this.channel}`);
    this.writer ??= this.claim();
    const writer = await this.writer;
    const result = await writer.append(priorityKey(meta.priority), FrameType.MESSAGE, Buffer.concat(encodeMessage(meta, body)));
    this.watcher?.bump();
    return result;
  }

  /** Appends one chunk of a streamed body (invisible to consumers until its message is appended). */
  async appendChunk(meta: ChunkMeta, data: Uint8Array): Promise<StoreAppendResult> {
    if (this.closing !== undefined) throw new MqlogError('ERR_CLOSED', 'inbox is closed');
    this.writer ??= this.claim();
    const writer = await this.writer;
    return writer.append(priorityKey(meta.priority), FrameType.BODY_CHUNK, encodeChunk(meta, data));
  }

  /** The shared consumer state of this queue. */
  state(): Promise<ConsumerJournal> {
    const onTruncated = this.options.onTruncated;
    this.journal ??= ConsumerJournal.open(this.info.dir, onTruncated === undefined ? {} : { onTruncated: (tail) => onTruncated('consumer journal', tail) });
    return this.journal;
  }

  /** This process's consumer of the queue (created once). */
  consumer(): Promise<Consumer> {
    this.consumerInstance ??= (async () => {
      const journal = await this.state();
      const options: ConsumerOptions = {
        ...(this.options.visibilityTimeoutMs === undefined ? {} : { visibilityTimeoutMs: this.options.visibilityTimeoutMs }),
        ...(this.options.maxDeliveries === undefined ? {} : { maxDeliveries: this.options.maxDeliveries }),
        ...(this.options.onSettled === undefined || this.options.kind === 'dead' ? {} : { onSettled: this.options.onSettled }),
        ...(this.options.kind === 'dead' ? {} : { deadLetter: (message: MessageRecord, origin: { stream: string; offset: number }, reason: string) => this.toDeadLetters(message, origin, reason) }),
      };
      return new Consumer(this.info, journal, options);
    })();
    return this.consumerInstance;
  }

  /**
   * Leases messages one at a time, most urgent first; see Consumer.messages. Each must be acked (or nacked);
   * unacked ones come back after the visibility timeout.
   */
  async *consume(options: ConsumeOptions = {}): AsyncGenerator<Delivery> {
    const consumer = await this.consumer();
    const watcher = options.follow === true ? await this.changeWatcher() : undefined;
    yield* consumer.messages({ ...options, ...(watcher === undefined ? {} : { watcher }) });
  }

  /** The channel's dead-letter queue. */
  deadLetters(): Promise<Inbox> {
    this.dead ??= Inbox.open({ ...this.options, kind: 'dead' });
    return this.dead;
  }

  close(): Promise<void> {
    this.closing ??= (async () => {
      const settle = async <T>(p: Promise<T> | undefined, fn: (v: T) => Promise<void>): Promise<void> => {
        if (p === undefined) return;
        const value = await p.then((v) => v, () => undefined);
        if (value !== undefined) await fn(value);
      };
      await settle(this.consumerInstance, (c) => c.close());
      await settle(this.journal, (j) => j.close());
      await settle(this.writer, (w) => w.close());
      await settle(this.dead, (d) => d.close());
      await this.watcher?.close();
    })();
    return this.closing;
  }

  private async changeWatcher(): Promise<ChangeWatcher> {
    if (this.watcher === undefined) {
      this.watcher = new ChangeWatcher(this.info.dir, { depth: 1 });
      await this.watcher.whenReady();
    }
    return this.watcher;
  }

  private claim(): Promise<LogWriter> {
    const claiming = this.store.claimWriter(this.options);
    claiming.catch(() => {
      if (this.writer === claiming) this.writer = undefined;
    });
    return claiming;
  }

  private async toDeadLetters(message: MessageRecord, origin: { stream: string; offset: number }, reason: string): Promise<void> {
    const dead = await this.deadLetters();
    const { body, ...meta } = message;
    await dead.append({ ...meta, headers: { ...meta.headers, [DEAD_REASON_HEADER]: reason.slice(0, 4000) }, origin: { node: meta.origin?.node ?? '', stream: origin.stream, offset: origin.offset, ...(meta.origin?.destination === undefined ? {} : { destination: meta.origin.destination }) } }, body);
  }
}
