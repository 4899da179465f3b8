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
import { open, rm, stat, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { MqlogError, ioError, isMqlogError } from '../errors.js';
import { FrameType, encodeFrame, encodeSyncFrame } from '../log/frame.js';
import { Lock } from '../log/lock.js';
import { setAsideTorn, type TruncatedTail } from '../log/recovery.js';
import { SegmentReader } from '../log/segment.js';
import { FILE_MODE, ensureDir, fsyncDir, isNotFound, readFileIfExists, writeFileAtomic } from '../util/fs.js';
import { ConsumerState, decodeRecord, encodeRecord, type Checkpoint, type StateRecord } from './acks.js';

export const CONSUMER_DIR = 'consumer';
const CHECKPOINT_FILE = 'checkpoint.json';
const LOCK_DIR = 'state.lock';
/** A journal longer than this is folded into a new checkpoint at the end of a transaction. */
const CHECKPOINT_AFTER_BYTES = 1024 * 1024;
/** Zeros written ahead of the journal's end (see append). */
const RESERVE_BYTES = 64 * 1024;

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
  private journalPosition = 0;
  /** Length of the current journal known to be fsync'd (by this process, or stated by a SYNC frame). */
  private syncedEnd = 0;
  private nextSequence = 0;
  private handle: FileHandle | undefined;
  private handleGeneration = -1;
  private reservedEnd = 0;
  private journalStamp = '';
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
      const lock = await Lock.acquire(join(this.dir, LOCK_DIR), { wait: true, recordOwner: false, ...(signal === undefined ? {} : { signal }) });
      try {
        await this.catchUp(true);
        const { records, result } = await decide(this.current);
        if (records.length > 0) {
          lock.assertHeld();
          // Leases alone need no fsync: lost in a power cut, they only make a message go out again
          // sooner (deliveries are at least once anyway). Acks, nacks and ends are made durable.
          await this.append(records, records.some((r) => r.k !== 'L'));
          for (const record of records) {
            this.current.apply(record);
            this.options.onApplied?.(record);
          }
          if (this.journalPosition > CHECKPOINT_AFTER_BYTES) await this.checkpoint();
        }
        return result;
      } finally {
        await lock.release();
      }
    });
  }

  close(): Promise<void> {
    this.closing ??= this.serialized(async () => {
      await this.handle?.close();
      this.handle = undefined;
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

  private async catchUp(locked: boolean): Promise<void> {
    await this.loadCheckpointIfChanged();
    const path = this.journalPath(this.generation);
    // Unchanged since we last read or wrote it: nothing to catch up on.
    const stamp = await stat(path).then((s) => `${this.generation}:${s.ino}:${s.mtimeMs}:${s.size}`, () => 'none');
    if (stamp === this.journalStamp) return;
    this.journalStamp = stamp;
    let reader: SegmentReader;
    try {
      reader = await SegmentReader.open(path, { position: this.journalPosition });
    } catch (err) {
      if (isMqlogError(err, 'ERR_NOT_FOUND')) return;
      throw err;
    }
    try {
      for (;;) {
        let step;
        try {
          step = await reader.next();
          this.syncedEnd = Math.max(this.syncedEnd, reader.syncedBytes);
        } catch (err) {
          if (isMqlogError(err)) {
            throw new MqlogError('ERR_CORRUPT_STATE', `consumer journal ${path} is corrupt: ${err.message}`, { details: { path }, cause: err });
          }
          throw err;
        }
        if (step.kind === 'frame') {
          if (step.frame.type === FrameType.RECORD) {
            const record = decodeRecord(step.frame.payload);
            this.current.apply(record);
            this.options.onApplied?.(record);
          }
          this.journalPosition = step.frame.position + step.frame.bytes;
          this.nextSequence = step.frame.offset + 1;
          continue;
        }
        if (step.kind === 'torn' && locked) {
          // Only a lock holder writes, so a torn record now is what a killed holder left: cut it off.
          await this.handle?.close();
          this.handle = undefined;
          const savedAs = await setAsideTorn(path, step.position);
          // Zero the torn bytes rather than truncating: the reserve after them stays usable.
          const handle = await open(path, 'r+');
          try {
            await handle.write(Buffer.alloc(step.tornBytes), 0, step.tornBytes, step.position);
            await handle.datasync();
          } finally {
            await handle.close();
          }
          this.syncedEnd = step.position;
          this.options.onTruncated?.({ path, position: step.position, bytes: step.tornBytes, reason: step.reason, savedAs });
        }
        return;
      }
    } finally {
      await reader.close();
    }
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
    this.journalPosition = 0;
    this.syncedEnd = 0;
    this.nextSequence = 0;
  }

  private async append(records: StateRecord[], durable = true): Promise<void> {
    const path = this.journalPath(this.generation);
    if (this.handle === undefined || this.handleGeneration !== this.generation) {
      await this.handle?.close();
      this.handle = undefined;
      try {
        await (await open(path, 'a', FILE_MODE)).close();
        this.handle = await open(path, 'r+');
      } catch (err) {
        throw ioError(err, `cannot open ${path}`);
      }
      this.handleGeneration = this.generation;
      this.reservedEnd = (await this.handle.stat()).size;
      if (this.journalPosition === 0) await fsyncDir(this.dir);
    }
    const frames = records.map((record, i) => encodeFrame(FrameType.RECORD, this.nextSequence + i, encodeRecord(record)));
    // The write opens with what is known to be fsync'd before it (nothing to state at the very start).
    if (this.journalPosition > 0) frames.unshift(encodeSyncFrame(this.nextSequence, Math.min(this.syncedEnd, this.journalPosition)));
    const bytes = frames.reduce((n, f) => n + f.length, 0);
    const end = this.journalPosition + bytes;
    try {
      // Records overwrite zeros reserved ahead, so that acks — which free space — still fit on a full disk.
      const reserve = end > this.reservedEnd ? RESERVE_BYTES : 0;
      try {
        await this.handle.writev(reserve > 0 ? [...frames, Buffer.alloc(reserve)] : frames, this.journalPosition);
        this.reservedEnd = Math.max(this.reservedEnd, end + reserve);
      } catch (err) {
        if (reserve === 0 || (err as NodeJS.ErrnoException).code !== 'ENOSPC') throw err;
        await this.handle.truncate(Math.max(this.journalPosition, this.reservedEnd));
        await this.handle.writev(frames, this.journalPosition);
        this.reservedEnd = Math.max(this.reservedEnd, end);
      }
      if (durable) {
        await this.handle.datasync();
        this.syncedEnd = end;
      }
    } catch (err) {
      // Zero what may have been written, so that no partial record stays behind.
      await this.handle.write(Buffer.alloc(bytes), 0, bytes, this.journalPosition).catch(() => undefined);
      throw ioError(err, `cannot append to ${path}`, { path });
    }
    this.journalPosition = end;
    this.nextSequence += records.length;
    // Our own write is no news to our next catch-up.
    this.journalStamp = await stat(path).then((st) => `${this.generation}:${st.ino}:${st.mtimeMs}:${st.size}`, () => '');
  }

  /** Folds the journal into a new checkpoint generation and removes the old journal. */
  private async checkpoint(): Promise<void> {
    const next = this.generation + 1;
    await writeFileAtomic(join(this.dir, CHECKPOINT_FILE), JSON.stringify(this.current.toCheckpoint(next)));
    const old = this.journalPath(this.generation);
    await this.handle?.close();
    this.handle = undefined;
    this.generation = next;
    this.journalPosition = 0;
    this.syncedEnd = 0;
    this.nextSequence = 0;
    const s = await stat(join(this.dir, CHECKPOINT_FILE));
    this.checkpointStamp = `${s.ino}:${s.mtimeMs}:${s.size}`;
    await rm(old, { force: true });
    await fsyncDir(this.dir);
  }
}
