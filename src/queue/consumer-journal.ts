/**
 * The files behind a ConsumerState, shared by every consumer process of one queue
 * (spec/log-format.md §11):
 *
 *   <queue>/consumer/checkpoint.json   the state at the start of a journal generation (atomic replace)
 *   <queue>/consumer/journal-<g>.log   RECORD frames appended since: claims, renewals, settles, nacks, ends
 *   <queue>/consumer/c-<id>.log        one consumer's acks of the claims it holds (ack-journal.ts)
 *   <queue>/consumer/state.lock        held for one transaction at a time (a file: ShortLock)
 *
 * Concurrency contract: a transaction takes the lock, catches up on records other processes appended,
 * lets the caller decide (claim, settle, take over…) against the current state, appends its records,
 * fsyncs those that must be durable, applies them, and releases the lock. Acks do not take the lock:
 * each consumer appends them to its own journal. Readers that only look (dump, stat) catch up without the
 * lock, stop before a record that is still being written, and read the acks of claims in force from their
 * holders' journals. Recovery reads the checkpoint, one small journal and the ack journals of the claims
 * in force; it never reads the queue's segments.
 *
 * The journal follows the log's torn-tail rule (spec/log-format.md §3.2, §3.3): every write begins with a
 * SYNC frame stating how much of the file is known to be fsync'd, and whatever a crash or power cut left
 * unreadable past that is a torn tail, which the next lock holder sets aside in a `.torn` file and clears.
 */
import { statSync } from 'node:fs';
import { rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { MqlogError, ioError, isMqlogError } from '../errors.js';
import { RecordLog, ShortLock, type TruncatedTail } from '../log/index.js';
import { ensureDir, fsyncDir, isNotFound, readFileIfExists, writeFileAtomic } from '../util/fs.js';
import { IntervalSet } from '../util/interval-set.js';
import { AckJournalReader, ackJournalPath, type JournalAck } from './ack-journal.js';
import { ConsumerState, decodeRecord, encodeRecord, type Checkpoint, type DoneKind, type StateRecord } from './consumer-state.js';

export const CONSUMER_DIR = 'consumer';
const CHECKPOINT_FILE = 'checkpoint.json';
const LOCK_FILE = 'state.lock';
/** A journal longer than this is folded into a new checkpoint at the end of a transaction. */
const CHECKPOINT_AFTER_BYTES = 1024 * 1024;
/** Records a transaction may append without an fsync: lost in a power cut, they only make messages go out again sooner. */
const UNSYNCED_KINDS: ReadonlySet<StateRecord['k']> = new Set(['L', 'E', 'C', 'F', 'R', 'S', 'T']);

export interface ConsumerJournalOptions {
  /** Called when a torn record left by a killed process (or a power cut) was cut off. */
  readonly onTruncated?: (tail: TruncatedTail) => void;
  /** Called for every record applied from the shared journal, by any process. */
  readonly onApplied?: (record: StateRecord) => void;
  /**
   * Read the acks of claims in force from their holders' journals, so that the state answers for the
   * whole queue (dump, stat, compaction, metrics). Default true; a consumer, which needs only the shared
   * journal to decide, says false.
   */
  readonly claimAcks?: boolean;
  /** Told how many messages became done and how, as the records (and, with claimAcks, the holders' acks) are read. */
  readonly onDone?: (kind: DoneKind, count: number) => void;
}

export class ConsumerJournal {
  readonly dir: string;
  private readonly options: ConsumerJournalOptions;
  private current = new ConsumerState();
  private generation = -1;
  private checkpointStamp = '';
  /** The journal of the current generation. */
  private log: RecordLog | undefined;
  private dirReady: Promise<void> | undefined;
  private queue: Promise<unknown> = Promise.resolve();
  private closing: Promise<void> | undefined;
  private readonly listeners = new Set<(record: StateRecord) => void>();
  /** With claimAcks: the holders' journals being followed, by id. */
  private readonly ackReaders = new Map<string, AckJournalReader>();
  /** Acks read before the claim they name: tried again after the next look at the shared journal. */
  private earlyAcks: { ack: JournalAck; looks: number }[] = [];
  /** Records this process appended without an fsync, by generation: made durable by sync(). */
  private unsynced: { generation: number; log: RecordLog } | undefined;
  private lockWaitMs = 0;

  private constructor(queueDir: string, options: ConsumerJournalOptions) {
    this.dir = join(queueDir, CONSUMER_DIR);
    this.options = options;
  }

  /** How long the last transaction waited for the lock (ms): how busy other processes keep it. */
  get lastLockWaitMs(): number {
    return this.lockWaitMs;
  }

  /** Loads the state (checkpoint + journal, and the holders' acks unless claimAcks is false) without taking the lock. */
  static async open(queueDir: string, options: ConsumerJournalOptions = {}): Promise<ConsumerJournal> {
    const journal = new ConsumerJournal(queueDir, options);
    await journal.catchUp(false);
    return journal;
  }

  /** The state as of the last catch-up. Do not keep references across awaits of other calls. */
  get state(): ConsumerState {
    return this.current;
  }

  /** Calls `listener` for every record applied from now on (this process's and others'); returns how to stop. */
  addListener(listener: (record: StateRecord) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Reads records other processes appended since the last look (no lock). */
  refresh(): Promise<void> {
    return this.serialized(() => this.catchUp(false));
  }

  /**
   * Runs one transaction: lock, catch up, `decide` returns the records to append and a result; the records
   * are written (and fsync'd unless all may be lost, see §11.4) and applied before the lock is released and
   * the result returned. Ack journals that a `K` record ends are removed after it is durable.
   * @throws ERR_ABORTED/ERR_TIMEOUT if the signal fires while waiting for the lock; ERR_CORRUPT_STATE.
   */
  transact<T>(decide: (state: ConsumerState) => Promise<{ records: StateRecord[]; result: T }> | { records: StateRecord[]; result: T }, signal?: AbortSignal): Promise<T> {
    return this.serialized(async () => {
      if (this.closing !== undefined) throw new MqlogError('ERR_CLOSED', 'consumer state is closed');
      this.dirReady ??= ensureDir(this.dir).catch((err: unknown) => {
        this.dirReady = undefined;
        throw err;
      });
      await this.dirReady;
      // Held for milliseconds: no owner record (that is for long-held locks).
      const waitStarted = performance.now();
      const lock = await ShortLock.acquire(join(this.dir, LOCK_FILE), signal === undefined ? {} : { signal });
      this.lockWaitMs = performance.now() - waitStarted;
      try {
        await this.catchUp(true);
        const { records, result } = await decide(this.current);
        if (records.length > 0) {
          lock.assertHeld();
          const durable = records.some((r) => !UNSYNCED_KINDS.has(r.k));
          const log = this.journal();
          await log.append(records.map(encodeRecord), durable);
          if (!durable) this.unsynced = { generation: this.generation, log };
          for (const record of records) this.applyRecord(record);
          for (const record of records) if (record.k === 'K') await this.removeAckJournal(record.j);
          if (log.bytes > CHECKPOINT_AFTER_BYTES) await this.checkpoint();
        }
        return result;
      } finally {
        await lock.release();
      }
    });
  }

  /**
   * Makes durable what this process appended without an fsync (claims, renewals): an ack of a claim must
   * not outlive the claim in a power cut. Not serialized with transactions: a sync adds nothing to the file.
   */
  async sync(): Promise<void> {
    const pending = this.unsynced;
    if (pending === undefined) return;
    try {
      await pending.log.sync();
    } catch (err) {
      // The generation was folded into a checkpoint meanwhile (written and fsync'd whole): durable already.
      if (pending.generation === this.generation) throw err;
    }
    if (this.unsynced === pending) this.unsynced = undefined;
  }

  /**
   * The acks in an ack journal, by claim token (to take a lapsed claim over: what its holder acked stays
   * done). A journal that does not exist holds none.
   */
  async journalAcks(journal: string): Promise<Map<string, IntervalSet>> {
    const reader = new AckJournalReader(this.dir, journal);
    const acks = new Map<string, IntervalSet>();
    try {
      await reader.catchUp((ack) => {
        let set = acks.get(ack.token);
        if (set === undefined) {
          set = new IntervalSet();
          acks.set(ack.token, set);
        }
        set.addRange(ack.from, ack.to);
      });
    } finally {
      await reader.close();
    }
    return acks;
  }

  /** Ms since the ack journal `journal` was last written (its file's mtime); undefined when it has no file. */
  async ackJournalAge(journal: string): Promise<number | undefined> {
    try {
      return Date.now() - (await stat(ackJournalPath(this.dir, journal))).mtimeMs;
    } catch (err) {
      if (isNotFound(err)) return undefined;
      throw ioError(err, `cannot stat ${ackJournalPath(this.dir, journal)}`);
    }
  }

  close(): Promise<void> {
    this.closing ??= this.serialized(async () => {
      await this.log?.close();
      for (const reader of this.ackReaders.values()) await reader.close();
      this.ackReaders.clear();
    });
    return this.closing;
  }

  private serialized<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.queue.then(fn, fn);
    this.queue = run.catch(() => undefined);
    return run;
  }

  private journalPath(generation: number): string {
    return join(this.dir, `journal-${generation}.log`);
  }

  /** The journal of the current generation. */
  private journal(): RecordLog {
    this.log ??= new RecordLog(this.journalPath(this.generation));
    return this.log;
  }

  private applyRecord(record: StateRecord): void {
    this.current.apply(record);
    this.options.onApplied?.(record);
    for (const listener of this.listeners) listener(record);
  }

  private async catchUp(locked: boolean): Promise<void> {
    await this.loadCheckpointIfChanged();
    const log = this.journal();
    let cut;
    try {
      cut = await log.catchUp((payload) => this.applyRecord(decodeRecord(payload)), locked);
    } catch (err) {
      if (isMqlogError(err) && err.code !== 'ERR_CORRUPT_STATE') {
        throw new MqlogError('ERR_CORRUPT_STATE', `consumer journal ${log.path} is corrupt: ${err.message}`, { details: { path: log.path }, cause: err });
      }
      throw err;
    }
    // Only a lock holder writes, so a torn record now is what a killed holder (or a power cut) left.
    if (cut !== undefined) this.options.onTruncated?.(cut);
    if (this.options.claimAcks !== false) await this.catchUpAcks();
  }

  /** Reads the acks appended to the journals of claims in force since the last look. */
  private async catchUpAcks(): Promise<void> {
    const state = this.current;
    const early = this.earlyAcks;
    this.earlyAcks = [];
    for (const item of early) {
      // An ack is written after its claim: one more look at the shared journal finds the claim, or its end.
      if (!state.ackInJournal(item.ack.token, item.ack.from, item.ack.to) && item.looks < 1) this.earlyAcks.push({ ack: item.ack, looks: item.looks + 1 });
    }
    for (const [id, reader] of this.ackReaders) {
      if (state.journals.has(id)) continue;
      this.ackReaders.delete(id);
      await reader.close();
    }
    for (const id of state.journals) {
      let reader = this.ackReaders.get(id);
      if (reader === undefined) {
        reader = new AckJournalReader(this.dir, id);
        this.ackReaders.set(id, reader);
      }
      await reader.catchUp((ack) => {
        if (!state.ackInJournal(ack.token, ack.from, ack.to)) this.earlyAcks.push({ ack, looks: 0 });
      });
    }
  }

  /** Removes an ack journal no claim names any more (its `K` record is durable): a torn tail is kept aside and reported. */
  private async removeAckJournal(id: string): Promise<void> {
    const reader = new AckJournalReader(this.dir, id);
    try {
      const cut = await reader.setAsideTorn();
      if (cut !== undefined) this.options.onTruncated?.(cut);
    } finally {
      await reader.close();
    }
    await rm(ackJournalPath(this.dir, id), { force: true });
    await fsyncDir(this.dir);
  }

  private async loadCheckpointIfChanged(): Promise<void> {
    const path = join(this.dir, CHECKPOINT_FILE);
    let stamp = 'none';
    try {
      // Synchronous: a lock holder looks at it in every transaction, and spends no event-loop turn on it.
      const s = statSync(path, { throwIfNoEntry: false });
      if (s !== undefined) stamp = `${s.ino}:${s.mtimeMs}:${s.size}`;
    } catch (err) {
      if (!isNotFound(err)) throw ioError(err, `cannot stat ${path}`);
    }
    if (stamp === this.checkpointStamp) return;
    const raw = stamp === 'none' ? undefined : await readFileIfExists(path);
    let checkpoint: Checkpoint | undefined;
    if (raw !== undefined) {
      try {
        checkpoint = JSON.parse(raw.toString('utf8')) as Checkpoint;
      } catch (err) {
        throw new MqlogError('ERR_CORRUPT_STATE', `${path} is not valid JSON`, { details: { path }, cause: err });
      }
      if ((checkpoint.version !== 1 && checkpoint.version !== 2) || !Number.isSafeInteger(checkpoint.generation)) {
        throw new MqlogError('ERR_CORRUPT_STATE', `${path} has an unknown version`, { details: { path } });
      }
    }
    const generation = checkpoint?.generation ?? 0;
    this.checkpointStamp = stamp;
    if (generation === this.generation) return;
    this.current = checkpoint === undefined ? new ConsumerState() : ConsumerState.fromCheckpoint(checkpoint);
    this.current.onDone = this.options.onDone;
    this.generation = generation;
    await this.log?.close();
    this.log = undefined;
    // The holders' acks are read again onto the new state.
    this.earlyAcks = [];
    for (const reader of this.ackReaders.values()) await reader.rewind();
  }

  /** Folds the journal into a new checkpoint generation and removes the old journal. */
  private async checkpoint(): Promise<void> {
    const next = this.generation + 1;
    await writeFileAtomic(join(this.dir, CHECKPOINT_FILE), JSON.stringify(this.current.toCheckpoint(next)));
    const old = this.journalPath(this.generation);
    await this.log?.close();
    this.log = undefined;
    this.generation = next;
    const s = await stat(join(this.dir, CHECKPOINT_FILE));
    this.checkpointStamp = `${s.ino}:${s.mtimeMs}:${s.size}`;
    await rm(old, { force: true });
    await fsyncDir(this.dir);
  }
}
