/**
 * A cross-process lock held for milliseconds at a time, by many processes in turn (the consumer state's
 * `state.lock`, spec/log-format.md §7, §11): a file created with O_EXCL, removed to release it.
 *
 * A file rather than proper-lockfile's directory: on a journaling file system, creating and removing an
 * empty file costs a fraction of a directory's (no data block is allocated and freed each time), and a
 * lock taken over and over pays it at every turn. Taking it costs no event-loop turn: one look (stat,
 * which takes no lock on the parent directory, unlike a failed create) and one synchronous create when
 * it is free. Waiters wake when it is removed (a watch of the lock file itself), or after a short timer.
 *
 * It is never refreshed: a holder that kept it past half the stale time counts it as lost (assertHeld
 * throws, and release leaves it alone), because another process takes a lock whose file is older than
 * the stale time over — under the `<lock>.takeover` guard (mkdir), after looking again, so that two
 * processes never both take over. A lock left by a process of the format of before (a directory of
 * that name) is honoured, and taken over the same way once stale.
 */
import { closeSync, mkdirSync, openSync, rmSync, rmdirSync, statSync, unlinkSync } from 'node:fs';
import { MqlogError, abortError, ioError } from '../errors.js';
import { FILE_MODE } from '../util/fs.js';
import { RemovalWatch, sleep } from './removal-watch.js';
import { DEFAULT_LOCK_STALE_MS } from './lock.js';

export interface ShortLockOptions {
  readonly signal?: AbortSignal;
  readonly staleMs?: number;
  /** The longest pause between two looks while waiting (default 20 ms; a removal wakes waiters at once). */
  readonly maxRetryDelayMs?: number;
}

/** A takeover guard older than this was left by a process that died while taking over. */
const TAKEOVER_GUARD_STALE_MS = 2000;

export class ShortLock {
  readonly path: string;
  private readonly staleMs: number;
  private readonly since: number;
  private releasing: Promise<void> | undefined;

  private constructor(path: string, staleMs: number) {
    this.path = path;
    this.staleMs = staleMs;
    this.since = performance.now();
  }

  /**
   * Takes the lock at `path` (a file), waiting while another process holds it.
   * @throws ERR_ABORTED (or the signal's ERR_TIMEOUT) when the signal fires; ERR_IO.
   */
  static async acquire(path: string, options: ShortLockOptions = {}): Promise<ShortLock> {
    const staleMs = options.staleMs ?? DEFAULT_LOCK_STALE_MS;
    let changes: RemovalWatch | undefined;
    let delayMs = 1;
    try {
      for (;;) {
        if (options.signal?.aborted === true) throw abortError(options.signal);
        const taken = take(path, staleMs);
        if (taken === 'taken') return new ShortLock(path, staleMs);
        if (taken === 'stale') {
          takeOverStale(path, staleMs);
          continue;
        }
        changes ??= new RemovalWatch(path);
        await sleep(delayMs, options.signal, changes);
        delayMs = Math.min(delayMs * 2, options.maxRetryDelayMs ?? 20);
      }
    } finally {
      changes?.close();
    }
  }

  /** True once held past half the stale time: another process may have taken it over. */
  get compromised(): boolean {
    return performance.now() - this.since > this.staleMs / 2;
  }

  /** Throws ERR_LOCKED if the lock may be another process's now, so that a writer stops before writing. */
  assertHeld(): void {
    if (this.compromised) throw new MqlogError('ERR_LOCKED', `held the lock ${this.path} too long: another process may have taken it over`, { details: { path: this.path } });
  }

  /**
   * Releases the lock (unless it may be another process's by now), at once: a removal left to the
   * thread pool would hold the lock until a thread of a busy process gets to it. Idempotent.
   */
  release(): Promise<void> {
    if (this.releasing === undefined) {
      this.releasing = Promise.resolve();
      if (!this.compromised) {
        try {
          unlinkSync(this.path);
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code !== 'ENOENT') this.releasing = Promise.reject(ioError(err, `cannot release lock ${this.path}`, { path: this.path }));
        }
      }
    }
    return this.releasing;
  }
}

/** One attempt: a look, then a create when the lock is free. */
function take(path: string, staleMs: number): 'taken' | 'held' | 'stale' {
  const age = ageMs(path);
  if (age !== undefined) return age > staleMs ? 'stale' : 'held';
  try {
    closeSync(openSync(path, 'wx', FILE_MODE));
    return 'taken';
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return 'held';
    throw ioError(err, `cannot take lock ${path}`, { path });
  }
}

/** Removes a stale lock under the takeover guard, after looking again (it may have changed hands). */
function takeOverStale(path: string, staleMs: number): void {
  const guard = `${path}.takeover`;
  try {
    mkdirSync(guard);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw ioError(err, `cannot take lock ${path} over`, { path });
    // Someone is taking over now, or died doing it.
    const age = ageMs(guard);
    if (age !== undefined && age > TAKEOVER_GUARD_STALE_MS) rmdirSync(guard);
    return;
  }
  try {
    const age = ageMs(path);
    if (age !== undefined && age > staleMs) rmSync(path, { recursive: true, force: true });
  } finally {
    rmdirSync(guard);
  }
}

/** Ms since the lock was made (or, for a directory of before, last refreshed); undefined when there is none. */
function ageMs(path: string): number | undefined {
  try {
    // No exception for the usual answer (a free lock): building one costs more than the look.
    const s = statSync(path, { throwIfNoEntry: false });
    return s === undefined ? undefined : Date.now() - s.mtimeMs;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw ioError(err, `cannot look at lock ${path}`, { path });
  }
}
