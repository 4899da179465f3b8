/**
 * Runs tasks one after the other per key (tasks of different keys run concurrently), forgetting a key
 * once its queue is empty. A failed task does not stop the ones queued behind it.
 */
export class KeyedSerial {
  private readonly tails = new Map<string, Promise<unknown>>();

  run<T>(key: string, task: () => Promise<T>): Promise<T> {
    const previous = this.tails.get(key) ?? Promise.resolve();
    const run = previous.then(task, task);
    const tail = run.catch(() => undefined);
    this.tails.set(key, tail);
    void tail.then(() => {
      if (this.tails.get(key) === tail) this.tails.delete(key);
    });
    return run;
  }

  /** Resolves when every task queued so far has finished. */
  async idle(): Promise<void> {
    await Promise.allSettled(this.tails.values());
  }
}
