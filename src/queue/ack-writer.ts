/**
 * A consumer's ack journals, as their writer (spec/log-format.md §11.5): which one new claims name, acks
 * written to them in group-committed batches (one write and one fdatasync per journal for every ack
 * that arrived meanwhile, and for the claims those acks need durable), and which old ones to remove.
 *
 * Concurrency contract: one AckWriter per consumer; acks may be queued concurrently.
 */
import { ACK_JOURNAL_ROLL_BYTES, AckJournal, newAckJournalId, type JournalAck } from './ack-journal.js';
import type { ConsumerJournal } from './consumer-journal.js';
import type { ConsumerState, StateRecord } from './consumer-state.js';
import type { ClaimDelivery, HeldClaim } from './delivery.js';
import { nextTurn } from '../util/backoff.js';

/** Acks written together; `written` has the clock read after the fdatasync. */
interface AckBatch {
  readonly items: ClaimDelivery[];
  readonly written: Promise<number>;
}

export class AckWriter {
  private readonly journal: ConsumerJournal;
  private readonly now: () => number;
  /** Open ack journals by id: the current one (for new claims) and older ones claims in force still name. */
  private readonly writers = new Map<string, AckJournal>();
  private currentId = newAckJournalId();
  /** A claim named the current journal (so it is registered, until a `K` removes it). */
  private currentUsed = false;
  /** Every journal claims of this consumer named, until it is removed. */
  private readonly named = new Set<string>();
  /** The batch acks join now (written once the previous one is, and the event loop turned). */
  private batch: AckBatch | undefined;
  /** The batch being written. */
  private writing: Promise<number> | undefined;

  constructor(journal: ConsumerJournal, now: () => number) {
    this.journal = journal;
    this.now = now;
  }

  /**
   * Inside a claim transaction: the ack journal new claims name. A new one when the current one grew
   * past its size, or was removed (`K`) while this consumer held no claim.
   */
  journalForClaims(state: ConsumerState): string {
    const current = this.writers.get(this.currentId);
    if ((this.currentUsed && !state.journals.has(this.currentId)) || (current !== undefined && current.bytes > ACK_JOURNAL_ROLL_BYTES)) {
      this.currentId = newAckJournalId();
      this.currentUsed = false;
    }
    this.currentUsed = true;
    this.named.add(this.currentId);
    return this.currentId;
  }

  /** Journals of this consumer that claims may still name (not to be removed by a takeover). */
  owns(id: string): boolean {
    return id === this.currentId || this.named.has(id);
  }

  /**
   * Inside a transaction: `K` records for the journals this consumer no longer needs (no claim in force
   * and none of `held` names them); `removed` closes their writers once the records are in.
   */
  retired(state: ConsumerState, held: Iterable<HeldClaim>): { records: StateRecord[]; removed: () => void } {
    const inUse = new Set<string>();
    for (const claim of held) inUse.add(claim.journal);
    const ids = [...this.named].filter((id) => id !== this.currentId && state.claimsIn(id) === 0 && !inUse.has(id));
    return {
      records: ids.map((j) => ({ k: 'K', j })),
      removed: () => {
        for (const id of ids) {
          const writer = this.writers.get(id);
          this.writers.delete(id);
          this.named.delete(id);
          writer?.close().catch(() => undefined);
        }
      },
    };
  }

  /** Lets new claims name a journal of their own from now on (the current one can then be removed). */
  retireCurrent(): void {
    this.currentId = newAckJournalId();
    this.currentUsed = false;
  }

  /**
   * Writes an ack in the next batch; resolves with the clock read once the batch is durable (the caller
   * decides whether that was before its claim lapsed).
   * @throws ERR_IO, ERR_DISK_FULL.
   */
  write(delivery: ClaimDelivery): Promise<number> {
    let batch = this.batch;
    if (batch === undefined) {
      // Acks made in the same turn of the event loop share the write and fdatasync, and so do those made
      // while one is under way (group commit): one promise for all of a batch.
      const items: ClaimDelivery[] = [];
      batch = { items, written: this.afterPrevious().then(() => this.writeBatch(items)) };
      this.batch = batch;
    }
    batch.items.push(delivery);
    return batch.written;
  }

  /** Ack journals were written (or claims named them). */
  get hasJournals(): boolean {
    return this.named.size > 0;
  }

  /** Waits for the batches under way (and those they let in). */
  async drain(): Promise<void> {
    for (;;) {
      const pending = this.batch?.written ?? this.writing;
      await pending?.catch(() => undefined);
      if (this.batch === undefined && this.writing === pending) return;
    }
  }

  /** Waits for the batches under way, then closes the journals. */
  async close(): Promise<void> {
    await this.drain();
    for (const writer of this.writers.values()) await writer.close();
    this.writers.clear();
  }

  /** Resolves when the batch before the current one is written and the event loop has turned once. */
  private async afterPrevious(): Promise<void> {
    const previous = this.writing;
    await nextTurn();
    await previous?.catch(() => undefined);
  }

  private writeBatch(items: readonly ClaimDelivery[]): Promise<number> {
    // The batch is closed: acks from now on form the next one.
    if (this.batch?.items === items) this.batch = undefined;
    const written = (async () => {
      const byJournal = new Map<string, ClaimDelivery[]>();
      for (const d of items) groupInto(byJournal, d.claim.journal, d);
      // A claim must not be lost in a power cut its acks survive: its record is durable before they count.
      // Claims are written without an fdatasync; one of the shared journal here covers every claim made
      // so far (a consumer that claims ahead makes a claim or two while the acks of the last one come).
      await Promise.all([...[...byJournal].map(([id, batch]) => this.writer(id).append(acksOf(batch))), this.journal.sync()]);
      return this.now();
    })();
    this.writing = written;
    return written;
  }

  private writer(id: string): AckJournal {
    let writer = this.writers.get(id);
    if (writer === undefined) {
      writer = new AckJournal(this.journal.dir, id);
      this.writers.set(id, writer);
    }
    return writer;
  }
}

/** Adds `value` to the group of `key`. */
export function groupInto<K, V>(groups: Map<K, V[]>, key: K, value: V): void {
  const group = groups.get(key);
  if (group === undefined) groups.set(key, [value]);
  else group.push(value);
}

/** Sorted runs [from, to) of the given offsets. */
export function runsOf(offsets: readonly number[]): [number, number][] {
  const sorted = [...offsets].sort((a, b) => a - b);
  const runs: [number, number][] = [];
  for (const offset of sorted) {
    const last = runs[runs.length - 1];
    if (last !== undefined && last[1] === offset) last[1] = offset + 1;
    else if (last === undefined || last[1] < offset) runs.push([offset, offset + 1]);
  }
  return runs;
}

/** The acks of deliveries as runs of consecutive offsets per claim. */
function acksOf(deliveries: readonly ClaimDelivery[]): JournalAck[] {
  const byClaim = new Map<HeldClaim, number[]>();
  for (const d of deliveries) groupInto(byClaim, d.claim, d.offset);
  const acks: JournalAck[] = [];
  for (const [claim, offsets] of byClaim) for (const [from, to] of runsOf(offsets)) acks.push({ token: claim.token, stream: claim.stream, from, to });
  return acks;
}

