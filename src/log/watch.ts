/**
 * The file store's ChangeFeed (log-store.ts): change notification for followers of a directory of streams,
 * built on the platform's directory watch (`fs.watch`: inotify on Linux), with a fallback timer so that a
 * missed event costs latency, never progress. Appends of the same process bump it directly (FileLogStore
 * does), so an in-process follower wakes within the append's own tick instead of waiting for the watch.
 *
 * One watch per directory, never per file: a write to a segment is reported by the watch of its stream
 * directory, and a new stream directory is watched as soon as its creation is reported, before anything
 * can be written in it that would go unseen (the new directory is listed after its watch is in place).
 * No event is delayed or coalesced here: each one bumps the generation at once. (A general-purpose
 * watcher that throttles directory re-reads would let the first frames of a new stream wait for its
 * fallback.)
 *
 * A directory that does not exist yet (a channel with no message so far) is waited for by watching its
 * nearest existing ancestor; every event there re-checks the way down, so its creation and what follows
 * are seen.
 *
 * A watch follows the directory it was put on, not its name: a directory removed and made again (or made
 * between a look and its watch) leaves a watch that hears nothing more. Each watch keeps the identity of
 * its directory, and every wait (not only the fallback, which a caller's own deadline may always come
 * before) first puts back the watches whose directory is gone or another one.
 */
import { existsSync, readdirSync, statSync, watch, type FSWatcher } from 'node:fs';
import { dirname, join, relative, sep } from 'node:path';
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

/** Lock directories are touched by their holders; temporary files are renamed into place (seen then). */
function alwaysIgnored(path: string): boolean {
  return path.endsWith('.lock') || path.includes('.lock/') || path.includes('.lock.') || path.endsWith('.tmp');
}

export class ChangeWatcher implements ChangeFeed {
  readonly dir: string;
  private readonly fallbackMs: number;
  private readonly depth: number;
  private readonly ignore: (path: string) => boolean;
  /** Watched directories (the queue directory and its streams), by path. */
  private readonly watches = new Map<string, Watch>();
  /** The nearest existing ancestor, watched while `dir` does not exist. */
  private anchor: { readonly path: string; readonly watch: Watch } | undefined;
  private changes = 0;
  /**
   * A watch may have been lost since the last repair(): a directory was made or removed (a 'rename'
   * event), a watch broke, or a wait ended without hearing anything. Waits repair only then, so a
   * follower woken by appends does not look at every directory before each wait.
   */
  private suspect = true;
  private waiters = new Set<() => void>();
  private readonly listeners = new Set<() => void>();
  private readonly onClose: (() => void) | undefined;
  private closing: Promise<void> | undefined;

  constructor(dir: string, options: WatcherOptions = {}) {
    this.dir = dir;
    this.fallbackMs = options.fallbackMs ?? 1000;
    this.depth = options.depth ?? 1;
    this.onClose = options.onClose;
    const ignore = options.ignore;
    this.ignore = ignore === undefined ? alwaysIgnored : (path) => alwaysIgnored(path) || ignore(path);
    this.attach();
  }

  /** Increases with every change seen; compare with changedSince(). */
  get generation(): number {
    return this.changes;
  }

  /** Resolves once the watch is in place: changes after this are seen. (It is in place when constructed.) */
  whenReady(): Promise<void> {
    return Promise.resolve();
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
    // A watch lost without an event is put back here too, not only by the fallback: a caller whose own
    // deadline ends every wait first would otherwise never have it back. What happened meanwhile went
    // unseen: the caller looks again.
    if (this.changes !== seen || (this.suspect && this.repair())) return;
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        // Nothing reported for a while: a watch may have been lost (its directory removed and made
        // again). Put the watches back in place before the caller looks again.
        this.repair();
        done();
      }, this.fallbackMs);
      const onAbort = (): void => {
        this.suspect = true;
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
      this.detach();
    })();
    return this.closing;
  }

  /** Watches `dir` and its subdirectories, or its nearest existing ancestor while it does not exist. */
  private attach(): void {
    if (this.closing !== undefined) return;
    if (!this.watchTree(this.dir, this.depth)) {
      this.watchAnchor();
      return;
    }
    // The queue directory exists now: the ancestor's watch has done its work.
    this.anchor?.watch.watcher.close();
    this.anchor = undefined;
  }

  /**
   * Drops the watches whose directory is gone or is another one now (removed and made again before
   * the watch reported it: a watch follows the directory it was put on, not its name), and watches
   * what is there instead. Returns true when a watch was dropped or the queue directory came.
   */
  private repair(): boolean {
    if (this.closing !== undefined) return false;
    this.suspect = false;
    let changed = false;
    for (const [path, watch] of [...this.watches]) {
      if (!this.watches.has(path) || identityOf(path) === watch.identity) continue;
      this.unwatch(path);
      changed = true;
    }
    if (this.anchor !== undefined && identityOf(this.anchor.path) !== this.anchor.watch.identity) {
      this.anchor.watch.watcher.close();
      this.anchor = undefined;
      changed = true;
    }
    const watched = this.watches.has(this.dir);
    if (changed || !watched) this.attach();
    return changed || (!watched && this.watches.has(this.dir));
  }

  private detach(): void {
    for (const watch of this.watches.values()) watch.watcher.close();
    this.watches.clear();
    this.anchor?.watch.watcher.close();
    this.anchor = undefined;
  }

  /**
   * Watches directory `path` and, `depth` levels down, its subdirectories. The watch comes before the
   * listing, so an entry made in between is reported by the watch if the listing missed it.
   * Returns false when `path` is not a directory (any more).
   */
  private watchTree(path: string, depth: number): boolean {
    if (!this.watches.has(path)) {
      const watch = this.watchDir(path, (event, name) => this.onEvent(path, depth, event, name));
      if (watch === undefined) return false;
      this.watches.set(path, watch);
    }
    if (depth > 0) {
      let entries;
      try {
        entries = readdirSync(path, { withFileTypes: true });
      } catch {
        return true;
      }
      for (const entry of entries) {
        const child = join(path, entry.name);
        if (entry.isDirectory() && !this.ignore(child)) this.watchTree(child, depth - 1);
      }
    }
    return true;
  }

  private onEvent(path: string, depth: number, event: string, name: string | null): void {
    if (this.closing !== undefined) return;
    const child = name === null ? path : join(path, name);
    if (name !== null && this.ignore(child)) return;
    // Creations, removals and renames are 'rename' events; a new directory below gets its own watch
    // before anything else happens here (the follower woken below lists it only after this).
    // (A directory made again under its old name keeps its dead watch here; the next wait's repair() finds it.)
    if (event === 'rename') {
      this.suspect = true;
      if (!existsSync(path)) {
        // The watched directory itself went away (a removed stream, a removed queue): its watch is dead.
        this.unwatch(path);
        if (path === this.dir) this.attach();
      } else if (name !== null && depth > 0) {
        if (isDirectory(child)) {
          if (!this.watches.has(child)) this.watchTree(child, depth - 1);
        } else if (this.watches.has(child)) {
          this.unwatch(child);
        }
      }
    }
    this.bump();
  }

  /** Drops the watches of `path` and of everything below it. */
  private unwatch(path: string): void {
    for (const [p, watch] of this.watches) {
      if (p !== path && !p.startsWith(path + sep)) continue;
      watch.watcher.close();
      this.watches.delete(p);
    }
  }

  /** While `dir` does not exist: watch its nearest existing ancestor, and re-check on every event there. */
  private watchAnchor(): void {
    const path = nearestExisting(this.dir);
    if (this.anchor?.path === path) return;
    this.anchor?.watch.watcher.close();
    this.anchor = undefined;
    // Only the next component on the way down to `dir` matters; anything else here is another queue's.
    const next = relative(path, this.dir).split(sep)[0] as string;
    const watch = this.watchDir(path, (_event, name) => {
      if (this.closing !== undefined) return;
      if (name !== null && name !== next) return;
      this.attach();
      this.bump();
    });
    if (watch !== undefined) this.anchor = { path, watch };
  }

  /**
   * A directory watch, with the identity of the directory it was put on (looked at first: a directory made
   * again in between is then taken for a replaced one, and watched again, never the other way round);
   * undefined when the directory is gone (or cannot be watched: the fallback covers it).
   */
  private watchDir(path: string, onEvent: (event: string, name: string | null) => void): Watch | undefined {
    const identity = identityOf(path);
    if (identity === undefined) return undefined;
    let watcher: FSWatcher;
    try {
      watcher = watch(path, { persistent: true }, (event, name) => onEvent(event, name === null ? null : String(name)));
    } catch {
      return undefined;
    }
    watcher.on('error', () => {
      this.suspect = true;
      // The directory went away (or the watch broke): drop the watch; the next event above or the
      // fallback puts it back if the directory comes again.
      watcher.close();
      for (const [p, w] of this.watches) if (w.watcher === watcher) this.watches.delete(p);
      if (this.anchor?.watch.watcher === watcher) this.anchor = undefined;
      this.bump();
    });
    return { watcher, identity };
  }
}

/** A directory watch and the identity of the directory it follows. */
interface Watch {
  readonly watcher: FSWatcher;
  readonly identity: string;
}

/**
 * What tells a directory from another one made under the same name: its inode number, which a file
 * system may give again to the next directory made, and its birth time (where the file system keeps one).
 */
function identityOf(path: string): string | undefined {
  try {
    const s = statSync(path, { throwIfNoEntry: false });
    return s === undefined ? undefined : `${s.ino}:${s.birthtimeMs}`;
  } catch {
    return undefined;
  }
}

function isDirectory(path: string): boolean {
  try {
    return statSync(path).isDirectory();
  } catch {
    return false;
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
