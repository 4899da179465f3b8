import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { appendFile, mkdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { ChangeWatcher } from '../../src/log/watch.js';
import { defer, tempDir } from '../helpers/index.js';

// The fallback is far beyond every deadline here: a wake-up can only come from the file watch.
const NO_FALLBACK = { fallbackMs: 10 * 60_000 };
const DEADLINE_MS = 30_000;

async function wakes(watcher: ChangeWatcher, seen: number, what: string): Promise<void> {
  await watcher.changedSince(seen, AbortSignal.timeout(DEADLINE_MS)).catch((err: unknown) => {
    throw new Error(`no change event for ${what} within ${DEADLINE_MS} ms`, { cause: err });
  });
}

test('a write to a segment of an existing queue wakes the watcher', async (t) => {
  const queue = join(await tempDir(t), 'inbox', 'jobs');
  await mkdir(join(queue, 'p0-w0'), { recursive: true });
  const watcher = new ChangeWatcher(queue, NO_FALLBACK);
  defer(t, () => watcher.close());
  await watcher.whenReady();
  const seen = watcher.generation;
  await writeFile(join(queue, 'p0-w0', '00000000000000000000.seg'), 'x');
  await wakes(watcher, seen, 'a new segment');
});

test('a queue directory created after the watch started is followed: its first stream and later writes wake the watcher', async (t) => {
  const root = await tempDir(t);
  await mkdir(join(root, 'inbox', 'other', 'p0-w0'), { recursive: true });
  const queue = join(root, 'inbox', 'jobs');
  const watcher = new ChangeWatcher(queue, NO_FALLBACK);
  defer(t, () => watcher.close());
  await watcher.whenReady();

  let seen = watcher.generation;
  const segment = join(queue, 'p9-w0', '00000000000000000000.seg');
  await mkdir(join(queue, 'p9-w0'), { recursive: true });
  await writeFile(segment, 'first frame');
  await wakes(watcher, seen, 'the queue directory and its first segment');

  // Later appends to the segment are seen at once: the new directories were watched as soon as they
  // were made (no fallback here to cover for a watch attached late).
  for (let i = 0; i < 20; i++) {
    seen = watcher.generation;
    await appendFile(segment, 'another frame');
    await wakes(watcher, seen, `append ${i + 1} to ${segment}`);
  }
});

test('a stream directory made in a watched queue is watched before its first write', async (t) => {
  const queue = join(await tempDir(t), 'outbox');
  await mkdir(join(queue, 'p4.w0'), { recursive: true });
  const watcher = new ChangeWatcher(queue, NO_FALLBACK);
  defer(t, () => watcher.close());
  await watcher.whenReady();
  for (let slot = 1; slot <= 10; slot++) {
    const stream = join(queue, `p4.w${slot}`);
    let seen = watcher.generation;
    await mkdir(stream);
    // Once the new directory is reported, append: only the stream directory's own watch can report it.
    await wakes(watcher, seen, 'the new stream');
    const segment = join(stream, '00000000000000000000.seg');
    await writeFile(segment, '');
    seen = watcher.generation;
    await appendFile(segment, 'frame');
    await wakes(watcher, seen, `the first append to ${stream}`);
  }
});

test('a queue directory removed and made again is followed again', async (t) => {
  const root = await tempDir(t);
  const queue = join(root, 'inbox', 'jobs');
  await mkdir(join(queue, 'p0.w0'), { recursive: true });
  const watcher = new ChangeWatcher(queue, NO_FALLBACK);
  defer(t, () => watcher.close());
  let seen = watcher.generation;
  await rm(queue, { recursive: true });
  await wakes(watcher, seen, 'the removal of the queue');
  seen = watcher.generation;
  await mkdir(join(queue, 'p0.w0'), { recursive: true });
  await wakes(watcher, seen, 'the queue made again');
  const segment = join(queue, 'p0.w0', '00000000000000000000.seg');
  await writeFile(segment, '');
  seen = watcher.generation;
  await appendFile(segment, 'frame');
  await wakes(watcher, seen, 'an append in the queue made again');
});

test('a stream directory removed and made again before the watcher heard of it is watched again', async (t) => {
  const queue = join(await tempDir(t), 'outbox');
  const stream = join(queue, 'p4.w0');
  await mkdir(stream, { recursive: true });
  const watcher = new ChangeWatcher(queue, NO_FALLBACK);
  defer(t, () => watcher.close());
  let seen = watcher.generation;
  // Both in one turn of the event loop: the events of the removal and of the new directory come after.
  rmSync(stream, { recursive: true });
  mkdirSync(stream);
  await wakes(watcher, seen, 'the stream made again');
  const segment = join(stream, '00000000000000000000.seg');
  await writeFile(segment, '');
  // Only a watch of the new directory reports an append to its segment.
  for (let i = 0; i < 3; i++) {
    seen = watcher.generation;
    await appendFile(segment, 'frame');
    await wakes(watcher, seen, `append ${i + 1} in the stream made again`);
  }
});

test('a watch lost without an event is put back by the next wait, also when the caller ended the last one', async (t) => {
  const root = await tempDir(t);
  const parent = join(root, 'inbox');
  const queue = join(parent, 'jobs');
  await mkdir(parent);
  // The queue does not exist yet: the watcher waits for it by watching its parent.
  const watcher = new ChangeWatcher(queue, { fallbackMs: 1000 });
  defer(t, () => watcher.close());
  // The parent is replaced in one turn of the event loop: the watch of the old one hears nothing of
  // the new one, or of the queue made in it.
  rmSync(parent, { recursive: true });
  mkdirSync(join(queue, 'p0.w0'), { recursive: true });
  const segment = join(queue, 'p0.w0', '00000000000000000000.seg');
  writeFileSync(segment, '');
  // Waits that their caller ends before the watcher's own fallback would fire (a consumer's deadline).
  for (let i = 0; i < 3; i++) await watcher.changedSince(watcher.generation, AbortSignal.timeout(300)).catch(() => undefined);
  // From now on every append wakes a waiter at once.
  for (let i = 0; i < 3; i++) {
    const seen = watcher.generation;
    const started = performance.now();
    const woken = watcher.changedSince(seen, AbortSignal.timeout(DEADLINE_MS));
    await appendFile(segment, 'frame');
    await woken;
    const ms = performance.now() - started;
    if (ms >= 900) throw new Error(`append ${i + 1} woke the waiter after ${Math.round(ms)} ms: by the fallback, not by a watch`);
  }
});
