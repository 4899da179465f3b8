/**
 * The wait of a lock's waiters (removal-watch.ts): woken by the lock's removal, by another process, at
 * once; not by the files beside it, which other processes write all the time.
 */
import assert from 'node:assert/strict';
import { appendFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { RemovalWatch, sleep } from '../../src/log/removal-watch.ts';
import { run, tempDir } from '../helpers/index.ts';

/** Removes a file from another process, as a lock holder of another process releases its lock. */
async function removeElsewhere(path: string): Promise<void> {
  const result = await run(process.execPath, ['-e', `require('node:fs').unlinkSync(${JSON.stringify(path)})`]);
  assert.equal(result.code, 0, result.stderr);
}

test('a waiter sleeps through 500 writes beside the lock and wakes at once when another process removes it', async (t) => {
  const dir = await tempDir(t);
  const lock = join(dir, 'state.lock');
  const sentinel = join(dir, 'sentinel');
  await writeFile(lock, '');
  await writeFile(sentinel, '');
  const watch = new RemovalWatch(lock);
  const probe = new RemovalWatch(sentinel);
  t.after(() => {
    watch.close();
    probe.close();
  });
  let woken = false;
  const waiting = sleep(60_000, undefined, watch).then(() => (woken = true));
  for (let i = 0; i < 500; i++) await appendFile(join(dir, `c-${i % 4}.log`), 'ack\n');
  // Events come in order: once the sentinel's removal is heard, so were the writes before it.
  const probed = sleep(60_000, undefined, probe);
  await removeElsewhere(sentinel);
  await probed;
  assert.equal(woken, false, 'the writes beside the lock woke its waiter');
  const removedAt = performance.now();
  await removeElsewhere(lock);
  await waiting;
  assert.ok(performance.now() - removedAt < 10_000, 'woken by the removal, not by its 60 s timer');
});

test('a wait for a lock already gone ends at once, without its timer', async (t) => {
  const dir = await tempDir(t);
  const watch = new RemovalWatch(join(dir, 'state.lock'));
  t.after(() => watch.close());
  const startedAt = performance.now();
  await sleep(60_000, undefined, watch);
  assert.ok(performance.now() - startedAt < 10_000);
});

test('a wait is aborted by its signal with ERR_ABORTED', async (t) => {
  const dir = await tempDir(t);
  const lock = join(dir, 'state.lock');
  await writeFile(lock, '');
  const watch = new RemovalWatch(lock);
  t.after(() => watch.close());
  const controller = new AbortController();
  const waiting = sleep(60_000, controller.signal, watch);
  controller.abort();
  await assert.rejects(waiting, { code: 'ERR_ABORTED' });
});
