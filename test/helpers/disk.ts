/**
 * A really full disk for tests: a small tmpfs mounted on a fresh directory (needs root and mount; a
 * test that cannot mount fails, naming the reason, rather than passing by not running).
 */
import assert from 'node:assert/strict';
import { open } from 'node:fs/promises';
import type { TestContext } from 'node:test';
import { defer, run, tempDir } from './index.ts';

const KiB = 1024;

/** Mounts a tmpfs of `bytes` on a fresh directory, unmounted after the test (after everything started later). */
export async function smallDisk(t: TestContext, bytes: number): Promise<string> {
  const dir = await tempDir(t, 'mqlog-tmpfs-');
  const mounted = await run('mount', ['-t', 'tmpfs', '-o', `size=${bytes},mode=0700`, 'tmpfs', dir]);
  assert.equal(mounted.code, 0, `this test needs a small real file system: mount -t tmpfs on ${dir} failed (run as root with mount available): ${mounted.stderr.trim()}`);
  defer(t, async () => {
    const umount = await run('umount', [dir]);
    if (umount.code !== 0) await run('umount', ['-l', dir]);
  });
  return dir;
}

/** Writes zeros to a new file until the file system is full; returns the bytes written. */
export async function fillUp(path: string): Promise<number> {
  const handle = await open(path, 'wx');
  const chunk = Buffer.alloc(4 * KiB);
  let written = 0;
  try {
    for (;;) {
      try {
        const { bytesWritten } = await handle.write(chunk, 0, chunk.length, written);
        if (bytesWritten === 0) break;
        written += bytesWritten;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENOSPC') break;
        throw err;
      }
    }
  } finally {
    await handle.close();
  }
  return written;
}
