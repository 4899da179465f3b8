/**
 * The delivery state of one consumed queue (an inbox, or a dead-letter queue): which messages are done
 * (acked, dead-lettered, expired), which are leased to a consumer and until when, how often each was
 * handed out, and which were put back for later (spec/log-format.md §11).
 *
 * This module is the pure state machine: records in, state out, deterministic whatever the clock. The
 * files and the cross-process lock around it live in consumer-journal.ts. Memory follows the number of
 * gaps in the done sets and the messages in flight, not the queue size.
 */
import { Packr } from 'msgpackr';
import { MqlogError } from '../errors.js';
import { IntervalSet } from '../util/interval-set.js';

/** Where a message's frame lies, so a redelivery reads it without scanning. */
export interface FrameHint {
  readonly segment: number;
  readonly position: number;
}

export interface Lease {
  readonly token: string;
  /** Ms since epoch when the lease lapses and the message is ready again. */
  readonly until: number;
  readonly priority: number;
  readonly id: string;
  readonly hint: FrameHint;
}

/** A message handed out before and not done: its hand-out count and when it may go out again. */
export interface Retry {
  readonly deliveries: number;
  readonly availableAt: number;
  readonly priority: number;
  readonly id: string;
  readonly hint: FrameHint;
  readonly reason: string | undefined;
}

export type StateRecord =
  /** Lease: the message was handed to a consumer holding `token` until `until`. */
  | { readonly k: 'L'; readonly s: string; readonly o: number; readonly t: string; readonly u: number; readonly n: number; readonly p: number; readonly i: string; readonly h: [number, number] }
  /** Renewal by the lease holder: the lease now lasts until `u`. */
  | { readonly k: 'E'; readonly s: string; readonly o: number; readonly t: string; readonly u: number }
  /** Ack by the lease holder: done. */
  | { readonly k: 'A'; readonly s: string; readonly o: number; readonly t: string }
  /** Nack by the lease holder: ready again at `a`, with a reason. */
  | { readonly k: 'N'; readonly s: string; readonly o: number; readonly t: string; readonly a: number; readonly r?: string }
  /** Moved to the dead letters with a reason: done. */
  | { readonly k: 'D'; readonly s: string; readonly o: number; readonly r: string }
  /** Purged by an operator: every offset in [o, e) (messages only) is done, as acked, whatever its lease. */
  | { readonly k: 'P'; readonly s: string; readonly o: number; readonly e: number }
  /** TTL passed before delivery: done. */
  | { readonly k: 'X'; readonly s: string; readonly o: number }
  /** Un-lease by the holder before the message was seen (a consumer stopped early): as if never handed out. */
  | { readonly k: 'U'; readonly s: string; readonly o: number; readonly t: string; readonly a: number };

export type DoneKind = 'acked' | 'dead' | 'expired';

interface StreamDone {
  readonly acked: IntervalSet;
  readonly dead: IntervalSet;
  readonly expired: IntervalSet;
}

export interface Checkpoint {
  readonly version: 1;
  readonly generation: number;
  readonly streams: Record<string, { acked: [number, number][]; dead: [number, number][]; expired: [number, number][] }>;
  readonly leases: [string, number, Lease][];
  readonly retries: [string, number, Retry][];
}

export class ConsumerState {
  private readonly done = new Map<string, StreamDone>();
  private readonly leases = new Map<string, Lease>();
  private readonly retries = new Map<string, Retry>();

  static fromCheckpoint(checkpoint: Checkpoint): ConsumerState {
    const state = new ConsumerState();
    for (const [stream, sets] of Object.entries(checkpoint.streams)) {
      state.done.set(stream, { acked: IntervalSet.from(sets.acked), dead: IntervalSet.from(sets.dead), expired: IntervalSet.from(sets.expired) });
    }
    for (const [stream, offset, lease] of checkpoint.leases) state.leases.set(key(stream, offset), lease);
    for (const [stream, offset, retry] of checkpoint.retries) state.retries.set(key(stream, offset), retry);
    return state;
  }

  toCheckpoint(generation: number): Checkpoint {
    const streams: Checkpoint['streams'] = {};
    for (const [stream, sets] of this.done) {
      streams[stream] = { acked: sets.acked.toPairs(), dead: sets.dead.toPairs(), expired: sets.expired.toPairs() };
    }
    return {
      version: 1,
      generation,
      streams,
      leases: [...this.leases].map(([k, lease]) => [...splitKey(k), lease]),
      retries: [...this.retries].map(([k, retry]) => [...splitKey(k), retry]),
    };
  }

  /** How a message ended, or undefined while it is not done. */
  doneKind(stream: string, offset: number): DoneKind | undefined {
    const sets = this.done.get(stream);
    if (sets === undefined) return undefined;
    if (sets.acked.has(offset)) return 'acked';
    if (sets.dead.has(offset)) return 'dead';
    if (sets.expired.has(offset)) return 'expired';
    return undefined;
  }

  isDone(stream: string, offset: number): boolean {
    return this.doneKind(stream, offset) !== undefined;
  }

  /** Done messages of a stream within [from, to). */
  doneCount(stream: string, from: number, to: number): number {
    const sets = this.done.get(stream);
    if (sets === undefined) return 0;
    return sets.acked.countIn(from, to) + sets.dead.countIn(from, to) + sets.expired.countIn(from, to);
  }

  /** The first offset >= from that is not done. */
  firstNotDone(stream: string, from: number): number {
    const sets = this.done.get(stream);
    if (sets === undefined) return from;
    let at = from;
    for (;;) {
      const next = sets.expired.nextMissing(sets.dead.nextMissing(sets.acked.nextMissing(at)));
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

  /** Times the message was handed out so far. */
  deliveries(stream: string, offset: number): number {
    return this.retries.get(key(stream, offset))?.deliveries ?? 0;
  }

  /** Messages handed out before, not done, whose lease lapsed or whose retry time came, at `now`. */
  *readyRetries(now: number): Generator<{ stream: string; offset: number; retry: Retry }> {
    for (const [k, retry] of this.retries) {
      if (retry.availableAt > now) continue;
      const lease = this.leases.get(k);
      if (lease !== undefined && lease.until > now) continue;
      const [stream, offset] = splitKey(k);
      yield { stream, offset, retry };
    }
  }

  /** The earliest time after `now` at which a lease lapses or a retry comes due; undefined if none. */
  nextDue(now: number): number | undefined {
    let due: number | undefined;
    for (const [k, retry] of this.retries) {
      const at = Math.max(retry.availableAt, this.leases.get(k)?.until ?? 0);
      if (at > now && (due === undefined || at < due)) due = at;
    }
    return due;
  }

  get inFlight(): number {
    return this.leases.size;
  }

  get retryCount(): number {
    return this.retries.size;
  }

  /** Applies one record. Records that no longer apply (an ack by a former lease holder) change nothing. */
  apply(record: StateRecord): void {
    const k = key(record.s, record.o);
    switch (record.k) {
      case 'L': {
        if (this.isDone(record.s, record.o)) return;
        const hint = { segment: record.h[0], position: record.h[1] };
        this.leases.set(k, { token: record.t, until: record.u, priority: record.p, id: record.i, hint });
        const previous = this.retries.get(k);
        this.retries.set(k, {
          deliveries: record.n,
          // A lapsed lease makes the message ready again at once.
          availableAt: record.u,
          priority: record.p,
          id: record.i,
          hint,
          reason: previous?.reason ?? 'lease expired',
        });
        return;
      }
      case 'E': {
        const lease = this.leases.get(k);
        if (lease?.token !== record.t) return;
        this.leases.set(k, { ...lease, until: record.u });
        const retry = this.retries.get(k);
        if (retry !== undefined) this.retries.set(k, { ...retry, availableAt: record.u });
        return;
      }
      case 'A': {
        if (this.leases.get(k)?.token !== record.t) return;
        this.finish(record.s, record.o, 'acked');
        return;
      }
      case 'N': {
        if (this.leases.get(k)?.token !== record.t) return;
        this.leases.delete(k);
        const retry = this.retries.get(k);
        if (retry !== undefined) this.retries.set(k, { ...retry, availableAt: record.a, reason: record.r ?? 'nacked' });
        return;
      }
      case 'U': {
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

  /** Checks an ack or nack against the current lease. */
  checkLease(stream: string, offset: number, token: string): void {
    const done = this.doneKind(stream, offset);
    if (done === 'acked') throw new MqlogError('ERR_ALREADY_ACKED', `message ${stream}@${offset} was already acknowledged`, { details: { stream, offset } });
    if (done !== undefined || this.leases.get(key(stream, offset))?.token !== token) {
      throw new MqlogError('ERR_LEASE_EXPIRED', `the lease on ${stream}@${offset} expired and the message was handed out again (or ended: ${done ?? 'released'})`, {
        details: { stream, offset },
      });
    }
  }

  private finish(stream: string, offset: number, kind: DoneKind): void {
    const k = key(stream, offset);
    this.leases.delete(k);
    this.retries.delete(k);
    this.setsOf(stream)[kind].add(offset);
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

function key(stream: string, offset: number): string {
  return `${stream}@${offset}`;
}

function splitKey(k: string): [string, number] {
  const at = k.lastIndexOf('@');
  return [k.slice(0, at), Number(k.slice(at + 1))];
}

const packr = new Packr({ useRecords: false, mapsAsObjects: true });

export function encodeRecord(record: StateRecord): Buffer {
  return packr.pack(record);
}

/** @throws ERR_CORRUPT_STATE for a record that does not decode or validate. */
export function decodeRecord(payload: Buffer): StateRecord {
  let raw: unknown;
  try {
    raw = packr.unpack(payload);
  } catch (err) {
    throw new MqlogError('ERR_CORRUPT_STATE', 'state record is not valid msgpack', { cause: err });
  }
  const r = raw as Record<string, unknown> | null;
  if (r === null || typeof r !== 'object' || typeof r.s !== 'string' || !Number.isSafeInteger(r.o)) {
    throw new MqlogError('ERR_CORRUPT_STATE', 'state record lacks stream/offset');
  }
  switch (r.k) {
    case 'L':
      if (typeof r.t !== 'string' || !Number.isSafeInteger(r.u) || !Number.isSafeInteger(r.n) || !Number.isSafeInteger(r.p) || typeof r.i !== 'string' || !Array.isArray(r.h)) break;
      return r as unknown as StateRecord;
    case 'A':
      if (typeof r.t !== 'string') break;
      return r as unknown as StateRecord;
    case 'E':
      if (typeof r.t !== 'string' || !Number.isSafeInteger(r.u)) break;
      return r as unknown as StateRecord;
    case 'N':
    case 'U':
      if (typeof r.t !== 'string' || !Number.isSafeInteger(r.a)) break;
      return r as unknown as StateRecord;
    case 'D':
      if (typeof r.r !== 'string') break;
      return r as unknown as StateRecord;
    case 'X':
      return r as unknown as StateRecord;
    case 'P':
      if (!Number.isSafeInteger(r.e) || (r.e as number) <= (r.o as number)) break;
      return r as unknown as StateRecord;
    default:
      break;
  }
  throw new MqlogError('ERR_CORRUPT_STATE', `state record of unknown kind or shape (${String(r.k)})`);
}
