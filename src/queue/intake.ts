/**
 * What arrives from peers (spec/http-protocol.md §4, §5): the one owner of incoming batches. It checks
 * every frame, recognises what was stored before (the dedup table), stores the new frames in the inbox
 * of their channel and answers only once they are durable; receipt reports go to the outbox's receipts.
 *
 * Every frame is checked before anything is written — CRC (once), lengths, version, type, message
 * fields, channel name, body size — so a bad request stores nothing. The sender name stored with a
 * message is the authenticated peer when there is one, never only the claim in the request.
 *
 * Concurrency contract: batches of one sender may be stored concurrently (a sender keeps several in
 * flight) as long as the ranges they cover differ; a batch that overlaps one still being stored (a retry
 * of it) waits for it, then sees what it stored. A batch with a streamed body's message waits for every
 * batch of its sender stream in flight.
 */
import { createHash, type Hash } from 'node:crypto';
import { MqlogError, isMqlogError } from '../errors.js';
import { FrameType, decodeFrame, payloadLength, tailCrc, withKnownCrc } from '../log/frame.js';
import type { AppendResult, LogStore } from '../log/log-store.js';
import type { Payload } from '../log/frame.js';
import { isStreamName } from '../log/stream-id.js';
import { digestStreamedBody } from './body.js';
import { InboxCopyFields, checkGivenMeta, decodeChunk, decodeMeta, encodeMessage, inboxCopyMessage, inboxCopyPayload, type ChunkMeta, type GivenMeta, type MessageMeta, type Origin } from './codec.js';
import { DedupTable, dedupKey, transferKey } from './dedup-table.js';
import type { Inbox } from './inbox.js';
import { listQueues } from './layout.js';
import { decodeReceiptReport, type ReceiptReport } from './receipts.js';

/** A batch as a transport delivered it. */
export interface IncomingFrames {
  /** Permanent id of the sending node. */
  readonly node: string;
  /** The name the sender claims. */
  readonly name: string;
  /** This node as the sender names it. */
  readonly destination: string;
  /** The peer the transport authenticated, if it authenticates. */
  readonly peer: string | undefined;
  readonly frames: readonly (IncomingFrame | IncomingMessage)[];
  /** Per sender stream, the range of offsets `[from, to)` the batch covers (see dedup-table.ts). */
  readonly covers?: ReadonlyMap<string, { readonly from: number; readonly to: number }> | undefined;
  /** Where the sender takes receipts now, if the transport says (its messages' own replyTo is where it took them when they were sent). */
  readonly replyTo?: string | undefined;
  /**
   * Set by sources that do not deliver in order: duplicates are recognised by exact offset, everything up
   * to `floor` was delivered before, and a frame's `coversFrom` says its sender sends nothing else of that
   * stream from there up to the frame.
   */
  readonly unordered?: { readonly floor: number } | undefined;
  /**
   * The limits this batch is checked against (default: the intake's). A receiver whose limits were
   * reloaded passes those of the server the request came to: a request in flight keeps the limits it
   * started with.
   */
  readonly limits?: IntakeLimits | undefined;
}

/** A frame as it arrived. */
export interface IncomingFrame {
  /** The sender stream it comes from. */
  readonly stream: string;
  readonly frame: Buffer;
  /** For sources that do not deliver in order (see IncomingFrames.unordered). */
  readonly coversFrom?: number | undefined;
}

/**
 * A message a source received as its fields and body rather than as a frame (a JetStream message): its
 * fields are checked as a frame's are, and the one frame stored is made of them.
 */
export interface IncomingMessage {
  readonly stream: string;
  readonly message: { readonly offset: number; readonly fields: GivenMeta; readonly body: Uint8Array; readonly streamed?: GivenMeta['streamed'] };
  readonly coversFrom?: number | undefined;
}

export interface IntakeResult {
  /** Frames stored now (receipt reports applied count as stored). */
  readonly stored: number;
  /** Frames stored before. */
  readonly duplicates: number;
  /** Receipt reports taken but not applied: on a message this node holds no receipt for, or a state it already passed (absent when none). */
  readonly ignored?: number;
}

export interface IntakeLimits {
  readonly maxBodyBytes: number;
  /** Largest streamed body (chunked) accepted. */
  readonly maxStreamedBodyBytes: number;
  readonly maxFrameBytes: number;
  readonly maxHeaders?: number;
  readonly maxHeaderBytes?: number;
  readonly maxChannelBytes?: number;
}

export interface IntakeOptions extends IntakeLimits {
  readonly dataDir: string;
  readonly store: LogStore;
  /** The inbox of a channel (the node's, shared with its consumers). */
  readonly inboxFor: (channel: string) => Promise<Inbox>;
  /**
   * Applies a receipt a peer reported back (durably, before the batch is acknowledged); false when it
   * changed nothing (an unknown message, a state already passed, a report refused).
   */
  readonly onReceipt?: (report: ReceiptReport, from: string, authenticated: boolean) => Promise<boolean>;
  /** Called with the result of every accepted batch. */
  readonly onBatch?: (result: IntakeResult) => void;
  /** Called after messages were stored, per channel. */
  readonly onStored?: (channel: string, count: number, from: string) => void;
  /**
   * Called for each frame of a sender stream whose offsets went back (a lost outbox, a restored backup):
   * at an offset already covered, but new (spec/http-protocol.md §5.1). It is stored, not dropped.
   */
  readonly onDedupGap?: (gap: { readonly node: string; readonly name: string; readonly stream: string; readonly offset: number; readonly id: string }) => void;
}

interface Checked {
  readonly key: string;
  readonly stream: string;
  readonly offset: number;
  /** Set for a MESSAGE frame: its fields, and its payload as it came. */
  readonly message?: MessageMeta;
  readonly payload?: Buffer;
  readonly bodyStart?: number;
  /** Set for a message with an inline body that came as fields and body: the payload of its inbox copy, made when it was checked. */
  readonly copy?: Buffer[];
  readonly receipt?: ReceiptReport | undefined;
  /** Set for a BODY_CHUNK frame. */
  readonly chunk?: { readonly meta: ChunkMeta; readonly data: Buffer };
  readonly index: number;
}

const EMPTY = Buffer.alloc(0);

interface Claim {
  readonly from: number;
  readonly to: number;
  readonly done: Promise<void>;
}

/** A streamed body's SHA-256 so far: of its first `size` bytes, and chunks further on that came early. */
interface RunningDigest {
  readonly hash: Hash;
  size: number;
  /** Chunk data by position, waiting for the chunks before it. */
  readonly early: Map<number, Buffer>;
}

/** Chunk data held for a running digest at most (a few batches of a pipelined sender). */
const EARLY_CHUNK_BYTES = 16 * 1024 * 1024;

export class Intake {
  readonly dedup: DedupTable;
  private options: IntakeOptions;
  /** Running digests of streamed bodies in transit, by transfer. */
  private readonly hashing = new Map<string, RunningDigest>();
  /** Ranges of sender streams being stored now, by key. */
  private readonly claims = new Map<string, Claim[]>();
  private readonly running = new Set<Promise<unknown>>();
  private closing: Promise<void> | undefined;

  private constructor(options: IntakeOptions, dedup: DedupTable) {
    this.options = options;
    this.dedup = dedup;
  }

  /**
   * Replaces the limits a batch that names none is checked against (a reload): those that arrive after
   * this call are checked against the new ones.
   */
  setLimits(limits: IntakeLimits): void {
    this.options = { ...this.options, ...limits };
  }

  /** Opens the dedup table, recovering what the inboxes got since its last checkpoint. */
  static async open(options: IntakeOptions): Promise<Intake> {
    const inboxes = (await listQueues(options.dataDir)).filter((q) => q.kind === 'inbox');
    return new Intake(options, await DedupTable.open(options.dataDir, options.store, inboxes));
  }

  /**
   * Stores a batch; resolves once everything new in it is durable.
   * @throws MqlogError (the request's answer) naming the first bad frame in `details.frame`; nothing is stored then.
   */
  accept(batch: IncomingFrames): Promise<IntakeResult> {
    if (this.closing !== undefined) return Promise.reject(new MqlogError('ERR_CLOSED', 'the node is shutting down'));
    let checked: Checked[];
    try {
      // The dedup key of each sender stream, made once per batch.
      const keys = new Map<string, string>();
      checked = batch.frames.map((wire, index) => this.check(batch, wire, index, keys));
      if (batch.unordered === undefined) checkOrder(checked);
    } catch (err) {
      return Promise.reject(err instanceof Error ? err : new Error(String(err)));
    }
    const run = this.claimed(batch, checked, () => this.store(batch, checked));
    this.running.add(run);
    void run.then(() => this.running.delete(run), () => this.running.delete(run));
    return run;
  }

  /** Waits for batches in flight, writes the dedup checkpoint. Idempotent. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      await Promise.allSettled(this.running);
      await this.dedup.checkpoint();
    })();
    return this.closing;
  }

  private check(batch: IncomingFrames, wire: IncomingFrame | IncomingMessage, index: number, keys: Map<string, string>): Checked {
    const limits = batch.limits ?? this.options;
    try {
      if (!isStreamName(wire.stream)) throw new MqlogError('ERR_BAD_REQUEST', `stream name ${JSON.stringify(wire.stream)} is not valid`);
      if ('message' in wire) return this.checkMessage(batch, wire, index, this.keyOf(batch, wire.stream, keys), limits);
      const decoded = decodeFrame(wire.frame, 0, limits.maxFrameBytes);
      if (!decoded.ok) {
        if (decoded.incomplete) throw new MqlogError('ERR_TRUNCATED_FRAME', `frame is cut short (needs ${decoded.needed} bytes, has ${wire.frame.length})`);
        throw new MqlogError(decoded.code, `frame: ${decoded.reason}`);
      }
      if (decoded.bytes !== wire.frame.length) throw new MqlogError('ERR_BAD_REQUEST', `${wire.frame.length - decoded.bytes} bytes after the frame`);
      const key = this.keyOf(batch, wire.stream, keys);
      checkCovered(batch, wire.stream, decoded.frame.offset);
      if (decoded.frame.type === FrameType.BODY_CHUNK) {
        const chunk = decodeChunk(decoded.frame.payload);
        this.checkChannel(chunk.meta.channel, limits);
        // Its data goes into the inbox copy as it is: that frame's CRC is combined from the one just checked.
        withKnownCrc(chunk.data, tailCrc(wire.frame, wire.frame.length - chunk.data.length));
        return { key, stream: wire.stream, offset: decoded.frame.offset, chunk, index };
      }
      if (decoded.frame.type !== FrameType.MESSAGE) throw new MqlogError('ERR_INVALID_MESSAGE', `frame type ${decoded.frame.type} is neither a message nor a body chunk`);
      const payload = decoded.frame.payload;
      const { meta: message, bodyStart } = decodeMeta(payload);
      this.checkLimits(message, payload.length - bodyStart, limits);
      const receipt = message.kind === 'receipt' ? decodeReceiptReport(payload.subarray(bodyStart)) : undefined;
      return { key, stream: wire.stream, offset: decoded.frame.offset, message, payload, bodyStart, index, ...(receipt === undefined ? {} : { receipt }) };
    } catch (err) {
      if (err instanceof MqlogError) throw new MqlogError(err.code, `frame ${index}: ${err.message}`, { details: { ...err.details, frame: index }, cause: err });
      throw err;
    }
  }

  /** The dedup key of a sender stream of this batch, made once per batch. */
  private keyOf(batch: IncomingFrames, stream: string, keys: Map<string, string>): string {
    let key = keys.get(stream);
    if (key === undefined) {
      key = dedupKey(batch.node, batch.destination, stream);
      keys.set(stream, key);
    }
    return key;
  }

  /**
   * A message that came as fields and body: the same checks as a MESSAGE frame's, and its inbox copy
   * made now (encoded once here, its CRC computed once when it is written), which is what the frame
   * size limit applies to.
   */
  private checkMessage(batch: IncomingFrames, wire: IncomingMessage, index: number, key: string, limits: IntakeLimits): Checked {
    const { offset, fields, body, streamed } = wire.message;
    checkCovered(batch, wire.stream, offset);
    if (!Number.isSafeInteger(offset) || offset < 0) throw new MqlogError('ERR_BAD_REQUEST', `message offset ${offset} is not a safe non-negative integer`);
    const message = checkGivenMeta(fields, streamed);
    this.checkLimits(message, body.length, limits);
    const data = Buffer.from(body.buffer, body.byteOffset, body.byteLength);
    const receipt = message.kind === 'receipt' ? decodeReceiptReport(data) : undefined;
    // Built property by property, no spreads: this runs for every message of a source.
    if (message.streamed !== undefined) return { key, stream: wire.stream, offset, message, payload: EMPTY, bodyStart: 0, index, receipt };
    const copy = inboxCopyMessage(message, data, { from: senderOf(batch), origin: originOf(batch, wire.stream, offset), replyTo: replyToOf(batch, message) });
    const payloadBytes = payloadLength(copy);
    if (payloadBytes > limits.maxFrameBytes) throw new MqlogError('ERR_FRAME_TOO_LARGE', `frame payload of ${payloadBytes} bytes exceeds this node's limit of ${limits.maxFrameBytes}`);
    return { key, stream: wire.stream, offset, message, copy, index, receipt };
  }

  private checkChannel(channel: string, limits: IntakeLimits): void {
    const channelBytes = Buffer.byteLength(channel);
    if (limits.maxChannelBytes !== undefined && channelBytes > limits.maxChannelBytes) {
      throw new MqlogError('ERR_INVALID_NAME', `channel name of ${channelBytes} bytes exceeds this node's limit of ${limits.maxChannelBytes}`);
    }
  }

  private checkLimits(message: MessageMeta, bodyBytes: number, limits: IntakeLimits): void {
    if (message.streamed !== undefined && message.streamed.size > limits.maxStreamedBodyBytes) {
      throw new MqlogError('ERR_BODY_TOO_LARGE', `streamed body of ${message.streamed.size} bytes exceeds this node's limit of ${limits.maxStreamedBodyBytes}`);
    }
    if (bodyBytes > limits.maxBodyBytes) {
      throw new MqlogError('ERR_BODY_TOO_LARGE', `body of ${bodyBytes} bytes exceeds this node's limit of ${limits.maxBodyBytes}`);
    }
    this.checkChannel(message.channel, limits);
    const headers = Object.entries(message.headers ?? {});
    if (limits.maxHeaders !== undefined && headers.length > limits.maxHeaders) {
      throw new MqlogError('ERR_HEADERS_TOO_LARGE', `${headers.length} headers exceed this node's limit of ${limits.maxHeaders}`);
    }
    const headerBytes = headers.reduce((n, [k, v]) => n + Buffer.byteLength(k) + Buffer.byteLength(v), 0);
    if (limits.maxHeaderBytes !== undefined && headerBytes > limits.maxHeaderBytes) {
      throw new MqlogError('ERR_HEADERS_TOO_LARGE', `${headerBytes} bytes of headers exceed this node's limit of ${limits.maxHeaderBytes}`);
    }
  }

  /**
   * Runs `fn` once no batch storing an overlapping range of the same sender streams is in flight, and
   * holds those ranges while it runs.
   */
  private async claimed<T>(batch: IncomingFrames, checked: readonly Checked[], fn: () => Promise<T>): Promise<T> {
    const ranges = new Map<string, { from: number; to: number }>();
    // A streamed body's message waits for every batch of its sender stream in flight: it is checked
    // against the chunks stored before it. Batches of chunks claim their own range only, like any batch:
    // the next one is checked, hashed and queued for writing while the one before waits for its fsync
    // (one group commit for both), and their chunks still land in the order the batches came in, since
    // each batch queues its appends in the same turn it starts storing.
    const whole = checked.some((c) => c.message?.streamed !== undefined);
    for (const c of checked) {
      if (whole) {
        ranges.set(c.key, { from: 0, to: Number.MAX_SAFE_INTEGER });
        continue;
      }
      const cover = batch.unordered === undefined ? batch.covers?.get(c.stream) : undefined;
      const range = ranges.get(c.key) ?? { from: cover?.from ?? (batch.unordered === undefined && cover === undefined ? 0 : c.offset), to: cover?.to ?? c.offset + 1 };
      ranges.set(c.key, { from: Math.min(range.from, c.offset), to: Math.max(range.to, c.offset + 1) });
    }
    for (;;) {
      const blocking = [...ranges].flatMap(([key, r]) => (this.claims.get(key) ?? []).filter((claim) => claim.from < r.to && r.from < claim.to));
      if (blocking.length === 0) break;
      await Promise.allSettled(blocking.map((claim) => claim.done));
    }
    let release!: () => void;
    const done = new Promise<void>((resolve) => (release = resolve));
    const mine = [...ranges].map(([key, r]) => {
      const claim = { ...r, done };
      const list = this.claims.get(key) ?? [];
      list.push(claim);
      this.claims.set(key, list);
      return [key, claim] as const;
    });
    try {
      return await fn();
    } finally {
      for (const [key, claim] of mine) {
        const left = (this.claims.get(key) ?? []).filter((c) => c !== claim);
        if (left.length === 0) this.claims.delete(key);
        else this.claims.set(key, left);
      }
      release();
    }
  }

  /**
   * Keeps a running SHA-256 of a body as its chunks arrive. Batches of a pipelined sender may be taken
   * in another order than they were sent (they come on several connections): a chunk that comes before
   * the ones ahead of it is held (up to EARLY_CHUNK_BYTES) until they have come. Past that, or at a chunk
   * that does not fit, the digest is forgotten, and the body is read back when its message comes.
   */
  private hashAlong(key: string, position: number, data: Buffer): void {
    let running = this.hashing.get(key);
    if (running === undefined) {
      // Met well past its start (its first chunks came before a restart): read back when its message comes.
      if (position >= EARLY_CHUNK_BYTES) return;
      running = { hash: createHash('sha256'), size: 0, early: new Map() };
      this.hashing.set(key, running);
    }
    if (position !== running.size) {
      let held = data.length;
      for (const chunk of running.early.values()) held += chunk.length;
      if (position < running.size || running.early.has(position) || held > EARLY_CHUNK_BYTES) this.hashing.delete(key);
      // A copy: `data` is a view of the request's body, whose buffer is reused once the request is answered.
      else running.early.set(position, Buffer.from(data));
      return;
    }
    // This chunk, then those that came early and follow it.
    for (let next: Buffer | undefined = data; next !== undefined; next = running.early.get(running.size)) {
      running.early.delete(running.size);
      running.hash.update(next);
      running.size += next.length;
    }
  }

  /**
   * Stores the new frames of a batch: body chunks first, then messages (a streamed body is checked
   * against its declared size and SHA-256 before its message is stored), then receipts are applied.
   */
  private async store(batch: IncomingFrames, checked: Checked[]): Promise<IntakeResult> {
    const from = senderOf(batch);
    const fresh = checked.filter((c) => {
      if (!this.dedup.seen(c.key, c.offset)) return true;
      // Only a sender that delivers in offset order (a peer over HTTP) can be judged by its ids: a source
      // that redelivers out of order (JetStream) would have stored copies taken for new messages.
      if (batch.unordered !== undefined) return false;
      const id = c.message?.id ?? c.chunk?.meta.id;
      if (id === undefined) return false;
      const chunk = c.chunk === undefined ? undefined : { transfer: transferKey(batch.node, batch.destination, c.chunk.meta.id), position: c.chunk.meta.position };
      if (!this.dedup.isGap(c.key, id, chunk)) return false;
      this.options.onDedupGap?.({ node: batch.node, name: batch.name, stream: c.stream, offset: c.offset, id });
      return true;
    });
    const origin = (c: Checked): Origin => originOf(batch, c.stream, c.offset);
    const done: Checked[] = [];
    let ignored = 0;
    // Runs stores side by side; each notes in `done` what it stored. Throws the first failure once all ended.
    const settle = async (stores: Promise<void>[]): Promise<void> => {
      const failed = (await Promise.allSettled(stores)).find((r): r is PromiseRejectedResult => r.status === 'rejected');
      if (failed !== undefined) throw failed.reason;
    };
    const run = (items: Checked[], store: (c: Checked) => Promise<void>): Promise<void> =>
      settle(
        items.map(async (c) => {
          await store(c);
          done.push(c);
        }),
      );
    try {
      await run(fresh.filter((c) => c.chunk !== undefined), async (c) => {
        const { meta, data } = c.chunk as NonNullable<Checked['chunk']>;
        const transfer = transferKey(batch.node, batch.destination, meta.id);
        this.hashAlong(transfer, meta.position, data);
        const inbox = await this.options.inboxFor(meta.channel);
        const stored = await inbox.appendChunk({ ...meta, origin: origin(c) }, data);
        this.dedup.wrote(inbox.info.queue, stored.stream, stored.offset, c);
        this.dedup.chunkStored(transfer, meta.position, stored.stream, stored.offset);
      });
      const messages = fresh.filter((c) => c.message !== undefined && c.receipt === undefined);
      const prepared = new Map<Checked, Payload>();
      // The set fields packed once per sender stream of the batch (and with or without replyTo).
      const fieldsOf = new Map<string, InboxCopyFields>();
      const copyOf = (c: Checked, replyTo: string | undefined): Buffer[] => {
        const set = { from, origin: origin(c), replyTo };
        const key = `${replyTo === undefined ? '-' : '+'}${c.stream}`;
        let fields = fieldsOf.get(key);
        if (fields === undefined) fieldsOf.set(key, (fields = new InboxCopyFields(set)));
        return inboxCopyPayload(c.payload as Buffer, set, fields);
      };
      for (const c of messages) {
        // A body that came in the frame stays as it came, bytes and fields alike: only `from` (the sender)
        // and `origin` (where it came from) are set. A streamed body's message is made anew.
        const message = c.message as MessageMeta;
        const replyTo = replyToOf(batch, message);
        const copy = c.copy ?? (message.streamed === undefined ? copyOf(c, replyTo) : await this.streamedPayload(batch, c, from, origin(c), replyTo));
        prepared.set(c, copy);
      }
      // One group commit per inbox stream (channel and priority): one append call, one promise.
      const groups = new Map<string, Checked[]>();
      for (const c of messages) {
        const m = c.message as MessageMeta;
        const group = `${m.priority}:${m.channel}`;
        const list = groups.get(group);
        if (list === undefined) groups.set(group, [c]);
        else list.push(c);
      }
      await settle(
        [...groups.values()].map(async (group) => {
          const first = group[0]?.message as MessageMeta;
          const inbox = await this.options.inboxFor(first.channel);
          let stored: AppendResult[];
          try {
            stored = await inbox.appendMany(first.priority, group.map((c) => prepared.get(c) as Payload));
          } catch (err) {
            // The first frames of the group may be stored (a prefix): remembered below, like the others.
            const count = isMqlogError(err) && typeof err.details?.stored === 'number' ? err.details.stored : 0;
            done.push(...group.slice(0, count));
            throw err;
          }
          // The group went to one stream, in order: its last frame is how far the inbox was written.
          const last = stored[stored.length - 1] as AppendResult;
          this.dedup.wrote(inbox.info.queue, last.stream, last.offset);
          for (const c of group) {
            this.dedup.stored(c.key, c.offset);
            const message = c.message as MessageMeta;
            this.dedup.storedId(c.key, message.id);
            if (message.streamed !== undefined) this.dedup.finishTransfer(transferKey(batch.node, batch.destination, message.id));
            done.push(c);
          }
        }),
      );
      await run(fresh.filter((c) => c.receipt !== undefined), async (c) => {
        if ((await this.options.onReceipt?.(c.receipt as ReceiptReport, from, batch.peer !== undefined)) === false) ignored++;
        this.dedup.storedId(c.key, (c.message as MessageMeta).id);
      });
    } catch (err) {
      // Remember exactly what did get stored, so the retry stores only the rest.
      for (const c of done) {
        this.dedup.stored(c.key, c.offset);
        if (c.message !== undefined) this.dedup.storedId(c.key, c.message.id);
      }
      // Running digests may now include chunks that were not stored: check those bodies by reading back.
      for (const c of fresh) if (c.chunk !== undefined) this.hashing.delete(transferKey(batch.node, batch.destination, c.chunk.meta.id));
      throw err;
    }
    if (batch.unordered !== undefined) {
      // No order to rely on: remember exactly what is stored, and what the source says is behind it.
      for (const c of fresh) this.dedup.stored(c.key, c.offset);
      for (const key of new Set(checked.map((c) => c.key))) this.dedup.cover(key, 0, batch.unordered.floor + 1);
      // A frame that says what its sender skipped before it covers that range too (no gaps left behind).
      for (const c of checked) {
        const coversFrom = batch.frames[c.index]?.coversFrom;
        if (coversFrom !== undefined && coversFrom < c.offset) this.dedup.cover(c.key, coversFrom, c.offset);
      }
    } else {
      const highest = new Map<string, { stream: string; max: number }>();
      for (const c of checked) highest.set(c.key, { stream: c.stream, max: Math.max(highest.get(c.key)?.max ?? -1, c.offset) });
      for (const [key, { stream, max }] of highest) {
        const cover = batch.covers?.get(stream);
        // Without a stated range, the sender had one batch in flight: everything up to its last frame is in.
        this.dedup.cover(key, cover?.from ?? 0, Math.max(cover?.to ?? 0, max + 1));
      }
    }
    const perChannel = new Map<string, number>();
    for (const c of fresh) if (c.message !== undefined && c.receipt === undefined) perChannel.set(c.message.channel, (perChannel.get(c.message.channel) ?? 0) + 1);
    for (const [channel, count] of perChannel) this.options.onStored?.(channel, count, from);
    const result = { stored: fresh.length - ignored, duplicates: checked.length - fresh.length, ...(ignored === 0 ? {} : { ignored }) };
    this.options.onBatch?.(result);
    return result;
  }

  /**
   * The payload of the inbox copy of a streamed body's message: its fields with `from` and `origin` set,
   * and its parts pointing at the chunks as stored here — after checking that they add up to the
   * declared size and SHA-256.
   * @throws ERR_BODY_DIGEST_MISMATCH (with the frame index) when they do not.
   */
  private async streamedPayload(batch: IncomingFrames, c: Checked, from: string, origin: Origin, replyTo: string | undefined): Promise<Payload> {
    const meta = c.message as MessageMeta & { streamed: NonNullable<MessageMeta['streamed']> };
    const key = transferKey(batch.node, batch.destination, meta.id);
    const parts = this.dedup.transferParts(key);
    const inbox = await this.options.inboxFor(meta.channel);
    const running = this.hashing.get(key);
    this.hashing.delete(key);
    // The digest kept while the chunks arrived in order, else (after a restart) read the chunks back.
    const found = running !== undefined && running.size === meta.streamed.size ? { size: running.size, sha256: running.hash.digest('hex') } : await digestStreamedBody(this.options.store, inbox.info.queue, meta.id, parts);
    // Short, and the frame before the message (its last chunk, as a sender writes them) not stored yet: the
    // rest is on its way in a request of a pipelined sender that this one overtook. Answered without
    // naming a frame, so the sender sends the batch again instead of refusing the message.
    if (found.size < meta.streamed.size && c.offset > 0 && !this.dedup.seen(c.key, c.offset - 1)) {
      throw new MqlogError('ERR_BODY_INCOMPLETE', `body of ${meta.id}: ${found.size} of ${meta.streamed.size} bytes stored so far; its last chunks are still on their way`, { details: { id: meta.id } });
    }
    if (found.size !== meta.streamed.size || found.sha256 !== meta.streamed.sha256) {
      throw new MqlogError('ERR_BODY_DIGEST_MISMATCH', `frame ${c.index}: body of ${meta.id} has ${found.size} bytes with SHA-256 ${found.sha256}, the message declares ${meta.streamed.size} bytes with ${meta.streamed.sha256}`, {
        details: { frame: c.index, id: meta.id },
      });
    }
    return encodeMessage({ ...meta, from, origin, ...(replyTo === undefined ? {} : { replyTo }), streamed: { ...meta.streamed, parts } }, EMPTY);
  }
}

/** Where an inbox copy says its message came from. */
function originOf(batch: IncomingFrames, stream: string, offset: number): Origin {
  return { node: batch.node, stream, offset, destination: batch.destination };
}

/** The `from` of the batch's inbox copies: the peer the transport authenticated, else the name the sender gave. */
function senderOf(batch: IncomingFrames): string {
  return batch.peer ?? batch.name;
}

/** A receipt goes back to where the sender takes receipts now, when the batch says where. */
function replyToOf(batch: IncomingFrames, message: MessageMeta): string | undefined {
  return message.receipt === true ? batch.replyTo : undefined;
}

/** @throws ERR_BAD_REQUEST when the batch states the range it covers for `stream` and `offset` lies outside it. */
function checkCovered(batch: IncomingFrames, stream: string, offset: number): void {
  const cover = batch.covers?.get(stream);
  if (cover !== undefined && (offset < cover.from || offset >= cover.to)) {
    throw new MqlogError('ERR_BAD_REQUEST', `frame offset ${offset} lies outside the range [${cover.from}, ${cover.to}) the batch covers`);
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
