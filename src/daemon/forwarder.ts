/**
 * The forwarder of one destination: streams the outbox to that peer, most urgent first, in batches, and
 * moves the destination's cursor only after the peer's ok (spec/http-protocol.md §6).
 *
 * Several batches are in flight at once (up to `maxInFlight`), so that reading the next batch, the
 * network and the peer's fsync overlap; they are settled in the order they were read, and the cursor
 * moves over a batch only once every batch before it was delivered. A failed batch rewinds to the
 * cursor: what was read after it is read again (the peer recognises what it already stored).
 *
 * It wakes on outbox changes (the queue's change feed: at once for appends of this process, through the
 * file watch for others) and catches up on start. Each destination has its own forwarder, cursor and
 * backoff, so a peer that is down or slow never delays another. Frames a peer refuses for good go to
 * `outbox-dead` with the peer's reason; everything else is retried with capped exponential backoff.
 *
 * Its state (`idle`, `sending`, `retrying` with the time of the next attempt) is what `mqlog peers` and
 * the status page show; `retryNow()` cuts a backoff short (an operator's "now"). Everything runs on the
 * event loop: status() and retryNow() may be called at any time, between the run loop's awaits.
 */
import { MqlogError } from '../errors.js';
import type { ChangeFeed } from '../log/index.js';
import type { DestinationQueue, OutgoingBatch, OutgoingItem } from '../queue/destination-queue.js';
import type { MessageAddress } from '../queue/codec.js';
import type { Transport } from '../transport/transport.js';
import { backoffMs, nextTurn, sleep } from '../util/backoff.js';

export interface ForwarderOptions {
  readonly destination: string;
  readonly url: string;
  readonly nodeId: string;
  readonly nodeName: string;
  readonly queue: DestinationQueue;
  readonly feed: ChangeFeed;
  readonly transport: Transport;
  /** Where this node takes receipts now (its daemon's address), sent with every batch; undefined until known. */
  readonly replyTo?: () => string | undefined;
  /** Stores a refused message in the outbox's dead letters. */
  readonly deadLetter: (item: OutgoingItem, reason: string) => Promise<void>;
  readonly maxBatchFrames?: number;
  readonly maxBatchBytes?: number;
  /** Batches in flight at once. */
  readonly maxInFlight?: number;
  /**
   * Bytes in flight at once: a new batch is read only while the batches on their way hold less. Bounds
   * how long a more urgent message waits behind a large transfer.
   */
  readonly maxInFlightBytes?: number;
  /** First delay after a failed batch (doubling per consecutive failure). Default 100. */
  readonly initialBackoffMs?: number;
  /** Cap of the delay after failed batches. Default 30 s. */
  readonly maxBackoffMs?: number;
  readonly events?: ForwarderEvents;
}

/**
 * `idle`: everything for the peer was sent, waiting for the outbox to change; `sending`: batches are on
 * their way; `retrying`: the last attempt failed, waiting until `nextAttemptAt`.
 */
export type ForwarderState = 'idle' | 'sending' | 'retrying';

/** What the forwarder reports, each event after the outbox state recorded it. */
export interface ForwarderEvents {
  /** A batch reached the destination: its messages (not the chunks), and the bytes of every frame sent. */
  sent?(destination: string, messages: readonly OutgoingItem[], bytes: number, durationMs: number, duplicates: number): void;
  failed?(destination: string, error: MqlogError, retryInMs: number): void;
  deadLettered?(destination: string, item: OutgoingItem & { readonly meta: MessageAddress }, reason: string): void;
  expired?(destination: string, expired: { readonly meta: MessageAddress; readonly stream: string; readonly offset: number }): void;
  /** The state changed (from `previous`); status() already reports the new one. */
  stateChanged?(destination: string, state: ForwarderState, previous: ForwarderState): void;
}

export interface ForwarderStatus {
  readonly destination: string;
  readonly url: string;
  readonly lastError: string | null;
  readonly lastErrorAt: number | null;
  readonly lastSentAt: number | null;
  readonly sentMessages: number;
  readonly state: ForwarderState;
  /** When the next attempt is due (ms since the epoch) while `retrying`; null otherwise. */
  readonly nextAttemptAt: number | null;
  /** Consecutive failed attempts (0 after a batch went through). */
  readonly failures: number;
}

/** What reached the peer of one batch. */
interface Sent {
  readonly messages: readonly OutgoingItem[];
  readonly bytes: number;
  readonly durationMs: number;
  readonly duplicates: number;
}

interface InFlight {
  readonly batch: OutgoingBatch;
  /** Resolves with what reached the peer (undefined: nothing); rejects with the reason to rewind. */
  readonly sending: Promise<Sent | undefined>;
  readonly bytes: number;
}

const CURSOR_FLUSH_MS = 200;
const STOP_GRACE_MS = 10_000;
/** Below the receivers' default limit of 4 requests in flight per peer (limits.maxConcurrentRequestsPerPeer). */
const DEFAULT_MAX_IN_FLIGHT = 3;
const DEFAULT_MAX_IN_FLIGHT_BYTES = 8 * 1024 * 1024;
const DEFAULT_MAX_BATCH_BYTES = 4 * 1024 * 1024;
const DEFAULT_MAX_BATCH_FRAMES = 1000;
const DEFAULT_INITIAL_BACKOFF_MS = 100;
const DEFAULT_MAX_BACKOFF_MS = 30_000;
/** The pause before a batch refused as a whole is sent again split: short, but never none (spec/http-protocol.md §6). */
const SPLIT_RETRY_MS = 100;
/**
 * How often one frame, sent alone, may be refused with a 4xx that does not say it is refused for good
 * (a frame the peer calls damaged on the way, a refusal naming no frame) before it is dead-lettered
 * with the peer's reason: a poison frame must not stop its stream forever.
 */
const MAX_SINGLE_FRAME_REFUSALS = 5;
/** 4xx answers that are about the request's credentials or pace, never about the frames: retried, never dead-lettered. */
const NOT_ABOUT_FRAMES = new Set([401, 403, 408, 429]);

export class Forwarder {
  readonly destination: string;
  private readonly options: ForwarderOptions;
  private readonly queue: DestinationQueue;
  private readonly stopController = new AbortController();
  /** Aborts in-flight sends when a stop takes too long (the peer hangs). */
  private readonly sendController = new AbortController();
  private running: Promise<void> | undefined;
  private cursorWrittenAt = 0;
  private maxBatchBytes: number;
  /** Frames per batch now: halved (down to 1) while the peer refuses batches as a whole, restored as they pass. */
  private maxBatchFrames: number;
  /** Refusals of the one frame last sent alone ("stream@offset"), for MAX_SINGLE_FRAME_REFUSALS. */
  private singleRefusals: { readonly frame: string; count: number } | undefined;
  private sentMessages = 0;
  private state: ForwarderState = 'idle';
  private nextAttemptAt: number | null = null;
  private failures = 0;
  /** Ends the current backoff sleep early (retryNow); one per sleep, apart from stop's. */
  private wake: AbortController | undefined;

  constructor(options: ForwarderOptions) {
    this.options = options;
    this.destination = options.destination;
    this.queue = options.queue;
    this.maxBatchBytes = options.maxBatchBytes ?? DEFAULT_MAX_BATCH_BYTES;
    this.maxBatchFrames = options.maxBatchFrames ?? DEFAULT_MAX_BATCH_FRAMES;
  }

  status(): ForwarderStatus {
    return {
      destination: this.destination,
      url: this.options.url,
      ...this.queue.status(),
      sentMessages: this.sentMessages,
      state: this.state,
      nextAttemptAt: this.nextAttemptAt,
      failures: this.failures,
    };
  }

  /**
   * Ends the backoff of a forwarder that is `retrying`: it reads from its cursor and sends at once (the
   * count of failures stays, so a peer still down is not tried in a tight loop). Returns whether it was
   * waiting; when it was idle or sending, nothing changes.
   */
  retryNow(): boolean {
    if (this.state !== 'retrying' || this.wake === undefined || this.wake.signal.aborted) return false;
    this.wake.abort();
    return true;
  }

  start(): void {
    this.running ??= this.run().catch((err: unknown) => {
      // run() only ends by stop(); anything else is a bug worth seeing in the log.
      this.options.events?.failed?.(this.destination, asMqlogError(err), 0);
    });
  }

  /** Lets the batches in flight finish, saves the cursor, and stops. Idempotent. */
  async stop(): Promise<void> {
    this.stopController.abort(new MqlogError('ERR_CLOSED', 'forwarder stopped'));
    const grace = setTimeout(() => this.sendController.abort(new MqlogError('ERR_CLOSED', 'forwarder stopped')), STOP_GRACE_MS);
    try {
      await this.running;
    } finally {
      clearTimeout(grace);
    }
    await this.queue.close();
    await this.queue.flush();
  }

  private get stopping(): boolean {
    return this.stopController.signal.aborted;
  }

  private async run(): Promise<void> {
    let inFlight: InFlight[] = [];
    const maxInFlight = this.options.maxInFlight ?? DEFAULT_MAX_IN_FLIGHT;
    const maxInFlightBytes = this.options.maxInFlightBytes ?? DEFAULT_MAX_IN_FLIGHT_BYTES;
    const bytesInFlight = (): number => inFlight.reduce((n, f) => n + f.bytes, 0);
    while (!this.stopping || inFlight.length > 0) {
      const seen = this.options.feed.generation;
      try {
        // Keep the pipeline full: read the next batches while the earlier ones are on their way, as long
        // as there is more to read (an idle outbox is not read again until it changes).
        let drained = false;
        while (!this.stopping && !drained && inFlight.length < maxInFlight && bytesInFlight() < maxInFlightBytes) {
          const batch = await this.queue.take(this.maxBatchFrames, this.maxBatchBytes);
          drained = batch?.drained ?? true;
          if (batch === undefined) break;
          this.report(batch);
          if (batch.items.length > 0) this.setState('sending');
          const sending = batch.items.length === 0 ? Promise.resolve(undefined) : this.send(batch);
          sending.catch(() => undefined);
          inFlight.push({ batch, sending, bytes: batch.items.reduce((n, item) => n + item.frame.bytes, 0) });
          // The request goes out on a later tick: let it, before reading the next batch on this thread.
          if (batch.items.length > 0) await nextTurn();
        }
        const head = inFlight[0];
        if (head === undefined) {
          if (this.stopping) break;
          this.setState('idle');
          await this.flushCursor(false);
          await this.options.feed.changedSince(seen, this.stopController.signal).catch(() => undefined);
          continue;
        }
        // Read all there was: the head's answer or a change of the outbox, whichever comes first.
        if (drained && !this.stopping && inFlight.length < maxInFlight && (await this.answerOrChange(head, seen)) === 'changed') continue;
        const sent = await head.sending;
        inFlight.shift();
        this.queue.delivered(head.batch, sent !== undefined);
        if (sent !== undefined) this.options.events?.sent?.(this.destination, sent.messages, sent.bytes, sent.durationMs, sent.duplicates);
        this.failures = 0;
        await this.flushCursor(false);
      } catch (err) {
        // Whatever was in flight may still land at the peer; it recognises it when it comes again.
        await Promise.allSettled(inFlight.map((f) => f.sending));
        inFlight = [];
        await this.queue.rewind();
        const error = asMqlogError(err);
        if (this.stopping) break;
        this.failures++;
        // A batch refused as a whole is sent again split: soon, but never at once (no loop without backoff).
        const retryInMs =
          error.details?.split === true
            ? SPLIT_RETRY_MS
            : backoffMs(this.failures, this.options.initialBackoffMs ?? DEFAULT_INITIAL_BACKOFF_MS, this.options.maxBackoffMs ?? DEFAULT_MAX_BACKOFF_MS);
        this.queue.noteError(error.message);
        await this.flushCursor(true).catch(() => undefined);
        const wake = new AbortController();
        this.wake = wake;
        this.setState('retrying', Date.now() + retryInMs);
        this.options.events?.failed?.(this.destination, error, retryInMs);
        await sleep(retryInMs, AbortSignal.any([this.stopController.signal, wake.signal]));
        this.wake = undefined;
        // Reading again from the cursor: sending (or idle at once when nothing is left for the peer).
        this.setState('sending');
      }
    }
    await this.flushCursor(true);
  }

  private setState(state: ForwarderState, nextAttemptAt: number | null = null): void {
    const previous = this.state;
    this.nextAttemptAt = nextAttemptAt;
    if (previous === state) return;
    this.state = state;
    this.options.events?.stateChanged?.(this.destination, state, previous);
  }

  private async answerOrChange(head: InFlight, seen: number): Promise<'answered' | 'changed'> {
    const waiting = new AbortController();
    const changed = this.options.feed.changedSince(seen, AbortSignal.any([waiting.signal, this.stopController.signal])).then(
      () => 'changed' as const,
      () => 'answered' as const,
    );
    try {
      return await Promise.race([head.sending.then(() => 'answered' as const, () => 'answered' as const), changed]);
    } finally {
      waiting.abort();
    }
  }

  /** Expired messages found in a batch (recorded as such when read) are reported once. */
  private report(batch: OutgoingBatch): void {
    for (const expired of batch.expired) this.options.events?.expired?.(this.destination, expired);
  }

  /**
   * Sends a batch, dead-lettering frames the peer refuses for good (and sending the rest again).
   * Resolves with what reached the peer; rejects when the batch must be read again.
   */
  private async send(batch: OutgoingBatch): Promise<Sent | undefined> {
    let items = batch.items;
    while (items.length > 0) {
      const started = performance.now();
      try {
        const result = await this.options.transport.send(
          {
            node: this.options.nodeId,
            name: this.options.nodeName,
            destination: this.destination,
            // The frames exactly as stored: no re-encoding, no copy.
            frames: items.map(({ frame, about }) => ({ stream: frame.stream, frame: frame.raw, about })),
            covers: Object.fromEntries([...batch.covers].map(([stream, r]) => [stream, [r.from, r.to] as const])),
            replyTo: this.options.replyTo?.(),
          },
          this.sendController.signal,
        );
        const messages = items.filter((item) => item.meta !== undefined);
        this.sentMessages += messages.length;
        this.singleRefusals = undefined;
        // Batches pass again: let them grow back towards the configured size.
        this.maxBatchFrames = Math.min(this.options.maxBatchFrames ?? DEFAULT_MAX_BATCH_FRAMES, this.maxBatchFrames * 2);
        this.maxBatchBytes = Math.min(this.options.maxBatchBytes ?? DEFAULT_MAX_BATCH_BYTES, this.maxBatchBytes * 2);
        return { messages, bytes: items.reduce((n, item) => n + item.frame.bytes, 0), durationMs: performance.now() - started, duplicates: result.duplicates };
      } catch (err) {
        const error = asMqlogError(err);
        const index = error.details?.frame;
        const refused = typeof index === 'number' ? items[index] : undefined;
        if (error.code === 'ERR_PEER_REJECTED' && refused !== undefined) {
          await this.refuse(refused, `${this.destination} refused it: ${error.message}`);
          items = items.filter((item) => item !== refused);
          continue;
        }
        const status = error.details?.status;
        if (typeof status !== 'number' || status < 400 || status >= 500 || NOT_ABOUT_FRAMES.has(status)) throw error;
        // Refused for what the request holds. Several frames: split the batch (down to one frame) to find
        // the one refused, and send again after a short pause.
        if (items.length > 1) {
          const bytes = items.reduce((n, item) => n + item.frame.bytes, 0);
          this.maxBatchFrames = Math.max(1, Math.floor(items.length / 2));
          this.maxBatchBytes = Math.max(1, Math.min(this.maxBatchBytes, Math.floor(bytes / 2)));
          throw new MqlogError(error.code, error.message, { details: { ...error.details, split: true }, cause: error });
        }
        const only = items[0];
        if (only === undefined) throw error;
        // One frame refused as too large, or refused again and again: dead-lettered with the peer's reason.
        const frame = `${only.frame.stream}@${only.frame.offset}`;
        this.singleRefusals = this.singleRefusals?.frame === frame ? this.singleRefusals : { frame, count: 0 };
        this.singleRefusals.count++;
        if (status === 413 || this.singleRefusals.count >= MAX_SINGLE_FRAME_REFUSALS) {
          this.singleRefusals = undefined;
          await this.refuse(only, `${this.destination} refused it${status === 413 ? ' as too large' : ` ${MAX_SINGLE_FRAME_REFUSALS} times`}: ${error.message}`);
          items = [];
          continue;
        }
        throw error;
      }
    }
    return undefined;
  }

  private async refuse(item: OutgoingItem, reason: string): Promise<void> {
    // A refused chunk: its message will be refused as incomplete, and dead-lettered then.
    if (item.meta !== undefined) await this.options.deadLetter(item, reason);
    this.queue.refused(item);
    if (item.meta !== undefined) this.options.events?.deadLettered?.(this.destination, { ...item, meta: item.meta }, reason);
  }

  private async flushCursor(force: boolean): Promise<void> {
    if (!force && Date.now() - this.cursorWrittenAt < CURSOR_FLUSH_MS) return;
    this.cursorWrittenAt = Date.now();
    await this.queue.flush();
  }
}

function asMqlogError(err: unknown): MqlogError {
  if (err instanceof MqlogError) return err;
  return new MqlogError('ERR_IO', err instanceof Error ? err.message : String(err), { cause: err });
}
