/**
 * Consuming a queue with leases (spec/log-format.md §11): messages are handed out most urgent first,
 * each to one consumer at a time across processes, for `visibilityTimeoutMs`. An ack makes a message done;
 * a nack, a lapsed lease or a crashed consumer makes it ready again; after `maxDeliveries` hand-outs it
 * goes to the dead letters. TTL (`expiresAt`) and delay (`notBefore`) are honoured at hand-out time.
 *
 * Each Consumer scans the queue forward from the first message not done ("frontier"), keeping in memory
 * only what is in flight: leases and retries come from the shared journal, delayed messages from a
 * bounded local list. Acks and nacks of one process are group-committed: one lock and one fsync for all
 * that arrived meanwhile.
 */
import { randomUUID } from 'node:crypto';
import { MqlogError } from '../errors.js';
import { FrameType } from '../log/frame.js';
import type { ChangeFeed, LogStore, StoredFrame } from '../log/log-store.js';
import { scanStream } from '../log/stream-scan.js';
import type { ConsumerState, FrameHint, StateRecord } from './acks.js';
import { readStreamedBody } from './body.js';
import { decodeMessage, decodeMeta, type MessageMeta, type MessageRecord } from './codec.js';
import type { ConsumerJournal } from './consumer-journal.js';
import type { QueueInfo } from './layout.js';
import { PriorityReader, priorityOfKey, type QueuedFrame } from './priority.js';

/** What the scan decoded of a frame: its fields and where its body starts, or why it cannot be read. */
type Decoded = { readonly meta: MessageMeta; readonly bodyStart: number } | { readonly error: MqlogError } | undefined;

export const DEFAULT_VISIBILITY_TIMEOUT_MS = 30_000;
export const DEFAULT_MAX_DELIVERIES = 5;
/**
 * Messages a consumer leases ahead by default: enough to amortise a transaction, few enough that
 * consumers of one channel take turns at a backlog.
 */
export const DEFAULT_PREFETCH = 128;
/** Delayed messages remembered per consumer; beyond it the scan pauses until some come due. */
const MAX_DEFERRED = 10_000;
/** Frames one take() may scan past without finding enough ready messages (bounds its time). */
const SCAN_BUDGET_FRAMES = 50_000;

/** A message handed to a consumer. Ack it when done; nack it to have it back later. */
export interface Delivery extends MessageRecord {
  readonly stream: string;
  readonly offset: number;
  /** How many times the message was handed out, this time included. */
  readonly deliveries: number;
  /**
   * The lease lapses at this time (ms since epoch) unless acked, nacked or renewed before. The consumer
   * renews the lease of every message it handed out until it is acked or nacked (see ConsumerOptions.renewLeases).
   */
  readonly leaseUntil: number;
  /**
   * Marks the message done, durably (fsync'd) before resolving.
   * @throws ERR_LEASE_EXPIRED if the lease lapsed and the message was handed to someone else;
   *   ERR_ALREADY_ACKED if it was acked already.
   */
  ack(): Promise<void>;
  /**
   * Renews the lease: it now lapses `ms` from now (default: the visibility timeout), durably.
   * @throws ERR_LEASE_EXPIRED if the lease lapsed already and the message was handed out again.
   */
  extend(ms?: number): Promise<void>;
  /** Gives the message back: ready again after `delayMs` (default 0). `reason` is kept for the dead letters. */
  nack(options?: { delayMs?: number; reason?: string }): Promise<void>;
  /**
   * The body as a stream of buffers. For a streamed (large) body — `streamed` is set and `body` is
   * empty — this is the only way to read it; memory stays flat whatever its size.
   */
  bodyStream(): AsyncIterable<Buffer>;
}

/** A ready message as peek() lists it: not leased, nothing to ack. */
export interface PeekedMessage extends MessageRecord {
  readonly stream: string;
  readonly offset: number;
  /** Hand-outs so far (0 for a message never handed out). */
  readonly deliveries: number;
  bodyStream(): AsyncIterable<Buffer>;
}

export interface ConsumerOptions {
  readonly visibilityTimeoutMs?: number;
  readonly maxDeliveries?: number;
  /**
   * Stores a message in the dead letters; called under the state lock before the message is marked
   * dead, so a crash in between can at worst store it twice, never lose it.
   */
  readonly deadLetter?: (message: MessageRecord, origin: { stream: string; offset: number }, reason: string) => Promise<void>;
  /**
   * Called for a message that asked for a receipt when it ends (acked, dead-lettered, expired), under the
   * state lock before that end is recorded: a crash in between repeats the report, never loses it.
   */
  readonly onSettled?: (meta: MessageMeta, outcome: 'processed' | 'dead' | 'expired', reason?: string) => Promise<void>;
  readonly now?: () => number;
  /**
   * Renew the lease of every message handed out and not yet acked or nacked, before it lapses (default
   * true): work may take longer than the visibility timeout, and only a consumer that stops (or dies)
   * lets its messages come back.
   */
  readonly renewLeases?: boolean;
}

/** Options of Consumer.messages(). */
export interface MessagesOptions {
  readonly follow?: boolean;
  readonly limit?: number;
  readonly idleTimeoutMs?: number;
  /** At most this many messages leased ahead of the caller (default 128); fewer when the caller is slow. */
  readonly prefetch?: number;
  readonly signal?: AbortSignal;
  readonly feed?: ChangeFeed;
}

/** Messages leased ahead of a messages() caller: reserved for it, not yet handed out. */
interface Reserve {
  readonly items: Delivery[];
  /** When the caller last took a message (or the reserve was filled). */
  lastHandOut: number;
}

/** A reserve holds at most this much of the caller's work ahead (at its measured pace): others get the rest. */
const RESERVE_WORK_MS = 1000;

interface Candidate {
  readonly stream: string;
  readonly offset: number;
  readonly priority: number;
  readonly id: string;
  readonly hint: FrameHint;
  /** The frame, with its decoded fields, when it was just read by the scan. */
  readonly frame?: StoredFrame;
  readonly decoded?: { readonly meta: MessageMeta; readonly bodyStart: number };
  readonly notBefore?: number;
}

interface PendingSettle {
  readonly delivery: Delivery;
  readonly ref: { stream: string; offset: number; token: string };
  /** Set for an ack of a message that asked for a receipt. */
  readonly receiptOf?: MessageMeta;
  readonly record: StateRecord;
  readonly resolve: () => void;
  readonly reject: (err: unknown) => void;
}

export class Consumer {
  readonly info: QueueInfo;
  private readonly store: LogStore;
  private readonly journal: ConsumerJournal;
  private readonly visibilityTimeoutMs: number;
  private readonly maxDeliveries: number;
  private readonly deadLetter: ConsumerOptions['deadLetter'];
  private readonly onSettled: ConsumerOptions['onSettled'];
  private readonly now: () => number;
  private readonly reader: PriorityReader<Decoded>;
  /** Scanned but not yet handed out (checked again next time). */
  private pushback: Candidate[] = [];
  /** Frames read ahead outside the lock, not yet looked at against the state. */
  private scanned: QueuedFrame<Decoded>[] = [];
  /** lease() calls, one at a time (they share the reader and the read-ahead). */
  private leasing: Promise<unknown> = Promise.resolve();
  /** Scanned messages whose notBefore lies ahead. */
  private deferred: Candidate[] = [];
  private settles: PendingSettle[] = [];
  private settling: Promise<void> | undefined;
  /** Handed-out messages whose leases are renewed until they are settled (each knows its own leaseUntil). */
  private readonly held = new Set<Delivery>();
  private readonly reserves = new Set<Reserve>();
  private readonly renewLeases: boolean;
  private renewTimer: NodeJS.Timeout | undefined;
  private closed = false;

  constructor(store: LogStore, info: QueueInfo, journal: ConsumerJournal, options: ConsumerOptions = {}) {
    this.store = store;
    this.info = info;
    this.journal = journal;
    this.visibilityTimeoutMs = options.visibilityTimeoutMs ?? DEFAULT_VISIBILITY_TIMEOUT_MS;
    this.maxDeliveries = options.maxDeliveries ?? DEFAULT_MAX_DELIVERIES;
    this.deadLetter = options.deadLetter;
    this.onSettled = options.onSettled;
    this.now = options.now ?? Date.now;
    this.renewLeases = options.renewLeases ?? true;
    // A message is handed out only once its frame is durable: an ack must never outlive its message.
    // The sync runs while the lease transaction does (see leaseNow); a lease of a frame a power cut
    // then takes away only delays whatever later gets its offset.
    this.reader = this.queueReader((stream) => this.journal.state.firstNotDone(stream, 0), 'later');
  }

  /**
   * Leases up to `max` ready messages, most urgent first, in one transaction.
   * Returns an empty array when nothing is ready now.
   */
  async take(max: number, signal?: AbortSignal): Promise<Delivery[]> {
    for (;;) {
      const { deliveries, ended } = await this.lease(max, signal);
      if (deliveries.length === 0 && ended > 0) continue;
      for (const d of deliveries) this.hold(d);
      return deliveries;
    }
  }

  /**
   * Leases up to `max` ready messages (take() without holding them for renewal). `ended` counts the
   * messages the transaction ended instead (expired, dead-lettered): fewer deliveries than asked for do
   * not mean the queue is empty then.
   */
  private lease(max: number, signal?: AbortSignal): Promise<{ deliveries: Delivery[]; ended: number }> {
    const run = this.leasing.then(() => this.leaseNow(max, signal));
    this.leasing = run.catch(() => undefined);
    return run;
  }

  private async leaseNow(max: number, signal?: AbortSignal): Promise<{ deliveries: Delivery[]; ended: number }> {
    if (this.closed) throw new MqlogError('ERR_CLOSED', 'consumer is closed');
    if (max <= 0) return { deliveries: [], ended: 0 };
    // Read (and fsync) ahead before taking the lock: other consumers wait only for the decisions.
    // What is already done by the state as last seen is passed over here; the rest is checked under it.
    const wanted = max - this.pushback.length - this.scanned.length;
    if (wanted > 0) {
      const state = this.journal.state;
      for (const queued of await this.reader.take(wanted)) if (!state.isDone(queued.frame.stream, queued.frame.offset)) this.scanned.push(queued);
    }
    // Nothing new stored, nothing to settle: only a retry could be ready. The shared state says (read
    // without the lock); when none is, there is nothing to decide, and no transaction is needed.
    if (this.scanned.length === 0 && this.pushback.length === 0 && this.settles.length === 0 && !this.deferred.some((d) => (d.notBefore ?? 0) <= this.now())) {
      await this.journal.refresh();
      if (this.journal.state.readyRetries(this.now()).next().done === true) return { deliveries: [], ended: 0 };
    }
    // Acks and nacks queued by the time the lock is ours go in the same transaction (one lock, one fsync).
    let settles: PendingSettle[] = [];
    let outcome: { deliveries: Delivery[]; ended: number; settled: unknown[] };
    const readAhead = this.reader.sync();
    readAhead.catch(() => undefined);
    try {
      outcome = await this.journal.transact(async (state) => {
        settles = this.settles.splice(0, this.settles.length);
        const records: StateRecord[] = [];
        const settled = await this.checkSettles(state, settles, records);
        const { deliveries, ended } = await this.leaseIn(state, max, records);
        return { records, result: { deliveries, ended, settled } };
      }, signal);
    } catch (err) {
      for (const item of settles) item.reject(err);
      throw err;
    }
    this.finishSettles(settles, outcome.settled);
    // Nothing goes out before its frame is durable: what was read ahead, and what the scan read under the lock.
    await readAhead;
    await this.reader.sync();
    return outcome;
  }

  /** The leasing part of a transaction: chooses, dead-letters what used up its deliveries, adds the records. */
  private async leaseIn(state: ConsumerState, max: number, records: StateRecord[]): Promise<{ deliveries: Delivery[]; ended: number }> {
    const now = this.now();
    const before = records.length;
    const chosen = await this.choose(state, max, now, records);
    const deliveries: Delivery[] = [];
    for (const { candidate, message } of chosen) {
      const previous = state.retryOf(candidate.stream, candidate.offset);
      const count = (previous?.deliveries ?? 0) + 1;
      if (count > this.maxDeliveries) {
        const reason = `handed out ${count - 1} times without an ack; last: ${previous?.reason ?? 'lease expired'}`;
        await this.deadLetter?.(message, { stream: candidate.stream, offset: candidate.offset }, reason);
        if (message.receipt === true) await this.onSettled?.(message, 'dead', reason);
        records.push({ k: 'D', s: candidate.stream, o: candidate.offset, r: reason });
        continue;
      }
      const token = randomUUID();
      const until = now + this.visibilityTimeoutMs;
      records.push({ k: 'L', s: candidate.stream, o: candidate.offset, t: token, u: until, n: count, p: candidate.priority, i: candidate.id, h: [candidate.hint.segment, candidate.hint.position] });
      deliveries.push(this.delivery(message, candidate, token, count, until));
    }
    return { deliveries, ended: records.slice(before).filter((r) => r.k === 'D' || r.k === 'X').length };
  }

  /** Earliest time something not ready now may become ready (lease lapse, delay, retry), if known. */
  nextDueAt(): number | undefined {
    let due = this.journal.state.nextDue(this.now());
    for (const d of this.deferred) if (d.notBefore !== undefined) due = Math.min(due ?? d.notBefore, d.notBefore);
    return due;
  }

  /**
   * Hands out messages one by one. With `follow`, waits for new ones (woken by `feed`) until `limit`
   * messages were handed out, `idleTimeoutMs` passed without one, or the signal fires.
   *
   * Messages are leased a few at a time ahead of the caller: no more than it can take within one second
   * and half a lease at the pace it has taken them so far, so that other consumers share a backlog. Each
   * is handed out with (nearly) its full lease ahead: a reserved message whose lease has run down is
   * renewed first, and a reserve the caller does not come back for within a third of the visibility timeout
   * goes back to the queue, without counting a delivery. Leaving the loop early gives the reserve back too.
   */
  async *messages(options: MessagesOptions = {}): AsyncGenerator<Delivery> {
    const limit = options.limit ?? Number.POSITIVE_INFINITY;
    const prefetch = Math.max(1, options.prefetch ?? DEFAULT_PREFETCH);
    let handed = 0;
    let lastMessageAt = Date.now();
    /** Mean time the caller spends per message (ms), once measured. */
    let pace: number | undefined;
    const reserve: Reserve = { items: [], lastHandOut: Date.now() };
    this.reserves.add(reserve);
    try {
      while (handed < limit) {
        if (reserve.items.length === 0) {
          const seen = options.feed?.generation ?? 0;
          const ahead = pace === undefined ? 1 : Math.floor(Math.min(RESERVE_WORK_MS, this.visibilityTimeoutMs / 2) / Math.max(pace, 0.001));
          const { deliveries: taken, ended } = await this.lease(Math.max(1, Math.min(prefetch, limit - handed, ahead)), options.signal);
          if (taken.length === 0 && ended > 0) continue;
          if (taken.length === 0) {
            if (options.follow !== true) return;
            if (options.idleTimeoutMs !== undefined && Date.now() - lastMessageAt >= options.idleTimeoutMs) return;
            await this.waitForChange(seen, lastMessageAt, options);
            continue;
          }
          reserve.items.push(...taken);
          reserve.lastHandOut = Date.now();
        }
        const delivery = await this.handOut(reserve);
        if (delivery === undefined) continue;
        handed++;
        const yieldedAt = performance.now();
        lastMessageAt = Date.now();
        yield delivery;
        const spent = performance.now() - yieldedAt;
        pace = pace === undefined ? spent : 0.8 * pace + 0.2 * spent;
        reserve.lastHandOut = Date.now();
      }
    } finally {
      this.reserves.delete(reserve);
      if (reserve.items.length > 0) await this.release(reserve.items.splice(0));
    }
  }

  /**
   * The next message of a reserve, with its full lease ahead: when the lease of the head has run down by
   * a tenth, the whole reserve is renewed in one transaction. Undefined when the head's lease was lost.
   */
  private async handOut(reserve: Reserve): Promise<Delivery | undefined> {
    const head = reserve.items[0] as Delivery;
    if (head.leaseUntil - this.now() < 0.9 * this.visibilityTimeoutMs) {
      const outcomes = await Promise.allSettled(reserve.items.map((d) => d.extend()));
      const kept = reserve.items.filter((_, i) => outcomes[i]?.status === 'fulfilled');
      reserve.items.splice(0, reserve.items.length, ...kept);
      if (kept[0] !== head) return undefined;
    }
    reserve.items.shift();
    this.hold(head);
    return head;
  }

  /** Renews `delivery`'s lease until it is settled (with renewLeases). */
  private hold(delivery: Delivery): void {
    this.held.add(delivery);
    if (this.renewLeases && this.renewTimer === undefined && !this.closed) {
      this.renewTimer = setInterval(() => this.renewDue(), Math.max(10, Math.floor(this.visibilityTimeoutMs / 6)));
      this.renewTimer.unref();
    }
  }

  /**
   * One renewal round: leases that ran down by a third are extended (one group commit for all), and
   * reserves their caller has not come back to for a third of the timeout go back to the queue.
   */
  private renewDue(): void {
    const now = this.now();
    for (const delivery of this.held) {
      if (delivery.leaseUntil - now < (2 / 3) * this.visibilityTimeoutMs) delivery.extend().catch(() => undefined);
    }
    for (const reserve of this.reserves) {
      if (reserve.items.length > 0 && Date.now() - reserve.lastHandOut > this.visibilityTimeoutMs / 3) {
        this.release(reserve.items.splice(0)).catch(() => undefined);
      }
    }
    if (this.held.size === 0 && this.reserves.size === 0) {
      clearInterval(this.renewTimer);
      this.renewTimer = undefined;
    }
  }

  /**
   * Lists the messages ready now, most urgent first, without leasing them or counting a delivery: what
   * the next consumers would get. Reads the shared state as it is (no lock); up to `limit` messages.
   */
  async *peek(options: { limit?: number } = {}): AsyncGenerator<PeekedMessage> {
    const limit = options.limit ?? Number.POSITIVE_INFINITY;
    await this.journal.refresh();
    const state = this.journal.state;
    const now = this.now();
    const reader = this.queueReader((stream) => state.firstNotDone(stream, 0), false);
    let listed = 0;
    try {
      while (listed < limit) {
        const queued = await reader.take(64);
        if (queued.length === 0) return;
        for (const { frame, info: decoded } of queued) {
          if (listed >= limit) return;
          if (frame.type !== FrameType.MESSAGE || decoded === undefined || 'error' in decoded) continue;
          if (state.isDone(frame.stream, frame.offset)) continue;
          const lease = state.leaseOf(frame.stream, frame.offset);
          const retry = state.retryOf(frame.stream, frame.offset);
          if ((lease !== undefined && lease.until > now) || (retry !== undefined && retry.availableAt > now)) continue;
          const { meta, bodyStart } = decoded;
          if ((meta.expiresAt !== undefined && meta.expiresAt <= now) || (meta.notBefore !== undefined && meta.notBefore > now)) continue;
          const body = frame.payload.subarray(bodyStart);
          listed++;
          yield {
            ...meta,
            body,
            stream: frame.stream,
            offset: frame.offset,
            deliveries: retry?.deliveries ?? 0,
            bodyStream: () => (meta.streamed === undefined ? once(body) : readStreamedBody(this.store, this.info.queue, meta.id, meta.streamed)),
          };
        }
      }
    } finally {
      await reader.close();
    }
  }

  /**
   * Empties the queue: every message stored now that is not done — ready, leased, delayed or waiting for a
   * retry — is done (as acked), in one durable transaction. Messages that asked for a receipt are
   * reported `dead` ("purged"). Returns how many messages went. Messages appended meanwhile stay.
   */
  async purge(signal?: AbortSignal): Promise<number> {
    if (this.closed) throw new MqlogError('ERR_CLOSED', 'consumer is closed');
    return this.journal.transact(async (state) => {
      const records: StateRecord[] = [];
      let purged = 0;
      for (const id of await this.store.streams(this.info.queue)) {
        if (priorityOfKey(id.key) === undefined) continue;
        // Runs of consecutive message offsets not done: a chunk or a done message ends a run.
        let run: { from: number; to: number } | undefined;
        const close = (): void => {
          if (run !== undefined) records.push({ k: 'P', s: id.name, o: run.from, e: run.to });
          run = undefined;
        };
        for await (const event of scanStream(this.store, this.info.queue, id.name, { from: { offset: state.firstNotDone(id.name, 0) }, skipTypes: CHUNK_TYPES })) {
          if (event.kind !== 'frame') break;
          const { frame } = event;
          if (frame.type !== FrameType.MESSAGE || state.isDone(frame.stream, frame.offset)) {
            close();
            continue;
          }
          if (run !== undefined && run.to !== frame.offset) close();
          run = run === undefined ? { from: frame.offset, to: frame.offset + 1 } : { from: run.from, to: frame.offset + 1 };
          purged++;
          const decoded = decodeFrameMeta(frame);
          if (decoded !== undefined && 'meta' in decoded && decoded.meta.receipt === true) await this.onSettled?.(decoded.meta, 'dead', 'purged');
        }
        close();
      }
      return { records, result: purged };
    }, signal);
  }

  /** Waits for new data, a due retry or the idle deadline, whichever comes first. */
  private async waitForChange(seen: number, lastMessageAt: number, options: MessagesOptions): Promise<void> {
    const signals: AbortSignal[] = [];
    if (options.signal !== undefined) signals.push(options.signal);
    let waitMs = 1000;
    if (options.idleTimeoutMs !== undefined) waitMs = Math.min(waitMs, Math.max(1, lastMessageAt + options.idleTimeoutMs - Date.now()));
    const due = this.nextDueAt();
    if (due !== undefined) waitMs = Math.min(waitMs, Math.max(1, due - this.now()));
    signals.push(AbortSignal.timeout(waitMs));
    const signal = AbortSignal.any(signals);
    try {
      if (options.feed !== undefined) await options.feed.changedSince(seen, signal);
      else await new Promise<void>((resolve) => signal.addEventListener('abort', () => resolve(), { once: true }));
    } catch (err) {
      if (options.signal?.aborted === true) throw err;
      // our own timeout: just look again
    }
  }

  /** Gives back leased messages that were never handed to the caller. */
  async release(deliveries: Delivery[]): Promise<void> {
    const now = this.now();
    await Promise.allSettled(
      deliveries.map((d) => this.settle(d, { k: 'U', s: d.stream, o: d.offset, t: tokenOf(d), a: now })),
    );
  }

  /**
   * Stops renewing: messages handed out and not settled come back after their lease lapses, as from a
   * consumer that died.
   */
  async close(): Promise<void> {
    this.closed = true;
    clearInterval(this.renewTimer);
    this.renewTimer = undefined;
    this.held.clear();
    while (this.settling !== undefined) await this.settling;
    await this.reader.close();
  }

  /** A reader of the queue's messages, most urgent first, from `start` of each stream. */
  private queueReader(start: (stream: string) => number, durable: boolean | 'later'): PriorityReader<Decoded> {
    return new PriorityReader<Decoded>(this.store, this.info.queue, (stream) => ({ offset: start(stream) }), {
      // Each frame's fields are decoded once, here; the hand-out uses them as they are.
      describe: (frame) => {
        const decoded = decodeFrameMeta(frame);
        return { order: decoded !== undefined && 'meta' in decoded ? decoded.meta.id : '', info: decoded };
      },
      // Chunks of streamed bodies are read only when a body is (Delivery.bodyStream): passing over them
      // by their headers keeps a consumer's memory flat beside multi-GiB bodies.
      skipTypes: CHUNK_TYPES,
      durable,
    });
  }

  private delivery(message: MessageRecord, candidate: Candidate, token: string, count: number, until: number): Delivery {
    const ref = { stream: candidate.stream, offset: candidate.offset, token };
    let leaseUntil = until;
    const delivery: Delivery = {
      ...message,
      stream: candidate.stream,
      offset: candidate.offset,
      deliveries: count,
      get leaseUntil() {
        return leaseUntil;
      },
      extend: (ms = this.visibilityTimeoutMs) => {
        if (!Number.isSafeInteger(ms) || ms <= 0) return Promise.reject(new MqlogError('ERR_INVALID_ARG', 'extend ms must be a positive integer'));
        const to = this.now() + ms;
        return this.settle(delivery, { k: 'E', s: ref.stream, o: ref.offset, t: token, u: to }).then(() => {
          leaseUntil = to;
        });
      },
      bodyStream: () => (message.streamed === undefined ? once(message.body) : readStreamedBody(this.store, this.info.queue, message.id, message.streamed)),
      ack: () => this.settle(delivery, { k: 'A', s: ref.stream, o: ref.offset, t: token }, message.receipt === true ? message : undefined),
      nack: (opts = {}) => {
        const delayMs = opts.delayMs ?? 0;
        if (!Number.isSafeInteger(delayMs) || delayMs < 0) return Promise.reject(new MqlogError('ERR_INVALID_ARG', 'nack delayMs must be a non-negative integer'));
        return this.settle(delivery, { k: 'N', s: ref.stream, o: ref.offset, t: token, a: this.now() + delayMs, ...(opts.reason === undefined ? {} : { r: opts.reason.slice(0, 1000) }) });
      },
    };
    tokens.set(delivery, token);
    return delivery;
  }

  /** Queues an ack/nack/unlease; one transaction settles everything queued meanwhile. */
  private settle(delivery: Delivery, record: StateRecord, receiptOf?: MessageMeta): Promise<void> {
    return new Promise((resolve, reject) => {
      this.settles.push({ delivery, ref: { stream: delivery.stream, offset: delivery.offset, token: tokenOf(delivery) }, record, resolve, reject, ...(receiptOf === undefined ? {} : { receiptOf }) });
      this.settling ??= this.settleLoop();
    });
  }

  private async settleLoop(): Promise<void> {
    try {
      while (this.settles.length > 0) {
        // What is queued when the lock is ours goes in: acks that arrive while it is awaited join.
        let batch: PendingSettle[] = [];
        let outcomes: unknown[];
        try {
          outcomes = await this.journal.transact(async (state) => {
            batch = this.settles.splice(0, this.settles.length);
            const records: StateRecord[] = [];
            return { records, result: await this.checkSettles(state, batch, records) };
          });
        } catch (err) {
          for (const item of batch) item.reject(err);
          continue;
        }
        this.finishSettles(batch, outcomes);
      }
    } finally {
      this.settling = undefined;
    }
  }

  /** Checks each queued ack/nack/renewal against the state and adds the records of those that hold; returns each one's error. */
  private async checkSettles(state: ConsumerState, batch: readonly PendingSettle[], records: StateRecord[]): Promise<unknown[]> {
    const results: unknown[] = [];
    for (const item of batch) {
      try {
        state.checkLease(item.ref.stream, item.ref.offset, item.ref.token);
        if (item.receiptOf !== undefined) await this.onSettled?.(item.receiptOf, 'processed');
        records.push(item.record);
        results.push(undefined);
      } catch (err) {
        results.push(err);
      }
    }
    return results;
  }

  /** Resolves (or rejects) settles once their transaction is durable; an ended or lost lease is no longer renewed. */
  private finishSettles(batch: readonly PendingSettle[], outcomes: readonly unknown[]): void {
    batch.forEach((item, i) => {
      const failed = outcomes[i] !== undefined;
      if (item.record.k !== 'E' || failed) this.held.delete(item.delivery);
      if (failed) item.reject(outcomes[i]);
      else item.resolve();
    });
  }

  /** Picks up to `max` candidates, most urgent first, with their messages; records expiries as it goes. */
  private async choose(state: ConsumerState, max: number, now: number, records: StateRecord[]): Promise<{ candidate: Candidate; message: MessageRecord }[]> {
    const pool: Candidate[] = [];
    for (const { stream, offset, retry } of state.readyRetries(now)) {
      pool.push({ stream, offset, priority: retry.priority, id: retry.id, hint: retry.hint });
    }
    const stillDeferred: Candidate[] = [];
    for (const d of this.deferred) ((d.notBefore ?? 0) <= now ? pool : stillDeferred).push(d);
    this.deferred = stillDeferred;
    // What an earlier scan read but did not hand out counts as ready: the scan goes on only for the rest.
    pool.push(...this.pushback);
    let ready = this.pushback.length;
    this.pushback = [];
    // Scan forward until `max` messages are ready, the queue is exhausted, or the budget is spent.
    // What cannot go out now is not counted: done or leased messages (the state remembers them),
    // expired ones (recorded as such) and delayed ones (kept aside until due).
    let scanned = 0;
    while (ready < max && scanned < SCAN_BUDGET_FRAMES && this.deferred.length < MAX_DEFERRED) {
      const queued = this.scanned.length > 0 ? this.scanned.splice(0, this.scanned.length) : await this.reader.take(max - ready);
      if (queued.length === 0) break;
      for (const { frame, priority, info: decoded } of queued) {
        scanned++;
        if (frame.type !== FrameType.MESSAGE || decoded === undefined) continue;
        if (state.isDone(frame.stream, frame.offset)) continue;
        const lease = state.leaseOf(frame.stream, frame.offset);
        const retry = state.retryOf(frame.stream, frame.offset);
        // Leased or waiting to be retried: the state hands it out again when due.
        if ((lease !== undefined && lease.until > now) || (retry !== undefined && lease === undefined && retry.availableAt > now)) continue;
        if ('error' in decoded) {
          records.push({ k: 'D', s: frame.stream, o: frame.offset, r: `undeliverable: ${decoded.error.message}` });
          continue;
        }
        const { meta } = decoded;
        const candidate: Candidate = { stream: frame.stream, offset: frame.offset, priority, id: meta.id, hint: { segment: frame.segment, position: frame.position }, frame, decoded };
        if (meta.expiresAt !== undefined && meta.expiresAt <= now) {
          if (meta.receipt === true) await this.onSettled?.(meta, 'expired', 'time to live passed before delivery');
          records.push({ k: 'X', s: frame.stream, o: frame.offset });
          continue;
        }
        if (meta.notBefore !== undefined && meta.notBefore > now) {
          this.deferred.push({ stream: candidate.stream, offset: candidate.offset, priority: candidate.priority, id: candidate.id, hint: candidate.hint, notBefore: meta.notBefore });
          continue;
        }
        pool.push(candidate);
        ready++;
      }
    }
    pool.sort((a, b) => b.priority - a.priority || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
    const chosen: { candidate: Candidate; message: MessageRecord }[] = [];
    const seen = new Set<string>();
    for (const candidate of pool) {
      const k = `${candidate.stream}@${candidate.offset}`;
      if (seen.has(k)) continue;
      seen.add(k);
      if (state.isDone(candidate.stream, candidate.offset)) continue;
      const lease = state.leaseOf(candidate.stream, candidate.offset);
      if (lease !== undefined && lease.until > now) continue;
      const retry = state.retryOf(candidate.stream, candidate.offset);
      if (retry !== undefined && retry.availableAt > now) continue;
      if (chosen.length >= max) {
        if (candidate.frame !== undefined) this.pushback.push(candidate);
        continue;
      }
      let message: MessageRecord | undefined;
      try {
        message = await this.messageOf(candidate);
      } catch (err) {
        if (!(err instanceof MqlogError) || err.code !== 'ERR_INVALID_MESSAGE') throw err;
        // A frame that passed its CRC but holds no valid message cannot be delivered; say why and move on.
        records.push({ k: 'D', s: candidate.stream, o: candidate.offset, r: `undeliverable: ${err.message}` });
        continue;
      }
      if (message === undefined) continue;
      if (message.expiresAt !== undefined && message.expiresAt <= now) {
        if (message.receipt === true) await this.onSettled?.(message, 'expired', 'time to live passed before delivery');
        records.push({ k: 'X', s: candidate.stream, o: candidate.offset });
        continue;
      }
      if (message.notBefore !== undefined && message.notBefore > now) {
        this.deferred.push({ stream: candidate.stream, offset: candidate.offset, priority: candidate.priority, id: candidate.id, hint: candidate.hint, notBefore: message.notBefore });
        continue;
      }
      chosen.push({ candidate, message });
    }
    return chosen;
  }

  private async messageOf(candidate: Candidate): Promise<MessageRecord | undefined> {
    if (candidate.frame !== undefined && candidate.decoded !== undefined) return { ...candidate.decoded.meta, body: candidate.frame.payload.subarray(candidate.decoded.bodyStart) };
    const frame = await this.store.frameAt(this.info.queue, candidate.stream, candidate.offset, { ...candidate.hint, offset: candidate.offset });
    if (frame === undefined) return undefined;
    return decodeMessage(frame.payload);
  }
}

const tokens = new WeakMap<Delivery, string>();
const CHUNK_TYPES: ReadonlySet<number> = new Set([FrameType.BODY_CHUNK]);

async function* once(body: Buffer): AsyncGenerator<Buffer> {
  yield body;
}

function tokenOf(delivery: Delivery): string {
  const token = tokens.get(delivery);
  if (token === undefined) throw new MqlogError('ERR_INVALID_ARG', 'not a delivery of this consumer');
  return token;
}

/** The fields of a MESSAGE frame (undefined for other frames), or why they cannot be read. */
function decodeFrameMeta(frame: StoredFrame): Decoded {
  if (frame.type !== FrameType.MESSAGE) return undefined;
  try {
    return decodeMeta(frame.payload);
  } catch (err) {
    if (err instanceof MqlogError) return { error: err };
    throw err;
  }
}
