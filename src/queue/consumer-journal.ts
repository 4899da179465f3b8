/**
 * The files behind a ConsumerState, shared by every consumer process of one queue
 * (spec/log-format.md §11):
 *
 *   <queue>/consumer/checkpoint.json   the state at the start of a journal generation (atomic replace)
 *   <queue>/consumer/journal-<g>.log   RECORD frames appended since, fdatasync'd before anyone relies on them
 *   <queue>/consumer/state.lock        held for one transaction at a time (proper-lockfile)
 *
 * Concurrency contract: a transaction takes the lock, catches up on records other processes appended,
 * lets the caller decide (lease, ack, …) against the current state, appends its records, fsyncs, applies
 * them, and releases the lock. Readers that only look (dump, stat) catch up without the lock and stop
 * before a record that is still being written. Recovery reads the checkpoint and one small journal; it
 * never reads the queue's segments.
 *
 * The journal follows the log's torn-tail rule (spec/log-format.md §3.2, §3.3): every write begins with a
 * SYNC frame stating how much of the file is known to be fsync'd, and whatever a crash or power cut left
 * unreadable past that is a torn tail, which the next lock holder sets aside in a `.torn` file and clears.
 */
import { rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { MqlogError, ioError, isMqlogError } from '../errors.js';
import { Lock, RecordLog, type TruncatedTail } from '../log/index.js';
import { ensureDir, fsyncDir, isNotFound, readFileIfExists, writeFileAtomic } from '../util/fs.js';
import { ConsumerState, decodeRecord, encodeRecord, type Checkpoint, type StateRecord } from './acks.js';

export const CONSUMER_DIR = 'consumer';
const CHECKPOINT_FILE = 'checkpoint.json';
const LOCK_DIR = 'state.lock';
/** A journal longer than this is folded into a new checkpoint at the end of a transaction. */
const CHECKPOINT_AFTER_BYTES = 1024 * 1024;

export interface ConsumerJournalOptions {
  /** Called when a torn record left by a killed process (or a power cut) was cut off. */
  readonly onTruncated?: (tail: TruncatedTail) => void;
  /** Called for every record applied from the journal, by any process (observers count acks with it). */
  readonly onApplied?: (record: StateRecord) => void;
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

  private constructor(queueDir: string, options: ConsumerJournalOptions) {
    this.dir = join(queueDir, CONSUMER_DIR);
    this.options = options;
  }

  /** Loads the state (checkpoint + journal) without taking the lock. */
  static async open(queueDir: string, options: ConsumerJournalOptions = {}): Promise<ConsumerJournal> {
    const journal = new ConsumerJournal(queueDir, options);
    await journal.catchUp(false);
    return journal;
  }

  /** The state as of the last catch-up. Do not keep references across awaits of other calls. */
  get state(): ConsumerState {
    return this.current;
  }

  /** Reads records other processes appended since the last look (no lock). */
  refresh(): Promise<void> {
    return this.serialized(() => this.catchUp(false));
  }

  /**
   * Runs one transaction: lock, catch up, `decide` returns the records to append and a result; the records
   * are made durable and applied before the lock is released and the result returned.
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
      const lock = await Lock.acquire(join(this.dir, LOCK_DIR), { wait: true, recordOwner: false, maxRetryDelayMs: 4, wakeOnChange: true, ...(signal === undefined ? {} : { signal }) });
      try {
        await this.catchUp(true);
        const { records, result } = await decide(this.current);
        if (records.length > 0) {
          lock.assertHeld();
          // Leases and their renewals need no fsync: lost in a power cut, they only make a message go out
          // again sooner (deliveries are at least once anyway). Acks, nacks and ends are made durable.
          await this.journal().append(records.map(encodeRecord), records.some((r) => r.k !== 'L' && r.k !== 'E'));
          for (const record of records) {
            this.current.apply(record);
            this.options.onApplied?.(record);
          }
          if (this.journal().bytes > CHECKPOINT_AFTER_BYTES) await this.checkpoint();
        }
        return result;
      } finally {
        await lock.release();
      }
    });
  }

  close(): Promise<void> {
    this.closing ??= this.serialized(async () => {
      await this.log?.close();
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

  private async catchUp(locked: boolean): Promise<void> {
    await this.loadCheckpointIfChanged();
    const log = this.journal();
    let cut;
    try {
      cut = await log.catchUp((payload) => {
        const record = decodeRecord(payload);
        this.current.apply(record);
        this.options.onApplied?.(record);
      }, locked);
    } catch (err) {
      if (isMqlogError(err) && err.code !== 'ERR_CORRUPT_STATE') {
        throw new MqlogError('ERR_CORRUPT_STATE', `consumer journal ${log.path} is corrupt: ${err.message}`, { details: { path: log.path }, cause: err });
      }
      throw err;
    }
    // Only a lock holder writes, so a torn record now is what a killed holder (or a power cut) left.
    if (cut !== undefined) this.options.onTruncated?.(cut);
  }

  private async loadCheckpointIfChanged(): Promise<void> {
    const path = join(this.dir, CHECKPOINT_FILE);
    let stamp = 'none';
    try {
      const s = await stat(path);
      stamp = `${s.ino}:${s.mtimeMs}:${s.size}`;
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
      if (checkpoint.version !== 1 || !Number.isSafeInteger(checkpoint.generation)) {
        throw new MqlogError('ERR_CORRUPT_STATE', `${path} has an unknown version`, { details: { path } });
      }
    }
    const generation = checkpoint?.generation ?? 0;
    this.checkpointStamp = stamp;
    if (generation === this.generation) return;
    this.current = checkpoint === undefined ? new ConsumerState() : ConsumerState.fromCheckpoint(checkpoint);
    this.generation = generation;
    await this.log?.close();
    this.log = undefined;
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
