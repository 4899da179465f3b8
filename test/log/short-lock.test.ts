/**
 * The short-held lock (spec/log-format.md §7): a file taken and removed in turn; a stale one (a killed
 * holder's, or a directory of the proper-lockfile format) is taken over, a fresh one waited for.
 */
import assert from 'node:assert/strict';
import { mkdir, stat, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { ShortLock } from '../../src/log/short-lock.ts';
import { tempDir } from '../helpers/index.ts';

test('a short lock is a file while held and gone once released; a second taker waits for the release', async (t) => {
  const path = join(await tempDir(t), 'state.lock');
  const first = await ShortLock.acquire(path);
  assert.ok((await stat(path)).isFile());
  let second: ShortLock | undefined;
  const waiting = ShortLock.acquire(path).then((lock) => (second = lock));
  await new Promise((resolve) => setTimeout(resolve, 100));
  assert.equal(second, undefined, 'not taken while held');
  const releasedAt = performance.now();
  await first.release();
  await waiting;
  assert.ok(performance.now() - releasedAt < 1000, 'woken by the release');
  first.assertHeld();
  await second!.release();
  await assert.rejects(stat(path), { code: 'ENOENT' });
});

test('a stale short lock — a killed holder\'s file, or a directory of the older format — is taken over; a fresh one is not', async (t) => {
  const dir = await tempDir(t);
  const old = new Date(Date.now() - 60_000);
  const file = join(dir, 'a.lock');
  await writeFile(file, '');
  await utimes(file, old, old);
  const fromFile = await ShortLock.acquire(file, { signal: AbortSignal.timeout(5000) });
  await fromFile.release();
  const directory = join(dir, 'b.lock');
  await mkdir(directory);
  await utimes(directory, old, old);
  const fromDir = await ShortLock.acquire(directory, { signal: AbortSignal.timeout(5000) });
  assert.ok((await stat(directory)).isFile(), 'the old directory was replaced by a lock file');
  await fromDir.release();
  const fresh = join(dir, 'c.lock');
  await writeFile(fresh, '');
  await assert.rejects(ShortLock.acquire(fresh, { signal: AbortSignal.timeout(300) }), { code: 'ERR_TIMEOUT' });
});

test('a holder that kept a short lock past half the stale time counts it as lost and leaves it alone', async (t) => {
  const path = join(await tempDir(t), 'state.lock');
  const lock = await ShortLock.acquire(path, { staleMs: 100 });
  await new Promise((resolve) => setTimeout(resolve, 80));
  assert.throws(() => lock.assertHeld(), { code: 'ERR_LOCKED' });
  await lock.release();
  assert.ok((await stat(path)).isFile(), 'not removed: it may be another process\'s by now');
});
