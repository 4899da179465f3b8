/**
 * The records of a consumed queue's state (spec/log-format.md §11.3): what each one says, and its
 * msgpack encoding with a check of every field on the way in. The shared journal holds all kinds; a
 * consumer's own ack journal holds only acks (`A` with a claim token).
 *
 * Records are facts applied in journal order by ConsumerState (consumer-state.ts); nothing here decides.
 */
import { Packr } from 'msgpackr';
import { MqlogError } from '../errors.js';
import { int } from './codec.js';

/** Runs of offsets, flat: `[from0, to0, from1, to1, …]`, each run half-open. */
export type Runs = number[];

export type StateRecord =
  /** Lease (format of before claims, still read): the message was handed to `t` until `u`. */
  | { readonly k: 'L'; readonly s: string; readonly o: number; readonly t: string; readonly u: number; readonly n: number; readonly p: number; readonly i: string; readonly h: [number, number] }
  /** Renewal of a lease by its holder (format of before claims, still read). */
  | { readonly k: 'E'; readonly s: string; readonly o: number; readonly t: string; readonly u: number }
  /** Ack by the holder of lease or claim `t`: [o, e) (default [o, o+1)) is done. */
  | { readonly k: 'A'; readonly s: string; readonly o: number; readonly t: string; readonly e?: number }
  /** Nack by the holder of `t`: ready again at `a`; a claim member keeps its id `i` and frame place `h`. */
  | { readonly k: 'N'; readonly s: string; readonly o: number; readonly t: string; readonly a: number; readonly r?: string; readonly i?: string; readonly h?: [number, number] }
  /** Moved to the dead letters with a reason: done. */
  | { readonly k: 'D'; readonly s: string; readonly o: number; readonly r: string }
  /** Purged by an operator: every offset in [o, e) (messages only) is done, as acked, whatever holds it. */
  | { readonly k: 'P'; readonly s: string; readonly o: number; readonly e: number }
  /** TTL passed before delivery: done. */
  | { readonly k: 'X'; readonly s: string; readonly o: number }
  /**
   * Given back by the holder of `t` without counting a hand-out: [o, e) (default one) is ready at `a`.
   * Claim members go back as a range `g`, or, with `h` (one member, its frame place) and `i`, alone.
   */
  | { readonly k: 'U'; readonly s: string; readonly o: number; readonly t: string; readonly a: number; readonly e?: number; readonly g?: string; readonly i?: string; readonly h?: [number, number] }
  /**
   * Claim `t` by the consumer whose ack journal is `c-<j>.log`: the messages `r` of stream `s` (priority
   * `p`), handed out for the `n`th time, held until `u`. `h`: a frame before the first member
   * ([segment, position, offset]); `f`: the place of the only member ([segment, position]); `g`: the range
   * the members were waiting in.
   */
  | { readonly k: 'C'; readonly t: string; readonly s: string; readonly j: string; readonly u: number; readonly n: number; readonly p: number; readonly r: Runs; readonly h?: [number, number, number]; readonly f?: [number, number]; readonly g?: string }
  /** Frontier of stream `s`: every message below `o` was claimed or ended; `h` is the frame at `o - 1` ([segment, position, offset]). */
  | { readonly k: 'F'; readonly s: string; readonly o: number; readonly h?: [number, number, number] }
  /** Renewal of claim `t` by its holder: held until `u`. */
  | { readonly k: 'R'; readonly t: string; readonly u: number }
  /** Claim `t` settled by its holder: every member it still has is acked. */
  | { readonly k: 'S'; readonly t: string }
  /** Claim `t` lapsed and was taken over: the members `a` (acked in its holder's journal) are done, the rest ready. */
  | { readonly k: 'T'; readonly t: string; readonly a: Runs }
  /** The ack journal `c-<j>.log` holds nothing in force any more and is removed. */
  | { readonly k: 'K'; readonly j: string };

const packr = new Packr({ useRecords: false, mapsAsObjects: true, int64AsType: 'number' });

export function encodeRecord(record: StateRecord): Buffer {
  // Integers beyond 32 bits (times, large offsets) go out as MessagePack integers, not float64 (§11.3).
  let wide: Record<string, unknown> | undefined;
  for (const [key, value] of Object.entries(record)) {
    const fixed = typeof value === 'number' ? int(value) : Array.isArray(value) && value.some((v) => typeof v === 'number' && int(v) !== v) ? value.map((v: unknown) => (typeof v === 'number' ? int(v) : v)) : value;
    if (fixed === value) continue;
    wide ??= { ...record };
    wide[key] = fixed;
  }
  return packr.pack(wide ?? record);
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
  if (r !== null && typeof r === 'object' && isValid(r)) return r as unknown as StateRecord;
  throw new MqlogError('ERR_CORRUPT_STATE', `state record of unknown kind or shape (${String(r?.k)})`);
}

function isValid(r: Record<string, unknown>): boolean {
  const at = typeof r.s === 'string' && isInt(r.o);
  switch (r.k) {
    case 'L':
      return at && typeof r.t === 'string' && isInt(r.u) && isInt(r.n) && isInt(r.p) && typeof r.i === 'string' && isInts(r.h, 2);
    case 'E':
      return at && typeof r.t === 'string' && isInt(r.u);
    case 'A':
      return at && typeof r.t === 'string' && optional(r.e, (e) => isInt(e) && (e as number) > (r.o as number));
    case 'N':
      return at && typeof r.t === 'string' && isInt(r.a) && optional(r.r, isString) && optional(r.i, isString) && optional(r.h, (h) => isInts(h, 2));
    case 'U':
      return at && typeof r.t === 'string' && isInt(r.a) && optional(r.e, (e) => isInt(e) && (e as number) > (r.o as number)) && optional(r.g, isString) && optional(r.i, isString) && optional(r.h, (h) => isInts(h, 2));
    case 'D':
      return at && typeof r.r === 'string';
    case 'X':
      return at;
    case 'P':
      return at && isInt(r.e) && (r.e as number) > (r.o as number);
    case 'C':
      return typeof r.t === 'string' && typeof r.s === 'string' && typeof r.j === 'string' && isInt(r.u) && isInt(r.n) && isInt(r.p) && isRuns(r.r) && optional(r.h, (h) => isInts(h, 3)) && optional(r.f, (f) => isInts(f, 2)) && optional(r.g, isString);
    case 'F':
      return at && optional(r.h, (h) => isInts(h, 3));
    case 'R':
      return typeof r.t === 'string' && isInt(r.u);
    case 'S':
      return typeof r.t === 'string';
    case 'T':
      return typeof r.t === 'string' && isRuns(r.a);
    case 'K':
      return typeof r.j === 'string';
    default:
      return false;
  }
}

function isInt(v: unknown): boolean {
  return Number.isSafeInteger(v);
}

function isString(v: unknown): boolean {
  return typeof v === 'string';
}

function isInts(v: unknown, length: number): boolean {
  return Array.isArray(v) && v.length === length && v.every(isInt);
}

function isRuns(v: unknown): boolean {
  if (!Array.isArray(v) || v.length % 2 !== 0) return false;
  for (let i = 0; i < v.length; i += 2) if (!isInt(v[i]) || !isInt(v[i + 1]) || (v[i] as number) >= (v[i + 1] as number)) return false;
  return true;
}

function optional(v: unknown, check: (v: unknown) => boolean): boolean {
  return v === undefined || check(v);
}
