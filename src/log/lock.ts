/**
 * Cross-process locks (proper-lockfile): a lock is a directory created with mkdir, kept fresh by its
 * holder, and taken over when its holder stopped refreshing it (crashed) for `staleMs`
 * (spec/log-format.md §7).
 *
 * A lock whose freshness could not be kept (the event loop stalled past `staleMs`, the directory was
 * removed) is compromised: it reports so through `compromised`, and its holder must stop writing.
 */
import lockfile from 'proper-lockfile';
import { MqlogError, abortError, ioError } from '../errors.js';

export const DEFAULT_LOCK_STALE_MS = 5000;
const UPDATE_EVERY_MS = 1000;

export interface LockOptions {
  /** Wait for the lock instead of failing with ERR_LOCKED at once. */
  readonly wait?: boolean;
  readonly signal?: AbortSignal;
  readonly staleMs?: number;
}

export class Lock {
  readonly path: string;
  private releaseFn: (() => Promise<void>) | undefined;
  private releasing: Promise<void> | undefined;
  private compromisedBy: Error | undefined;

  private constructor(path: string) {
    this.path = path;
  }

  /**
   * Takes the lock at `path` (the lock directory itself).
   * @throws ERR_LOCKED when another live process holds it (and `wait` is false); ERR_ABORTED on abort.
   */
  static async acquire(path: string, options: LockOptions = {}): Promise<Lock> {
    const lock = new Lock(path);
    const staleMs = options.staleMs ?? DEFAULT_LOCK_STALE_MS;
    let delayMs = 1;
    for (;;) {
      if (options.signal?.aborted === true) throw abortError(options.signal);
      try {
        lock.releaseFn = await lockfile.lock(path, {
          lockfilePath: path,
          realpath: false,
          stale: staleMs,
          update: Math.min(UPDATE_EVERY_MS, Math.floor(staleMs / 2)),
          retries: 0,
          onCompromised: (err: Error) => {
            lock.compromisedBy = err;
          },
        });
        return lock;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ELOCKED') throw ioError(err, `cannot take lock ${path}`, { path });
        if (options.wait !== true) {
          throw new MqlogError('ERR_LOCKED', `${path} is locked by another process`, { details: { path }, cause: err });
        }
      }
      await sleep(delayMs, options.signal);
      delayMs = Math.min(delayMs * 2, 50);
    }
  }

  /** Takes the lock if it is free now; undefined when another process holds it. */
  static async tryAcquire(path: string, staleMs?: number): Promise<Lock | undefined> {
    try {
      return await Lock.acquire(path, staleMs === undefined ? {} : { staleMs });
    } catch (err) {
      if (err instanceof MqlogError && err.code === 'ERR_LOCKED') return undefined;
      throw err;
    }
  }

  /** True once the lock could not be kept fresh: another process may have taken it over. */
  get compromised(): boolean {
    return this.compromisedBy !== undefined;
  }

  /** Throws ERR_LOCKED if the lock was compromised, so a writer stops before writing. */
  assertHeld(): void {
    if (this.compromisedBy !== undefined) {
      throw new MqlogError('ERR_LOCKED', `lost the lock ${this.path}`, { details: { path: this.path }, cause: this.compromisedBy });
    }
  }

  /** Releases the lock. Idempotent. */
  release(): Promise<void> {
    this.releasing ??= (async () => {
      const release = this.releaseFn;
      this.releaseFn = undefined;
      if (release === undefined || this.compromisedBy !== undefined) return;
      try {
        await release();
      } catch (err) {
        // Released already (compromised and removed): nothing to give back.
        if ((err as NodeJS.ErrnoException).code !== 'ERELEASED') throw ioError(err, `cannot release lock ${this.path}`);
      }
    })();
    return this.releasing;
  }
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(done, ms);
    function done(): void {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }
    function onAbort(): void {
      clearTimeout(timer);
      reject(abortError(signal as AbortSignal));
    }
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}
