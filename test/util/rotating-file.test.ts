import assert from 'node:assert/strict';
import { readFile, readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { RotatingFile } from '../../src/util/rotating-file.js';
import { tempDir, waitFor } from '../helpers/index.js';

test('a log whose directory is removed while it is written is written again in a new directory, and nothing throws', async (t) => {
  const dir = join(await tempDir(t), 'logs');
  const path = join(dir, 'daemon.log');
  const { mkdir } = await import('node:fs/promises');
  await mkdir(dir);
  const log = new RotatingFile(path);
  t.after(() => log.close());
  log.write('before\n');
  await waitFor(async () => (await readFile(path, 'utf8').catch(() => '')).includes('before'), { message: 'the first line' });
  await rm(dir, { recursive: true });
  // Lines go on being written (the removal is noticed within a second) and land in the file made again.
  await waitFor(
    async () => {
      log.write('after\n');
      return (await readFile(path, 'utf8').catch(() => '')).includes('after');
    },
    { intervalMs: 100, message: 'a line written after the removal, in a new logs directory' },
  );
});

test('rotation into a removed directory makes it again and keeps rotating', async (t) => {
  const dir = join(await tempDir(t), 'logs');
  const path = join(dir, 'angel.log');
  const log = new RotatingFile(path, { maxBytes: 64, keep: 2 });
  t.after(() => log.close());
  await rm(dir, { recursive: true, force: true });
  for (let i = 0; i < 50; i++) {
    log.write(`line ${i} ${'x'.repeat(20)}\n`);
    await new Promise((resolve) => setImmediate(resolve));
  }
  await waitFor(async () => (await readdir(dir).catch(() => [] as string[])).includes('angel.log.1'), { message: 'a rotated file' });
  const files = await readdir(dir);
  assert.ok(files.every((f) => ['angel.log', 'angel.log.1', 'angel.log.2'].includes(f)), `files: ${files.join(', ')}`);
});
