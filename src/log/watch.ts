/**
 * Change notification for followers of a directory of streams (chokidar, i.e. inotify on Linux), with a
 * fallback timer so that a missed event costs latency, never progress.
 *
 * Followers use a generation counter to close the race between "read found nothing" and "wait":
 *
 *   const seen = watcher.generation;
 *   const read = await reader.read();           // finds nothing new
 *   if (nothing) await watcher.changedSince(seen, signal);   // returns at once if a change came meanwhile
 */
import { watch, type FSWatcher } from 'chokidar';
import { MqlogError, abortError } from '../errors.js';

export interface WatcherOptions {
  /** Directory levels below `dir` to watch (segments of a stream are at depth 1 of a queue). */
  readonly depth?: number;
  /** Wake-up interval when no event arrives. */
  readonly fallbackMs?: number;
  /** Paths whose changes say nothing to followers (state files of their own). */
  readonly ignore?: (path: string) => boolean;
}

export class ChangeWatcher {
  readonly dir: string;
  private readonly fallbackMs: number;
  private readonly watcher: FSWatcher;
  private readonly ready: Promise<void>;
  private changes = 0;
  private waiters = new Set<() => void>();
  private readonly listeners = new Set<() => void>();
  private closing: Promise<void> | undefined;

  constructor(dir: string, options: WatcherOptions = {}) {
    this.dir = dir;
    this.fallbackMs = options.fallbackMs ?? 1000;
    this.watcher = watch(dir, {
      ignoreInitial: true,
      depth: options.depth ?? 1,
      persistent: true,
      // Lock directories are touched every second by their holders; they say nothing about data.
      ignored: (path: string) => path.endsWith('.lock') || path.includes('.lock/') || path.endsWith('.lock.owner') || path.endsWith('.tmp') || (options.ignore?.(path) ?? false),
    });
    this.watcher.on('all', () => this.bump());
    this.watcher.on('error', () => this.bump());
    this.ready = new Promise((resolve) => this.watcher.once('ready', () => resolve()));
  }

  /** Increases with every change seen; compare with changedSince(). */
  get generation(): number {
    return this.changes;
  }

  /** Resolves once the watch is in place: changes after this are seen. */
  whenReady(): Promise<void> {
    return this.ready;
  }

  /** Signals a change made by this process, so local followers wake without waiting for the OS. */
  bump(): void {
    this.changes++;
    const waiters = this.waiters;
    this.waiters = new Set();
    for (const wake of waiters) wake();
    for (const listener of this.listeners) listener();
  }

  /** Calls `listener` on every change (for observers that do not wait). */
  onChange(listener: () => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /**
   * Resolves when a change happened after generation `seen`, or after the fallback interval.
   * @throws ERR_ABORTED / ERR_TIMEOUT when the signal fires, ERR_CLOSED after close().
   */
  async changedSince(seen: number, signal?: AbortSignal): Promise<void> {
    if (this.closing !== undefined) throw new MqlogError('ERR_CLOSED', 'watcher is closed');
    if (signal?.aborted === true) throw abortError(signal);
    if (this.changes !== seen) return;
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(done, this.fallbackMs);
      const onAbort = (): void => {
        cleanup();
        reject(abortError(signal as AbortSignal));
      };
      function cleanup(): void {
        clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
      }
      const waiters = this.waiters;
      function done(): void {
        cleanup();
        waiters.delete(done);
        resolve();
      }
      this.waiters.add(done);
      signal?.addEventListener('abort', onAbort, { once: true });
    });
  }

  /** Stops watching and wakes every waiter. Idempotent. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      this.bump();
      await this.watcher.close();
    })();
    return this.closing;
  }
}
