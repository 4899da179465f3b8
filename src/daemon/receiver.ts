/**
 * The node's BatchSink: checks every frame a peer sends, stores the new ones in the inbox of their
 * channel, and answers only once they are fsync'd (spec/http-protocol.md §4, §5).
 *
 * Every frame is checked before anything is written — CRC, lengths, version, type, message fields,
 * channel name, body size — so a bad request stores nothing. Frames stored before (a retry) are
 * recognised by origin and acknowledged again without being stored twice. The sender name stored with
 * a message is the authenticated peer when there is one, never only the claim in the request.
 */
import { createHash, type Hash } from 'node:crypto';
import { MqlogError } from '../errors.js';
import { FrameType, decodeFrame } from '../log/frame.js';
import { parseStreamName } from '../log/log-store.js';
import { digestStreamedBody } from '../queue/body.js';
import { decodeChunk, decodeMessage, type ChunkMeta, type MessageMeta, type MessageRecord, type Origin } from '../queue/codec.js';
import { Inbox } from '../queue/inbox.js';
import { decodeReceiptReport, type ReceiptReport } from '../queue/receipts.js';
import type { BatchResult, BatchSink, IncomingBatch } from '../transport/transport.js';
import { KeyedSerial } from '../util/serial.js';
import { DedupTable, dedupKey } from './dedup.js';

export interface InboxSinkOptions {
  readonly dataDir: string;
  readonly segmentBytes: number;
  readonly maxBodyBytes: number;
  /** Largest streamed body (chunked) accepted. */
  readonly maxStreamedBodyBytes: number;
  readonly maxFrameBytes: number;
  readonly maxHeaders?: number;
  readonly maxHeaderBytes?: number;
  readonly maxChannelBytes?: number;
  readonly visibilityTimeoutMs: number;
  readonly maxDeliveries: number;
  /** The inbox of a channel; shared with the node's consumers when given. */
  readonly inboxFor?: (channel: string) => Promise<Inbox>;
  /** Applies a receipt a peer reported back (durably, before the batch is acknowledged). */
  readonly onReceipt?: (report: ReceiptReport, from: string, authenticated: boolean) => Promise<void>;
  /** Called with the result of every accepted batch. */
  readonly onBatch?: (result: BatchResult) => void;
  /** Called after messages were stored, per channel (metrics, waking consumers). */
  readonly onStored?: (channel: string, count: number, from: string) => void;
  readonly onTruncated?: (stream: string, position: number, bytes: number) => void;
}

interface Checked {
  readonly key: string;
  readonly stream: string;
  readonly offset: number;
  /** Set for a MESSAGE frame. */
  readonly message?: MessageRecord;
  readonly receipt?: ReceiptReport;
  /** Set for a BODY_CHUNK frame. */
  readonly chunk?: { readonly meta: ChunkMeta; readonly data: Buffer };
  readonly index: number;
}

export class InboxSink implements BatchSink {
  readonly dedup: DedupTable;
  private readonly options: InboxSinkOptions;
  private readonly inboxes = new Map<string, Promise<Inbox>>();
  /** Running digests of streamed bodies in transit, by transfer. */
  private readonly hashing = new Map<string, { hash: Hash; size: number }>();
  /** Batches of one sender run one after the other: a retry may arrive while the original still runs. */
  private readonly senders = new KeyedSerial();
  private closing: Promise<void> | undefined;

  private constructor(options: InboxSinkOptions, dedup: DedupTable) {
    this.options = options;
    this.dedup = dedup;
  }

  static async open(options: InboxSinkOptions): Promise<InboxSink> {
    return new InboxSink(options, await DedupTable.open(options.dataDir));
  }

  async accept(batch: IncomingBatch): Promise<BatchResult> {
    if (this.closing !== undefined) throw new MqlogError('ERR_CLOSED', 'the node is shutting down');
    const from = batch.peer ?? batch.name;
    const checked = batch.frames.map((wire, index): Checked => {
      try {
        if (parseStreamName(wire.stream) === undefined) throw new MqlogError('ERR_BAD_REQUEST', `stream name ${JSON.stringify(wire.stream)} is not valid`);
        const decoded = decodeFrame(wire.frame, 0, this.options.maxFrameBytes);
        if (!decoded.ok) {
          if (decoded.incomplete) throw new MqlogError('ERR_TRUNCATED_FRAME', `frame is cut short (needs ${decoded.needed} bytes, has ${wire.frame.length})`);
          throw new MqlogError(decoded.code, `frame: ${decoded.reason}`);
        }
        if (decoded.bytes !== wire.frame.length) throw new MqlogError('ERR_BAD_REQUEST', `${wire.frame.length - decoded.bytes} bytes after the frame`);
        const key = dedupKey(batch.node, batch.destination, wire.stream);
        if (decoded.frame.type === FrameType.BODY_CHUNK) {
          const chunk = decodeChunk(decoded.frame.payload);
          this.checkChannel(chunk.meta.channel);
          return { key, stream: wire.stream, offset: decoded.frame.offset, chunk, index };
        }
        if (decoded.frame.type !== FrameType.MESSAGE) throw new MqlogError('ERR_INVALID_MESSAGE', `frame type ${decoded.frame.type} is neither a message nor a body chunk`);
        const message = decodeMessage(decoded.frame.payload);
        if (message.streamed !== undefined && message.streamed.size > this.options.maxStreamedBodyBytes) {
          throw new MqlogError('ERR_BODY_TOO_LARGE', `streamed body of ${message.streamed.size} bytes exceeds this node's limit of ${this.options.maxStreamedBodyBytes}`);
        }
        if (message.body.length > this.options.maxBodyBytes) {
          throw new MqlogError('ERR_BODY_TOO_LARGE', `body of ${message.body.length} bytes exceeds this node's limit of ${this.options.maxBodyBytes}`);
        }
        this.checkLimits(message);
        const receipt = message.kind === 'receipt' ? decodeReceiptReport(message.body) : undefined;
        return { key, stream: wire.stream, offset: decoded.frame.offset, message, index, ...(receipt === undefined ? {} : { receipt }) };
      } catch (err) {
        if (err instanceof MqlogError) {
          throw new MqlogError(err.code, `frame ${index}: ${err.message}`, { details: { ...err.details, frame: index }, cause: err });
        }
        throw err;
      }
    });
    if (batch.unordered === undefined) checkOrder(checked);
    return this.serialize(batch.node, () => this.dedup.batch(() => this.store(batch, from, checked)));
  }

  private checkChannel(channel: string): void {
    const channelBytes = Buffer.byteLength(channel);
    if (this.options.maxChannelBytes !== undefined && channelBytes > this.options.maxChannelBytes) {
      throw new MqlogError('ERR_INVALID_NAME', `channel name of ${channelBytes} bytes exceeds this node's limit of ${this.options.maxChannelBytes}`);
    }
  }

  private checkLimits(message: MessageRecord): void {
    this.checkChannel(message.channel);
    const headers = Object.entries(message.headers ?? {});
    if (this.options.maxHeaders !== undefined && headers.length > this.options.maxHeaders) {
      throw new MqlogError('ERR_HEADERS_TOO_LARGE', `${headers.length} headers exceed this node's limit of ${this.options.maxHeaders}`);
    }
    const headerBytes = headers.reduce((n, [k, v]) => n + Buffer.byteLength(k) + Buffer.byteLength(v), 0);
    if (this.options.maxHeaderBytes !== undefined && headerBytes > this.options.maxHeaderBytes) {
      throw new MqlogError('ERR_HEADERS_TOO_LARGE', `${headerBytes} bytes of headers exceed this node's limit of ${this.options.maxHeaderBytes}`);
    }
  }

  /** Keeps a running SHA-256 of a body whose chunks arrive in order; forgets it at the first gap. */
  private hashAlong(key: string, position: number, data: Buffer): void {
    let running = this.hashing.get(key);
    if (running === undefined && position === 0) {
      running = { hash: createHash('sha256'), size: 0 };
      this.hashing.set(key, running);
    }
    if (running === undefined) return;
    if (position !== running.size) {
      this.hashing.delete(key);
      return;
    }
    running.hash.update(data);
    running.size += data.length;
  }

  /** Waits for batches in flight, writes the dedup checkpoint, closes the inboxes. Idempotent. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      await this.senders.idle();
      await this.dedup.checkpoint();
      for (const inbox of this.inboxes.values()) await (await inbox).close();
    })();
    return this.closing;
  }

  /**
   * Stores the new frames of a batch: body chunks first, then messages (a streamed body is checked
   * against its declared size and SHA-256 by reading its stored chunks back before its message is
   * stored), then receipts are applied.
   */
  private async store(batch: IncomingBatch, from: string, checked: Checked[]): Promise<BatchResult> {
    const fresh = checked.filter((c) => !this.dedup.seen(c.key, c.offset));
    const origin = (c: Checked): Origin => ({ node: batch.node, stream: c.stream, offset: c.offset, destination: batch.destination });
    const done: Checked[] = [];
    const run = async (items: Checked[], store: (c: Checked) => Promise<void>): Promise<void> => {
      const results = await Promise.allSettled(items.map(async (c) => {
        await store(c);
        return c;
      }));
      for (const r of results) if (r.status === 'fulfilled') done.push(r.value);
      const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
      if (failed !== undefined) throw failed.reason;
    };
    try {
      await run(fresh.filter((c) => c.chunk !== undefined), async (c) => {
        const { meta, data } = c.chunk as NonNullable<Checked['chunk']>;
        this.hashAlong(transferKey(batch, meta.id), meta.position, data);
        const inbox = await this.inbox(meta.channel);
        const stored = await inbox.appendChunk({ ...meta, origin: origin(c) }, data);
        this.dedup.wrote(inbox.info.queue, stored.stream, stored.offset);
        this.dedup.chunkStored(transferKey(batch, meta.id), stored.stream, stored.offset);
      });
      const messages = fresh.filter((c) => c.message !== undefined && c.receipt === undefined);
      const prepared = new Map<Checked, MessageMeta>();
      for (const c of messages) prepared.set(c, await this.verifyStreamed(batch, c, from, origin(c)));
      await run(messages, async (c) => {
        const message = c.message as MessageRecord;
        const inbox = await this.inbox(message.channel);
        const stored = await inbox.append(prepared.get(c) as MessageMeta, message.streamed === undefined ? message.body : Buffer.alloc(0));
        this.dedup.wrote(inbox.info.queue, stored.stream, stored.offset);
        if (message.streamed !== undefined) this.dedup.finishTransfer(transferKey(batch, message.id));
      });
      await run(fresh.filter((c) => c.receipt !== undefined), async (c) => {
        await this.options.onReceipt?.(c.receipt as ReceiptReport, from, batch.peer !== undefined);
      });
    } catch (err) {
      // Remember exactly what did get stored, so the retry stores only the rest.
      for (const c of done) this.dedup.stored(c.key, c.offset);
      // Running digests may now include chunks that were not stored: check those bodies by reading back.
      for (const c of fresh) if (c.chunk !== undefined) this.hashing.delete(transferKey(batch, c.chunk.meta.id));
      throw err;
    }
    if (batch.unordered !== undefined) {
      // No order to rely on: remember exactly what is stored, and what the source says is behind it.
      for (const c of fresh) this.dedup.stored(c.key, c.offset);
      for (const key of new Set(checked.map((c) => c.key))) this.dedup.completed(key, [batch.unordered.floor]);
    } else {
      const byKey = new Map<string, number[]>();
      for (const c of checked) byKey.set(c.key, [...(byKey.get(c.key) ?? []), c.offset]);
      for (const [key, offsets] of byKey) this.dedup.completed(key, offsets);
    }
    const perChannel = new Map<string, number>();
    for (const c of fresh) if (c.message !== undefined && c.receipt === undefined) perChannel.set(c.message.channel, (perChannel.get(c.message.channel) ?? 0) + 1);
    for (const [channel, count] of perChannel) this.options.onStored?.(channel, count, from);
    const result = { stored: fresh.length, duplicates: checked.length - fresh.length };
    this.options.onBatch?.(result);
    return result;
  }

  /**
   * The inbox fields of a message: `from` is the sender, `origin` where it came from, and a streamed
   * body's parts point at the chunks as stored here — after checking that they add up to the declared
   * size and SHA-256.
   * @throws ERR_BODY_DIGEST_MISMATCH (with the frame index) when they do not.
   */
  private async verifyStreamed(batch: IncomingBatch, c: Checked, from: string, origin: Origin): Promise<MessageMeta> {
    const { body: _body, ...meta } = c.message as MessageRecord;
    const fields: MessageMeta = { ...meta, from, origin };
    if (meta.streamed === undefined) return fields;
    const key = transferKey(batch, meta.id);
    const parts = this.dedup.transferParts(key);
    const inbox = await this.inbox(meta.channel);
    const running = this.hashing.get(key);
    this.hashing.delete(key);
    // The digest kept while the chunks arrived in order, else (after a restart) read the chunks back.
    const found = running !== undefined && running.size === meta.streamed.size ? { size: running.size, sha256: running.hash.digest('hex') } : await digestStreamedBody(inbox.info.dir, meta.id, parts);
    if (found.size !== meta.streamed.size || found.sha256 !== meta.streamed.sha256) {
      throw new MqlogError('ERR_BODY_DIGEST_MISMATCH', `frame ${c.index}: body of ${meta.id} has ${found.size} bytes with SHA-256 ${found.sha256}, the message declares ${meta.streamed.size} bytes with ${meta.streamed.sha256}`, {
        details: { frame: c.index, id: meta.id },
      });
    }
    return { ...fields, streamed: { ...meta.streamed, parts } };
  }

  private serialize<T>(sender: string, fn: () => Promise<T>): Promise<T> {
    return this.senders.run(sender, fn);
  }

  inbox(channel: string): Promise<Inbox> {
    if (this.options.inboxFor !== undefined) return this.options.inboxFor(channel);
    let inbox = this.inboxes.get(channel);
    if (inbox === undefined) {
      inbox = Inbox.open({
        dataDir: this.options.dataDir,
        channel,
        segmentBytes: this.options.segmentBytes,
        visibilityTimeoutMs: this.options.visibilityTimeoutMs,
        maxDeliveries: this.options.maxDeliveries,
        onTruncated: (stream, tail) => this.options.onTruncated?.(stream, tail.position, tail.bytes),
      });
      inbox.catch(() => this.inboxes.delete(channel));
      this.inboxes.set(channel, inbox);
    }
    return inbox;
  }
}

/**
 * A sender forwards each stream in offset order (duplicate detection relies on it): within a batch, the
 * offsets of a stream must rise strictly.
 * @throws ERR_BAD_REQUEST naming the first frame that breaks the order (a repeat included).
 */
function checkOrder(checked: readonly Checked[]): void {
  const last = new Map<string, number>();
  for (const c of checked) {
    const previous = last.get(c.key);
    if (previous !== undefined && c.offset <= previous) {
      throw new MqlogError('ERR_BAD_REQUEST', `frame ${c.index}: offset ${c.offset} of stream ${c.stream} does not follow ${previous} (frames of a stream must come in rising order, once)`, {
        details: { frame: c.index },
      });
    }
    last.set(c.key, c.offset);
  }
}

/** Identifies one streamed body in transit: sender node, destination as it named this node, message id. */
function transferKey(batch: IncomingBatch, id: string): string {
  return JSON.stringify([batch.node, batch.destination, id]);
}
