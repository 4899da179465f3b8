/**
 * The delivery state of one consumed queue (an inbox, or a dead-letter queue), spec/log-format.md §11:
 * which messages are done (acked, dead-lettered, expired), which runs of messages consumers hold
 * (claims) and until when, how far each stream was claimed (its frontier), and which messages wait to
 * go out again (alone, or as a range given back or left by a lapsed claim).
 *
 * This module is the pure state machine: records in, state out, deterministic whatever the clock. The
 * files and the cross-process lock around it live in consumer-journal.ts. Memory follows the gaps in the
 * done sets and what is in flight (claims, ranges, retries), not the queue size.
 *
 * A claim's acks are written to its holder's own journal, not to the shared one; only readers that
 * look at the whole state (dump, stat, compaction, metrics) read them, with `ackInJournal`, until the
 * claim is settled (`S`) or taken over (`T`) in the shared journal.
 */
import { MqlogError } from '../errors.js';
import type { FrameHint as PositionHint } from '../log/log-store.js';
import { IntervalSet } from '../util/interval-set.js';
import { ClaimRanges, type CheckpointRange, type ClaimRange, type FrameHint, type MutableRange } from './claim-ranges.js';
import type { StateRecord } from './consumer-records.js';

export type { Runs, StateRecord } from './consumer-records.js';
export { decodeRecord, encodeRecord } from './consumer-records.js';
export type { PositionHint };
export type { ClaimRange, FrameHint } from './claim-ranges.js';

/** A lease in the format of before claims (`L` records): one message held by `token`. */
export interface Lease {
  readonly token: string;
  /** Ms since epoch when the lease lapses and the message is ready again. */
  readonly until: number;
  readonly priority: number;
  readonly id: string;
  readonly hint: FrameHint;
}

/** A message handed out before (or put aside) and not done, waiting alone: its hand-outs and when it may go out. */
export interface Retry {
  readonly deliveries: number;
  readonly availableAt: number;
  readonly priority: number;
  readonly id: string;
  readonly hint: FrameHint;
  readonly reason: string | undefined;
}

export interface Frontier {
  /** Every message below it was claimed, or ended, or waits in the retries. */
  readonly offset: number;
  /** The frame at `offset - 1`. */
  readonly hint: PositionHint | undefined;
}

export type DoneKind = 'acked' | 'dead' | 'expired';

interface StreamDone {
  readonly acked: IntervalSet;
  readonly dead: IntervalSet;
  readonly expired: IntervalSet;
}

/** What checkpoint.json holds (spec/log-format.md §11.1); version 1 lacks the claims. */
export interface Checkpoint {
  readonly version: 1 | 2;
  readonly generation: number;
  readonly streams: Record<string, { acked: [number, number][]; dead: [number, number][]; expired: [number, number][] }>;
  readonly leases: [string, number, Lease][];
  readonly retries: [string, number, Retry][];
  readonly frontiers?: Record<string, [number] | [number, number, number, number]>;
  readonly ranges?: CheckpointRange[];
  readonly journals?: string[];
}

export class ConsumerState {
  private readonly done = new Map<string, StreamDone>();
  private readonly leases = new Map<string, Lease>();
  private readonly retries = new Map<string, Retry>();
  private readonly frontiers = new Map<string, Frontier>();
  private claims = new ClaimRanges();
  /** Told how many messages became done, and how (observers count acks with it). */
  onDone: ((kind: DoneKind, count: number) => void) | undefined;

  static fromCheckpoint(checkpoint: Checkpoint): ConsumerState {
    const state = new ConsumerState();
    for (const [stream, sets] of Object.entries(checkpoint.streams)) {
      state.done.set(stream, { acked: IntervalSet.from(sets.acked), dead: IntervalSet.from(sets.dead), expired: IntervalSet.from(sets.expired) });
    }
    for (const [stream, offset, lease] of checkpoint.leases) state.leases.set(key(stream, offset), lease);
    for (const [stream, offset, retry] of checkpoint.retries) state.retries.set(key(stream, offset), retry);
    for (const [stream, f] of Object.entries(checkpoint.frontiers ?? {})) {
      state.frontiers.set(stream, { offset: f[0], hint: f.length === 4 ? { segment: f[1], position: f[2], offset: f[3] } : undefined });
    }
    state.claims = ClaimRanges.fromCheckpoint(checkpoint.ranges ?? [], checkpoint.journals ?? []);
    return state;
  }

  toCheckpoint(generation: number): Checkpoint {
    const streams: Checkpoint['streams'] = {};
    for (const [stream, sets] of this.done) {
      streams[stream] = { acked: sets.acked.toPairs(), dead: sets.dead.toPairs(), expired: sets.expired.toPairs() };
    }
    const frontiers: NonNullable<Checkpoint['frontiers']> = {};
    for (const [stream, f] of this.frontiers) frontiers[stream] = f.hint === undefined ? [f.offset] : [f.offset, f.hint.segment, f.hint.position, f.hint.offset];
    return {
      version: 2,
      generation,
      streams,
      leases: [...this.leases].map(([k, lease]) => [...splitKey(k), lease]),
      retries: [...this.retries].map(([k, retry]) => [...splitKey(k), retry]),
      frontiers,
      ...this.claims.toCheckpoint(),
    };
  }

  /** How a message ended, or undefined while it is not done. */
  doneKind(stream: string, offset: number): DoneKind | undefined {
    const sets = this.done.get(stream);
    if (sets !== undefined) {
      if (sets.acked.has(offset)) return 'acked';
      if (sets.dead.has(offset)) return 'dead';
      if (sets.expired.has(offset)) return 'expired';
    }
    return this.claims.journalAckedIn(stream)?.has(offset) === true ? 'acked' : undefined;
  }

  isDone(stream: string, offset: number): boolean {
    return this.doneKind(stream, offset) !== undefined;
  }

  /** Done messages of a stream within [from, to). */
  doneCount(stream: string, from: number, to: number): number {
    const sets = this.done.get(stream);
    const inJournals = this.claims.journalAckedIn(stream)?.countIn(from, to) ?? 0;
    if (sets === undefined) return inJournals;
    return sets.acked.countIn(from, to) + sets.dead.countIn(from, to) + sets.expired.countIn(from, to) + inJournals;
  }

  /**
   * Messages done in the queue's whole life, by how they ended. The done sets are kept whole (compaction
   * removes messages, never their done offsets), so these go on across restarts and compactions.
   */
  doneTotals(): Record<DoneKind, number> {
    const totals = { acked: 0, dead: 0, expired: 0 };
    for (const sets of this.done.values()) {
      totals.acked += sets.acked.size;
      totals.dead += sets.dead.size;
      totals.expired += sets.expired.size;
    }
    totals.acked += this.claims.journalAckedCount();
    return totals;
  }

  /** The first offset >= from that is not done. */
  firstNotDone(stream: string, from: number): number {
    const sets = this.done.get(stream);
    const inJournals = this.claims.journalAckedIn(stream);
    let at = from;
    for (;;) {
      let next = at;
      if (sets !== undefined) next = sets.expired.nextMissing(sets.dead.nextMissing(sets.acked.nextMissing(next)));
      if (inJournals !== undefined) next = inJournals.nextMissing(next);
      if (next === at) return at;
      at = next;
    }
  }

  leaseOf(stream: string, offset: number): Lease | undefined {
    return this.leases.get(key(stream, offset));
  }

  retryOf(stream: string, offset: number): Retry | undefined {
    return this.retries.get(key(stream, offset));
  }

  /** The claim or range a message belongs to, if any. */
  rangeOf(stream: string, offset: number): ClaimRange | undefined {
    return this.claims.of(stream, offset);
  }

  /** A claim (or the range it left) by its token. */
  range(id: string): ClaimRange | undefined {
    return this.claims.get(id);
  }

  ranges(): Iterable<ClaimRange> {
    return this.claims.all();
  }

  /** Times the message was handed out so far. */
  deliveries(stream: string, offset: number): number {
    return this.retries.get(key(stream, offset))?.deliveries ?? this.rangeOf(stream, offset)?.deliveries ?? 0;
  }

  frontier(stream: string): Frontier | undefined {
    return this.frontiers.get(stream);
  }

  /** The ack journals claims may name (registered by a claim, removed by `K`). */
  get journals(): ReadonlySet<string> {
    return this.claims.journals;
  }

  /** Claims in force that name the ack journal `journal`. */
  claimsIn(journal: string): number {
    return this.claims.claimsIn(journal);
  }

  /** Messages waiting alone (not in a range), whose lease lapsed or whose retry time came, at `now`. */
  *readyRetries(now: number): Generator<{ stream: string; offset: number; retry: Retry }> {
    for (const [k, retry] of this.retries) {
      if (retry.availableAt > now) continue;
      const lease = this.leases.get(k);
      if (lease !== undefined && lease.until > now) continue;
      const [stream, offset] = splitKey(k);
      yield { stream, offset, retry };
    }
  }

  /** The earliest time after `now` at which a lease or claim lapses or a retry or range comes due; undefined if none. */
  nextDue(now: number): number | undefined {
    let due: number | undefined;
    const consider = (at: number): void => {
      if (at > now && (due === undefined || at < due)) due = at;
    };
    for (const [k, retry] of this.retries) consider(Math.max(retry.availableAt, this.leases.get(k)?.until ?? 0));
    for (const range of this.claims.all()) consider(range.holder?.until ?? range.availableAt);
    return due;
  }

  get inFlight(): number {
    let n = this.leases.size;
    for (const range of this.claims.all()) if (range.holder !== undefined) n += range.members.size;
    return n;
  }

  get retryCount(): number {
    let n = this.retries.size;
    for (const range of this.claims.all()) if (range.holder === undefined) n += range.members.size;
    return n;
  }

  /**
   * An ack read from a claim holder's own journal: counts (for whoever asks) while the claim is held;
   * what the shared journal then records (`S`, `T`) is what stays. Returns false when the claim is not
   * known (yet): the caller keeps the ack for after its next look at the shared journal.
   */
  ackInJournal(token: string, from: number, to: number): boolean {
    const acked = this.claims.ackInJournal(token, from, to);
    if (acked === undefined) return false;
    if (!acked.isEmpty) this.onDone?.('acked', acked.size);
    return true;
  }

  /** Applies one record. Records that no longer apply (an ack by a former holder) change nothing. */
  apply(record: StateRecord): void {
    switch (record.k) {
      case 'C':
        this.applyClaim(record);
        return;
      case 'F': {
        const current = this.frontiers.get(record.s);
        if (current !== undefined && current.offset >= record.o) return;
        this.frontiers.set(record.s, { offset: record.o, hint: record.h === undefined ? undefined : { segment: record.h[0], position: record.h[1], offset: record.h[2] } });
        return;
      }
      case 'R': {
        const held = this.claims.held(record.t);
        if (held?.holder === undefined) return;
        held.holder.until = Math.max(held.holder.until, record.u);
        held.availableAt = held.holder.until;
        return;
      }
      case 'S': {
        const held = this.claims.held(record.t);
        if (held === undefined) return;
        this.ackMembers(held, held.members.clone());
        this.claims.dropIfEmpty(held);
        return;
      }
      case 'T': {
        const held = this.claims.held(record.t);
        if (held?.holder === undefined) return;
        const acked = IntervalSet.fromFlat(record.a).intersection(held.members);
        const revoked = held.acked.clone();
        revoked.removeAll(acked);
        this.claims.revokeJournalAcks(held, revoked);
        this.ackMembers(held, acked);
        held.availableAt = Math.max(held.availableAt, held.holder.until);
        held.holder = undefined;
        held.reason = 'lease expired';
        this.claims.dropIfEmpty(held);
        return;
      }
      case 'K':
        this.claims.unregister(record.j);
        return;
      case 'L': {
        if (this.isDone(record.s, record.o)) return;
        const k = key(record.s, record.o);
        const hint = { segment: record.h[0], position: record.h[1] };
        this.leases.set(k, { token: record.t, until: record.u, priority: record.p, id: record.i, hint });
        const previous = this.retries.get(k);
        // A lapsed lease makes the message ready again at once.
        this.retries.set(k, { deliveries: record.n, availableAt: record.u, priority: record.p, id: record.i, hint, reason: previous?.reason ?? 'lease expired' });
        return;
      }
      case 'E': {
        const k = key(record.s, record.o);
        const lease = this.leases.get(k);
        if (lease?.token !== record.t) return;
        this.leases.set(k, { ...lease, until: record.u });
        const retry = this.retries.get(k);
        if (retry !== undefined) this.retries.set(k, { ...retry, availableAt: record.u });
        return;
      }
      case 'A': {
        const held = this.claims.held(record.t);
        if (held !== undefined) {
          this.ackMembers(held, IntervalSet.fromFlat([record.o, record.e ?? record.o + 1]).intersection(held.members));
          this.claims.dropIfEmpty(held);
          return;
        }
        if (this.leases.get(key(record.s, record.o))?.token !== record.t) return;
        this.finish(record.s, record.o, 'acked');
        return;
      }
      case 'N': {
        const held = this.claims.held(record.t);
        if (held !== undefined) {
          if (!held.members.has(record.o) || record.h === undefined) return;
          this.claims.removeMembers(held, IntervalSet.fromFlat([record.o, record.o + 1]));
          const hint = { segment: record.h[0], position: record.h[1] };
          this.retries.set(key(record.s, record.o), { deliveries: held.deliveries, availableAt: record.a, priority: held.priority, id: record.i ?? '', hint, reason: record.r ?? 'nacked' });
          this.claims.dropIfEmpty(held);
          return;
        }
        const k = key(record.s, record.o);
        if (this.leases.get(k)?.token !== record.t) return;
        this.leases.delete(k);
        const retry = this.retries.get(k);
        if (retry !== undefined) this.retries.set(k, { ...retry, availableAt: record.a, reason: record.r ?? 'nacked' });
        return;
      }
      case 'U': {
        const held = this.claims.held(record.t);
        if (held !== undefined) {
          this.giveBack(held, record);
          return;
        }
        const k = key(record.s, record.o);
        if (this.leases.get(k)?.token !== record.t) return;
        this.leases.delete(k);
        const retry = this.retries.get(k);
        if (retry === undefined) return;
        // Kept (with one hand-out less) rather than dropped: readers' scan frontiers are already past it.
        this.retries.set(k, { ...retry, deliveries: Math.max(0, retry.deliveries - 1), availableAt: record.a });
        return;
      }
      case 'P': {
        for (const map of [this.leases, this.retries] as Map<string, unknown>[]) {
          for (const k2 of map.keys()) {
            const [stream, offset] = splitKey(k2);
            if (stream === record.s && offset >= record.o && offset < record.e) map.delete(k2);
          }
        }
        const purged = IntervalSet.fromFlat([record.o, record.e]);
        for (const range of this.claims.inStream(record.s)) {
          this.claims.removeMembers(range, purged.intersection(range.members));
          this.claims.dropIfEmpty(range);
        }
        this.setsOf(record.s).acked.addRange(record.o, record.e);
        return;
      }
      case 'D':
        this.finish(record.s, record.o, 'dead');
        return;
      case 'X':
        this.finish(record.s, record.o, 'expired');
        return;
    }
  }

  /** Checks an ack or nack against a lease of the format of before claims. */
  checkLease(stream: string, offset: number, token: string): void {
    const done = this.doneKind(stream, offset);
    if (done === 'acked') throw new MqlogError('ERR_ALREADY_ACKED', `message ${stream}@${offset} was already acknowledged`, { details: { stream, offset } });
    if (done !== undefined || this.leases.get(key(stream, offset))?.token !== token) throw leaseExpired(stream, offset, done);
  }

  private applyClaim(record: Extract<StateRecord, { k: 'C' }>): void {
    const members = IntervalSet.fromFlat(record.r);
    const sets = this.done.get(record.s);
    if (sets !== undefined) for (const set of [sets.acked, sets.dead, sets.expired]) members.removeAll(set);
    // Taken from wherever the messages waited: a range, the retries, leases of before claims.
    for (const range of this.claims.inStream(record.s)) {
      if (range.holder !== undefined) continue;
      this.claims.removeMembers(range, members.intersection(range.members));
      this.claims.dropIfEmpty(range);
    }
    if (this.retries.size > 0 || this.leases.size > 0) {
      for (const offset of members.values()) {
        this.retries.delete(key(record.s, offset));
        this.leases.delete(key(record.s, offset));
      }
    }
    this.claims.register(record.j);
    if (members.isEmpty) return;
    this.claims.add({
      id: record.t,
      stream: record.s,
      priority: record.p,
      members,
      hint: record.h === undefined ? undefined : { segment: record.h[0], position: record.h[1], offset: record.h[2] },
      frame: record.f === undefined ? undefined : { segment: record.f[0], position: record.f[1] },
      deliveries: record.n,
      availableAt: record.u,
      holder: { journal: record.j, until: record.u },
      reason: undefined,
      acked: new IntervalSet(),
    });
  }

  /** Members of a claim given back (`U`): as a range of their own, or one alone among the retries. */
  private giveBack(held: MutableRange, record: Extract<StateRecord, { k: 'U' }>): void {
    const back = IntervalSet.fromFlat([record.o, record.e ?? record.o + 1]).intersection(held.members);
    if (back.isEmpty) return;
    this.claims.removeMembers(held, back);
    const deliveries = Math.max(0, held.deliveries - 1);
    if (record.h !== undefined && back.size === 1) {
      const hint = { segment: record.h[0], position: record.h[1] };
      this.retries.set(key(held.stream, record.o), { deliveries, availableAt: record.a, priority: held.priority, id: record.i ?? '', hint, reason: held.reason });
    } else {
      this.claims.add({ id: record.g ?? `${held.id}/${record.o}`, stream: held.stream, priority: held.priority, members: back, hint: held.hint, frame: back.size === 1 ? held.frame : undefined, deliveries, availableAt: record.a, holder: undefined, reason: held.reason, acked: new IntervalSet() });
    }
    this.claims.dropIfEmpty(held);
  }

  /** `members` (of the range) are done, acked; onDone hears of those not already acked in the holder's journal. */
  private ackMembers(range: MutableRange, members: IntervalSet): void {
    if (members.isEmpty) return;
    const fresh = members.clone();
    fresh.removeAll(range.acked);
    this.claims.removeMembers(range, members);
    this.setsOf(range.stream).acked.addAll(members);
    if (!fresh.isEmpty) this.onDone?.('acked', fresh.size);
  }

  private finish(stream: string, offset: number, kind: DoneKind): void {
    const k = key(stream, offset);
    this.leases.delete(k);
    this.retries.delete(k);
    const one = IntervalSet.fromFlat([offset, offset + 1]);
    for (const range of this.claims.inStream(stream)) {
      if (!range.members.has(offset)) continue;
      this.claims.removeMembers(range, one);
      this.claims.dropIfEmpty(range);
    }
    const sets = this.setsOf(stream);
    if (sets.acked.has(offset) || sets.dead.has(offset) || sets.expired.has(offset)) return;
    sets[kind].add(offset);
    this.onDone?.(kind, 1);
  }

  private setsOf(stream: string): StreamDone {
    let sets = this.done.get(stream);
    if (sets === undefined) {
      sets = { acked: new IntervalSet(), dead: new IntervalSet(), expired: new IntervalSet() };
      this.done.set(stream, sets);
    }
    return sets;
  }
}

/** ERR_LEASE_EXPIRED for a message whose lease (or claim) is no longer its caller's. */
export function leaseExpired(stream: string, offset: number, done?: DoneKind): MqlogError {
  return new MqlogError('ERR_LEASE_EXPIRED', `the lease on ${stream}@${offset} expired and the message was handed out again (or ended: ${done ?? 'released'})`, {
    details: { stream, offset },
  });
}

function key(stream: string, offset: number): string {
  return `${stream}@${offset}`;
}

function splitKey(k: string): [string, number] {
  const at = k.lastIndexOf('@');
  return [k.slice(0, at), Number(k.slice(at + 1))];
}
