/**
 * Forwarding into a JetStream stream (spec/transports.md §3.2-§3.4): the transport of a destination
 * `nats://HOST:PORT/STREAM` (or `tls://…`). Each message of a batch is published to `STREAM.<channel
 * token>` — as itself (format `headers`: the body is the payload, the fields are headers) or as its
 * frame (format `frame`) — with `Nats-Msg-Id: <node>:<stream>:<offset>`, so JetStream's duplicate window
 * absorbs a retry, and headers naming its origin, so a sourcing node recognises it after the window too.
 * A body that does not fit in one message (the server's max_payload, the stream's max_msg_size) goes to
 * the destination's object store bucket first (nats-object-writer.ts) and the message carries where.
 *
 * A batch is delivered when JetStream acked every publish. Failures are classified (nats-errors.ts):
 * a message the destination can never take is refused (ERR_PEER_REJECTED naming its frame: the
 * forwarder dead-letters it and goes on); everything else is retried.
 *
 * Concurrency: the forwarder keeps a few batches in flight; the publishes of plain messages run side by
 * side, the pieces of one large body one after the other (in the writer's chain).
 */
import { createHash } from 'node:crypto';
import type { NatsConnection } from '@nats-io/transport-node';
import { jetstreamManager, type StreamInfo } from '@nats-io/jetstream';
import { MqlogError, abortError } from '../errors.js';
import type { FrameContents } from './frame-contents.js';
import { parseNatsUrl, type NatsAddress } from './nats-address.js';
import { NatsAcks, isNoResponders, type AckBatch } from './nats-acks.js';
import { natsError, refused, jsErrorCode, JS_STREAM_NOT_FOUND } from './nats-errors.js';
import { channelToken, frameHeaders, headerBytes, messageHeaders, type NatsObjectRef, type NatsOrigin } from './nats-headers.js';
import { NatsLink, displayAddress } from './nats-link.js';
import { NatsObjectWriter } from './nats-object-writer.js';
import type { NatsSettings } from './nats-settings.js';
import { ensureBucket, ensureStream } from './nats-stream.js';
import type { TransportContext } from './registry.js';
import type { BatchResult, OutgoingBatch, Transport, WireFrame } from './transport.js';

/** Room left for headers when deciding whether a body fits in one message. */
const HEADER_ROOM_BYTES = 8 * 1024;
const DEFAULT_PUBLISH_TIMEOUT_MS = 10_000;

export interface NatsSenderOptions {
  readonly url: string;
  readonly settings?: NatsSettings;
  /** The sending node's id (part of every `Nats-Msg-Id`). */
  readonly node: string;
  readonly unpack: (frame: WireFrame) => FrameContents;
  readonly publishTimeoutMs?: number;
}

/** The connection in use, and its acks. */
interface Client {
  readonly nc: NatsConnection;
  readonly acks: NatsAcks;
}

export class NatsSender implements Transport {
  readonly url: string;
  private readonly options: NatsSenderOptions;
  private readonly address: NatsAddress;
  private readonly link: NatsLink;
  private readonly where: string;
  private readonly bucket: string;
  private readonly timeoutMs: number;
  private stream: StreamInfo | undefined;
  private bucketInfo: StreamInfo | undefined;
  private readonly objects: NatsObjectWriter;
  private js: Client | undefined;
  private closing: Promise<void> | undefined;
  /** The last batch's start of publishing (see send). */
  private order: Promise<void> = Promise.resolve();
  private bucketReady: Promise<void> | undefined;

  /** The factory's way in (spec/transports.md §1.2): settings are the merged `nats` settings. */
  static create(context: TransportContext): NatsSender {
    return new NatsSender({ url: context.url, settings: context.settings ?? {}, node: context.node.id, unpack: context.unpack });
  }

  constructor(options: NatsSenderOptions) {
    this.options = options;
    this.url = options.url;
    this.address = parseNatsUrl(options.url);
    this.where = displayAddress(this.address);
    this.link = new NatsLink(this.address, options.settings ?? {});
    this.bucket = options.settings?.bucket ?? `mqlog-${this.address.stream}`;
    this.timeoutMs = options.publishTimeoutMs ?? DEFAULT_PUBLISH_TIMEOUT_MS;
    this.objects = new NatsObjectWriter({
      bucket: this.bucket,
      node: options.node,
      where: this.where,
      timeoutMs: this.timeoutMs,
      pieceBytes: () => this.pieceBytes(),
      maxBytes: () => this.bucketInfo?.config.max_bytes ?? -1,
      prepare: () => this.ensureBucket(),
    });
  }

  async send(batch: OutgoingBatch, signal?: AbortSignal): Promise<BatchResult> {
    if (this.closing !== undefined) throw new MqlogError('ERR_CLOSED', 'sender is closed');
    // Batches start their publishes in the order they came: the pieces of a large body spread over
    // batches in flight together are queued in body order.
    const issued = this.order.then(() => this.issue(batch));
    this.order = issued.then(
      () => undefined,
      () => undefined,
    );
    const { acks, batch: pending } = await issued;
    // The batch is delivered only when every publish was acked. A dropped connection or an abort fails
    // it at once: the publishes in flight will get no ack, and the retry is safe (JetStream recognises
    // the Nats-Msg-Ids, a sourcing node the origins).
    const dropped = this.link.dropped();
    let onAbort: (() => void) | undefined;
    const interrupted = new Promise<never>((_, reject) => {
      void dropped.promise.then(() => reject(new MqlogError('ERR_PEER_UNREACHABLE', `${this.where}: the connection dropped with publishes in flight`, { details: { url: this.where } })));
      if (signal !== undefined) {
        onAbort = () => reject(abortError(signal));
        if (signal.aborted) onAbort();
        else signal.addEventListener('abort', onAbort, { once: true });
      }
    });
    interrupted.catch(() => undefined);
    try {
      await Promise.race([pending.done, interrupted]);
    } finally {
      acks.forget(pending);
      dropped.cancel();
      if (onAbort !== undefined) signal?.removeEventListener('abort', onAbort);
    }
    let stored = 0;
    let duplicates = 0;
    let retry: MqlogError | undefined;
    for (const [index, outcome] of pending.outcomes.entries()) {
      // A frame with nothing to publish (a piece of a body in the bucket) counts as stored, as before.
      if (outcome === 'duplicate') duplicates++;
      else if (typeof outcome === 'string') stored++;
      if (typeof outcome !== 'object') continue;
      const error = natsError(outcome.error, this.where, 'publish not acknowledged');
      // A message it can never take is named, so that it is dead-lettered and the rest goes on.
      if (error.code === 'ERR_PEER_REJECTED') throw refused(this.where, index, error.message.replace(`${this.where}: `, ''), error);
      // The stream may be gone (deleted meanwhile: no responders for its subjects): looked up, and made, again.
      if (jsErrorCode(error.cause) === JS_STREAM_NOT_FOUND || isNoResponders(outcome.error)) this.stream = undefined;
      retry ??= error;
    }
    if (retry !== undefined) throw retry;
    return { stored, duplicates };
  }

  close(): Promise<void> {
    this.closing ??= this.link.close();
    return this.closing;
  }

  /** Connects (and checks the stream) if needed, then starts every publish of the batch, in frame order. */
  private async issue(batch: OutgoingBatch): Promise<{ acks: NatsAcks; batch: AckBatch }> {
    const client = await this.client();
    // Unpacked first: a frame that cannot be is a bug to see at once, before anything goes out.
    const contents = batch.frames.map((frame) => withReplyTo(this.options.unpack(frame), batch.replyTo));
    const origins = this.origins(batch, contents);
    const limit = this.messageLimit(client.nc);
    const pending = client.acks.batch(contents.length, this.timeoutMs);
    for (const [index, c] of contents.entries()) this.publish(client, pending, index, batch.frames[index] as WireFrame, c, origins[index], limit);
    return { acks: client.acks, batch: pending };
  }

  /**
   * Each message's origin: its sender stream and offset, and from where the range it covers starts (the
   * offset after the previous message of its stream in the batch, or where the batch's range starts).
   */
  private origins(batch: OutgoingBatch, contents: readonly FrameContents[]): (NatsOrigin | undefined)[] {
    const previous = new Map<string, number>();
    return contents.map((c, index) => {
      if (c.type !== 'message') return undefined;
      const stream = (batch.frames[index] as WireFrame).stream;
      const coversFrom = previous.has(stream) ? (previous.get(stream) as number) + 1 : batch.covers?.[stream]?.[0];
      previous.set(stream, c.offset);
      return { node: this.options.node, stream, offset: c.offset, ...(coversFrom === undefined ? {} : { coversFrom }) };
    });
  }

  /**
   * Publishes one frame's message (or stores its piece of a large body); its outcome goes to `pending`
   * at `index`. Writes to the bucket are queued before this returns (no await before them), so they
   * keep frame order.
   */
  private publish(client: Client, pending: AckBatch, index: number, wire: WireFrame, c: FrameContents, origin: NatsOrigin | undefined, limit: number): void {
    const { nc, acks } = client;
    const failed = (error: unknown): void => pending.settle(index, { error });
    if (c.type === 'other') return pending.settle(index, 'none');
    if (c.type === 'chunk') {
      this.objects.write(nc, c.id, c.position, c.data).then(() => pending.settle(index, 'none'), failed);
      return;
    }
    const o = origin as NatsOrigin;
    const subject = `${this.address.stream}.${channelToken(c.fields.channel)}`;
    let object: NatsObjectRef;
    let stored: Promise<void>;
    if (c.streamed === undefined) {
      if (this.options.settings?.format === 'frame') {
        const frame = Buffer.isBuffer(wire.frame) ? wire.frame : Buffer.concat(wire.frame);
        if (frame.length + HEADER_ROOM_BYTES <= limit) return acks.publish(pending, index, subject, frame, frameHeaders(c.fields, o));
      } else {
        const headers = messageHeaders(c.fields, o);
        // Most bodies are small: the header bytes are only counted for those that might not fit.
        if (c.body.length + HEADER_ROOM_BYTES <= limit || c.body.length + headerBytes(headers) <= limit) return acks.publish(pending, index, subject, c.body, headers);
      }
      // Too large for one message: the body goes to the bucket, the message says where.
      object = { bucket: this.bucket, name: c.fields.id, size: c.body.length, sha256: createHash('sha256').update(c.body).digest('hex') };
      stored = Promise.all([this.objects.write(nc, c.fields.id, 0, c.body, object.size), this.objects.finish(nc, c.fields.id, object.size, object.sha256)]).then(() => undefined);
    } else {
      // A streamed body: its chunks were queued before (earlier frames, earlier batches).
      object = { bucket: this.bucket, name: c.fields.id, ...c.streamed };
      stored = this.objects.finish(nc, c.fields.id, object.size, object.sha256);
    }
    stored.then(() => acks.publish(pending, index, subject, Buffer.alloc(0), messageHeaders(c.fields, o, object)), failed);
  }

  /** Largest message (payload and headers) the stream takes: the server's max_payload, or less when the stream says so. */
  private messageLimit(nc: NatsConnection): number {
    const maxPayload = this.link.maxPayload(nc);
    const maxMsgSize = this.stream?.config.max_msg_size ?? -1;
    return maxMsgSize > 0 ? Math.min(maxPayload, maxMsgSize) : maxPayload;
  }

  /**
   * Body bytes per piece in the bucket: the largest power of two that fits in a message with its
   * headers (512 KiB under the default max_payload), so that the outbox's 1 MiB chunks split evenly.
   */
  private pieceBytes(): number {
    const maxPayload = this.js === undefined ? 1024 * 1024 : this.link.maxPayload(this.js.nc);
    const maxMsgSize = this.bucketInfo?.config.max_msg_size ?? -1;
    const limit = (maxMsgSize > 0 ? Math.min(maxPayload, maxMsgSize) : maxPayload) - HEADER_ROOM_BYTES;
    return Math.max(1024, 2 ** Math.floor(Math.log2(Math.max(1, limit))));
  }

  private async client(): Promise<Client> {
    const nc = await this.link.get();
    if (this.js?.nc !== nc) {
      this.js?.acks.close();
      this.js = { nc, acks: new NatsAcks(nc) };
    }
    if (this.stream === undefined) {
      const jsm = await jetstreamManager(nc, { timeout: this.timeoutMs }).catch((err: unknown) => {
        throw natsError(err, this.where, 'JetStream does not answer');
      });
      this.stream = await ensureStream(jsm, this.where, this.address.stream, this.options.settings?.stream);
    }
    return this.js;
  }

  /** Makes sure the bucket exists (once; again after a failure). */
  private ensureBucket(): Promise<void> {
    this.bucketReady ??= (async () => {
      const { nc } = await this.client();
      const jsm = await jetstreamManager(nc, { timeout: this.timeoutMs }).catch((err: unknown) => {
        throw natsError(err, this.where, 'JetStream does not answer');
      });
      this.bucketInfo = await ensureBucket(jsm, this.where, this.bucket, this.options.settings?.stream);
    })();
    this.bucketReady.catch(() => (this.bucketReady = undefined));
    return this.bucketReady;
  }
}

/**
 * A message asking for receipts names where its sender's daemon takes them now (the batch's `replyTo`),
 * as an HTTP receiver sets it on its inbox copy (spec/http-protocol.md §3).
 */
function withReplyTo(c: FrameContents, replyTo: string | undefined): FrameContents {
  if (replyTo === undefined || c.type !== 'message' || c.fields.receipt !== true) return c;
  return { ...c, fields: { ...c.fields, replyTo } };
}
