/**
 * Consuming a queue (spec/log-format.md §11): messages are handed out most urgent first, each to one
 * consumer at a time across processes, for `visibilityTimeoutMs`. An ack makes a message done; a nack, a
 * lapsed lease or a crashed consumer makes it ready again; after `maxDeliveries` hand-outs it goes to the
 * dead letters. TTL (`expiresAt`) and delay (`notBefore`) are honoured at hand-out time.
 *
 * A consumer claims runs of messages under the shared state lock, a few at a time at the pace its caller
 * takes them (claim-chooser.ts), reads them outside the lock, and acks them in its own journal without
 * the lock (held-claims.ts): consumers of one channel share a backlog and scale with their number, and no
 * consumer replays another's acks.
 */
import { MqlogError } from '../errors.js';
import type { ChangeFeed, LogStore } from '../log/log-store.js';
import { ClaimChooser } from './claim-chooser.js';
import { ClaimReader, bodyOf } from './claim-reader.js';
import type { MessageMeta, MessageRecord } from './codec.js';
import type { ConsumerJournal } from './consumer-journal.js';
import { ClaimDelivery, type Delivery, type DeliveryOwner } from './delivery.js';
import { HeldClaims } from './held-claims.js';
import type { QueueInfo } from './layout.js';
import { peekMessages, type PeekedMessage } from './queue-peek.js';
import { purgeMessages } from './queue-purge.js';

export type { Delivery } from './delivery.js';
export type { PeekedMessage } from './queue-peek.js';

export const DEFAULT_VISIBILITY_TIMEOUT_MS = 30_000;
export const DEFAULT_MAX_DELIVERIES = 5;
/**
 * Messages a consumer claims ahead by default: enough that a transaction (about the cost of reading and
 * acking a hundred small messages) is amortised. Consumers of one channel still share a backlog: a claim
 * that reaches the end of what is there takes only its share of it (claim-chooser.ts), and a claim also
 * stops at CLAIM_BUDGET_BYTES of frames.
 */
export const DEFAULT_PREFETCH = 1024;

export interface ConsumerOptions {
  readonly visibilityTimeoutMs?: number;
  readonly maxDeliveries?: number;
  /**
   * Stores a message in the dead letters; called under the state lock before the message is marked
   * dead, so a crash in between can at worst store it twice, never lose it.
   */
  readonly deadLetter?: (message: MessageRecord, origin: { stream: string; offset: number }, reason: string) => Promise<void>;
  /**
   * Called for a message that asked for a receipt when it ends (acked, dead-lettered, expired), before
   * that end is recorded: a crash in between repeats the report, never loses it.
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
  /** At most this many messages claimed ahead of the caller (default 1024, and at most 4 MiB of them); fewer when the caller is slow. */
  readonly prefetch?: number;
  readonly signal?: AbortSignal;
  readonly feed?: ChangeFeed;
}

/** Messages claimed ahead of a messages() caller: reserved for it, not yet handed out. */
interface Reserve {
  readonly items: ClaimDelivery[];
  /** When the caller last took a message (or the reserve was filled). */
  lastHandOut: number;
}

/** A reserve holds at most this much of the caller's work ahead (at its measured pace): others get the rest. */
const RESERVE_WORK_MS = 1000;
/** Claims are made ahead of need only when they are worth a transaction of their own. */
const PIPELINE_MIN_MESSAGES = 16;
/** A wait for the state lock this long means other processes keep it busy. */
const BUSY_LOCK_MS = 1;

/** What one claim gave: the deliveries, and whether more may be ready although fewer came than asked for. */
interface ClaimOutcome {
  readonly deliveries: ClaimDelivery[];
  readonly more: boolean;
}

export class Consumer {
  readonly info: QueueInfo;
  private readonly store: LogStore;
  private readonly journal: ConsumerJournal;
  private readonly visibilityTimeoutMs: number;
  private readonly onSettled: ConsumerOptions['onSettled'];
  private readonly now: () => number;
  private readonly held: HeldClaims;
  private readonly chooser: ClaimChooser;
  private readonly reader: ClaimReader;
  /** Claims, one at a time (they share the chooser's readers). */
  private claiming: Promise<unknown> = Promise.resolve();
  /**
   * The last claim got all of several messages it asked for: there is likely more, no need to look before
   * the next. A claim of one message that got it says nothing of what follows.
   */
  private busy = false;
  private readonly reserves = new Set<Reserve>();
  private readonly renewLeases: boolean;
  private timer: NodeJS.Timeout | undefined;
  private closing: Promise<void> | undefined;

  constructor(store: LogStore, info: QueueInfo, journal: ConsumerJournal, options: ConsumerOptions = {}) {
    this.store = store;
    this.info = info;
    this.journal = journal;
    this.visibilityTimeoutMs = options.visibilityTimeoutMs ?? DEFAULT_VISIBILITY_TIMEOUT_MS;
    this.onSettled = options.onSettled;
    this.now = options.now ?? Date.now;
    this.renewLeases = options.renewLeases ?? true;
    const onSettled = options.onSettled;
    this.held = new HeldClaims({
      journal,
      visibilityTimeoutMs: this.visibilityTimeoutMs,
      now: this.now,
      ...(onSettled === undefined ? {} : { onProcessed: (meta: MessageMeta) => onSettled(meta, 'processed') }),
    });
    const owner: DeliveryOwner = {
      ack: (d) => this.held.ack(d),
      nack: (d, opts) => this.held.nack(d, opts),
      extend: (d, ms) => this.held.extend(d, ms),
      bodyStream: (d) => bodyOf(this.store, this.info, d),
    };
    this.reader = new ClaimReader({ store, info, held: this.held, owner, now: this.now, ...(onSettled === undefined ? {} : { onSettled }) });
    this.chooser = new ClaimChooser({
      store,
      info,
      journal,
      held: this.held,
      reader: this.reader,
      visibilityTimeoutMs: this.visibilityTimeoutMs,
      maxDeliveries: options.maxDeliveries ?? DEFAULT_MAX_DELIVERIES,
      now: this.now,
      ...(options.deadLetter === undefined ? {} : { deadLetter: options.deadLetter }),
      ...(onSettled === undefined ? {} : { onSettled }),
    });
  }

  /**
   * Claims up to `max` ready messages, most urgent first, and hands them all out.
   * Returns an empty array when nothing is ready now.
   */
  async take(max: number, signal?: AbortSignal): Promise<Delivery[]> {
    for (;;) {
      const { deliveries, more } = await this.claim(max, signal);
      if (deliveries.length === 0 && more) continue;
      for (const d of deliveries) this.hold(d);
      return deliveries;
    }
  }

  /** Earliest time something not ready now may become ready (lease lapse, delay, retry), if known. */
  nextDueAt(): number | undefined {
    return this.journal.state.nextDue(this.now());
  }

  /**
   * Hands out messages one by one. With `follow`, waits for new ones (woken by `feed`) until `limit`
   * messages were handed out, `idleTimeoutMs` passed without one, or the signal fires.
   *
   * Messages are claimed a few at a time ahead of the caller: no more than it can take within one second
   * and half a lease at the pace it has taken them so far, so that other consumers share a backlog. Each
   * is handed out with (nearly) its full lease ahead: a claim whose lease has run down is renewed first,
   * and a reserve the caller does not come back for within a third of the visibility timeout goes back
   * to the queue, without counting a delivery. Leaving the loop early gives the reserve back too.
   */
  async *messages(options: MessagesOptions = {}): AsyncGenerator<Delivery> {
    const limit = options.limit ?? Number.POSITIVE_INFINITY;
    const prefetch = Math.max(1, options.prefetch ?? DEFAULT_PREFETCH);
    let handed = 0;
    let lastMessageAt = Date.now();
    /** Mean time the caller spends per message (ms), once measured. */
    let pace: number | undefined;
    const reserve: Reserve = { items: [], lastHandOut: Date.now() };
    /** The next claim, made while the reserve runs down (and the feed's generation when it was made). */
    let next: { readonly claimed: Promise<ClaimOutcome>; readonly seen: number } | undefined;
    /** Messages the caller can take within a second and half a lease, at its pace. */
    const workAhead = (): number => (pace === undefined ? 1 : Math.floor(Math.min(RESERVE_WORK_MS, this.visibilityTimeoutMs / 2) / Math.max(pace, 0.001)));
    this.reserves.add(reserve);
    this.startTimer();
    try {
      while (handed < limit) {
        if (reserve.items.length === 0) {
          const pending = next;
          next = undefined;
          const seen = pending?.seen ?? options.feed?.generation ?? 0;
          const { deliveries: taken, more } = pending !== undefined ? await pending.claimed : await this.claim(Math.max(1, Math.min(prefetch, limit - handed, workAhead())), options.signal);
          if (taken.length === 0 && more) continue;
          if (taken.length === 0) {
            if (options.follow !== true) return;
            if (options.idleTimeoutMs !== undefined && Date.now() - lastMessageAt >= options.idleTimeoutMs) return;
            await this.waitForChange(seen, lastMessageAt, options);
            continue;
          }
          reserve.items.push(...taken);
          reserve.lastHandOut = Date.now();
        }
        // A caller that takes many messages a second gets the next claim made while it works through
        // this one (the state lock is waited for meanwhile), within the same bounds on what it reserves —
        // unless other processes keep the lock busy: then whole claims, fewer transactions, serve all better.
        const room = Math.min(prefetch, limit - handed, workAhead()) - reserve.items.length;
        if (next === undefined && room >= PIPELINE_MIN_MESSAGES && reserve.items.length <= room / 3 && this.journal.lastLockWaitMs < BUSY_LOCK_MS) {
          const claimed = this.claim(room, options.signal);
          claimed.catch(() => undefined);
          next = { claimed, seen: options.feed?.generation ?? 0 };
        }
        const head = reserve.items[0] as ClaimDelivery;
        // Its claim renewed first when its lease has run down by a tenth (rarely: an await only then).
        const delivery = !head.claim.lost && head.claim.until - this.now() >= 0.9 * this.visibilityTimeoutMs ? this.shiftHead(reserve) : await this.handOut(reserve);
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
      const pending = await next?.claimed.catch(() => undefined);
      if (pending !== undefined) reserve.items.push(...pending.deliveries);
      if (reserve.items.length > 0) await this.release(reserve.items.splice(0));
    }
  }

  /**
   * Lists the messages ready now, most urgent first, without leasing them or counting a delivery: what
   * the next consumers would get. Reads the shared state as it is (no lock); up to `limit` messages.
   */
  peek(options: { limit?: number } = {}): AsyncGenerator<PeekedMessage> {
    return peekMessages(this.store, this.info, this.now(), options.limit ?? Number.POSITIVE_INFINITY);
  }

  /**
   * Empties the queue: every message stored now that is not done — ready, claimed, delayed or waiting for
   * a retry — is done (as acked), in one durable transaction. Messages that asked for a receipt are
   * reported `dead` ("purged"). Returns how many messages went. Messages appended meanwhile stay.
   */
  async purge(signal?: AbortSignal): Promise<number> {
    if (this.closing !== undefined) throw new MqlogError('ERR_CLOSED', 'consumer is closed');
    return purgeMessages(this.store, this.info, this.journal, this.onSettled, signal);
  }

  /** Gives back deliveries that were never handed to the caller (no delivery counted). */
  async release(deliveries: Delivery[]): Promise<void> {
    await this.held.giveBack(deliveries.filter((d): d is ClaimDelivery => d instanceof ClaimDelivery));
  }

  /**
   * Stops renewing: messages handed out and not settled come back after their lease lapses, as from a
   * consumer that died. Settles waiting for a transaction are written first.
   */
  close(): Promise<void> {
    this.closing ??= (async () => {
      clearInterval(this.timer);
      this.timer = undefined;
      await this.claiming.catch(() => undefined);
      await this.held.close();
      await this.chooser.close();
      await this.reader.close();
    })();
    return this.closing;
  }

  /**
   * Claims up to `max` messages in one transaction (settles that wait for one go in it too) and reads
   * them. `more`: messages were ended instead (expired, delayed, dead-lettered) or the skim of a stream
   * stopped at its budget — fewer deliveries than asked for do not mean the queue is empty then.
   */
  private claim(max: number, signal?: AbortSignal): Promise<ClaimOutcome> {
    const run = this.claiming.then(() => this.claimNow(max, signal));
    this.claiming = run.catch(() => undefined);
    return run;
  }

  private async claimNow(max: number, signal?: AbortSignal): Promise<ClaimOutcome> {
    if (this.closing !== undefined) throw new MqlogError('ERR_CLOSED', 'consumer is closed');
    if (max <= 0) return { deliveries: [], more: false };
    // After a claim that found less than it wanted, look without the lock first: when there is nothing
    // new, no transaction is needed.
    if (!this.busy) {
      await this.journal.refresh();
      if (!(await this.chooser.mayFind(this.journal.state, this.now()))) return { deliveries: [], more: false };
    }
    let finish: ((err?: unknown) => void) | undefined;
    let outcome;
    try {
      outcome = await this.journal.transact(async (state) => {
        const collected = await this.held.collect(state);
        finish = collected.finish;
        const chosen = await this.chooser.choose(state, max, collected.records);
        return { records: collected.records, result: chosen };
      }, signal);
    } catch (err) {
      finish?.(err);
      throw err;
    }
    finish?.();
    // The claims' records were not fsync'd with the transaction: the first batch of acks that needs them
    // makes them durable (one fdatasync of the journal beside the acks' own, for every claim made by then).
    for (const { claim } of outcome.claimed) this.held.adopt(claim);
    const read = await this.reader.read(outcome.claimed);
    // A caller that takes one message at a time (prefetch 1, or a slow pace) waits for the next one with a
    // look first: a transaction that finds nothing would take the lock and keep its process's event loop
    // for a while — the time a sender in the same process waits for its append.
    this.busy = outcome.cut || (max > 1 && read.deliveries.length + read.ended + outcome.ended >= max);
    if (outcome.claimed.length > 0) this.startTimer();
    return { deliveries: read.deliveries, more: outcome.cut || outcome.ended + read.ended > 0 };
  }

  /**
   * The next message of a reserve, with its full lease ahead: when the lease of its claim has run down by
   * a tenth, the claim is renewed first. Undefined when the claim was lost.
   */
  private async handOut(reserve: Reserve): Promise<Delivery | undefined> {
    const head = reserve.items[0] as ClaimDelivery;
    if (!head.claim.lost && head.claim.until - this.now() < 0.9 * this.visibilityTimeoutMs) {
      await this.held.renew(head.claim).catch(() => undefined);
    }
    reserve.items.shift();
    if (head.claim.lost || head.claim.until <= this.now()) {
      this.held.drop(head);
      return undefined;
    }
    this.hold(head);
    return head;
  }

  /** The head of a reserve, handed out as it is. */
  private shiftHead(reserve: Reserve): ClaimDelivery {
    const head = reserve.items.shift() as ClaimDelivery;
    this.hold(head);
    return head;
  }

  /** The delivery goes to the caller; its claim is renewed until it is settled (with renewLeases). */
  private hold(delivery: ClaimDelivery): void {
    this.held.handOut(delivery);
    this.startTimer();
  }

  private startTimer(): void {
    if (this.timer !== undefined || this.closing !== undefined) return;
    this.timer = setInterval(() => this.tick(), Math.max(10, Math.floor(this.visibilityTimeoutMs / 6)));
    this.timer.unref();
  }

  /**
   * One round: claims whose lease ran down by a third are renewed (one group commit for all), settles
   * waiting for a transaction get one, and reserves their caller has not come back to for a third of the
   * timeout go back to the queue.
   */
  private tick(): void {
    if (this.renewLeases) this.held.renewDue();
    else this.held.flush(true).catch(() => undefined);
    for (const reserve of this.reserves) {
      if (reserve.items.length > 0 && Date.now() - reserve.lastHandOut > this.visibilityTimeoutMs / 3) {
        this.release(reserve.items.splice(0)).catch(() => undefined);
      }
    }
    if (this.held.size === 0 && this.reserves.size === 0 && !this.held.waiting) {
      clearInterval(this.timer);
      this.timer = undefined;
    }
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
}
