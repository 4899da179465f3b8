import assert from 'node:assert/strict';
import { mkdir, writeFile, appendFile } from 'node:fs/promises';
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

  // Later appends to the segment are seen too (the watch reached the new directories), however
  // long it takes the watcher to attach to them.
  const deadline = Date.now() + DEADLINE_MS;
  for (;;) {
    seen = watcher.generation;
    await appendFile(segment, 'another frame');
    const woke = await watcher.changedSince(seen, AbortSignal.timeout(500)).then(
      () => true,
      () => false,
    );
    if (woke) break;
    assert.ok(Date.now() < deadline, `appends to ${segment} never woke the watcher`);
  }
});
