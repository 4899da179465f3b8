/**
 * Reading what a consumer claimed (spec/log-format.md §11.2, §11.6): outside the lock, the claimed
 * frames are read — by a reader per stream that usually stands right there already, as claims of one
 * consumer tend to follow each other — made durable, and turned into deliveries; members found expired,
 * delayed or undeliverable are ended by a record in a later transaction, and members whose frames are not
 * found go back at once.
 *
 * Concurrency contract: one caller at a time (the consumer serializes its claims).
 */
import { randomUUID } from 'node:crypto';
import { MqlogError } from '../errors.js';
import { FrameType } from '../log/frame.js';
import type { LogReader, LogStore, StoredFrame } from '../log/log-store.js';
import type { IntervalSet } from '../util/interval-set.js';
import { readStreamedBody } from './body.js';
import { decodeMeta, type MessageMeta, type MessageRecord } from './codec.js';
import type { FrameHint, PositionHint, StateRecord } from './consumer-state.js';
import { ClaimDelivery, type DeliveryOwner, type HeldClaim } from './delivery.js';
import type { HeldClaims } from './held-claims.js';
import type { QueueInfo } from './layout.js';

export interface ClaimReaderOptions {
  readonly store: LogStore;
  readonly info: QueueInfo;
  readonly held: HeldClaims;
  readonly owner: DeliveryOwner;
  readonly now: () => number;
  readonly onSettled?: (meta: MessageMeta, outcome: 'processed' | 'dead' | 'expired', reason?: string) => Promise<void>;
}

/** A claim just made, and what to read of it. */
export interface Claimed {
  readonly claim: HeldClaim;
  readonly members: IntervalSet;
  /** The place of the only member, when known (a message that waited alone). */
  readonly frame: FrameHint | undefined;
}

const CHUNKS: ReadonlySet<number> = new Set([FrameType.BODY_CHUNK]);
/** Bytes of frames one read of claimed messages asks for. */
const READ_BYTES = 4 * 1024 * 1024;
/**
 * Bytes the readers of claims read from a file at a time: about a claim's span of ordinary messages.
 * They are moved to where a claim starts whenever other consumers claimed in between, and what a
 * reader holds ahead is read again after a move.
 */
export const CLAIM_READ_BYTES = 64 * 1024;

export class ClaimReader {
  private readonly options: ClaimReaderOptions;
  private readonly readers = new Map<string, LogReader>();

  constructor(options: ClaimReaderOptions) {
    this.options = options;
  }

  /**
   * Outside the lock: reads the claimed messages, durably, into deliveries (most urgent first, as
   * claimed); members that cannot go out are ended. `ended` counts those.
   */
  async read(claimed: readonly Claimed[]): Promise<{ deliveries: ClaimDelivery[]; ended: number }> {
    const deliveries: ClaimDelivery[] = [];
    let ended = 0;
    const used = new Set<LogReader>();
    const now = this.options.now();
    for (const { claim, members, frame } of claimed) {
      claim.unsettled = members.size;
      // One message read where its claim says it is, unless this stream's reader stands right there.
      const single = frame !== undefined && members.size === 1 && this.readers.get(claim.stream)?.position.offset !== members.first;
      const frames = single ? await this.frameAt(claim.stream, members.first as number, frame) : await this.readRange(claim, members, used);
      for (const stored of frames) {
        if (!members.has(stored.offset)) continue;
        members.removeRange(stored.offset, stored.offset + 1);
        const looked = await this.look(claim, stored, now);
        if ('meta' in looked) {
          deliveries.push(new ClaimDelivery(this.options.owner, claim, looked.meta, stored.payload.subarray(looked.bodyStart), stored.offset, { segment: stored.segment, position: stored.position }));
          continue;
        }
        ended++;
        this.options.held.end(claim, looked.ending);
      }
      // Members whose frames were not found (a write still in progress, or purged and compacted meanwhile)
      // go back at once, no hand-out counted: whoever claims them next looks again.
      for (const [from, to] of members.toPairs()) {
        const back: StateRecord = { k: 'U', s: claim.stream, o: from, t: claim.token, a: now, g: randomUUID(), ...(to === from + 1 ? {} : { e: to }) };
        for (let n = to - from; n > 0; n--) this.options.held.end(claim, n === 1 ? back : undefined);
      }
    }
    // Nothing goes out before its frame is durable (an ack must never outlive its message).
    await Promise.all([...used].map((reader) => reader.sync()));
    return { deliveries, ended };
  }

  async close(): Promise<void> {
    for (const reader of this.readers.values()) await reader.close();
    this.readers.clear();
  }

  /** Reads the frames of a range's members, from a frame before the first one. */
  private async readRange(claim: HeldClaim, members: IntervalSet, used: Set<LogReader>): Promise<StoredFrame[]> {
    const first = members.first;
    const last = members.last;
    if (first === undefined || last === undefined) return [];
    let reader = this.readers.get(claim.stream);
    if (reader === undefined) {
      reader = this.options.store.reader(this.options.info.queue, claim.stream, { offset: first, hint: claim.hint }, { skipTypes: CHUNKS, bufferBytes: CLAIM_READ_BYTES, syncReads: true });
      this.readers.set(claim.stream, reader);
    } else if (reader.position.offset !== first) {
      await reader.seek({ offset: first, hint: claim.hint });
    }
    used.add(reader);
    const frames: StoredFrame[] = [];
    // A reader that stopped at a limit may still hold the zeros that were after the data then: the frames
    // written into them since (skimmed, so there) come with the next read. Looked at a few times.
    for (let ends = 0; ends < 3 && reader.position.offset <= last; ) {
      const read = await reader.read({ maxFrames: last - reader.position.offset + 1, maxBytes: READ_BYTES });
      for (const frame of read.frames) if (frame.offset <= last) frames.push(frame);
      if (read.state !== 'more') ends++;
    }
    return frames;
  }

  private async frameAt(stream: string, offset: number, frame: FrameHint): Promise<StoredFrame[]> {
    const stored = await this.options.store.frameAt(this.options.info.queue, stream, offset, { ...frame, offset });
    if (stored === undefined) return [];
    // Messages of a stream tend to be claimed in order: the next one is read by a reader standing after this one.
    if (!this.readers.has(stream)) {
      const hint = { segment: stored.segment, position: stored.position, offset };
      this.readers.set(stream, this.options.store.reader(this.options.info.queue, stream, { offset: offset + 1, hint }, { skipTypes: CHUNKS, bufferBytes: CLAIM_READ_BYTES, syncReads: true }));
    }
    return [stored];
  }

  /** A claimed message's fields when it can go out now, else the record that ends it. */
  private async look(claim: HeldClaim, frame: StoredFrame, now: number): Promise<{ meta: MessageMeta; bodyStart: number } | { ending: StateRecord }> {
    const { stream, offset } = frame;
    let decoded: { meta: MessageMeta; bodyStart: number };
    try {
      decoded = decodeMeta(frame.payload);
    } catch (err) {
      if (!(err instanceof MqlogError)) throw err;
      // A frame that passed its CRC but holds no valid message cannot be delivered; say why and move on.
      return { ending: { k: 'D', s: stream, o: offset, r: `undeliverable: ${err.message}` } };
    }
    const { meta } = decoded;
    if (meta.expiresAt !== undefined && meta.expiresAt <= now) {
      if (meta.receipt === true) await this.options.onSettled?.(meta, 'expired', 'time to live passed before delivery');
      return { ending: { k: 'X', s: stream, o: offset } };
    }
    if (meta.notBefore !== undefined && meta.notBefore > now) {
      // Put aside alone until it is due, without counting a hand-out.
      return { ending: { k: 'U', s: stream, o: offset, t: claim.token, a: meta.notBefore, i: meta.id, h: [frame.segment, frame.position] } };
    }
    return decoded;
  }

  /** The frames of `members` (one at its place `frame`, or from a frame before them), read by a reader of its own. */
  async readOnce(stream: string, members: IntervalSet, hint: PositionHint | undefined, frame: FrameHint | undefined): Promise<StoredFrame[]> {
    if (frame !== undefined && members.size === 1) return this.frameAt(stream, members.first as number, frame);
    const first = members.first;
    const last = members.last;
    if (first === undefined || last === undefined) return [];
    const reader = this.options.store.reader(this.options.info.queue, stream, { offset: first, hint }, { skipTypes: CHUNKS });
    const frames: StoredFrame[] = [];
    try {
      for (;;) {
        const read = await reader.read({ maxFrames: last - reader.position.offset + 1, maxBytes: READ_BYTES });
        for (const frame of read.frames) if (frame.offset <= last) frames.push(frame);
        if (read.state !== 'more' || reader.position.offset > last) return frames;
      }
    } finally {
      await reader.close();
    }
  }
}

/** The body of a delivered message as a stream of buffers (a streamed body chunk by chunk). */
export function bodyOf(store: LogStore, info: QueueInfo, message: MessageRecord): AsyncIterable<Buffer> {
  return message.streamed === undefined ? once(message.body) : readStreamedBody(store, info.queue, message.id, message.streamed);
}

async function* once(body: Buffer): AsyncGenerator<Buffer> {
  yield body;
}
