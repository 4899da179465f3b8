/**
 * The inbox of one channel, and the one owner of everything about it: its log (through the LogStore),
 * its consumer state (leases, acks: consumer-journal.ts) and its dead letters. The intake appends what
 * peers deliver, applications consume it with leases and acks (consumer.ts), and messages that keep
 * failing move to the channel's dead letters (spec/log-format.md §11).
 *
 * Appends are durable when they resolve (fdatasync, group commit). Consumers may run in any number of
 * processes; the consumer state files coordinate them. Opening an inbox writes nothing: its directory is
 * made by the first append.
 */
import { MqlogError } from '../errors.js';
import { FrameType, type Payload } from '../log/frame.js';
import type { AppendResult, ChangeFeed, LogStore, LogWriter, TruncatedTail, WriterOptions } from '../log/log-store.js';
import { DEAD_REASON_HEADER, checkChannel, encodeChunk, encodeMessage, type ChunkMeta, type MessageMeta, type MessageRecord } from './codec.js';
import { readStreamedBody } from './body.js';
import { ConsumerJournal } from './consumer-journal.js';
import { Consumer, type ConsumerOptions, type Delivery, type PeekedMessage } from './consumer.js';
import { deadInfo, ensureQueue, inboxInfo, type QueueInfo } from './layout.js';
import type { MessageState } from './outbox-state.js';
import { priorityKey } from './priority.js';
import { countInbox } from './inbox-counts.js';
import { scanQueue, type QueueEvent, type QueueStat, type ScanQueueOptions } from './queue-scan.js';

export interface InboxOptions extends WriterOptions {
  /** Where the node's logs are. */
  readonly store: LogStore;
  readonly dataDir: string;
  /** The queue (default: the channel's inbox or dead letters under `dataDir`). */
  readonly info?: QueueInfo;
  readonly channel: string;
  readonly visibilityTimeoutMs?: number;
  readonly renewLeases?: boolean;
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
  /** At most this many messages claimed ahead of the caller (default 1024, and at most 4 MiB of them); fewer when the caller is slow (see Consumer.messages). */
  readonly prefetch?: number;
  readonly signal?: AbortSignal;
}

export class Inbox {
  readonly info: QueueInfo;
  readonly channel: string;
  readonly store: LogStore;
  private readonly options: InboxOptions;
  private writer: Promise<LogWriter> | undefined;
  private journal: Promise<ConsumerJournal> | undefined;
  private consumerInstance: Promise<Consumer> | undefined;
  private feed: ChangeFeed | undefined;
  private dead: Promise<Inbox> | undefined;
  private closing: Promise<void> | undefined;

  private constructor(options: InboxOptions) {
    checkChannel(options.channel);
    this.options = options;
    this.channel = options.channel;
    this.info = options.info ?? (options.kind === 'dead' ? deadInfo(options.dataDir, options.channel) : inboxInfo(options.dataDir, options.channel));
    this.store = options.store;
  }

  static async open(options: InboxOptions): Promise<Inbox> {
    return new Inbox(options);
  }

  /**
   * Appends a message; resolves once it is fsync'd. The message's priority picks its stream.
   * @throws ERR_DISK_FULL, ERR_IO, ERR_CLOSED.
   */
  async append(meta: MessageMeta, body: Uint8Array): Promise<AppendResult> {
    if (this.closing !== undefined) throw new MqlogError('ERR_CLOSED', 'inbox is closed');
    if (meta.channel !== this.channel) throw new MqlogError('ERR_INVALID_ARG', `message of channel ${meta.channel} appended to inbox ${this.channel}`);
    this.writer ??= this.claim();
    const writer = await this.writer;
    // Meta, then the body as it came: written as parts, never copied into one buffer.
    return writer.append(priorityKey(meta.priority), FrameType.MESSAGE, encodeMessage(meta, body));
  }

  /**
   * Appends MESSAGE payloads of one priority, ready-made (inboxCopyPayload, encodeMessage), as one group
   * commit; resolves once all are fsync'd.
   * @throws as LogWriter.appendMany (`details.stored`: how many of the first ones were stored).
   */
  async appendMany(priority: number, payloads: readonly Payload[]): Promise<AppendResult[]> {
    if (this.closing !== undefined) throw new MqlogError('ERR_CLOSED', 'inbox is closed');
    this.writer ??= this.claim();
    const writer = await this.writer;
    return writer.appendMany(
      priorityKey(priority),
      payloads.map((payload) => ({ type: FrameType.MESSAGE, payload })),
    );
  }

  /** Appends one chunk of a streamed body (invisible to consumers until its message is appended). */
  async appendChunk(meta: ChunkMeta, data: Uint8Array): Promise<AppendResult> {
    if (this.closing !== undefined) throw new MqlogError('ERR_CLOSED', 'inbox is closed');
    this.writer ??= this.claim();
    const writer = await this.writer;
    return writer.append(priorityKey(meta.priority), FrameType.BODY_CHUNK, encodeChunk(meta, data));
  }

  /** The messages ready now, most urgent first, without leasing them or counting a delivery (see Consumer.peek). */
  async *peek(options: { limit?: number } = {}): AsyncGenerator<PeekedMessage> {
    yield* (await this.consumer()).peek(options);
  }

  /** Ends every message stored now that is not done (see Consumer.purge); returns how many went. */
  async purge(signal?: AbortSignal): Promise<number> {
    return (await this.consumer()).purge(signal);
  }

  /** The shared consumer state of this queue, as this process's consumer uses it (without the claims' acks of others). */
  state(): Promise<ConsumerJournal> {
    const onTruncated = this.options.onTruncated;
    this.journal ??= ConsumerJournal.open(this.info.dir, { claimAcks: false, ...(onTruncated === undefined ? {} : { onTruncated: (tail: TruncatedTail) => onTruncated('consumer journal', tail) }) });
    return this.journal;
  }

  /** This process's consumer of the queue (created once). */
  consumer(): Promise<Consumer> {
    this.consumerInstance ??= (async () => {
      const journal = await this.state();
      const options: ConsumerOptions = {
        ...(this.options.visibilityTimeoutMs === undefined ? {} : { visibilityTimeoutMs: this.options.visibilityTimeoutMs }),
        ...(this.options.maxDeliveries === undefined ? {} : { maxDeliveries: this.options.maxDeliveries }),
        ...(this.options.renewLeases === undefined ? {} : { renewLeases: this.options.renewLeases }),
        ...(this.options.onSettled === undefined || this.options.kind === 'dead' ? {} : { onSettled: this.options.onSettled }),
        ...(this.options.kind === 'dead' ? {} : { deadLetter: (message: MessageRecord, origin: { stream: string; offset: number }, reason: string) => this.toDeadLetters(message, origin, reason) }),
      };
      return new Consumer(this.store, this.info, journal, options);
    })();
    return this.consumerInstance;
  }

  /**
   * Leases messages one at a time, most urgent first; see Consumer.messages. Each must be acked (or nacked);
   * unacked ones come back after the visibility timeout.
   */
  async *consume(options: ConsumeOptions = {}): AsyncGenerator<Delivery> {
    const consumer = await this.consumer();
    const feed = options.follow === true ? await this.changes() : undefined;
    yield* consumer.messages({ ...options, ...(feed === undefined ? {} : { feed }) });
  }

  /** This queue's state of a message: done (`acked`, `dead`, `expired`) or `pending`; dead letters: `dead` until redriven. */
  async stateView(): Promise<(stream: string, offset: number) => MessageState> {
    const journal = await ConsumerJournal.open(this.info.dir);
    const state = journal.state;
    await journal.close();
    if (this.info.kind === 'dead') return (stream, offset) => (state.doneKind(stream, offset) === undefined ? 'dead' : 'acked');
    return (stream, offset) => state.doneKind(stream, offset) ?? 'pending';
  }

  /** Every stored message with its state (read from the state files now). */
  async *messages(options: ScanQueueOptions = {}): AsyncGenerator<QueueEvent> {
    yield* scanQueue(this.store, this.info.queue, await this.stateView(), options);
  }

  /** The queue's counts, from the log's segment summaries and the consumer state (nothing read whole). */
  async stat(): Promise<QueueStat> {
    const journal = await ConsumerJournal.open(this.info.dir);
    const state = journal.state;
    await journal.close();
    return countInbox(this.store, this.info, state);
  }

  /** A stored message's body as a stream of buffers (a streamed body chunk by chunk, with flat memory). */
  body(message: MessageRecord): AsyncIterable<Buffer> | Iterable<Buffer> {
    return message.streamed === undefined ? [message.body] : readStreamedBody(this.store, this.info.queue, message.id, message.streamed);
  }

  /** Changes of this queue's log (appends in this process wake it at once). One feed per inbox object. */
  async changes(): Promise<ChangeFeed> {
    if (this.feed === undefined) {
      this.feed = this.store.changes(this.info.queue);
      await this.feed.whenReady();
    }
    return this.feed;
  }

  /** The channel's dead-letter queue. */
  deadLetters(): Promise<Inbox> {
    const { info: _info, ...options } = this.options;
    this.dead ??= Inbox.open({ ...options, kind: 'dead' });
    return this.dead;
  }

  /**
   * Puts the channel's dead letters back into the inbox as new deliveries (the hand-out count starts
   * again, the dead-letter reason is dropped). Each is marked done in the dead letters only after it
   * was appended here, so a crash can redrive a message twice, never lose it. Returns how many went.
   */
  async redrive(signal?: AbortSignal): Promise<number> {
    const dead = await this.deadLetters();
    let count = 0;
    for await (const letter of dead.consume({ prefetch: 64, ...(signal === undefined ? {} : { signal }) })) {
      // The message's own fields (a delivery's own are left behind: encodeMeta takes only message fields).
      const { body, headers, stream: _stream, offset: _offset, deliveries: _deliveries, ...meta } = letter;
      const { [DEAD_REASON_HEADER]: _reason, ...rest } = headers;
      await this.append({ ...meta, headers: rest }, body);
      await letter.ack();
      count++;
    }
    return count;
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
      await this.feed?.close();
    })();
    return this.closing;
  }

  private claim(): Promise<LogWriter> {
    const claiming = ensureQueue(this.info).then(() => this.store.claimWriter(this.info.queue, this.options));
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
