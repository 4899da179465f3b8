/**
 * Cross-process locks (proper-lockfile): a lock is a directory created with mkdir, kept fresh by its
 * holder, and taken over when its holder stopped refreshing it (crashed) for `staleMs`
 * (spec/log-format.md §7).
 *
 * A lock whose freshness could not be kept (the event loop stalled past `staleMs`, the directory was
 * removed) is compromised: it reports so through `compromised`, and its holder must stop writing.
 */
import { chmod, readFile, rm, writeFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import lockfile from 'proper-lockfile';
import { MqlogError, abortError, ioError } from '../errors.js';

export const DEFAULT_LOCK_STALE_MS = 5000;
const UPDATE_EVERY_MS = 1000;

export interface LockOptions {
  /** Wait for the lock instead of failing with ERR_LOCKED at once. */
  readonly wait?: boolean;
  /**
   * When the holder recorded in `<path>.owner` is a process of this host that no longer exists, wait
   * for its lock to go stale (at most `staleMs` plus a little) instead of failing with ERR_LOCKED.
   */
  readonly waitForDeadHolder?: boolean;
  /** Write `<path>.owner` (pid, host) after taking the lock. Default true; short-held locks skip it. */
  readonly recordOwner?: boolean;
  readonly signal?: AbortSignal;
  readonly staleMs?: number;
}

export class Lock {
  readonly path: string;
  private releaseFn: (() => Promise<void>) | undefined;
  private releasing: Promise<void> | undefined;
  private compromisedBy: Error | undefined;
  private ownerRecorded = false;

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
    let deadHolderDeadline: number | undefined;
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
        if (options.recordOwner !== false) {
          lock.ownerRecorded = true;
          await chmod(path, 0o700).catch(() => undefined);
          await writeFile(`${path}.owner`, JSON.stringify({ pid: process.pid, host: hostname(), since: new Date().toISOString() }), { mode: 0o600 }).catch(() => undefined);
        }
        return lock;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ELOCKED') throw ioError(err, `cannot take lock ${path}`, { path });
        if (options.wait !== true) {
          if (options.waitForDeadHolder === true && (deadHolderDeadline ?? 0) >= Date.now()) {
            // keep waiting for the dead holder's lock to go stale
          } else if (options.waitForDeadHolder === true && deadHolderDeadline === undefined && (await holderIsDead(path))) {
            deadHolderDeadline = Date.now() + staleMs + 3000;
          } else {
            const owner = await readOwner(path);
            const by = owner === undefined ? 'another process' : `process ${owner.pid} on ${owner.host}`;
            throw new MqlogError('ERR_LOCKED', `${path} is locked by ${by}`, { details: { path, ...(owner === undefined ? {} : { pid: owner.pid }) }, cause: err });
          }
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

  /**
   * Removes the lock at `path` if its recorded holder is `pid` of this host and that process is gone
   * (a supervisor clearing the lock of the child it saw die, instead of waiting for it to go stale).
   */
  static async breakIfHolderDied(path: string, pid: number): Promise<boolean> {
    const owner = await readOwner(path);
    if (owner === undefined || owner.pid !== pid || owner.host !== hostname() || !(await holderIsDead(path))) return false;
    await rm(path, { recursive: true, force: true });
    await rm(`${path}.owner`, { force: true });
    return true;
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
      if (this.ownerRecorded) await rm(`${this.path}.owner`, { force: true }).catch(() => undefined);
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

interface Owner {
  readonly pid: number;
  readonly host: string;
}

async function readOwner(path: string): Promise<Owner | undefined> {
  try {
    const owner = JSON.parse(await readFile(`${path}.owner`, 'utf8')) as Partial<Owner>;
    return typeof owner.pid === 'number' && typeof owner.host === 'string' ? { pid: owner.pid, host: owner.host } : undefined;
  } catch {
    return undefined;
  }
}

/** True when the recorded holder is a process of this host that is gone. */
async function holderIsDead(path: string): Promise<boolean> {
  const owner = await readOwner(path);
  if (owner === undefined || owner.host !== hostname()) return false;
  try {
    process.kill(owner.pid, 0);
    return false;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'ESRCH';
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
