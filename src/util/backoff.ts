/**
 * The one retry delay: capped exponential backoff with equal jitter, and an abortable sleep. Everything
 * that retries (forwarders, sources, the angel, lock waits) takes its delays from here; and one turn of
 * the event loop, for work that lets others go first.
 */

/**
 * The delay before retry number `failures` (1 for the first): `initialMs` doubling per failure, capped
 * at `maxMs`, of which a random half — peers that failed together do not retry together, and no retry
 * comes much too soon.
 */
export function backoffMs(failures: number, initialMs: number, maxMs: number, random: () => number = Math.random): number {
  const ceiling = Math.min(maxMs, initialMs * 2 ** Math.min(Math.max(0, failures - 1), 30));
  return Math.round(ceiling / 2 + (random() * ceiling) / 2);
}

/** Resolves after `ms`, or at once when `signal` fires (never rejects). */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted === true) return resolve();
    const timer = setTimeout(done, ms);
    function done(): void {
      clearTimeout(timer);
      signal?.removeEventListener('abort', done);
      resolve();
    }
    signal?.addEventListener('abort', done, { once: true });
  });
}

/** Resolves after one turn of the event loop: what was waiting (I/O callbacks, timers) goes first. */
export function nextTurn(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}
