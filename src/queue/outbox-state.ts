/**
 * The one answer to "what state is this outbox message in?" (spec/log-format.md §10): per destination,
 * how far each outbox stream was passed, which offsets a peer refused for good (dead) and which expired
 * before they were forwarded; the per-destination state of a message, and its aggregate. `dump`, `stat`,
 * the status page, `/metrics`, compaction and the forwarder all read it here.
 *
 *   DIR/outbox/cursors/<encodeName(destination)>.json   one file per destination, replaced atomically
 *
 * A cursor only moves past a frame once the frame was delivered (the peer's ok), refused for good
 * (recorded dead) or found expired (recorded expired), or is not for this destination. A cursor file
 * that lags behind after a crash only causes a resend, which the receiver recognises, or a second look
 * at an expiry or refusal, which ends the same way.
 *
 * Concurrency contract: the daemon's forwarders are the only writers (one per destination, in one
 * process); readers in other processes load the files as they are.
 */
import { join } from 'node:path';
import { MqlogError } from '../errors.js';
import type { StreamPosition } from '../log/log-store.js';
import { ensureDir, readFileIfExists, readdirIfExists, writeFileAtomic } from '../util/fs.js';
import { IntervalSet } from '../util/interval-set.js';
import { encodeName } from '../util/names.js';
import type { MessageMeta } from './codec.js';

/** A message's state: in the outbox `pending`, `sent`, `dead`, `expired`; in an inbox also `acked`. */
export type MessageState = 'pending' | 'sent' | 'acked' | 'dead' | 'expired';

/** The state of an outbox message for one destination. */
export type DeliveryState = 'pending' | 'sent' | 'dead' | 'expired';

export const CURSORS_DIR = 'cursors';

interface StreamCursorFile {
  readonly offset: number;
  readonly hint?: StreamPosition['hint'];
  /** Offsets refused for good, as half-open ranges. */
  readonly dead?: [number, number][];
  /** Offsets that expired before they were forwarded, as half-open ranges. */
  readonly expired?: [number, number][];
}

interface CursorFile {
  readonly version: 1 | 2;
  readonly destination: string;
  readonly streams: Record<string, StreamCursorFile>;
  readonly lastSentAt: number | null;
  readonly lastError: string | null;
  readonly lastErrorAt: number | null;
}

interface StreamCursor {
  position: StreamPosition;
  readonly dead: IntervalSet;
  readonly expired: IntervalSet;
}

/** How many messages are in each state for one destination. */
export interface DeliveryCounts {
  pending: number;
  sent: number;
  dead: number;
  expired: number;
}

/** Messages of one stream that all name a destination: how many, and how many have a time to live ending between two times. */
export interface MessageRun {
  readonly messages: number;
  readonly ttl: number;
  readonly minExpiresAt: number;
  readonly maxExpiresAt: number;
}

/** What `stat` and the status page show of a destination. */
export interface DestinationStatus {
  readonly destination: string;
  readonly lastSentAt: number | null;
  readonly lastError: string | null;
  readonly lastErrorAt: number | null;
}

/** One destination's cursor: how far each stream was passed, and what was refused or expired on the way. */
export class DestinationCursor {
  readonly destination: string;
  private readonly streams = new Map<string, StreamCursor>();
  lastSentAt: number | null = null;
  lastError: string | null = null;
  lastErrorAt: number | null = null;
  /** Changed since it was last written. */
  dirty = false;

  constructor(destination: string) {
    this.destination = destination;
  }

  static fromFile(file: CursorFile): DestinationCursor {
    const cursor = new DestinationCursor(file.destination);
    for (const [stream, s] of Object.entries(file.streams)) {
      cursor.streams.set(stream, { position: { offset: s.offset, hint: s.hint }, dead: IntervalSet.from(s.dead ?? []), expired: IntervalSet.from(s.expired ?? []) });
    }
    cursor.lastSentAt = file.lastSentAt;
    cursor.lastError = file.lastError;
    cursor.lastErrorAt = file.lastErrorAt;
    return cursor;
  }

  toFile(): CursorFile {
    const streams: Record<string, StreamCursorFile> = {};
    for (const [stream, s] of this.streams) {
      streams[stream] = {
        offset: s.position.offset,
        ...(s.position.hint === undefined ? {} : { hint: s.position.hint }),
        ...(s.dead.rangeCount === 0 ? {} : { dead: s.dead.toPairs() }),
        ...(s.expired.rangeCount === 0 ? {} : { expired: s.expired.toPairs() }),
      };
    }
    return { version: 2, destination: this.destination, streams, lastSentAt: this.lastSentAt, lastError: this.lastError, lastErrorAt: this.lastErrorAt };
  }

  /** Where reading of `stream` resumes for this destination. */
  positionOf(stream: string): StreamPosition {
    return this.streams.get(stream)?.position ?? { offset: 0 };
  }

  /** Every offset of `stream` below this was passed for this destination. */
  offsetOf(stream: string): number {
    return this.streams.get(stream)?.position.offset ?? 0;
  }

  /** This destination's state of the message at `stream@offset` (whose fields are `meta`) at `now`. */
  stateOf(stream: string, offset: number, meta: Pick<MessageMeta, 'expiresAt'>, now: number): DeliveryState {
    const s = this.streams.get(stream);
    if (s?.dead.has(offset) === true) return 'dead';
    if (s?.expired.has(offset) === true) return 'expired';
    if ((s?.position.offset ?? 0) > offset) return 'sent';
    // Not passed yet, but past its time to live: it will be skipped, never sent.
    if (meta.expiresAt !== undefined && meta.expiresAt <= now) return 'expired';
    return 'pending';
  }

  /**
   * The states of `run` — messages of `stream` within the offsets [from, to) that name this destination
   * — when the rules of stateOf give them without looking at each message: every one the same state,
   * or, not yet passed, `pending` but for those whose time to live is over. Undefined when only each
   * message's offset or expiry can tell (a list or the cursor cuts through the range, or the range's
   * expiry times straddle `now`).
   */
  statesIn(stream: string, from: number, to: number, run: MessageRun, now: number): DeliveryCounts | undefined {
    const s = this.streams.get(stream);
    const all = (state: DeliveryState): DeliveryCounts => ({ pending: 0, sent: 0, dead: 0, expired: 0, [state]: run.messages });
    // Rules 1 and 2: a list that holds every offset of the range decides for all; one that holds some, for some.
    if (s !== undefined) {
      if (s.dead.countIn(from, to) > 0) return s.dead.covers(from, to) ? all('dead') : undefined;
      if (s.expired.countIn(from, to) > 0) return s.expired.covers(from, to) ? all('expired') : undefined;
    }
    // Rule 3.
    const passed = s?.position.offset ?? 0;
    if (passed >= to) return all('sent');
    if (passed > from) return undefined;
    // Rules 4 and 5.
    if (run.ttl === 0 || run.minExpiresAt > now) return all('pending');
    if (run.maxExpiresAt <= now) return { pending: run.messages - run.ttl, sent: 0, dead: 0, expired: run.ttl };
    return undefined;
  }

  /** Moves `stream`'s position forward (never back). */
  advance(stream: string, position: StreamPosition): void {
    const s = this.stream(stream);
    if (position.offset <= s.position.offset) return;
    s.position = position;
    this.dirty = true;
  }

  markDead(stream: string, offset: number): void {
    this.stream(stream).dead.add(offset);
    this.dirty = true;
  }

  /** Records that the message at `stream@offset` expired before it was forwarded; false if it was recorded before. */
  markExpired(stream: string, offset: number): boolean {
    const s = this.stream(stream);
    if (s.expired.has(offset)) return false;
    s.expired.add(offset);
    this.dirty = true;
    return true;
  }

  noteSent(at = Date.now()): void {
    this.lastSentAt = at;
    this.lastError = null;
    this.lastErrorAt = null;
    this.dirty = true;
  }

  noteError(message: string, at = Date.now()): void {
    this.lastError = message;
    this.lastErrorAt = at;
    this.dirty = true;
  }

  status(): DestinationStatus {
    return { destination: this.destination, lastSentAt: this.lastSentAt, lastError: this.lastError, lastErrorAt: this.lastErrorAt };
  }

  private stream(stream: string): StreamCursor {
    let s = this.streams.get(stream);
    if (s === undefined) {
      s = { position: { offset: 0 }, dead: new IntervalSet(), expired: new IntervalSet() };
      this.streams.set(stream, s);
    }
    return s;
  }
}

/** The cursors of every destination of one outbox. */
export class OutboxState {
  readonly dir: string;
  private readonly cursors = new Map<string, DestinationCursor>();

  private constructor(outboxDir: string) {
    this.dir = join(outboxDir, CURSORS_DIR);
  }

  /** Loads every cursor file of the outbox in `outboxDir`. @throws ERR_CORRUPT_STATE for a bad file. */
  static async load(outboxDir: string): Promise<OutboxState> {
    const state = new OutboxState(outboxDir);
    for (const name of await readdirIfExists(state.dir)) {
      if (!name.endsWith('.json')) continue;
      const path = join(state.dir, name);
      const raw = await readFileIfExists(path);
      if (raw === undefined) continue;
      const cursor = DestinationCursor.fromFile(parseCursor(raw, path));
      state.cursors.set(cursor.destination, cursor);
    }
    return state;
  }

  /** Destinations that have a cursor, in name order. */
  destinations(): string[] {
    return [...this.cursors.keys()].sort();
  }

  /** The cursor of a destination (created empty when it has none). */
  cursor(destination: string): DestinationCursor {
    let cursor = this.cursors.get(destination);
    if (cursor === undefined) {
      cursor = new DestinationCursor(destination);
      this.cursors.set(destination, cursor);
    }
    return cursor;
  }

  /** The state of a message for one destination. */
  stateFor(destination: string, stream: string, offset: number, meta: Pick<MessageMeta, 'expiresAt'>, now = Date.now()): DeliveryState {
    return this.cursors.get(destination)?.stateOf(stream, offset, meta, now) ?? (meta.expiresAt !== undefined && meta.expiresAt <= now ? 'expired' : 'pending');
  }

  /** See DestinationCursor.statesIn (a destination without a cursor has passed nothing). */
  statesIn(destination: string, stream: string, from: number, to: number, run: MessageRun, now = Date.now()): DeliveryCounts | undefined {
    return (this.cursors.get(destination) ?? NO_CURSOR).statesIn(stream, from, to, run, now);
  }

  /**
   * The state of a message over all its destinations: `pending` while any destination waits for it,
   * else `dead` if any refused it, else `expired` if it expired for any, else `sent`.
   */
  stateOf(stream: string, offset: number, meta: Pick<MessageMeta, 'to' | 'expiresAt'>, now = Date.now()): DeliveryState {
    let dead = false;
    let expired = false;
    for (const destination of meta.to) {
      const state = this.stateFor(destination, stream, offset, meta, now);
      if (state === 'pending') return 'pending';
      if (state === 'dead') dead = true;
      if (state === 'expired') expired = true;
    }
    return dead ? 'dead' : expired ? 'expired' : 'sent';
  }

  /**
   * The first offset of `stream` that some destination in `destinations` has not passed: nothing below
   * it can still be waiting (compaction need not read it to know).
   */
  lowestOffset(stream: string, destinations: Iterable<string>): number {
    let lowest = Number.POSITIVE_INFINITY;
    for (const destination of destinations) lowest = Math.min(lowest, this.cursors.get(destination)?.offsetOf(stream) ?? 0);
    return lowest === Number.POSITIVE_INFINITY ? 0 : lowest;
  }

  /** The highest offset of `stream` any destination passed: at and after it, nothing was passed by all. */
  highestOffset(stream: string): number {
    let highest = 0;
    for (const cursor of this.cursors.values()) highest = Math.max(highest, cursor.offsetOf(stream));
    return highest;
  }

  /** Writes the cursor of `destination` if it changed. Durable when it resolves. */
  async flush(destination: string): Promise<void> {
    const cursor = this.cursors.get(destination);
    if (cursor === undefined || !cursor.dirty) return;
    cursor.dirty = false;
    try {
      await ensureDir(this.dir);
      await writeFileAtomic(join(this.dir, `${encodeName(destination)}.json`), JSON.stringify(cursor.toFile()));
    } catch (err) {
      cursor.dirty = true;
      throw err;
    }
  }
}

/** The cursor of a destination nothing was passed for yet. */
const NO_CURSOR = new DestinationCursor('');

function parseCursor(raw: Buffer, path: string): CursorFile {
  let parsed: CursorFile;
  try {
    parsed = JSON.parse(raw.toString('utf8')) as CursorFile;
  } catch (err) {
    throw new MqlogError('ERR_CORRUPT_STATE', `${path} is not valid JSON`, { details: { path }, cause: err });
  }
  if ((parsed.version !== 1 && parsed.version !== 2) || typeof parsed.destination !== 'string' || typeof parsed.streams !== 'object' || parsed.streams === null) {
    throw new MqlogError('ERR_CORRUPT_STATE', `${path} is not a cursor file`, { details: { path } });
  }
  return parsed;
}
