/**
 * This consumer's claims and the settling of their messages (spec/log-format.md §11.2):
 *
 * - Acks go to the consumer's own ack journal, group-committed (one write, one fdatasync for every ack
 *   that arrived meanwhile) without the shared lock. An ack counts if it was durable before its claim
 *   lapsed: checked after the write, by the clock all consumers of a node share; one that may have come
 *   too late is checked under the lock against what a takeover found (HeldClaims.slowAck).
 * - Everything else — nacks, renewals, extend(), give-backs, ends found while reading, settles — goes to
 *   the shared journal, checked against the state and group-committed in the next transaction of this
 *   consumer (a claim's) or in one of its own. Settles (`S`) and ends wait for one (they hurry nobody).
 *
 * Concurrency contract: one HeldClaims per Consumer; its methods may be called concurrently (each
 * delivery settles once).
 */
import { randomUUID } from 'node:crypto';
import { MqlogError, isMqlogError } from '../errors.js';
import { IntervalSet } from '../util/interval-set.js';
import { AckWriter, groupInto, runsOf } from './ack-writer.js';
import type { MessageMeta } from './codec.js';
import type { ConsumerJournal } from './consumer-journal.js';
import { leaseExpired, type ConsumerState, type StateRecord } from './consumer-state.js';
import type { ClaimDelivery, HeldClaim } from './delivery.js';

export interface HeldClaimsOptions {
  readonly journal: ConsumerJournal;
  readonly visibilityTimeoutMs: number;
  readonly now: () => number;
  /** Reports a message that asked for a receipt as processed, before its ack is written. */
  readonly onProcessed?: (meta: MessageMeta) => Promise<void>;
}

/** Something to record in the shared journal, checked against the state when the lock is held. */
interface SharedItem {
  /** The records, or throws what the caller gets. */
  readonly build: (state: ConsumerState) => StateRecord[] | Promise<StateRecord[]>;
  /** After the transaction: its error (or build's), or undefined. */
  readonly done: (err: unknown) => void;
  /** Waits for a transaction someone else makes (no transaction of its own). */
  readonly lazy: boolean;
}

export class HeldClaims {
  private readonly options: HeldClaimsOptions;
  private readonly claims = new Map<string, HeldClaim>();
  private shared: SharedItem[] = [];
  private flushing: Promise<void> | undefined;
  private readonly acks: AckWriter;
  private closed = false;

  constructor(options: HeldClaimsOptions) {
    this.options = options;
    this.acks = new AckWriter(options.journal, options.now);
    options.journal.addListener((record) => this.onRecord(record));
  }

  /** Claims held now (for renewals and tests). */
  get size(): number {
    return this.claims.size;
  }

  /** Records wait for a transaction. */
  get waiting(): boolean {
    return this.shared.length > 0;
  }

  /**
   * Inside a claim transaction: the ack journal new claims name. A new one when the current one grew
   * past its size, or was removed (`K`) while this consumer held no claim.
   */
  journalForClaims(state: ConsumerState): string {
    return this.acks.journalForClaims(state);
  }

  /** Journals of this consumer that claims may still name (not to be removed by a takeover). */
  ownsJournal(id: string): boolean {
    return this.acks.owns(id);
  }

  adopt(claim: HeldClaim): void {
    this.claims.set(claim.token, claim);
  }

  /**
   * Inside a transaction: the records of everything waiting for the shared journal, and of the ack
   * journals this consumer no longer needs (`K`). Call `finish` after the transaction with its error.
   */
  async collect(state: ConsumerState): Promise<{ records: StateRecord[]; finish: (err?: unknown) => void }> {
    const items = this.shared.splice(0);
    const records: StateRecord[] = [];
    const errors: unknown[] = [];
    for (const item of items) {
      try {
        records.push(...(await item.build(state)));
        errors.push(undefined);
      } catch (err) {
        errors.push(err);
      }
    }
    const retired = this.acks.retired(state, this.claims.values());
    records.push(...retired.records);
    return {
      records,
      finish: (err?: unknown) => {
        items.forEach((item, i) => item.done(err ?? errors[i]));
        if (err === undefined) retired.removed();
      },
    };
  }

  /** Runs transactions of its own until nothing but lazy items waits (and those too when `all`). */
  flush(all = false): Promise<void> {
    if (all) return this.flushNow(true);
    this.flushing ??= this.flushLoop();
    return this.flushing;
  }

  private async flushLoop(): Promise<void> {
    try {
      while (this.shared.some((item) => !item.lazy)) await this.transactOnce();
    } finally {
      // Cleared in the same turn as the last look at the queue: a record queued later starts a new loop.
      this.flushing = undefined;
    }
  }

  /** The delivery goes out to the caller. */
  handOut(delivery: ClaimDelivery): void {
    delivery.state = 'out';
  }

  /**
   * Acks a delivery (see Delivery.ack).
   * @throws ERR_ALREADY_ACKED, ERR_LEASE_EXPIRED, ERR_IO, ERR_DISK_FULL.
   */
  async ack(delivery: ClaimDelivery): Promise<void> {
    if (delivery.state === 'acked' || delivery.state === 'acking') throw alreadyAcked(delivery);
    const before = delivery.state;
    // Nacked, given back or lost: no longer this consumer's; the state says why.
    if (!isOpen(before)) return this.slowAck(delivery, false);
    const claim = delivery.claim;
    delivery.state = 'acking';
    try {
      if (delivery.receipt === true) await this.options.onProcessed?.(delivery.meta());
      if (!claim.lost && this.options.now() < claim.until) {
        // Durable before the claim lapsed: any takeover reads the journal after that, and finds it.
        const checkedAt = await this.acks.write(delivery);
        if (claim.lost || checkedAt >= claim.until) await this.slowAck(delivery, true);
      } else {
        // Lapsed or taken over: the state decides.
        await this.slowAck(delivery, false);
      }
    } catch (err) {
      const final = isMqlogError(err, 'ERR_LEASE_EXPIRED') || isMqlogError(err, 'ERR_ALREADY_ACKED');
      this.settleMember(delivery, final ? 'lost' : before);
      throw err;
    }
    this.settleMember(delivery, 'acked');
  }

  /**
   * Gives a delivery back, ready again after `delayMs` (see Delivery.nack).
   * @throws ERR_INVALID_ARG, ERR_LEASE_EXPIRED, ERR_ALREADY_ACKED.
   */
  async nack(delivery: ClaimDelivery, options: { delayMs?: number; reason?: string }): Promise<void> {
    const delayMs = options.delayMs ?? 0;
    if (!Number.isSafeInteger(delayMs) || delayMs < 0) throw new MqlogError('ERR_INVALID_ARG', 'nack delayMs must be a non-negative integer');
    if (delivery.state === 'acked' || delivery.state === 'acking') throw alreadyAcked(delivery);
    const { stream, offset, claim } = delivery;
    await this.record(false, (state) => {
      checkHeld(state, claim, offset);
      return [{ k: 'N', s: stream, o: offset, t: claim.token, a: this.options.now() + delayMs, i: delivery.id, h: [delivery.frame.segment, delivery.frame.position], ...(options.reason === undefined ? {} : { r: options.reason.slice(0, 1000) }) }];
    });
    this.settleMember(delivery, 'nacked');
  }

  /**
   * Renews the claim of a delivery so that it lapses `ms` from now at the earliest.
   * @throws ERR_INVALID_ARG, ERR_LEASE_EXPIRED.
   */
  async extend(delivery: ClaimDelivery, ms = this.options.visibilityTimeoutMs): Promise<void> {
    if (!Number.isSafeInteger(ms) || ms <= 0) throw new MqlogError('ERR_INVALID_ARG', 'extend ms must be a positive integer');
    if (delivery.state === 'acked' || delivery.state === 'acking') throw alreadyAcked(delivery);
    await this.renew(delivery.claim, ms, delivery.offset);
  }

  /** Renews a claim to `ms` from now (at the earliest). @throws ERR_LEASE_EXPIRED when it was lost. */
  async renew(claim: HeldClaim, ms = this.options.visibilityTimeoutMs, offset?: number): Promise<void> {
    const until = this.options.now() + ms;
    await this.record(false, (state) => {
      checkHeld(state, claim, offset);
      return [{ k: 'R', t: claim.token, u: until }];
    });
    claim.until = Math.max(claim.until, until);
  }

  /** Renews every claim with unsettled members whose lease ran down by a third (one transaction for all). */
  renewDue(): void {
    const now = this.options.now();
    const due = [...this.claims.values()].filter((c) => !c.lost && c.unsettled > 0 && c.until - now < (2 / 3) * this.options.visibilityTimeoutMs);
    for (const claim of due) this.renew(claim).catch(() => undefined);
    // Settles and ends waiting for a transaction get one now and then.
    if (this.shared.length > 0) this.flush(true).catch(() => undefined);
  }

  /** Gives reserved (never handed out) deliveries back without counting a hand-out. */
  async giveBack(deliveries: readonly ClaimDelivery[]): Promise<void> {
    const byClaim = new Map<HeldClaim, number[]>();
    for (const d of deliveries) {
      if (d.state !== 'reserved') continue;
      groupInto(byClaim, d.claim, d.offset);
    }
    const now = this.options.now();
    await Promise.allSettled(
      [...byClaim].map(([claim, offsets]) =>
        this.record(false, (state) => {
          if (!isHeld(state, claim)) return [];
          return runsOf(offsets).map(([from, to]) => ({ k: 'U', s: claim.stream, o: from, t: claim.token, a: now, g: randomUUID(), ...(to === from + 1 ? {} : { e: to }) }));
        }),
      ),
    );
    for (const d of deliveries) if (d.state === 'reserved') this.settleMember(d, 'returned');
  }

  /**
   * A member this consumer found it cannot hand out (expired, delayed, undeliverable): `record` ends it
   * (none: it ended already, purged).
   */
  end(claim: HeldClaim, record: StateRecord | undefined): void {
    if (record === undefined) {
      this.memberSettled(claim);
      return;
    }
    this.record(true, (state) => (isHeld(state, claim) ? [record] : [])).then(
      () => this.memberSettled(claim),
      () => this.memberSettled(claim),
    );
  }

  /** A reserved delivery that will not go out (its claim was lost). */
  drop(delivery: ClaimDelivery): void {
    this.settleMember(delivery, 'lost');
  }

  async close(): Promise<void> {
    this.closed = true;
    await this.acks.drain();
    await this.flush(true).catch(() => undefined);
    // Ack journals no claim in force names any more go (`K` in a transaction of their own).
    if (this.claims.size === 0 && this.acks.hasJournals) {
      this.acks.retireCurrent();
      await this.options.journal
        .transact(async (state) => {
          const { records, finish } = await this.collect(state);
          return { records, result: finish };
        })
        .then((finish) => finish(), () => undefined);
    }
    await this.acks.close();
  }

  /**
   * An ack that may have come after its claim lapsed, decided under the lock: while nobody took the claim
   * over, it counts (written to the shared journal unless the ack journal has it already); after a
   * takeover, only if the taker found it in the ack journal.
   */
  private slowAck(delivery: ClaimDelivery, written: boolean): Promise<void> {
    const { stream, offset, claim } = delivery;
    return this.record(false, async (state) => {
      const range = state.range(claim.token);
      if (range?.holder !== undefined && range.members.has(offset)) return written ? [] : [{ k: 'A', s: stream, o: offset, t: claim.token }];
      if (written && claim.lostAcked?.has(offset) === true) return [];
      const done = state.doneKind(stream, offset) ?? (await this.ackedByHolder(state, stream, offset));
      if (done === 'acked') throw alreadyAcked(delivery);
      throw leaseExpired(stream, offset, done);
    });
  }

  /** 'acked' when the claim holding a message now has it acked in its holder's journal. */
  private async ackedByHolder(state: ConsumerState, stream: string, offset: number): Promise<'acked' | undefined> {
    const holding = state.rangeOf(stream, offset);
    if (holding?.holder === undefined) return undefined;
    const acks = await this.options.journal.journalAcks(holding.holder.journal);
    return acks.get(holding.id)?.has(offset) === true ? 'acked' : undefined;
  }

  /** Queues records for the shared journal; resolves after their transaction. */
  private record(lazy: boolean, build: SharedItem['build']): Promise<void> {
    if (this.closed && lazy) lazy = false;
    return new Promise((resolve, reject) => {
      const fail: (err: unknown) => void = reject;
      this.shared.push({ build, lazy, done: (err) => (err === undefined ? resolve() : fail(err)) });
      if (!lazy) this.flush().catch(() => undefined);
    });
  }

  private async flushNow(all: boolean): Promise<void> {
    while (this.shared.some((item) => all || !item.lazy)) await this.transactOnce();
  }

  /** One transaction of its own for what waits. */
  private async transactOnce(): Promise<void> {
    let finish: ((err?: unknown) => void) | undefined;
    try {
      await this.options.journal.transact(async (state) => {
        const collected = await this.collect(state);
        finish = collected.finish;
        return { records: collected.records, result: undefined };
      });
    } catch (err) {
      if (finish !== undefined) finish(err);
      else for (const item of this.shared.splice(0)) item.done(err);
      return;
    }
    finish?.();
  }

  /** A delivery reached `state`; its claim is settled once none of its members is left open. */
  private settleMember(delivery: ClaimDelivery, state: ClaimDelivery['state']): void {
    const wasOpen = isOpen(delivery.state);
    delivery.state = state;
    if (state === 'acked') delivery.claim.ackedInJournal++;
    if (wasOpen && !isOpen(state)) this.memberSettled(delivery.claim);
  }

  private memberSettled(claim: HeldClaim): void {
    claim.unsettled--;
    if (claim.unsettled > 0) return;
    this.claims.delete(claim.token);
    // Acks in the ack journal are folded into the shared one (`S`) at the next transaction.
    if (!claim.lost && claim.ackedInJournal > 0) this.record(true, (state) => (isHeld(state, claim) ? [{ k: 'S', t: claim.token }] : [])).catch(() => undefined);
  }

  private onRecord(record: StateRecord): void {
    if (record.k !== 'T') return;
    const claim = this.claims.get(record.t);
    if (claim === undefined) return;
    claim.lost = true;
    claim.lostAcked = IntervalSet.fromFlat(record.a);
    this.claims.delete(claim.token);
  }
}

/** Reserved, handed out or being acked: the claim is not settled while a member is. */
function isOpen(state: ClaimDelivery['state']): boolean {
  return state === 'reserved' || state === 'out' || state === 'acking';
}

function alreadyAcked(delivery: ClaimDelivery): MqlogError {
  return new MqlogError('ERR_ALREADY_ACKED', `message ${delivery.stream}@${delivery.offset} was already acknowledged`, { details: { stream: delivery.stream, offset: delivery.offset } });
}

function isHeld(state: ConsumerState, claim: HeldClaim): boolean {
  return state.range(claim.token)?.holder !== undefined;
}

/** Throws unless the claim is held (and `offset`, if given, still one of its members). */
function checkHeld(state: ConsumerState, claim: HeldClaim, offset?: number): void {
  const range = state.range(claim.token);
  if (range?.holder !== undefined && (offset === undefined || range.members.has(offset))) return;
  const at = offset ?? range?.members.first ?? 0;
  const done = state.doneKind(claim.stream, at);
  if (done === 'acked' && offset !== undefined) throw new MqlogError('ERR_ALREADY_ACKED', `message ${claim.stream}@${at} was already acknowledged`, { details: { stream: claim.stream, offset: at } });
  throw leaseExpired(claim.stream, at, done);
}
