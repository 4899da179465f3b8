/**
 * A JetStream stream as an inbox source (spec/transports.md §3.7): a durable pull consumer feeding this
 * node's inbox through the BatchSink, which checks, stores and fsyncs; only then are the messages acked
 * in JetStream. An outage of either side loses nothing; nothing is stored twice:
 *
 * - a message an mqlog node published carries its origin (sender node, outbox stream, offset): it is
 *   handed to the sink as a frame of that sender stream, so the sink's dedup table (the one HTTP uses)
 *   recognises it however often JetStream holds or delivers it — also when a sender published it again
 *   after the duplicate window, under another stream sequence;
 * - any other message is keyed by its stream sequence (redeliveries), with the consumer's ack floor,
 *   read in the background at most once a second, as what was stored before.
 *
 * A message whose body is in the object store brings its body in first, piece by piece (each piece a
 * chunk frame keyed by its sequence in the bucket), then the message, which the sink checks against the
 * declared size and SHA-256. Memory stays flat: at most a few MiB of pieces are held at once.
 *
 * Messages arrive through `consume()` (the client keeps pulls outstanding; no round trip per batch) and
 * are stored in groups: whatever arrived while the previous group was being stored (group commit).
 */
import { jetstream, jetstreamManager, AckPolicy, DeliverPolicy, type ConsumerMessages, type JetStreamManager, type JsMsg } from '@nats-io/jetstream';
import type { NatsConnection } from '@nats-io/transport-node';
import { MqlogError } from '../errors.js';
import { backoffMs, sleep } from '../util/backoff.js';
import type { MessageFields } from './frame-contents.js';
import { parseNatsUrl, type NatsAddress } from './nats-address.js';
import { jsErrorCode, natsError } from './nats-errors.js';
import { H, readFields, readMessageHeaders, readObjectRef, readOrigin, type NatsObjectRef, type NatsOrigin } from './nats-headers.js';
import { NatsLink, displayAddress } from './nats-link.js';
import { chunkSubject, metaSubject } from './nats-object-writer.js';
import type { NatsSettings } from './nats-settings.js';
import { bucketStream, ensureStream } from './nats-stream.js';
import type { BatchSink, IncomingBatch, ReceivedFrame, ReceivedMessage } from './transport.js';

/** Frames for the sink, made by the daemon (which knows the frame format). */
export interface SourceCodec {
  /** A message that is not mqlog's (or a frame of an older mqlog), as a frame at `sequence`. */
  adopt(data: Uint8Array, subject: string, sequence: number, headers: ReadonlyMap<string, string>): Buffer;
  /** A frame published with format `frame`, checked, as it is (its own offset); undefined when it is not one. */
  frame(data: Uint8Array): { frame: Buffer; offset: number } | undefined;
  /** A message published with format `headers`, as the sink takes it (fields and body, not a frame) at `offset`, the body inline or streamed. */
  message(offset: number, fields: Omit<MessageFields, 'from'>, body: Uint8Array, streamed?: { readonly size: number; readonly sha256: string }): ReceivedMessage['message'];
  /** A piece of a streamed body as a BODY_CHUNK frame at `offset`. */
  chunk(offset: number, of: Pick<MessageFields, 'id' | 'channel' | 'priority' | 'ts'>, position: number, data: Uint8Array): Buffer;
}

export interface NatsSourceOptions {
  /** `nats://HOST:PORT/STREAM` (or tls://, credentials allowed). */
  readonly url: string;
  readonly settings?: NatsSettings;
  /** Name of the durable consumer (kept by JetStream across restarts). */
  readonly durable: string;
  /** Only messages on this subject (default: the whole stream). */
  readonly subject?: string;
  readonly sink: BatchSink;
  readonly codec: SourceCodec;
  readonly onError?: (error: MqlogError) => void;
  /** A message the node refused for good (terminated in JetStream, not redelivered). */
  readonly onRefused?: (sequence: number, error: MqlogError) => void;
  /** Most messages stored as one group. Default 1000. */
  readonly batchSize?: number;
}

/** Pulls stay within this many bytes outstanding; a group of messages or of body pieces stays within about this much. */
const PULL_BYTES = 8 * 1024 * 1024;
const GROUP_BYTES = 4 * 1024 * 1024;
const FLOOR_REFRESH_MS = 1000;
/** Sender stream name under which pieces of bodies from the object store are keyed (never an outbox stream). */
const OBJECT_STREAM = 'obj.w0';
/** Sender stream name of messages keyed by their stream sequence. */
const SEQUENCE_STREAM = 'js.w0';

/** One fetched message, classified. */
interface Entry {
  readonly m: JsMsg;
  readonly seq: number;
  /** The frame's offset in its sender stream (the stream sequence for `seq` groups). */
  readonly offset: number;
  /** The group it is stored with: `seq` (stream sequence) or the origin's node. */
  readonly group: string;
  /** What the sink takes: a frame, or a message as fields and body. */
  readonly frame: ReceivedFrame | ReceivedMessage;
  /** Set when its body is in the object store. */
  readonly object?: { readonly ref: NatsObjectRef; readonly fields: Omit<MessageFields, 'from'>; readonly origin: NatsOrigin } | undefined;
}

export class NatsSource {
  private readonly options: NatsSourceOptions;
  private readonly address: NatsAddress;
  private readonly link: NatsLink;
  private readonly where: string;
  /** The sender name and node of messages keyed by stream sequence (kept as earlier versions named them). */
  private readonly sequenceNode: string;
  private readonly name: string;
  private readonly stop = new AbortController();
  private running: Promise<void> | undefined;
  private messages: ConsumerMessages | undefined;
  /** Everything at or below it was acked (and so stored) or terminated. */
  private floor = 0;
  private closing: Promise<void> | undefined;
  /** Messages terminated in JetStream (not to be acked). */
  private readonly refused = new WeakSet<JsMsg>();

  constructor(options: NatsSourceOptions) {
    this.options = options;
    this.address = parseNatsUrl(options.url);
    this.where = displayAddress(this.address);
    this.link = new NatsLink(this.address, options.settings ?? {});
    this.sequenceNode = `nats://${this.address.server}/${this.address.stream}`;
    this.name = `nats:${this.address.stream}`;
  }

  start(): void {
    if (this.closing !== undefined) return;
    this.running ??= this.loop();
  }

  /** Stops pulling, lets the group being stored finish (and be acked), closes the connection. Idempotent. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      this.stop.abort();
      this.messages?.stop();
      await this.running;
      await this.link.close();
    })();
    return this.closing;
  }

  private async loop(): Promise<void> {
    let failures = 0;
    while (!this.stop.signal.aborted) {
      try {
        await this.session(() => (failures = 0));
      } catch (err) {
        if (this.stop.signal.aborted) break;
        this.options.onError?.(natsError(err, this.where, 'taking messages'));
        await sleep(backoffMs(++failures, 100, 10_000), this.stop.signal);
      }
    }
  }

  /** One consumer session: ends when the consumer or connection fails (or on stop). */
  private async session(healthy: () => void): Promise<void> {
    const nc = await this.link.get();
    const jsm = await jetstreamManager(nc).catch((err: unknown) => {
      throw natsError(err, this.where, 'JetStream does not answer');
    });
    await ensureStream(jsm, this.where, this.address.stream, this.options.settings?.stream);
    const maxAckPending = await this.ensureConsumer(jsm);
    const consumer = await jetstream(nc).consumers.get(this.address.stream, this.options.durable);
    const messages = await consumer.consume({ max_bytes: PULL_BYTES });
    this.messages = messages;
    if (this.stop.signal.aborted) messages.stop();
    const floorTimer = setInterval(() => {
      jsm.consumers.info(this.address.stream, this.options.durable).then(
        (info) => (this.floor = Math.max(this.floor, info.ack_floor.stream_seq)),
        () => undefined,
      );
    }, FLOOR_REFRESH_MS);
    floorTimer.unref();
    // JetStream delivers no more while the consumer's max_ack_pending messages (1000 by default) wait
    // for their acks: a group of at most half of it leaves room for the next one to arrive while it is
    // stored (a group of all of it stalled the reader until its acks went out).
    const batchSize = Math.min(this.options.batchSize ?? 1000, maxAckPending > 0 ? Math.max(1, Math.floor(maxAckPending / 2)) : Infinity);
    let waiting: JsMsg[] = [];
    let waitingBytes = 0;
    let storing: Promise<void> | undefined;
    let failed: unknown;
    // Stores what arrived while the previous group was stored; the reader pauses while too much waits.
    const storeNext = (): void => {
      if (storing !== undefined || waiting.length === 0 || failed !== undefined) return;
      const group = waiting;
      waiting = [];
      waitingBytes = 0;
      storing = this.store(nc, group)
        .then(healthy, (err: unknown) => {
          failed = err;
          messages.stop();
        })
        .finally(() => {
          storing = undefined;
          storeNext();
        });
    };
    try {
      for await (const m of messages) {
        waiting.push(m);
        waitingBytes += m.data.length;
        storeNext();
        while (storing !== undefined && (waiting.length >= batchSize || waitingBytes >= GROUP_BYTES)) await storing;
        if (failed !== undefined) break;
      }
      while (storing !== undefined) await storing;
    } finally {
      clearInterval(floorTimer);
      messages.stop();
      this.messages = undefined;
    }
    if (failed !== undefined) throw natsError(failed, this.where, 'storing messages');
    if (!this.stop.signal.aborted) throw new MqlogError('ERR_PEER_UNREACHABLE', `${this.where}: the consumer ${this.options.durable} stopped delivering`, { details: { url: this.where } });
  }

  /** Creates the durable consumer if it does not exist (explicit acks, all messages, 30 s ack wait). */
  private async ensureConsumer(jsm: JetStreamManager): Promise<number> {
    try {
      const info = await jsm.consumers.info(this.address.stream, this.options.durable);
      this.floor = Math.max(this.floor, info.ack_floor.stream_seq);
      return info.config.max_ack_pending ?? -1;
    } catch (err) {
      if (jsErrorCode(err) === undefined) throw natsError(err, this.where, `cannot look up consumer ${this.options.durable}`);
    }
    try {
      const info = await jsm.consumers.add(this.address.stream, {
        durable_name: this.options.durable,
        ack_policy: AckPolicy.Explicit,
        deliver_policy: DeliverPolicy.All,
        ack_wait: 30 * 1_000_000_000,
        ...(this.options.subject === undefined ? {} : { filter_subject: this.options.subject }),
      });
      return info.config.max_ack_pending ?? -1;
    } catch (err) {
      throw natsError(err, this.where, `cannot create consumer ${this.options.durable}`);
    }
  }

  /**
   * Stores a group of messages (bodies from the object store first), then acks them. A message the node
   * refuses for good is terminated in JetStream and reported; the rest of its group is offered again.
   */
  private async store(nc: NatsConnection, group: readonly JsMsg[]): Promise<void> {
    const entries: Entry[] = [];
    // The same frame twice in a group (a redelivery, or a message published again after the duplicate
    // window) is stored once: the sink recognises frames stored before, not twice within one batch.
    const seen = new Set<string>();
    for (const m of group) {
      const entry = this.classify(m);
      const key = `${entry.group}\n${entry.frame.stream}\n${entry.offset}`;
      if (seen.has(key)) continue;
      seen.add(key);
      entries.push(entry);
    }
    const accepted = new Set<Entry>();
    for (const entry of entries) {
      if (entry.object === undefined) continue;
      try {
        await this.bringBody(nc, entry);
      } catch (err) {
        if (!(err instanceof MqlogError) || err.retryable || err.code === 'ERR_PEER_UNREACHABLE' || err.code === 'ERR_PEER_FAILED') throw err;
        this.refuse(entry, err);
        accepted.add(entry);
      }
    }
    const groups = new Map<string, Entry[]>();
    for (const entry of entries) {
      if (accepted.has(entry)) continue;
      const list = groups.get(entry.group);
      if (list === undefined) groups.set(entry.group, [entry]);
      else list.push(entry);
    }
    await Promise.all([...groups].map(([key, list]) => this.accept(key, list)));
    // Acked without waiting for JetStream to confirm: a lost ack only brings a redelivery, which the
    // sink recognises.
    for (const m of group) if (!this.refused.has(m)) m.ack();
  }

  /** Hands one group to the sink, terminating what it refuses for good. */
  private async accept(group: string, list: Entry[]): Promise<void> {
    let pending = list;
    while (pending.length > 0) {
      try {
        await this.options.sink.accept(this.batch(group, pending.map((e) => e.frame)));
        return;
      } catch (err) {
        const index = err instanceof MqlogError ? err.details?.frame : undefined;
        const refused = typeof index === 'number' ? pending[index] : undefined;
        if (!(err instanceof MqlogError) || err.retryable || refused === undefined) throw err;
        this.refuse(refused, err);
        pending = pending.filter((e) => e !== refused);
      }
    }
  }

  private refuse(entry: Entry, error: MqlogError): void {
    this.refused.add(entry.m);
    entry.m.term();
    this.options.onRefused?.(entry.seq, error);
  }

  private batch(group: string, frames: (ReceivedFrame | ReceivedMessage)[]): IncomingBatch {
    const bySequence = group === SEQUENCE_STREAM;
    return {
      node: bySequence ? this.sequenceNode : group,
      name: this.name,
      // Messages keyed by origin are the same copies whichever consumer takes them: keyed by the stream.
      destination: bySequence ? this.options.durable : this.name,
      frames,
      unordered: { floor: bySequence ? this.floor : -1 },
      peer: undefined,
      remoteAddress: undefined,
    };
  }

  /** What a JetStream message is, and the frame that stores it. */
  private classify(m: JsMsg): Entry {
    const h = readMessageHeaders(m);
    const seq = m.seq;
    const origin = readOrigin(h);
    if (origin !== undefined) {
      if (h.first.get(H.frame) === '1') {
        const framed = this.options.codec.frame(m.data);
        if (framed !== undefined && framed.offset === origin.offset) return { m, seq, offset: origin.offset, group: origin.node, frame: this.frameOf(origin, framed.frame) };
      } else {
        const fields = readFields(h);
        if (fields !== undefined) {
          const ref = readObjectRef(h);
          const message = this.options.codec.message(origin.offset, fields, ref === undefined ? m.data : new Uint8Array(0), ref === undefined ? undefined : { size: ref.size, sha256: ref.sha256 });
          // No spreads (objects slow to read later): this runs for every message.
          const frame = { stream: origin.stream, message, coversFrom: origin.coversFrom };
          return { m, seq, offset: origin.offset, group: origin.node, frame, object: ref === undefined ? undefined : { ref, fields, origin } };
        }
      }
    }
    return { m, seq, offset: seq, group: SEQUENCE_STREAM, frame: { stream: SEQUENCE_STREAM, frame: this.options.codec.adopt(m.data, m.subject, seq, h.first) } };
  }

  private frameOf(origin: NatsOrigin, frame: Buffer): ReceivedFrame {
    return { stream: origin.stream, frame, ...(origin.coversFrom === undefined ? {} : { coversFrom: origin.coversFrom }) };
  }

  /**
   * Stores the body of a message whose body is in the object store, as chunk frames of its sender,
   * a few MiB at a time, reading the object's pieces in order with an ordered consumer.
   * @throws ERR_INVALID_MESSAGE (terminal) when the object is gone; ERR_PEER_* to retry.
   */
  private async bringBody(nc: NatsConnection, entry: Entry): Promise<void> {
    const { ref, fields, origin } = entry.object as NonNullable<Entry['object']>;
    if (ref.size === 0) return;
    const stream = bucketStream(ref.bucket);
    const jsm = await jetstreamManager(nc);
    let nuid: string;
    try {
      const meta = await jsm.streams.getMessage(stream, { last_by_subj: metaSubject(ref.bucket, ref.name) });
      const info = meta?.json<{ nuid?: unknown; deleted?: unknown }>();
      if (info === undefined || typeof info.nuid !== 'string' || info.deleted === true) throw new MqlogError('ERR_INVALID_MESSAGE', `${this.where}: the body of ${fields.id} is not in bucket ${ref.bucket} (deleted or expired)`);
      nuid = info.nuid;
    } catch (err) {
      if (err instanceof MqlogError) throw err;
      if (jsErrorCode(err) !== undefined && jsErrorCode(err) !== 10059) throw natsError(err, this.where, `cannot read the body of ${fields.id}`);
      throw new MqlogError('ERR_INVALID_MESSAGE', `${this.where}: the body of ${fields.id} is not in bucket ${ref.bucket}`, { cause: err });
    }
    const consumer = await jetstream(nc).consumers.get(stream, { filter_subjects: chunkSubject(ref.bucket, nuid) });
    const pieces = await consumer.consume({ max_bytes: GROUP_BYTES });
    let position = 0;
    let frames: ReceivedFrame[] = [];
    let bytes = 0;
    try {
      for await (const piece of pieces) {
        if (piece.data.length > 0 && position < ref.size) {
          frames.push({ stream: OBJECT_STREAM, frame: this.options.codec.chunk(piece.seq, fields, position, piece.data) });
          position += piece.data.length;
          bytes += piece.data.length;
        }
        const last = piece.info.pending === 0 || position >= ref.size;
        if (bytes >= GROUP_BYTES || (last && frames.length > 0)) {
          await this.options.sink.accept({ ...this.batch(origin.node, frames) });
          frames = [];
          bytes = 0;
        }
        if (last || this.stop.signal.aborted) break;
      }
    } finally {
      pieces.stop();
    }
    if (this.stop.signal.aborted) throw new MqlogError('ERR_CLOSED', 'source stopped');
  }
}
