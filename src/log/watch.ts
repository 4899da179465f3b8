/**
 * The file store's ChangeFeed (log-store.ts): change notification for followers of a directory of streams
 * (chokidar, i.e. inotify on Linux), with a fallback timer so that a missed event costs latency, never
 * progress. Appends of the same process bump it directly (FileLogStore does), so an in-process follower
 * wakes within the append's own tick instead of waiting for the file watch.
 */
import { existsSync } from 'node:fs';
import { dirname, join, relative, sep } from 'node:path';
import { watch, type FSWatcher } from 'chokidar';
import { MqlogError, abortError } from '../errors.js';
import type { ChangeFeed } from './log-store.js';

export interface WatcherOptions {
  /** Directory levels below `dir` to watch (segments of a stream are at depth 1 of a queue). */
  readonly depth?: number;
  /** Wake-up interval when no event arrives. */
  readonly fallbackMs?: number;
  /** Paths whose changes say nothing to followers (state files of their own). */
  readonly ignore?: (path: string) => boolean;
  /** Called once when the watcher closes. */
  readonly onClose?: () => void;
}

export class ChangeWatcher implements ChangeFeed {
  readonly dir: string;
  private readonly fallbackMs: number;
  private readonly watcher: FSWatcher;
  private readonly ready: Promise<void>;
  private changes = 0;
  private waiters = new Set<() => void>();
  private readonly listeners = new Set<() => void>();
  private readonly onClose: (() => void) | undefined;
  private closing: Promise<void> | undefined;

  constructor(dir: string, options: WatcherOptions = {}) {
    this.dir = dir;
    this.fallbackMs = options.fallbackMs ?? 1000;
    this.onClose = options.onClose;
    // Lock directories are touched every second by their holders; they say nothing about data.
    const depth = options.depth ?? 1;
    // A directory that does not exist yet (a channel with no message so far) is watched from its nearest
    // existing ancestor, looking only along the way down to it, so its creation and what follows are seen.
    const root = nearestExisting(dir);
    const levels = root === dir ? 0 : relative(root, dir).split(sep).length;
    const offRoute = (path: string): boolean => levels > 0 && !(path === dir || path.startsWith(dir + sep) || dir.startsWith(path + sep) || path === root);
    const ignored = (path: string): boolean =>
      offRoute(path) || path.endsWith('.lock') || path.includes('.lock/') || path.includes('.lock.') || path.endsWith('.tmp') || (options.ignore?.(path) ?? false);
    this.watcher = watch(root, { ignoreInitial: true, depth: depth + levels, persistent: true, ignored });
    // Raw events come straight from the platform's watch, one per write: chokidar's own `change`
    // events are throttled per file (a second write within 5 ms would only be seen at the fallback).
    this.watcher.on('raw', (_event: unknown, path: string | null, details: unknown) => {
      const watched = (details as { watchedPath?: unknown } | undefined)?.watchedPath;
      const full = typeof watched === 'string' ? join(watched, path ?? '') : (path ?? '');
      if (!ignored(full)) this.bump();
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
        waiters.delete(done);
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
      this.onClose?.();
      this.bump();
      await this.watcher.close();
    })();
    return this.closing;
  }
}

/** `dir`, or its closest ancestor that exists. */
function nearestExisting(dir: string): string {
  let path = dir;
  while (!existsSync(path)) {
    const parent = dirname(path);
    if (parent === path) break;
    path = parent;
  }
  return path;
}
