/**
 * The forwarder of one destination: streams the outbox to that peer, most urgent first, in batches, and
 * moves the destination's cursor only after the peer's ok (spec/http-protocol.md §6).
 *
 * It wakes on outbox changes (the shared ChangeWatcher, not a polling loop) and catches up on start.
 * Each destination has its own forwarder, cursor and backoff, so a peer that is down or slow never delays
 * another. Frames a peer refuses for good go to `outbox-dead` with the peer's reason; everything else is
 * retried with capped exponential backoff and full jitter.
 */
import { MqlogError } from '../errors.js';
import { FrameType, encodeFrameHeader } from '../log/frame.js';
import type { FileLogStore } from '../log/log-store.js';
import type { StreamPosition } from '../log/stream-reader.js';
import type { ChangeWatcher } from '../log/watch.js';
import { decodeChunk, decodeMessage, decodeMeta, type ChunkMeta, type MessageMeta } from '../queue/codec.js';
import { idTimestamp } from '../util/ids.js';
import { readCursor, writeCursor, type DestinationCursor } from '../queue/cursors.js';
import { deadLetteredKeys, type OutboxDeadLetters } from '../queue/outbox-dead.js';
import { PriorityReader, type QueuedFrame } from '../queue/priority.js';
import type { Transport, WireFrame } from '../transport/transport.js';

export interface ForwarderOptions {
  readonly dataDir: string;
  readonly destination: string;
  readonly url: string;
  readonly nodeId: string;
  readonly nodeName: string;
  readonly store: FileLogStore;
  readonly watcher: ChangeWatcher;
  readonly transport: Transport;
  readonly deadLetters: OutboxDeadLetters;
  readonly maxBatchFrames?: number;
  readonly maxBatchBytes?: number;
  readonly initialBackoffMs?: number;
  readonly maxBackoffMs?: number;
  readonly events?: ForwarderEvents;
}

export interface ForwarderEvents {
  sent?(destination: string, frames: number, bytes: number, durationMs: number, duplicates: number): void;
  failed?(destination: string, error: MqlogError, retryInMs: number): void;
  deadLettered?(destination: string, meta: MessageMeta, reason: string): void;
  expired?(destination: string, meta: MessageMeta): void;
  /** A message reached the destination's inbox (receipt state `sent`). */
  delivered?(destination: string, metas: readonly MessageMeta[]): void;
}

export interface ForwarderStatus {
  readonly destination: string;
  readonly url: string;
  readonly lastError: string | null;
  readonly lastErrorAt: number | null;
  readonly lastSentAt: number | null;
  readonly sentMessages: number;
}

interface BatchItem {
  readonly frame: QueuedFrame;
  /** The message's fields; undefined for a chunk of a streamed body. */
  readonly meta: MessageMeta | undefined;
  readonly about: NonNullable<WireFrame['about']>;
}

interface Prepared {
  readonly taken: readonly QueuedFrame[];
  readonly batch: readonly BatchItem[];
}

const CURSOR_FLUSH_MS = 200;
const STOP_GRACE_MS = 10_000;

export class Forwarder {
  readonly destination: string;
  private readonly options: ForwarderOptions;
  private cursor: DestinationCursor;
  private positions: Record<string, StreamPosition>;
  private reader: PriorityReader | undefined;
  private deadKeys = new Set<string>();
  private readonly stopController = new AbortController();
  /** Aborts an in-flight send when a stop takes too long (the peer hangs). */
  private readonly sendController = new AbortController();
  private running: Promise<void> | undefined;
  private cursorDirty = false;
  private cursorWrittenAt = 0;
  private maxBatchBytes: number;
  private sentMessages = 0;

  private constructor(options: ForwarderOptions, cursor: DestinationCursor) {
    this.options = options;
    this.destination = options.destination;
    this.cursor = cursor;
    this.positions = { ...cursor.streams };
    this.maxBatchBytes = options.maxBatchBytes ?? 8 * 1024 * 1024;
  }

  static async create(options: ForwarderOptions): Promise<Forwarder> {
    const forwarder = new Forwarder(options, await readCursor(options.dataDir, options.destination));
    forwarder.deadKeys = await deadLetteredKeys(options.dataDir, options.destination);
    return forwarder;
  }

  status(): ForwarderStatus {
    return {
      destination: this.destination,
      url: this.options.url,
      lastError: this.cursor.lastError,
      lastErrorAt: this.cursor.lastErrorAt,
      lastSentAt: this.cursor.lastSentAt,
      sentMessages: this.sentMessages,
    };
  }

  start(): void {
    this.running ??= this.run().catch((err: unknown) => {
      // run() only ends by stop(); anything else is a bug worth seeing in the log.
      this.options.events?.failed?.(this.destination, asMqlogError(err), 0);
    });
  }

  /** Lets an in-flight batch finish, saves the cursor, and stops. Idempotent. */
  async stop(): Promise<void> {
    this.stopController.abort(new MqlogError('ERR_CLOSED', 'forwarder stopped'));
    const grace = setTimeout(() => this.sendController.abort(new MqlogError('ERR_CLOSED', 'forwarder stopped')), STOP_GRACE_MS);
    try {
      await this.running;
    } finally {
      clearTimeout(grace);
    }
    await this.reader?.close();
    await this.flushCursor(true);
  }

  private get stopping(): boolean {
    return this.stopController.signal.aborted;
  }

  private async run(): Promise<void> {
    let failures = 0;
    // The next batch, read from disk while the current one is on its way to the peer.
    let prefetched: Promise<Prepared | undefined> | undefined;
    while (!this.stopping) {
      const seen = this.options.watcher.generation;
      let outcome: 'idle' | 'sent';
      try {
        const prepared = await (prefetched ?? this.prepare());
        prefetched = undefined;
        if (prepared === undefined) {
          outcome = 'idle';
        } else {
          prefetched = this.prepare();
          prefetched.catch(() => undefined);
          await this.deliver(prepared);
          outcome = 'sent';
        }
      } catch (err) {
        await prefetched?.catch(() => undefined);
        prefetched = undefined;
        const error = asMqlogError(err);
        if (this.stopping) break;
        failures++;
        const retryInMs = this.backoffMs(failures, error);
        this.cursor = { ...this.cursor, lastError: error.message, lastErrorAt: Date.now() };
        this.cursorDirty = true;
        await this.flushCursor(true).catch(() => undefined);
        this.options.events?.failed?.(this.destination, error, retryInMs);
        // Back to the cursor: what was read ahead (and more urgent messages since) is read again.
        await this.reader?.reset();
        await sleep(retryInMs, this.stopController.signal);
        continue;
      }
      if (outcome === 'sent') {
        failures = 0;
        continue;
      }
      await this.flushCursor(false);
      try {
        await this.options.watcher.changedSince(seen, this.stopController.signal);
      } catch {
        // stopping, or the watcher closed
      }
    }
    await prefetched?.catch(() => undefined);
  }

  /**
   * Reads the next batch for this destination: the frames taken (all move the cursor), those to send,
   * and the segments they came from fdatasync'd. Undefined when nothing is waiting.
   */
  private async prepare(): Promise<Prepared | undefined> {
    this.reader ??= new PriorityReader(this.options.store, (stream) => this.positions[stream] ?? { offset: 0 }, {
      orderOf: sendOrder,
      // Forwarded only once durable here: a frame lost in a power cut after the peer stored it would
      // let this node reuse its offset for another message, which the peer would take for a duplicate.
      durable: true,
    });
    const taken = await this.reader.take(this.options.maxBatchFrames ?? 1000, this.maxBatchBytes);
    if (taken.length === 0) return undefined;
    const now = Date.now();
    const batch: BatchItem[] = [];
    for (const frame of taken) {
      if (frame.type === FrameType.BODY_CHUNK) {
        // A piece of a streamed body: goes where its message goes, unless that message already expired.
        const chunk = safeChunk(frame.payload);
        if (chunk === undefined || !chunk.to.includes(this.destination) || this.deadKeys.has(`${frame.stream}@${frame.offset}`)) continue;
        if (chunk.expiresAt !== undefined && chunk.expiresAt <= now) continue;
        batch.push({ frame, meta: undefined, about: { id: chunk.id, channel: chunk.channel, priority: chunk.priority, position: chunk.position } });
        continue;
      }
      if (frame.type !== FrameType.MESSAGE) continue;
      let meta: MessageMeta;
      try {
        meta = decodeMeta(frame.payload).meta;
      } catch (err) {
        // A frame whose CRC held but whose fields do not decode can never be delivered; keep a record.
        this.options.events?.failed?.(this.destination, asMqlogError(err), 0);
        continue;
      }
      if (!meta.to.includes(this.destination) || this.deadKeys.has(`${frame.stream}@${frame.offset}`)) continue;
      if (meta.expiresAt !== undefined && meta.expiresAt <= now) {
        this.options.events?.expired?.(this.destination, meta);
        continue;
      }
      batch.push({ frame, meta, about: { id: meta.id, channel: meta.channel, priority: meta.priority } });
    }
    return { taken, batch };
  }

  /** Sends a prepared batch (dead-lettering frames the peer refuses for good), then moves the cursor. */
  private async deliver(prepared: Prepared): Promise<void> {
    const { taken } = prepared;
    let batch = prepared.batch;
    let sentSome = false;
    while (batch.length > 0) {
      const started = performance.now();
      try {
        const result = await this.options.transport.send({
          node: this.options.nodeId,
          name: this.options.nodeName,
          destination: this.destination,
          frames: batch.map(({ frame, about }) => ({ stream: frame.stream, frame: [encodeFrameHeader(frame.type, frame.offset, frame.payload), frame.payload], about })),
        }, this.sendController.signal);
        const metas = batch.flatMap((b) => (b.meta === undefined ? [] : [b.meta]));
        this.sentMessages += metas.length;
        this.options.events?.sent?.(this.destination, metas.length, batch.reduce((n, b) => n + b.frame.bytes, 0), performance.now() - started, result.duplicates);
        this.options.events?.delivered?.(this.destination, metas);
        sentSome = true;
        break;
      } catch (err) {
        const error = asMqlogError(err);
        const index = error.details?.frame;
        if (error.code === 'ERR_PEER_REJECTED' && typeof index === 'number' && batch[index] !== undefined) {
          const { frame, meta } = batch[index];
          if (meta === undefined) {
            // A refused chunk: its message will be refused as incomplete, and dead-lettered then.
            this.deadKeys.add(`${frame.stream}@${frame.offset}`);
          } else {
            await this.deadLetter(frame, `${this.destination} refused it: ${error.message}`);
            this.options.events?.deadLettered?.(this.destination, meta, error.message);
          }
          batch = batch.filter((_, i) => i !== index);
          continue;
        }
        if (error.details?.status === 413 && batch.length > 1) {
          // The peer takes smaller requests: halve the batch and send the first half.
          this.maxBatchBytes = Math.max(64 * 1024, Math.floor(this.maxBatchBytes / 2));
          throw error;
        }
        if (error.details?.status === 413 && batch.length === 1 && batch[0] !== undefined) {
          const { frame, meta } = batch[0];
          if (meta === undefined) this.deadKeys.add(`${frame.stream}@${frame.offset}`);
          else {
            await this.deadLetter(frame, `${this.destination} refused it as too large: ${error.message}`);
            this.options.events?.deadLettered?.(this.destination, meta, error.message);
          }
          batch = [];
          continue;
        }
        throw error;
      }
    }
    // Everything taken (sent, skipped, expired or dead-lettered) is behind the cursor now. Only a batch
    // that reached the peer counts as a send (and clears the last error).
    for (const frame of taken) {
      this.positions[frame.stream] = { offset: frame.offset + 1, hint: { segment: frame.segment, position: frame.position, offset: frame.offset } };
    }
    this.cursor = sentSome
      ? { ...this.cursor, streams: this.positions, lastSentAt: Date.now(), lastError: null, lastErrorAt: null }
      : { ...this.cursor, streams: this.positions };
    this.cursorDirty = true;
    await this.flushCursor(false);
  }

  private async deadLetter(frame: QueuedFrame, reason: string): Promise<void> {
    await this.options.deadLetters.append(decodeMessage(frame.payload), { stream: frame.stream, offset: frame.offset, destination: this.destination, node: this.options.nodeId }, reason);
    this.deadKeys.add(`${frame.stream}@${frame.offset}`);
  }

  private async flushCursor(force: boolean): Promise<void> {
    if (!this.cursorDirty) return;
    if (!force && Date.now() - this.cursorWrittenAt < CURSOR_FLUSH_MS) return;
    this.cursorDirty = false;
    this.cursorWrittenAt = Date.now();
    await writeCursor(this.options.dataDir, this.cursor);
  }

  private backoffMs(failures: number, error: MqlogError): number {
    const initial = this.options.initialBackoffMs ?? 100;
    const max = this.options.maxBackoffMs ?? 30_000;
    if (error.details?.status === 413) return 0;
    const ceiling = Math.min(max, initial * 2 ** Math.min(failures - 1, 20));
    // Equal jitter: peers that failed together do not retry together, and no retry comes too soon.
    return Math.round(ceiling / 2 + (Math.random() * ceiling) / 2);
  }
}

function asMqlogError(err: unknown): MqlogError {
  if (err instanceof MqlogError) return err;
  return new MqlogError('ERR_IO', err instanceof Error ? err.message : String(err), { cause: err });
}

/**
 * Order among frames of equal priority: by time written — a message by its id's time, a chunk by its
 * own — so that a long streamed body does not hold back messages sent while it streams.
 */
function sendOrder(frame: { type: number; payload: Buffer }): string {
  try {
    if (frame.type === FrameType.MESSAGE) {
      const { id } = decodeMeta(frame.payload).meta;
      return `${idTimestamp(id).toString(16).padStart(12, '0')}:${id}`;
    }
    if (frame.type === FrameType.BODY_CHUNK) {
      const { meta } = decodeChunk(frame.payload);
      return `${meta.ts.toString(16).padStart(12, '0')}:${meta.id}:${String(meta.position).padStart(16, '0')}`;
    }
  } catch {
    // undecodable frames sort first and are then skipped
  }
  return '';
}

function safeChunk(payload: Buffer): ChunkMeta | undefined {
  try {
    return decodeChunk(payload).meta;
  } catch {
    return undefined;
  }
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const timer = setTimeout(done, ms);
    function done(): void {
      clearTimeout(timer);
      signal.removeEventListener('abort', done);
      resolve();
    }
    signal.addEventListener('abort', done, { once: true });
  });
}
