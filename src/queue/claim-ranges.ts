/**
 * The claims and ranges of a consumed queue's state (spec/log-format.md §11.2), with what readers of the
 * whole state learnt from the holders' ack journals: part of ConsumerState (consumer-state.ts), which
 * applies the records; this module keeps the sets consistent (members, per-stream lookup, journal acks).
 *
 * Memory follows what is in flight: a few claims per consumer, and the ranges given back or left by
 * lapsed claims until they are claimed again.
 */
import type { FrameHint as PositionHint } from '../log/log-store.js';
import { IntervalSet } from '../util/interval-set.js';
import type { Runs } from './consumer-records.js';

/** Where a message's frame lies, so that it is read again without a scan. */
export interface FrameHint {
  readonly segment: number;
  readonly position: number;
}

/**
 * Messages of one stream that go out together: a claim while a consumer holds them (`holder`), else a
 * range waiting to be claimed again (given back, or left by a claim that lapsed).
 */
export interface ClaimRange {
  /** The token of the claim that made it. */
  readonly id: string;
  readonly stream: string;
  readonly priority: number;
  /** Its messages not done yet. */
  readonly members: IntervalSet;
  /** A frame before the first member (what a reader positions itself with), if known. */
  readonly hint: PositionHint | undefined;
  /** The place of the only member, for a claim of one message put aside alone before. */
  readonly frame: FrameHint | undefined;
  /** Hand-outs of each member so far (the holder's included). */
  readonly deliveries: number;
  /** Without holder: when the members may go out again. */
  readonly availableAt: number;
  readonly holder: { readonly journal: string; readonly until: number } | undefined;
  readonly reason: string | undefined;
  /** Members acked in the holder's journal, as read with ackInJournal (not yet in the shared journal). */
  readonly acked: IntervalSet;
}

/** A ClaimRange as the state machine changes it. */
export interface MutableRange extends ClaimRange {
  deliveries: number;
  availableAt: number;
  holder: { readonly journal: string; until: number } | undefined;
  reason: string | undefined;
}

/** A claim or range as checkpoint.json holds it (spec/log-format.md §11.3). */
export interface CheckpointRange {
  readonly id: string;
  readonly s: string;
  readonly p: number;
  readonly r: Runs;
  readonly n: number;
  readonly a: number;
  readonly h?: [number, number, number];
  readonly f?: [number, number];
  readonly j?: string;
  readonly u?: number;
  readonly why?: string;
}

export class ClaimRanges {
  private readonly byId = new Map<string, MutableRange>();
  private readonly byStream = new Map<string, Set<MutableRange>>();
  /** Per stream, an offset no range's member ever passed (so `of` answers new messages at once). */
  private readonly bound = new Map<string, number>();
  private readonly journalSet = new Set<string>();
  /** Per stream, the union of the claims' journal acks (ackInJournal): done for whoever asks. */
  private readonly journalAcked = new Map<string, IntervalSet>();

  static fromCheckpoint(ranges: readonly CheckpointRange[], journals: readonly string[]): ClaimRanges {
    const all = new ClaimRanges();
    for (const r of ranges) {
      all.add({
        id: r.id,
        stream: r.s,
        priority: r.p,
        members: IntervalSet.fromFlat(r.r),
        hint: r.h === undefined ? undefined : { segment: r.h[0], position: r.h[1], offset: r.h[2] },
        frame: r.f === undefined ? undefined : { segment: r.f[0], position: r.f[1] },
        deliveries: r.n,
        availableAt: r.a,
        holder: r.j === undefined || r.u === undefined ? undefined : { journal: r.j, until: r.u },
        reason: r.why,
        acked: new IntervalSet(),
      });
    }
    for (const journal of journals) all.journalSet.add(journal);
    return all;
  }

  toCheckpoint(): { ranges: CheckpointRange[]; journals: string[] } {
    return {
      ranges: [...this.byId.values()].map((r) => ({
        id: r.id,
        s: r.stream,
        p: r.priority,
        r: r.members.toFlat(),
        n: r.deliveries,
        a: r.availableAt,
        ...(r.hint === undefined ? {} : { h: [r.hint.segment, r.hint.position, r.hint.offset] as [number, number, number] }),
        ...(r.frame === undefined ? {} : { f: [r.frame.segment, r.frame.position] as [number, number] }),
        ...(r.holder === undefined ? {} : { j: r.holder.journal, u: r.holder.until }),
        ...(r.reason === undefined ? {} : { why: r.reason }),
      })),
      journals: [...this.journalSet],
    };
  }

  get(id: string): MutableRange | undefined {
    return this.byId.get(id);
  }

  /** The claim `token` while its holder holds it. */
  held(token: string): MutableRange | undefined {
    const range = this.byId.get(token);
    return range?.holder === undefined ? undefined : range;
  }

  /** The claim or range a message belongs to, if any. */
  of(stream: string, offset: number): MutableRange | undefined {
    // Past every member a range of the stream ever had (new messages, at the frontier): none, at once.
    if (offset > (this.bound.get(stream) ?? -1)) return undefined;
    for (const range of this.byStream.get(stream) ?? []) if (range.members.has(offset)) return range;
    return undefined;
  }

  all(): Iterable<MutableRange> {
    return this.byId.values();
  }

  /** The ranges of a stream (a copy: they may be dropped while it is gone through). */
  inStream(stream: string): MutableRange[] {
    return [...(this.byStream.get(stream) ?? [])];
  }

  add(range: MutableRange): void {
    this.byId.set(range.id, range);
    this.bound.set(range.stream, Math.max(this.bound.get(range.stream) ?? -1, range.members.last ?? -1));
    let set = this.byStream.get(range.stream);
    if (set === undefined) {
      set = new Set();
      this.byStream.set(range.stream, set);
    }
    set.add(range);
  }

  /** Takes `members` out of a range (and out of what was read of its holder's journal). */
  removeMembers(range: MutableRange, members: IntervalSet): void {
    if (members.isEmpty) return;
    range.members.removeAll(members);
    const inJournal = range.acked.intersection(members);
    if (inJournal.isEmpty) return;
    range.acked.removeAll(inJournal);
    this.journalAcked.get(range.stream)?.removeAll(inJournal);
  }

  /** Forgets journal acks of a range that the shared journal overrules. */
  revokeJournalAcks(range: MutableRange, revoked: IntervalSet): void {
    this.journalAcked.get(range.stream)?.removeAll(revoked);
    range.acked.removeAll(revoked);
  }

  /** A range left with no member is dropped. */
  dropIfEmpty(range: MutableRange): void {
    if (!range.members.isEmpty) return;
    this.byId.delete(range.id);
    this.byStream.get(range.stream)?.delete(range);
  }

  /** The ack journals claims may name (registered by a claim, removed by `K`). */
  get journals(): ReadonlySet<string> {
    return this.journalSet;
  }

  register(journal: string): void {
    this.journalSet.add(journal);
  }

  unregister(journal: string): void {
    this.journalSet.delete(journal);
  }

  /** Claims in force that name the ack journal `journal`. */
  claimsIn(journal: string): number {
    let n = 0;
    for (const range of this.byId.values()) if (range.holder?.journal === journal) n++;
    return n;
  }

  /**
   * An ack read from a holder's journal: the members it newly makes done (for whoever asks) while the
   * claim is held; undefined when the claim is not known (yet).
   */
  ackInJournal(token: string, from: number, to: number): IntervalSet | undefined {
    const range = this.byId.get(token);
    if (range === undefined) return undefined;
    if (range.holder === undefined) return new IntervalSet();
    const acked = IntervalSet.fromFlat([from, to]).intersection(range.members);
    acked.removeAll(range.acked);
    range.acked.addAll(acked);
    let set = this.journalAcked.get(range.stream);
    if (set === undefined) {
      set = new IntervalSet();
      this.journalAcked.set(range.stream, set);
    }
    set.addAll(acked);
    return acked;
  }

  /** Members of a stream acked in their holders' journals, as read so far. */
  journalAckedIn(stream: string): IntervalSet | undefined {
    return this.journalAcked.get(stream);
  }

  /** Messages acked in consumers' journals and not yet folded into the done sets, every stream. */
  journalAckedCount(): number {
    let count = 0;
    for (const set of this.journalAcked.values()) count += set.size;
    return count;
  }
}
