/**
 * Waiting for a lock held by another process: the change events of one entry of a directory (its
 * removal wakes the waiter at once), with a timer as the fallback (a missed event costs latency, never
 * progress).
 */
import { watch, type FSWatcher } from 'node:fs';
import { abortError } from '../errors.js';

/** Change events of one entry of a directory (a file watch started on first use), for waiters that sleep. */
export class DirChanges {
  private readonly dir: string;
  private readonly name: string;
  private watcher: FSWatcher | undefined;
  private failed = false;
  private wake: (() => void) | undefined;

  constructor(dir: string, name: string) {
    this.dir = dir;
    this.name = name;
  }

  /** Calls `wake` once at the next change (replacing an earlier one); returns how to cancel it. */
  next(wake: () => void): () => void {
    if (this.watcher === undefined && !this.failed) {
      try {
        // Only the lock's own events (its removal): the holder's writes beside it wake no one.
        this.watcher = watch(this.dir, (_event, file) => {
          if (file === null || file === this.name) this.fire();
        });
        this.watcher.on('error', () => this.fire());
      } catch {
        this.failed = true; // the timer alone then
      }
    }
    this.wake = wake;
    return () => {
      if (this.wake === wake) this.wake = undefined;
    };
  }

  close(): void {
    this.wake = undefined;
    this.watcher?.close();
  }

  private fire(): void {
    const wake = this.wake;
    this.wake = undefined;
    wake?.();
  }
}

/** Waits `ms`, or until `changes` reports a change. @throws ERR_ABORTED when the signal fires. */
export function sleep(ms: number, signal?: AbortSignal, changes?: DirChanges): Promise<void> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(done, ms);
    const cancel = changes?.next(done);
    function done(): void {
      clearTimeout(timer);
      cancel?.();
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }
    function onAbort(): void {
      clearTimeout(timer);
      cancel?.();
      reject(abortError(signal as AbortSignal));
    }
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}
