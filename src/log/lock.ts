/**
 * Cross-process locks (proper-lockfile): a lock is a directory created with mkdir, kept fresh by its
 * holder, and taken over when its holder stopped refreshing it (crashed) for `staleMs`
 * (spec/log-format.md §7).
 *
 * Long-held locks record their holder in `<lock>.owner`, written durably (temp file, fsync, rename,
 * dir fsync) so that it survives a power cut whole or not at all: the holder's pid, the start time of
 * that process, the boot it ran in, and the identity (inode, birth time) of the lock directory it made.
 * A lock whose recorded holder is gone — the machine rebooted since, the pid no longer exists, or it now
 * belongs to another process — is taken over at once instead of after `staleMs`; so is one whose owner
 * file exists but cannot be read (a live holder's is always whole). Takeovers run under a short
 * `<lock>.takeover` guard and re-check the directory's identity under it, so two processes never both
 * take over, and a fresh lock that inherited a dead holder's owner file is never mistaken for it.
 *
 * A lock whose freshness could not be kept (the event loop stalled past `staleMs`, the directory was
 * removed) is compromised: it reports so through `compromised`, and its holder must stop writing.
 */
import { chmod, mkdir, readFile, rm, rmdir, stat } from 'node:fs/promises';
import { hostname } from 'node:os';
import lockfile from 'proper-lockfile';
import { MqlogError, abortError, ioError } from '../errors.js';
import { isNotFound, writeFileAtomic } from '../util/fs.js';
import { RemovalWatch, sleep } from './removal-watch.js';

export const DEFAULT_LOCK_STALE_MS = 5000;
const UPDATE_EVERY_MS = 1000;
/** A takeover guard older than this was left by a process that died while taking over. */
const TAKEOVER_GUARD_STALE_MS = 2000;
/** An unreadable owner proves nothing about the pid: the lock must also have gone this long unrefreshed. */
const UNREFRESHED_MS = 2 * UPDATE_EVERY_MS + 500;

export interface LockOptions {
  /** Wait for the lock instead of failing with ERR_LOCKED at once. */
  readonly wait?: boolean;
  /**
   * When the holder cannot be judged (no owner file yet), wait for its lock to go stale (at most
   * `staleMs` plus a little) instead of failing with ERR_LOCKED. A holder known to be dead is taken
   * over at once whether this is set or not.
   */
  readonly waitForDeadHolder?: boolean;
  /** Write `<path>.owner` after taking the lock. Default true; short-held locks skip it. */
  readonly recordOwner?: boolean;
  readonly signal?: AbortSignal;
  readonly staleMs?: number;
  /**
   * With `wait`: the longest pause between two attempts (default 50 ms). A lock held for milliseconds
   * by turns wants a short one, or a waiter keeps missing the moments it is free.
   */
  readonly maxRetryDelayMs?: number;
  /**
   * With `wait`: while waiting, watch the lock directory and try again as soon as it changes (the
   * holder's release), instead of only at the next retry time: waiters of a lock held by turns get
   * their turn rather than the holder taking it again and again.
   */
  readonly wakeOnChange?: boolean;
  /**
   * Called once if the lock is compromised while held (it could not be kept fresh, or its directory was
   * removed): another process may take it over, so the holder must stop writing.
   */
  readonly onCompromised?: (err: MqlogError) => void;
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
    const changes = options.wakeOnChange === true && options.wait === true ? new RemovalWatch(path) : undefined;
    try {
      return await Lock.take(path, options, changes);
    } finally {
      changes?.close();
    }
  }

  private static async take(path: string, options: LockOptions, changes: RemovalWatch | undefined): Promise<Lock> {
    const lock = new Lock(path);
    const staleMs = options.staleMs ?? DEFAULT_LOCK_STALE_MS;
    const recordOwner = options.recordOwner !== false;
    let delayMs = 1;
    let staleDeadline: number | undefined;
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
            if (lock.compromisedBy !== undefined) return;
            lock.compromisedBy = err;
            options.onCompromised?.(new MqlogError('ERR_LOCKED', `lost the lock ${path}: ${err.message}`, { details: { path }, cause: err }));
          },
        });
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ELOCKED') throw ioError(err, `cannot take lock ${path}`, { path });
        if (recordOwner && (await takeOverIfDead(path))) continue;
        if (options.wait !== true) {
          const owner = await readOwner(path);
          const live = owner.kind === 'owner' && !(await holderIsDead(owner.owner));
          // Without a live holder on record, the lock is about to be taken over (or go stale): wait for that.
          staleDeadline ??= Date.now() + staleMs + 3000;
          if (live || options.waitForDeadHolder !== true || Date.now() >= staleDeadline) {
            const by = owner.kind === 'owner' ? `process ${owner.owner.pid} on ${owner.owner.host}` : 'another process';
            throw new MqlogError('ERR_LOCKED', `${path} is locked by ${by}`, { details: { path, ...(owner.kind === 'owner' ? { pid: owner.owner.pid } : {}) }, cause: err });
          }
        }
        await sleep(delayMs, options.signal, changes);
        delayMs = Math.min(delayMs * 2, options.maxRetryDelayMs ?? 50);
        continue;
      }
      if (recordOwner) {
        lock.ownerRecorded = true;
        await chmod(path, 0o700).catch(() => undefined);
        await writeOwner(path).catch(() => undefined);
      }
      return lock;
    }
  }

  /** Takes the lock if it is free now (or its holder is dead); undefined when another process holds it. */
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
    if (owner.kind !== 'owner' || owner.owner.pid !== pid) return false;
    return takeOverIfDead(path);
  }

  /**
   * The pid of the live process of this host recorded as holding the lock at `path`, if any (to signal
   * a running daemon); undefined when none is recorded, it runs elsewhere, or it is gone.
   */
  static async holderPid(path: string): Promise<number | undefined> {
    const owner = await readOwner(path);
    if (owner.kind !== 'owner' || owner.owner.host !== hostname() || (await holderIsDead(owner.owner))) return undefined;
    return owner.owner.pid;
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
      if (this.ownerRecorded) await rm(ownerPath(this.path), { force: true }).catch(() => undefined);
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

/** What `<lock>.owner` says (spec/log-format.md §7). */
interface Owner {
  readonly pid: number;
  readonly host: string;
  /** Linux boot id of the holder's boot. */
  readonly boot?: string;
  /** Start time of the holder process (clock ticks since boot, /proc/<pid>/stat field 22). */
  readonly start?: string;
  /** The lock directory the holder created: inode and birth time (ms). */
  readonly lock?: { readonly ino: number; readonly birth: number };
}

type OwnerRead = { readonly kind: 'owner'; readonly owner: Owner } | { readonly kind: 'missing' } | { readonly kind: 'unreadable' };

function ownerPath(lockPath: string): string {
  return `${lockPath}.owner`;
}

async function writeOwner(path: string): Promise<void> {
  const dir = await stat(path);
  const boot = await bootId();
  const start = await processStart(process.pid);
  const owner = {
    pid: process.pid,
    host: hostname(),
    since: new Date().toISOString(),
    ...(boot === undefined ? {} : { boot }),
    ...(start === undefined ? {} : { start }),
    lock: { ino: dir.ino, birth: dir.birthtimeMs },
  };
  await writeFileAtomic(ownerPath(path), JSON.stringify(owner));
}

async function readOwner(path: string): Promise<OwnerRead> {
  let raw: string;
  try {
    raw = await readFile(ownerPath(path), 'utf8');
  } catch (err) {
    return isNotFound(err) ? { kind: 'missing' } : { kind: 'unreadable' };
  }
  try {
    const owner = JSON.parse(raw) as Partial<Owner>;
    if (typeof owner.pid === 'number' && typeof owner.host === 'string') return { kind: 'owner', owner: owner as Owner };
  } catch {
    // reported as unreadable
  }
  return { kind: 'unreadable' };
}

/** True when the recorded holder is a process of this host that is gone. */
async function holderIsDead(owner: Owner): Promise<boolean> {
  if (owner.host !== hostname()) return false;
  const boot = await bootId();
  if (owner.boot !== undefined && boot !== undefined && owner.boot !== boot) return true;
  try {
    process.kill(owner.pid, 0);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ESRCH') return true;
  }
  // The pid exists: dead all the same if it now belongs to a process that started at another time.
  if (owner.start === undefined) return false;
  const start = await processStart(owner.pid);
  return start !== undefined && start !== owner.start;
}

/**
 * Takes the lock at `path` away from a holder that is gone, under the `<path>.takeover` guard.
 * Returns true when the lock directory is gone now (taken away, or vanished), so a retry can take it.
 */
async function takeOverIfDead(path: string): Promise<boolean> {
  const first = await readOwner(path);
  if (first.kind === 'missing' || (first.kind === 'owner' && !(await holderIsDead(first.owner)))) return false;
  const guard = `${path}.takeover`;
  try {
    await mkdir(guard, { mode: 0o700 });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') return false;
    // Someone is taking over now, or died doing it.
    const age = await stat(guard).then((s) => Date.now() - s.mtimeMs, () => 0);
    if (age > TAKEOVER_GUARD_STALE_MS) await rmdir(guard).catch(() => undefined);
    return false;
  }
  try {
    let dir;
    try {
      dir = await stat(path);
    } catch (err) {
      return isNotFound(err);
    }
    // Judge again under the guard: the lock may have changed hands since the first look.
    const again = await readOwner(path);
    let dead = false;
    if (again.kind === 'unreadable') dead = Date.now() - dir.mtimeMs > UNREFRESHED_MS;
    else if (again.kind === 'owner' && (await holderIsDead(again.owner))) {
      const recorded = again.owner.lock;
      // The owner file must speak of this very directory: after a stale takeover by proper-lockfile, a
      // new holder's directory can briefly sit beside the dead holder's owner file.
      dead = recorded === undefined ? Date.now() - dir.mtimeMs > UNREFRESHED_MS : recorded.ino === dir.ino && recorded.birth === dir.birthtimeMs;
    }
    if (!dead) return false;
    await rm(ownerPath(path), { force: true });
    await rm(path, { recursive: true, force: true });
    return true;
  } finally {
    await rmdir(guard).catch(() => undefined);
  }
}

let bootIdValue: Promise<string | undefined> | undefined;

/** This boot's id (Linux), or undefined where the system has none. */
function bootId(): Promise<string | undefined> {
  bootIdValue ??= readFile('/proc/sys/kernel/random/boot_id', 'utf8').then((s) => s.trim() || undefined, () => undefined);
  return bootIdValue;
}

/** Start time of a process (Linux /proc/<pid>/stat field 22), or undefined where it cannot be read. */
async function processStart(pid: number): Promise<string | undefined> {
  try {
    const line = await readFile(`/proc/${pid}/stat`, 'utf8');
    // Field 2 (the command) is in parentheses and may hold spaces: count from after its end.
    return line.slice(line.lastIndexOf(')') + 2).split(' ')[19];
  } catch {
    return undefined;
  }
}
