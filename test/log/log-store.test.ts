import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFile, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { FrameType } from '../../src/log/frame.js';
import { Lock } from '../../src/log/lock.js';
import { FileLogStore } from '../../src/log/file-log-store.js';
import { exited, tempDir } from '../helpers/index.js';

test('each writer claims its own slot and writes only its own streams', async (t) => {
  const dir = await tempDir(t);
  const store = new FileLogStore(dir);
  const a = await store.claimWriter('q');
  const b = await store.claimWriter('q');
  assert.deepEqual([a.slot, b.slot], [0, 1]);
  assert.equal((await a.append('p4', FrameType.MESSAGE, Buffer.from('a'))).stream, 'p4.w0');
  assert.equal((await b.append('p4', FrameType.MESSAGE, Buffer.from('b'))).stream, 'p4.w1');
  await a.close();
  const c = await store.claimWriter('q');
  assert.equal(c.slot, 0, 'a released slot is reused');
  await b.close();
  await c.close();
  assert.deepEqual((await store.streams('q')).map((s) => s.name), ['p4.w0', 'p4.w1']);
});

test('a stream key must be short lowercase alphanumerics', async (t) => {
  const store = new FileLogStore(await tempDir(t));
  const writer = await store.claimWriter('q');
  t.after(() => writer.close());
  await assert.rejects(writer.append('../x', FrameType.MESSAGE, Buffer.alloc(1)), { code: 'ERR_INVALID_ARG' });
});

test('a lock held by a live process is refused with ERR_LOCKED', async (t) => {
  const dir = await tempDir(t);
  const path = join(dir, 'x.lock');
  const lock = await Lock.acquire(path);
  await assert.rejects(Lock.acquire(path), { code: 'ERR_LOCKED' });
  await lock.release();
  const again = await Lock.acquire(path);
  await again.release();
});

test('a lock left by a SIGKILLed process is taken over at once, without waiting for it to go stale', async (t) => {
  const dir = await tempDir(t);
  const path = join(dir, 'x.lock');
  const child = spawn(
    process.execPath,
    ['--import', 'tsx', '-e', `import('${new URL('../../src/log/lock.ts', import.meta.url).href}').then(async ({ Lock }) => { await Lock.acquire(${JSON.stringify(path)}); console.log('locked'); setInterval(() => {}, 1000); })`],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  await new Promise<void>((resolve) => child.stdout.on('data', (b: Buffer) => b.toString().includes('locked') && resolve()));
  child.kill('SIGKILL');
  await exited(child);
  // Freshly refreshed as far as its mtime says: only the dead holder on record lets us in.
  const future = new Date(Date.now() + 60_000);
  await utimes(path, future, future);
  const lock = await Lock.acquire(path);
  await lock.release();
});

test('a fresh lock beside a dead holder\'s leftover owner file is not taken over', async (t) => {
  const dir = await tempDir(t);
  const path = join(dir, 'x.lock');
  // A dead holder's owner file (its process is gone) ...
  const child = spawn(process.execPath, ['-e', ''], { stdio: 'ignore' });
  await exited(child);
  const lock = await Lock.acquire(path);
  t.after(() => lock.release());
  const recorded = JSON.parse(await readFile(`${path}.owner`, 'utf8')) as Record<string, unknown>;
  // ... left beside a lock directory that is not the one it speaks of (a new holder took the stale lock
  // and has not yet written its own owner file).
  await writeFile(`${path}.owner`, JSON.stringify({ ...recorded, pid: child.pid, start: 'gone', lock: { ino: 1, birth: 1 } }));
  await assert.rejects(Lock.acquire(path), { code: 'ERR_LOCKED' });
  // An owner file with no holder in it (never written whole) is the dead holder's only once the lock
  // has gone unrefreshed.
  await writeFile(`${path}.owner`, '');
  await assert.rejects(Lock.acquire(path), { code: 'ERR_LOCKED' });
});

test('waiting for a lock can be aborted', async (t) => {
  const dir = await tempDir(t);
  const path = join(dir, 'x.lock');
  const lock = await Lock.acquire(path);
  t.after(() => lock.release());
  await assert.rejects(Lock.acquire(path, { wait: true, signal: AbortSignal.timeout(100) }), { code: 'ERR_TIMEOUT' });
});

test('the open segment a writer of this process fills is summarised up to its last fsync, without waiting for a checkpoint', async (t) => {
  const dir = await tempDir(t);
  const store = new FileLogStore(dir, { segmentBytes: 4096 });
  const writer = await store.claimWriter('q');
  t.after(() => writer.close());
  const body = Buffer.alloc(300, 1);
  let last;
  for (let i = 0; i < 30; i++) last = await writer.append('p4', FrameType.MESSAGE, body);
  const summaries = await store.segments('q', 'p4.w0');
  const open = summaries.at(-1);
  assert.ok(open !== undefined && !open.sealed, 'the stream has an open segment');
  assert.ok(summaries.length > 2, 'appends rolled segments');
  // The checkpoint on disk lags (written at most once a second); the summary follows the writer.
  assert.equal(open.next.offset, (last?.offset ?? 0) + 1);
  assert.equal(open.lastOffset, last?.offset);
  assert.deepEqual(open.runs.map((r) => [r.from, r.to]), [[open.base, (last?.offset ?? 0) + 1]]);
  // Another store (another process) sees what the disk says, and the same frames once read.
  const other = new FileLogStore(dir);
  const seen = (await other.segments('q', 'p4.w0')).at(-1);
  assert.equal(seen?.base, open.base);
  assert.ok((seen?.next.offset ?? 0) <= open.next.offset);
  // After the writer closes, its checkpoint on disk describes everything.
  await writer.close();
  assert.equal((await other.segments('q', 'p4.w0')).at(-1)?.next.offset, open.next.offset);
  assert.equal((await store.segments('q', 'p4.w0')).at(-1)?.next.offset, open.next.offset);
});
