/**
 * Waiting for a lock held by another process: a watch of the lock's own file (or directory), whose
 * removal wakes the waiter at once, with a timer as the fallback (a missed event costs latency, never
 * progress).
 *
 * The entry itself is watched, not its directory: a watch of the directory is told of every change in it
 * — the ack journals beside the consumers' `state.lock` are written hundreds of times a second by as
 * many processes — and every waiter paid a wake-up (a read of the events, a turn of its event loop) for
 * each. With eight consumer processes that was 6× the event-loop wake-ups and 9× the reads a message of
 * one process alone. A watch of the entry hears of its own changes only: its removal (or, for a lock
 * directory of proper-lockfile, the holder's refresh, which costs a look). An entry is watched per wait:
 * the next holder's lock is another file.
 */
import { watch, type FSWatcher } from 'node:fs';
import { abortError } from '../errors.js';

/** Changes of one entry (the lock a waiter waits for), for waiters that sleep. */
export class RemovalWatch {
  private readonly path: string;
  private watcher: FSWatcher | undefined;
  private wake: (() => void) | undefined;

  constructor(path: string) {
    this.path = path;
  }

  /**
   * Calls `wake` once at the next change of the entry, or soon when there is none to watch (it is gone:
   * look again); replaces an earlier `wake`. Returns how to cancel it.
   */
  next(wake: () => void): () => void {
    this.wake = wake;
    if (this.watcher === undefined) {
      try {
        this.watcher = watch(this.path, { persistent: false }, () => this.fire());
        this.watcher.on('error', () => this.fire());
      } catch {
        // Gone since the look (ENOENT), or not watchable: look again now; the timer paces the rest.
        queueMicrotask(() => this.fire());
      }
    }
    return () => {
      if (this.wake === wake) this.wake = undefined;
    };
  }

  close(): void {
    this.wake = undefined;
    this.unwatch();
  }

  private fire(): void {
    // The entry changed (most often: removed, and the next holder's is another file): watched anew at the next wait.
    this.unwatch();
    const wake = this.wake;
    this.wake = undefined;
    wake?.();
  }

  private unwatch(): void {
    this.watcher?.close();
    this.watcher = undefined;
  }
}

/** Waits `ms`, or until `changes` reports a change. @throws ERR_ABORTED when the signal fires. */
export function sleep(ms: number, signal?: AbortSignal, changes?: RemovalWatch): Promise<void> {
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
