/**
 * What a consumer claims (spec/log-format.md §11.2, §11.6), decided under the state lock: claims that
 * lapsed are taken over (`T`: what their holder acked in its ack journal stays done, the rest waits as a
 * range); then up to the wanted number of messages are claimed, most urgent first: messages waiting alone
 * (nacked, delayed, of before claims) and ranges, then runs of new messages from each stream's frontier,
 * found by skimming frame headers (`C` and `F` records). Messages handed out `maxDeliveries` times go to
 * the dead letters instead (`D`). Reading what was claimed is claim-reader.ts.
 *
 * Concurrency contract: one caller at a time (the consumer serializes its claims).
 */
import { randomUUID } from 'node:crypto';
import { MqlogError } from '../errors.js';
import { FrameType } from '../log/frame.js';
import type { LogReader, LogStore, SkimmedFrame, StreamId } from '../log/log-store.js';
import { IntervalSet } from '../util/interval-set.js';
import { CLAIM_READ_BYTES, type ClaimReader, type Claimed } from './claim-reader.js';
import { decodeMessage, type MessageMeta, type MessageRecord } from './codec.js';
import type { ConsumerJournal } from './consumer-journal.js';
import type { ClaimRange, ConsumerState, FrameHint, PositionHint, Retry, StateRecord } from './consumer-state.js';
import { HeldClaim } from './delivery.js';
import type { HeldClaims } from './held-claims.js';
import type { QueueInfo } from './layout.js';
import { priorityOfKey } from './priority.js';

export interface ClaimChooserOptions {
  readonly store: LogStore;
  readonly info: QueueInfo;
  readonly journal: ConsumerJournal;
  readonly held: HeldClaims;
  /** Reads the messages to dead-letter. */
  readonly reader: ClaimReader;
  readonly visibilityTimeoutMs: number;
  readonly maxDeliveries: number;
  readonly now: () => number;
  readonly deadLetter?: (message: MessageRecord, origin: { stream: string; offset: number }, reason: string) => Promise<void>;
  readonly onSettled?: (meta: MessageMeta, outcome: 'processed' | 'dead' | 'expired', reason?: string) => Promise<void>;
}

/** New streams are looked for at most this often while busy. */
const DISCOVER_EVERY_MS = 100;
/**
 * What one transaction skims of a stream at most, in frames and in time: frames that are not messages
 * to claim (body chunks, messages claimed by others) can be many — a 2 GiB body is 2,048 chunks — and
 * the lock must not be held for seconds while a busy disk gives their headers. The frontier moves to
 * where the skim stopped, and the next transaction goes on from there.
 */
const SKIM_BUDGET_FRAMES = 1024;
const SKIM_BUDGET_MS = 50;
/**
 * New messages one transaction claims at most, in bytes of their frames (at least one message): what a
 * consumer reads into memory at once stays bounded whatever the messages' size and its prefetch.
 */
export const CLAIM_BUDGET_BYTES = 4 * 1024 * 1024;

/** A stream's frontier skimmed ahead: frames looked at but not claimed yet. */
interface SkimLane {
  readonly reader: LogReader;
  ahead: SkimmedFrame[];
}

export class ClaimChooser {
  private readonly options: ClaimChooserOptions;
  private readonly lanes = new Map<string, SkimLane>();
  private streams: { id: StreamId; priority: number }[] = [];
  private discoveredAt = Number.NEGATIVE_INFINITY;
  /** When registered ack journals were last looked at for removal. */
  private sweptAt = Number.NEGATIVE_INFINITY;

  constructor(options: ClaimChooserOptions) {
    this.options = options;
  }

  /**
   * Without the lock: whether a claim could find anything now (a new frame past a frontier, a message
   * or range due, a lapsed claim). False means a transaction would find nothing.
   */
  async mayFind(state: ConsumerState, now: number): Promise<boolean> {
    if (state.readyRetries(now).next().done !== true) return true;
    for (const range of state.ranges()) if ((range.holder?.until ?? range.availableAt) <= now) return true;
    const looked = await this.discover(false);
    for (const { id } of this.streams) {
      const lane = await this.lane(state, id.name);
      if (lane.ahead.length > 0 || (await skimMore(lane, 1))) return true;
    }
    // A stream that appeared since the last look (unless that look was just now).
    if (!looked) {
      const known = this.streams.length;
      await this.discover(true);
      if (this.streams.length > known) return true;
    }
    return false;
  }

  /**
   * Under the lock: takes lapsed claims over and claims up to `want` messages, most urgent first,
   * appending the records. `ended`: messages ended instead (dead-lettered); `cut`: a stream's skim
   * stopped at its budget — either way, fewer claimed than wanted does not mean nothing is left.
   */
  async choose(state: ConsumerState, want: number, records: StateRecord[]): Promise<{ claimed: Claimed[]; ended: number; cut: boolean }> {
    const now = this.options.now();
    const lapsed = await this.takeOver(state, now, records);
    const journal = this.options.held.journalForClaims(state);
    const until = now + this.options.visibilityTimeoutMs;
    // Consumers that share the channel (each registers its ack journal at its first claim, and it stays
    // registered while it claims): each takes only its share of a backlog's last messages.
    const sharers = state.journals.size + (state.journals.has(journal) ? 0 : 1);
    await this.discover(false);
    type Candidate =
      | { readonly priority: number; readonly order: number; readonly kind: 'retry'; readonly stream: string; readonly offset: number; readonly retry: Retry }
      | { readonly priority: number; readonly order: number; readonly kind: 'range'; readonly range: ClaimRange; readonly members: IntervalSet }
      | { readonly priority: number; readonly order: number; readonly kind: 'stream'; readonly stream: string };
    const candidates: Candidate[] = [];
    for (const { stream, offset, retry } of state.readyRetries(now)) candidates.push({ priority: retry.priority, order: retry.availableAt, kind: 'retry', stream, offset, retry });
    for (const range of state.ranges()) {
      const members = lapsed.get(range.id) ?? (range.holder === undefined && range.availableAt <= now ? range.members : undefined);
      if (members !== undefined && !members.isEmpty) candidates.push({ priority: range.priority, order: range.availableAt, kind: 'range', range, members });
    }
    // New messages after those waiting of the same priority.
    for (const { id, priority } of this.streams) candidates.push({ priority, order: Number.POSITIVE_INFINITY, kind: 'stream', stream: id.name });
    candidates.sort((a, b) => b.priority - a.priority || a.order - b.order);

    const claimed: Claimed[] = [];
    let left = want;
    let bytesLeft = CLAIM_BUDGET_BYTES;
    let ended = 0;
    let cut = false;
    for (const candidate of candidates) {
      if (left <= 0) break;
      if (candidate.kind === 'stream') {
        if (bytesLeft <= 0) continue;
        const fresh = await this.claimFresh(state, candidate.stream, candidate.priority, { messages: left, bytes: bytesLeft, sharers }, records, journal, until);
        cut ||= fresh.cut;
        bytesLeft -= fresh.bytes;
        if (fresh.claimed !== undefined) {
          claimed.push(fresh.claimed);
          left -= fresh.claimed.members.size;
        }
        continue;
      }
      const stream = candidate.kind === 'retry' ? candidate.stream : candidate.range.stream;
      const members = candidate.kind === 'retry' ? IntervalSet.fromFlat([candidate.offset, candidate.offset + 1]) : candidate.members.clone().takeFirst(left);
      const deliveries = (candidate.kind === 'retry' ? candidate.retry.deliveries : candidate.range.deliveries) + 1;
      const frame = candidate.kind === 'retry' ? candidate.retry.hint : members.size === 1 ? candidate.range.frame : undefined;
      const hint = candidate.kind === 'range' ? candidate.range.hint : undefined;
      if (deliveries > this.options.maxDeliveries) {
        const last = (candidate.kind === 'retry' ? candidate.retry.reason : candidate.range.reason) ?? 'lease expired';
        ended += await this.deadLetter(stream, members, hint, frame, `handed out ${deliveries - 1} times without an ack; last: ${last}`, records);
        continue;
      }
      const token = randomUUID();
      records.push({
        k: 'C',
        t: token,
        s: stream,
        j: journal,
        u: until,
        n: deliveries,
        p: candidate.priority,
        r: members.toFlat(),
        ...(hint === undefined ? {} : { h: [hint.segment, hint.position, hint.offset] as [number, number, number] }),
        ...(frame === undefined ? {} : { f: [frame.segment, frame.position] as [number, number] }),
        ...(candidate.kind === 'range' ? { g: candidate.range.id } : {}),
      });
      claimed.push({ claim: new HeldClaim({ token, stream, priority: candidate.priority, deliveries, journal, hint, until }), members, frame });
      left -= members.size;
    }
    return { claimed, ended, cut };
  }

  async close(): Promise<void> {
    for (const lane of this.lanes.values()) await lane.reader.close();
    this.lanes.clear();
  }

  /** Takes over every claim whose lease lapsed; returns, per range, the members left to hand out. */
  private async takeOver(state: ConsumerState, now: number, records: StateRecord[]): Promise<Map<string, IntervalSet>> {
    const lapsed = new Map<string, IntervalSet>();
    const acksOf = new Map<string, Map<string, IntervalSet>>();
    const taken = new Map<string, number>();
    for (const range of state.ranges()) {
      if (range.holder === undefined || range.holder.until > now) continue;
      const journal = range.holder.journal;
      let acks = acksOf.get(journal);
      if (acks === undefined) {
        // Read now, after the lease lapsed: every ack its holder made durable in time is there.
        acks = await this.options.journal.journalAcks(journal);
        acksOf.set(journal, acks);
      }
      const acked = (acks.get(range.id) ?? new IntervalSet()).intersection(range.members);
      records.push({ k: 'T', t: range.id, a: acked.toFlat() });
      const rest = range.members.clone();
      rest.removeAll(acked);
      lapsed.set(range.id, rest);
      taken.set(journal, (taken.get(journal) ?? 0) + 1);
    }
    // A journal none of whose claims is in force any more is removed, unless its consumer may still use it.
    for (const [journal, n] of taken) if (n === state.claimsIn(journal) && !this.options.held.ownsJournal(journal)) records.push({ k: 'K', j: journal });
    // Now and then, so is one that names no claim and was not written for a timeout (its consumer ended
    // without removing it, or is idle: it starts a new one when it claims again).
    if (now - this.sweptAt >= this.options.visibilityTimeoutMs) {
      this.sweptAt = now;
      for (const journal of state.journals) {
        if (taken.has(journal) || state.claimsIn(journal) > 0 || this.options.held.ownsJournal(journal)) continue;
        const age = await this.options.journal.ackJournalAge(journal);
        if (age === undefined || age > this.options.visibilityTimeoutMs) records.push({ k: 'K', j: journal });
      }
    }
    return lapsed;
  }

  /**
   * Claims up to `want.messages` new messages of a stream from its frontier, skimming their headers, within
   * the skim budget (`cut`: the budget ended the skim), and stops once their frames reach `want.bytes`
   * (`bytes`: what they take). When the skim reaches the stream's end and `want.sharers` consumers share
   * the channel, only the first of every `sharers` messages found is claimed (rounded up): the rest of a
   * backlog's end is left to the others.
   */
  private async claimFresh(state: ConsumerState, stream: string, priority: number, want: { messages: number; bytes: number; sharers: number }, records: StateRecord[], journal: string, until: number): Promise<{ claimed: Claimed | undefined; cut: boolean; bytes: number }> {
    const started = performance.now();
    const lane = await this.lane(state, stream);
    const frontier = state.frontier(stream);
    let before: PositionHint | undefined = frontier?.hint;
    let start: PositionHint | undefined;
    /** Every frame skimmed, in order, and where the new messages among them are. */
    const skimmed: SkimmedFrame[] = [];
    const fresh: number[] = [];
    let members = new IntervalSet();
    let bytes = 0;
    let cut = false;
    let atEnd = false;
    while (members.size < want.messages && bytes < want.bytes) {
      if (skimmed.length >= SKIM_BUDGET_FRAMES || (skimmed.length > 0 && performance.now() - started >= SKIM_BUDGET_MS)) {
        cut = true;
        break;
      }
      if (lane.ahead.length === 0 && !(await skimMore(lane, Math.max(1, Math.min(want.messages - members.size, SKIM_BUDGET_FRAMES - skimmed.length))))) {
        atEnd = true;
        break;
      }
      const frame = lane.ahead.shift() as SkimmedFrame;
      skimmed.push(frame);
      const taken = frame.type !== FrameType.MESSAGE || state.isDone(stream, frame.offset) || state.rangeOf(stream, frame.offset) !== undefined || state.retryOf(stream, frame.offset) !== undefined || state.leaseOf(stream, frame.offset) !== undefined;
      if (!taken) {
        if (members.isEmpty) start = before;
        members.add(frame.offset);
        fresh.push(skimmed.length - 1);
        bytes += frame.bytes;
      }
      before = { segment: frame.segment, position: frame.position, offset: frame.offset };
    }
    if (atEnd && want.sharers > 1 && members.size > 1) {
      // The end of the backlog: claim this consumer's share, put the rest back in the look-ahead.
      const keep = Math.ceil(members.size / want.sharers);
      for (const i of fresh.slice(keep)) bytes -= (skimmed[i] as SkimmedFrame).bytes;
      lane.ahead.unshift(...skimmed.splice((fresh[keep - 1] as number) + 1));
      members = members.takeFirst(keep);
    }
    const last = skimmed.at(-1);
    if (last === undefined) return { claimed: undefined, cut, bytes };
    const advance: StateRecord = { k: 'F', s: stream, o: last.offset + 1, h: [last.segment, last.position, last.offset] };
    if (members.isEmpty) {
      records.push(advance);
      return { claimed: undefined, cut, bytes };
    }
    const token = randomUUID();
    // The claim before the frontier that passes its members: whatever prefix of the write survives a power
    // cut, no message is left behind the frontier outside a claim.
    records.push({ k: 'C', t: token, s: stream, j: journal, u: until, n: 1, p: priority, r: members.toFlat(), ...(start === undefined ? {} : { h: [start.segment, start.position, start.offset] as [number, number, number] }) }, advance);
    return { claimed: { claim: new HeldClaim({ token, stream, priority, deliveries: 1, journal, hint: start, until }), members, frame: undefined }, cut, bytes };
  }

  /** The skim lane of a stream, standing at its frontier. */
  private async lane(state: ConsumerState, stream: string): Promise<SkimLane> {
    const frontier = state.frontier(stream) ?? { offset: state.firstNotDone(stream, 0), hint: undefined };
    let lane = this.lanes.get(stream);
    if (lane === undefined) {
      lane = { reader: this.options.store.reader(this.options.info.queue, stream, frontier, { bufferBytes: CLAIM_READ_BYTES, syncReads: true }), ahead: [] };
      this.lanes.set(stream, lane);
      return lane;
    }
    while (lane.ahead.length > 0 && (lane.ahead[0] as SkimmedFrame).offset < frontier.offset) lane.ahead.shift();
    // Others claimed past what was skimmed ahead (or a claim of this consumer was not recorded): go to the frontier.
    const next = lane.ahead.length > 0 ? (lane.ahead[0] as SkimmedFrame).offset : lane.reader.position.offset;
    if (next !== frontier.offset) {
      lane.ahead = [];
      await lane.reader.seek(frontier);
    }
    return lane;
  }

  /** Lists the queue's streams again, unless that was done less than DISCOVER_EVERY_MS ago; true when it was done now. */
  private async discover(force: boolean): Promise<boolean> {
    if (!force && performance.now() - this.discoveredAt < DISCOVER_EVERY_MS) return false;
    this.discoveredAt = performance.now();
    const found: { id: StreamId; priority: number }[] = [];
    for (const id of await this.options.store.streams(this.options.info.queue)) {
      const priority = priorityOfKey(id.key);
      if (priority !== undefined) found.push({ id, priority });
    }
    this.streams = found;
    return true;
  }

  /** Under the lock: moves members handed out too often to the dead letters; returns how many went. */
  private async deadLetter(stream: string, members: IntervalSet, hint: PositionHint | undefined, frame: FrameHint | undefined, reason: string, records: StateRecord[]): Promise<number> {
    const frames = await this.options.reader.readOnce(stream, members, hint, frame);
    let n = 0;
    for (const stored of frames) {
      if (!members.has(stored.offset)) continue;
      let message: MessageRecord;
      try {
        message = decodeMessage(stored.payload);
      } catch (err) {
        if (!(err instanceof MqlogError)) throw err;
        records.push({ k: 'D', s: stream, o: stored.offset, r: `undeliverable: ${err.message}` });
        n++;
        continue;
      }
      await this.options.deadLetter?.(message, { stream, offset: stored.offset }, reason);
      if (message.receipt === true) await this.options.onSettled?.(message, 'dead', reason);
      records.push({ k: 'D', s: stream, o: stored.offset, r: reason });
      n++;
    }
    return n;
  }

}

/**
 * Skims up to `max` more frames into the lane's look-ahead; false when there are none. Looks twice: a
 * reader that stopped at a limit may still hold the zeros that were after the data then, and finds the
 * frames written into them since only on the read after the one that reports the end.
 */
async function skimMore(lane: SkimLane, max: number): Promise<boolean> {
  for (let look = 0; look < 2; look++) {
    const skim = await lane.reader.skim({ maxFrames: max });
    lane.ahead.push(...skim.frames);
    if (skim.frames.length > 0) return true;
  }
  return false;
}
