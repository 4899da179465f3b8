/**
 * The outbox: where an application drops messages for other nodes (spec/log-format.md §9), and the one
 * owner of everything about them: its log (through the LogStore), the destinations it ever named, the
 * outbox state (cursors, refusals, expiries: outbox-state.ts), its dead letters and its receipts.
 *
 * send() validates, appends one MESSAGE frame to the stream of the message's priority (`p0`..`p9`) in
 * this process's writer slot, and resolves with the id once the frame is durable. It never touches the
 * network. Any number of processes may send into one outbox at once (each has its own slot), and within
 * a process concurrent sends share fsyncs (group commit).
 *
 * Every destination a message names is also recorded in `outbox/destinations/` before the message is
 * appended, so the forwarder learns of destinations that are URLs rather than configured peers.
 * Opening an outbox writes nothing: its directory is made by the first send.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { MqlogError } from '../errors.js';
import { FrameType } from '../log/frame.js';
import type { ChangeFeed, LogStore, LogWriter, WriterOptions } from '../log/log-store.js';
import { ensureDir, readFileIfExists, readdirIfExists, writeFileAtomic } from '../util/fs.js';
import { newId } from '../util/ids.js';
import { encodeName } from '../util/names.js';
import { createHash } from 'node:crypto';
import { BODY_CHUNK_BYTES, INLINE_BODY_LIMIT, readStreamedBody } from './body.js';
import {
  encodeChunk,
  type BodyPart,
  type StreamedBody,
  DEFAULT_CHANNEL,
  DEFAULT_PRIORITY,
  checkChannel,
  checkHeaders,
  checkPriority,
  encodeMessage,
  MAX_DESTINATIONS,
  type MessageMeta,
  type MessageRecord,
} from './codec.js';
import { DestinationQueue, type DestinationQueueOptions } from './destination-queue.js';
import { ensureQueue, outboxDeadInfo, outboxInfo, type QueueInfo } from './layout.js';
import { OutboxDeadLetters } from './outbox-dead.js';
import { OutboxCounter, type OutboxCounts } from './outbox-counts.js';
import { OutboxState, type DeliveryCounts } from './outbox-state.js';
import { priorityKey } from './priority.js';
import { scanQueue, type QueueEvent, type QueueStat, type ScanQueueOptions } from './queue-scan.js';
import { ReceiptStore, encodeReceiptReport, type ReceiptReport } from './receipts.js';

/** Channel label of receipt messages (they are told apart by their kind, not by this name). */
export const RECEIPT_CHANNEL = '$receipts';

/** Largest streamed body. */
export const MAX_STREAMED_BODY_BYTES = 1024 * 1024 * 1024 * 1024;

export interface OutboxOptions extends WriterOptions {
  /** Where the node's logs are. */
  readonly store: LogStore;
  readonly dataDir: string;
  /** The queue (default: `DIR/outbox`). */
  readonly info?: QueueInfo;
  /** This node's name, stored as `from` in every message. */
  readonly nodeName: string;
  readonly nodeId: string;
  /** This node's own address, carried so that receipts can find their way back. */
  readonly replyTo?: string | undefined;
  /**
   * Checks one destination and returns its canonical form: a configured peer name, or a URL.
   * Throws ERR_UNKNOWN_PEER for anything else.
   */
  readonly resolveDestination: (to: string) => string;
}

export interface SendOptions {
  /** Default `common`. */
  readonly channel?: string;
  /** 0..9, default 4; higher is more urgent. */
  readonly priority?: number;
  /** Not delivered to a consumer once this many ms have passed since sending. */
  readonly ttlMs?: number;
  /** Not delivered to a consumer before this many ms have passed since sending. */
  readonly delayMs?: number;
  readonly headers?: Readonly<Record<string, string>>;
  /** Ask for a "job done" receipt. */
  readonly receipt?: boolean;
}

export class Outbox {
  readonly info: QueueInfo;
  readonly store: LogStore;
  readonly receipts: ReceiptStore;
  readonly deadLetters: OutboxDeadLetters;
  private readonly options: OutboxOptions;
  private loadedState: Promise<OutboxState> | undefined;
  private writer: Promise<LogWriter> | undefined;
  private readonly knownDestinations = new Set<string>();
  /** Files of the destinations directory read so far, by name (destinations()). */
  private readonly destinationNames = new Map<string, string>();
  private closing: Promise<void> | undefined;
  private ordered: Promise<unknown> = Promise.resolve();
  /** Sends waiting in the preparation chain. */
  private preparing = 0;
  /** The writer once claimed, for the synchronous fast path. */
  private claimed: LogWriter | undefined;

  private constructor(options: OutboxOptions) {
    this.options = options;
    this.info = options.info ?? outboxInfo(options.dataDir);
    this.store = options.store;
    this.receipts = new ReceiptStore(options.dataDir);
    this.deadLetters = new OutboxDeadLetters(options.store, outboxDeadInfo(options.dataDir));
  }

  static async open(options: OutboxOptions): Promise<Outbox> {
    return new Outbox(options);
  }

  /**
   * The outbox state as this object holds it (loaded once; the daemon's forwarders keep it current).
   * @throws ERR_CORRUPT_STATE for a damaged cursor file.
   */
  state(): Promise<OutboxState> {
    this.loadedState ??= OutboxState.load(this.info.dir);
    this.loadedState.catch(() => (this.loadedState = undefined));
    return this.loadedState;
  }

  /** One destination's view of the outbox, for its forwarder. */
  async destinationQueue(destination: string, hooks: Pick<DestinationQueueOptions, 'onUndecodable' | 'onRead'> = {}): Promise<DestinationQueue> {
    return new DestinationQueue({ ...hooks, store: this.store, queue: this.info.queue, state: await this.state(), destination });
  }

  /** Every stored message with its state (read from the state files now, not from this object's copy). */
  async *messages(options: ScanQueueOptions = {}, now = Date.now()): AsyncGenerator<QueueEvent> {
    const state = await OutboxState.load(this.info.dir);
    yield* scanQueue(this.store, this.info.queue, (stream, offset, meta) => state.stateOf(stream, offset, meta, now), options);
  }

  /**
   * The queue's counts, and per destination how many messages wait for it (a streamed body counts once)
   * and how many are in each other state: from the outbox summaries and the state files, reading only
   * what no summary describes yet (outbox-counts.ts). Writes summary files for the next caller.
   */
  async stat(now = Date.now()): Promise<{ queue: QueueStat; backlog: Map<string, number>; destinations: ReadonlyMap<string, DeliveryCounts>; state: OutboxState }> {
    const state = await OutboxState.load(this.info.dir);
    const counter = new OutboxCounter(this.store, this.info);
    let counts: OutboxCounts;
    try {
      await counter.refresh();
      counts = await counter.count(state, now, state.destinations());
    } finally {
      await counter.close();
    }
    const backlog = new Map([...counts.destinations].filter(([, c]) => c.pending > 0).map(([d, c]) => [d, c.pending]));
    const usage = await this.store.usage(this.info.queue);
    const queue: QueueStat = { queue: this.info.queue, kind: this.info.kind, channel: this.info.channel, messages: counts.messages, pending: counts.pending, bytes: usage.bytes, segments: usage.segments };
    return { queue, backlog, destinations: counts.destinations, state };
  }

  /** A stored message's body as a stream of buffers (a streamed body chunk by chunk, with flat memory). */
  body(message: MessageRecord): AsyncIterable<Buffer> | Iterable<Buffer> {
    return message.streamed === undefined ? [message.body] : readStreamedBody(this.store, this.info.queue, message.id, message.streamed);
  }

  /** Changes of the outbox's log (appends in this process wake it at once). */
  changes(): ChangeFeed {
    return this.store.changes(this.info.queue);
  }

  /**
   * Appends a message for one destination, or several (multicast: one id, each destination gets it once).
   * Resolves with the message id once the message is durable on the local disk.
   * @throws ERR_INVALID_ARG / ERR_INVALID_NAME for bad options, ERR_UNKNOWN_PEER for an unknown
   *   destination, ERR_BODY_TOO_LARGE, ERR_DISK_FULL, ERR_IO, ERR_CLOSED.
   */
  async send(to: string | readonly string[], body: Uint8Array | string, options: SendOptions = {}): Promise<string> {
    const bytes = typeof body === 'string' ? Buffer.from(body, 'utf8') : body;
    if (bytes.byteLength > INLINE_BODY_LIMIT) return this.sendStream(to, slices(bytes), options);
    const meta = this.prepare(to, options);
    const destinations = meta.to;
    if (meta.receipt === true) return this.appendMessage(meta, bytes, destinations, () => this.receipts.create(meta.id, destinations, meta.ts));
    return this.appendMessage(meta, bytes, destinations);
  }

  /**
   * Sends a body of any size read from `source` (a file stream, say), never holding it whole in memory:
   * it is appended as 1 MiB chunk frames, each durable, then the message frame that names them with the
   * body's size and SHA-256. Resolves with the id once the message frame is durable. If `source` fails,
   * nothing becomes visible (the chunks written are reclaimed by compaction). Each piece `source` yields
   * is copied before the next is asked for: a source may fill one buffer over and over.
   */
  async sendStream(to: string | readonly string[], source: AsyncIterable<Uint8Array>, options: SendOptions = {}): Promise<string> {
    const meta = this.prepare(to, options);
    if (meta.receipt === true) await this.receipts.create(meta.id, meta.to, meta.ts);
    await this.registerDestinations(meta.to);
    const writer = await this.claimWriter();
    const key = priorityKey(meta.priority);
    const hash = createHash('sha256');
    const parts: BodyPart[] = [];
    const inFlight: Promise<void>[] = [];
    let size = 0;
    // Chunk buffers go back here once their append is durable: a body of any size uses a few. New
    // ones for every chunk would each outlive a young-generation GC (they wait for the fsync) and
    // be freed only by full collections, one every few dozen MiB.
    const spare: Buffer[] = [];
    let pending: Buffer = Buffer.allocUnsafe(BODY_CHUNK_BYTES);
    let filled = 0;
    const flush = async (): Promise<void> => {
      if (filled === 0) return;
      const buffer = pending;
      const data = buffer.subarray(0, filled);
      hash.update(data);
      const chunk = encodeChunk({ id: meta.id, position: size, ts: Date.now(), channel: meta.channel, priority: meta.priority, to: meta.to, expiresAt: meta.expiresAt }, data);
      size += filled;
      if (size > MAX_STREAMED_BODY_BYTES) throw new MqlogError('ERR_BODY_TOO_LARGE', `body larger than ${MAX_STREAMED_BODY_BYTES} bytes`);
      pending = spare.pop() ?? Buffer.allocUnsafe(BODY_CHUNK_BYTES);
      filled = 0;
      inFlight.push(
        writer.append(key, FrameType.BODY_CHUNK, chunk).then((result) => {
          const last = parts.at(-1);
          if (last !== undefined && last.stream === result.stream) parts[parts.length - 1] = { ...last, last: result.offset };
          else parts.push({ stream: result.stream, first: result.offset, last: result.offset });
          spare.push(buffer);
        }),
      );
      // A few chunks in flight share fsyncs; more would only hold memory.
      if (inFlight.length >= 4) await inFlight.shift();
    };
    try {
      for await (const piece of source) {
        let at = 0;
        while (at < piece.length) {
          const take = Math.min(piece.length - at, BODY_CHUNK_BYTES - filled);
          pending.set(piece.subarray(at, at + take), filled);
          filled += take;
          at += take;
          if (filled === BODY_CHUNK_BYTES) await flush();
        }
      }
      await flush();
      await Promise.all(inFlight);
    } catch (err) {
      // Let the appends still in flight finish (or fail) before reporting, so none is left unobserved.
      await Promise.allSettled(inFlight);
      throw err;
    }
    const streamed: StreamedBody = { size, sha256: hash.digest('hex'), parts };
    return this.appendMessage({ ...meta, streamed }, Buffer.alloc(0), meta.to);
  }

  /** Validates send options and builds the message fields (id, times, destinations). */
  private prepare(to: string | readonly string[], options: SendOptions): MessageMeta {
    if (this.closing !== undefined) throw new MqlogError('ERR_CLOSED', 'outbox is closed');
    const destinations = this.resolveDestinations(to);
    const channel = options.channel ?? DEFAULT_CHANNEL;
    checkChannel(channel);
    const priority = options.priority ?? DEFAULT_PRIORITY;
    checkPriority(priority);
    if (options.headers !== undefined) checkHeaders(options.headers);
    const ts = Date.now();
    return {
      id: newId(ts),
      ts,
      channel,
      priority,
      to: destinations,
      from: this.options.nodeName,
      node: this.options.nodeId,
      expiresAt: options.ttlMs === undefined ? undefined : ts + checkDuration('ttlMs', options.ttlMs),
      notBefore: options.delayMs === undefined ? undefined : ts + checkDuration('delayMs', options.delayMs),
      headers: options.headers,
      receipt: options.receipt === true ? true : undefined,
      replyTo: options.receipt === true ? this.options.replyTo : undefined,
    };
  }

  /**
   * Reports the outcome of a message that asked for a receipt back to its sender, through this outbox
   * (so the report survives either side being down). `to` is a peer name or URL.
   */
  async sendReceipt(to: string, report: ReceiptReport): Promise<string> {
    if (this.closing !== undefined) throw new MqlogError('ERR_CLOSED', 'outbox is closed');
    const destination = this.options.resolveDestination(to);
    const ts = Date.now();
    const meta: MessageMeta = { id: newId(ts), ts, channel: RECEIPT_CHANNEL, priority: 9, to: [destination], from: this.options.nodeName, node: this.options.nodeId, kind: 'receipt' };
    return this.appendMessage(meta, encodeReceiptReport(report), [destination]);
  }

  /**
   * Appends in the order of the calls (FIFO per priority). Once the writer slot is claimed and the
   * destinations are known, and nothing is still being prepared, the append is queued synchronously;
   * otherwise it waits its turn in the preparation chain.
   */
  private appendMessage(meta: MessageMeta, bytes: Uint8Array, destinations: readonly string[], prepare?: () => Promise<void>): Promise<string> {
    const parts = encodeMessage(meta, bytes);
    const key = priorityKey(meta.priority);
    const writer = this.claimed;
    if (prepare === undefined && this.preparing === 0 && writer !== undefined && destinations.every((d) => this.knownDestinations.has(d))) {
      return writer.append(key, FrameType.MESSAGE, parts).then(() => meta.id);
    }
    this.preparing++;
    const ready = this.ordered.then(async () => {
      await prepare?.();
      await this.registerDestinations(destinations);
      return this.claimWriter();
    });
    this.ordered = ready.catch(() => undefined);
    return ready.then(
      (w) => {
        const appended = w.append(key, FrameType.MESSAGE, parts);
        this.preparing--;
        return appended.then(() => meta.id);
      },
      (err: unknown) => {
        this.preparing--;
        throw err;
      },
    );
  }

  /** Destinations ever named by a message of this outbox (the forwarder's work list). */
  async destinations(): Promise<string[]> {
    return listDestinations(this.options.dataDir, this.destinationNames);
  }

  /** Waits for pending sends and releases the writer slot. Idempotent. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      const writer = this.writer;
      this.writer = undefined;
      this.claimed = undefined;
      if (writer !== undefined) await (await writer.catch(() => undefined))?.close();
      await this.deadLetters.close();
    })();
    return this.closing;
  }

  private resolveDestinations(to: string | readonly string[]): string[] {
    const list = typeof to === 'string' ? [to] : [...to];
    if (list.length === 0) throw new MqlogError('ERR_INVALID_ARG', 'a message needs at least one destination');
    if (list.length > MAX_DESTINATIONS) throw new MqlogError('ERR_INVALID_ARG', `at most ${MAX_DESTINATIONS} destinations`);
    return [...new Set(list.map((d) => this.options.resolveDestination(d)))];
  }

  private claimWriter(): Promise<LogWriter> {
    if (this.writer === undefined) {
      const claiming = ensureQueue(this.info).then(() => this.store.claimWriter(this.info.queue, this.options));
      claiming.then((w) => (this.claimed = w), () => undefined);
      claiming.catch(() => {
        if (this.writer === claiming) this.writer = undefined;
      });
      this.writer = claiming;
    }
    return this.writer;
  }

  private async registerDestinations(destinations: readonly string[]): Promise<void> {
    for (const destination of destinations) {
      if (this.knownDestinations.has(destination)) continue;
      const dir = join(this.info.dir, DESTINATIONS_DIR);
      const path = join(dir, encodeName(destination));
      if ((await readFileIfExists(path)) === undefined) {
        await ensureDir(dir);
        await writeFileAtomic(path, destination);
      }
      this.knownDestinations.add(destination);
    }
  }
}

const DESTINATIONS_DIR = 'destinations';

/** Destinations recorded in an outbox, in name order. */
export async function listDestinations(dataDir: string, known = new Map<string, string>()): Promise<string[]> {
  const dir = join(outboxInfo(dataDir).dir, DESTINATIONS_DIR);
  const found: string[] = [];
  for (const name of await readdirIfExists(dir)) {
    if (name.endsWith('.tmp')) continue;
    // A file's name is its destination's encoded name: what it holds never changes (read once, kept in `known`).
    let destination = known.get(name);
    if (destination === undefined) {
      destination = (await readFile(join(dir, name))).toString('utf8');
      known.set(name, destination);
    }
    found.push(destination);
  }
  return found;
}

function checkDuration(name: string, ms: number): number {
  if (!Number.isSafeInteger(ms) || ms < 0) throw new MqlogError('ERR_INVALID_ARG', `${name} must be a non-negative integer, got ${ms}`);
  return ms;
}

/** A large buffer as a source of slices (no copies). */
async function* slices(bytes: Uint8Array): AsyncGenerator<Uint8Array> {
  for (let at = 0; at < bytes.length; at += BODY_CHUNK_BYTES) yield bytes.subarray(at, at + BODY_CHUNK_BYTES);
}
