/**
 * One destination's view of the outbox (spec/http-protocol.md §6): the frames to forward to it, most
 * urgent first, read from its cursor in the outbox state, and the bookkeeping of what happened to them.
 *
 * A batch is what one `take` read: the frames to send (messages for this destination and the chunks of
 * their streamed bodies, exactly as stored), and per stream the range of offsets it passed — frames for
 * other destinations, expired ones and refused ones included. Batches are handed out in order and must
 * be settled in that order: `delivered` moves the destination's cursor past a batch once the peer has
 * it; `rewind` goes back to the cursor after a failure (what was taken after it is read again).
 *
 * Each frame's fields are decoded once, when it is read. Frames are handed out only once durable here.
 * One caller (the destination's forwarder) at a time.
 */
import type { LogStore, StoredFrame, StreamPosition } from '../log/log-store.js';
import { FrameType } from '../log/frame.js';
import { idTimestamp } from '../util/ids.js';
import { decodeAddress, decodeChunk, type ChunkMeta, type MessageAddress } from './codec.js';
import type { OutboxState } from './outbox-state.js';
import { PriorityReader } from './priority.js';

/** A frame to forward, with what a transport may need without decoding it. */
export interface OutgoingItem {
  readonly frame: StoredFrame;
  /** Where the message goes and what it is (decodeAddress); undefined for a chunk of a streamed body. */
  readonly meta: MessageAddress | undefined;
  readonly about: { readonly id: string; readonly channel: string; readonly priority: number; readonly position?: number };
}

export interface OutgoingBatch {
  readonly items: OutgoingItem[];
  /**
   * Per stream the offsets this batch passed, `[from, through.offset)`: every frame for the destination
   * in that range is among `items` (or was refused or had expired).
   */
  readonly streams: ReadonlyMap<string, { readonly from: number; readonly through: StreamPosition }>;
  /**
   * Per stream with frames in `items`, the offsets `[from, to)` the receiver may take as covered once it
   * stored the batch: every frame for this destination in that range is in `items`, or was refused or
   * had expired (it starts where the last batch sent with frames of that stream ended).
   */
  readonly covers: ReadonlyMap<string, { readonly from: number; readonly to: number }>;
  /** Messages for this destination found expired (never sent), recorded as such. */
  readonly expired: readonly { readonly meta: MessageAddress; readonly stream: string; readonly offset: number }[];
  /** Frames read, whatever became of them. */
  readonly taken: number;
  /** Nothing more was ready when it was read: the next take finds only what is appended since. */
  readonly drained: boolean;
}

type Described = { readonly kind: 'message'; readonly meta: MessageAddress } | { readonly kind: 'chunk'; readonly chunk: ChunkMeta } | { readonly kind: 'other' };

export interface DestinationQueueOptions {
  readonly store: LogStore;
  readonly queue: string;
  readonly state: OutboxState;
  readonly destination: string;
  /** A frame whose fields do not decode: it can never be forwarded (reported, then passed). */
  readonly onUndecodable?: (stream: string, offset: number, reason: string) => void;
  /**
   * Every frame as it is read (in offset order per stream; again after a rewind), with a message's
   * address when it decoded: for a counter that would otherwise read the same frames (OutboxCounter.observe).
   */
  readonly onRead?: (frame: StoredFrame, address: MessageAddress | undefined) => void;
}

export class DestinationQueue {
  readonly destination: string;
  private readonly options: DestinationQueueOptions;
  private reader: PriorityReader<Described> | undefined;
  /** Where the next batch starts, per stream (the cursor, or the end of the last batch taken). */
  private readonly next = new Map<string, number>();
  /** Where the next batch with frames of a stream covers from (the end of the last such batch). */
  private readonly coveredTo = new Map<string, number>();

  constructor(options: DestinationQueueOptions) {
    this.options = options;
    this.destination = options.destination;
  }

  private get cursor() {
    return this.options.state.cursor(this.destination);
  }

  /** Reads the next batch; undefined when nothing is waiting. */
  async take(maxFrames: number, maxBytes: number, now = Date.now()): Promise<OutgoingBatch | undefined> {
    this.reader ??= new PriorityReader<Described>(this.options.store, this.options.queue, (stream) => this.cursor.positionOf(stream), {
      describe: (frame) => {
        const described = describe(frame, this.options.onUndecodable);
        this.options.onRead?.(frame, described.info.kind === 'message' ? described.info.meta : undefined);
        return described;
      },
      // Forwarded only once durable here: a frame lost in a power cut after the peer stored it would
      // let this node reuse its offset for another message, which the peer would take for a duplicate.
      durable: true,
      onePriorityPerTake: true,
      // Frames live until their batch is sent (a bounded number of batches in flight).
      lend: true,
      // What it forwards was appended moments ago: in the page cache, read without thread-pool round trips.
      syncReads: true,
    });
    const taken = await this.reader.take(maxFrames, maxBytes);
    if (taken.length === 0) return undefined;
    const cursor = this.cursor;
    const items: OutgoingItem[] = [];
    const expired: { meta: MessageAddress; stream: string; offset: number }[] = [];
    /** The last frame taken of each stream: the batch goes through it. */
    const lastOf = new Map<string, StoredFrame>();
    for (const { frame, info } of taken) {
      lastOf.set(frame.stream, frame);
      if (info.kind === 'other') continue;
      const to = info.kind === 'message' ? info.meta.to : info.chunk.to;
      if (!to.includes(this.destination)) continue;
      const state = cursor.stateOf(frame.stream, frame.offset, info.kind === 'message' ? info.meta : info.chunk, now);
      if (state === 'dead') continue;
      if (state === 'expired') {
        // Recorded at once: an expiry is final whatever becomes of the rest of the batch. Reported once,
        // however often the frame is read again (after a rewind, or a restart before the cursor passed it).
        if (cursor.markExpired(frame.stream, frame.offset) && info.kind === 'message') expired.push({ meta: info.meta, stream: frame.stream, offset: frame.offset });
        continue;
      }
      items.push(
        info.kind === 'message'
          ? { frame, meta: info.meta, about: { id: info.meta.id, channel: info.meta.channel, priority: info.meta.priority } }
          : { frame, meta: undefined, about: { id: info.chunk.id, channel: info.chunk.channel, priority: info.chunk.priority, position: info.chunk.position } },
      );
    }
    const streams = new Map<string, { from: number; through: StreamPosition }>();
    for (const [stream, frame] of lastOf) {
      streams.set(stream, { from: this.next.get(stream) ?? cursor.offsetOf(stream), through: after(frame) });
      this.next.set(stream, frame.offset + 1);
    }
    const covers = new Map<string, { from: number; to: number }>();
    for (const item of items) {
      const stream = item.frame.stream;
      if (covers.has(stream)) continue;
      const to = (streams.get(stream) as { through: StreamPosition }).through.offset;
      covers.set(stream, { from: this.coveredTo.get(stream) ?? cursor.offsetOf(stream), to });
      this.coveredTo.set(stream, to);
    }
    return { items, streams, covers, expired, taken: taken.length, drained: this.reader.drained };
  }

  /** The destination's last success and error, for stat and the status page. */
  status(): { lastSentAt: number | null; lastError: string | null; lastErrorAt: number | null } {
    const { lastSentAt, lastError, lastErrorAt } = this.cursor;
    return { lastSentAt, lastError, lastErrorAt };
  }

  /**
   * The peer has the batch (or nothing of it was for it): the cursor moves past it. The batch's frames
   * are let go: their bytes must not be used after this.
   */
  delivered(batch: OutgoingBatch, sentSomething: boolean): void {
    const cursor = this.cursor;
    for (const [stream, { through }] of batch.streams) cursor.advance(stream, through);
    if (sentSomething) cursor.noteSent();
    this.reader?.release(batch.items.map((item) => item.frame));
  }

  /** The peer refused a frame for good: it is recorded dead for this destination (never sent again). */
  refused(item: OutgoingItem): void {
    this.cursor.markDead(item.frame.stream, item.frame.offset);
  }

  noteError(message: string): void {
    this.cursor.noteError(message);
  }

  /** Back to the cursor: what was taken since (and more urgent frames that came meanwhile) is read again. */
  async rewind(): Promise<void> {
    this.next.clear();
    this.coveredTo.clear();
    await this.reader?.reset();
  }

  /** Writes the cursor if it changed (durable when it resolves). */
  flush(): Promise<void> {
    return this.options.state.flush(this.destination);
  }

  async close(): Promise<void> {
    await this.reader?.close();
  }
}

function after(frame: StoredFrame): StreamPosition {
  return { offset: frame.offset + 1, hint: { segment: frame.segment, position: frame.position, offset: frame.offset } };
}

/**
 * A frame's fields, and its order among frames of equal priority (in other writer slots): by time
 * written — a message by its id's time, a chunk by its own — so that a long streamed body does not hold
 * back messages sent while it streams; within a millisecond, by id (ids rise with time).
 */
function describe(frame: StoredFrame, onUndecodable: DestinationQueueOptions['onUndecodable']): { order: number; tie?: string; info: Described } {
  try {
    if (frame.type === FrameType.MESSAGE) {
      const meta = decodeAddress(frame.payload);
      return { order: idTimestamp(meta.id), tie: meta.id, info: { kind: 'message', meta } };
    }
    if (frame.type === FrameType.BODY_CHUNK) {
      const { meta } = decodeChunk(frame.payload);
      return { order: meta.ts, tie: `${meta.id}:${String(meta.position).padStart(16, '0')}`, info: { kind: 'chunk', chunk: meta } };
    }
  } catch (err) {
    // A frame whose CRC held but whose fields do not decode can never be delivered; keep a record.
    onUndecodable?.(frame.stream, frame.offset, err instanceof Error ? err.message : String(err));
  }
  return { order: 0, info: { kind: 'other' } };
}
