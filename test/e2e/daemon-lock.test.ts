/**
 * A daemon that loses its directory's lock stops: it must not keep writing where another daemon may now
 * run. Losing it here: the lock directory is removed under the running daemon.
 */
import assert from 'node:assert/strict';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { exited, tempDir, waitFor } from '../helpers/index.js';
import { daemons, makeNodes } from '../helpers/daemon.js';

test('a daemon whose lock is removed under it logs lock_lost, stops within seconds and exits 1 with ERR_LOCKED', async (t) => {
  const root = await tempDir(t);
  const { n } = await makeNodes(root, ['n']);
  const [d] = daemons(t, [n!]);
  await d!.start();
  await rm(join(n!.dir, 'daemon.lock'), { recursive: true, force: true });
  await waitFor(() => !d!.running, { timeoutMs: 30_000, message: 'the daemon to stop by itself' });
  const { code } = await exited(d!.child!);
  assert.equal(code, 1, d!.output);
  assert.match(d!.output, /"event":"lock_lost"/);
  assert.match(d!.output, /mqlog: ERR_LOCKED: lost the lock/);
  assert.match(d!.output, /"event":"stopped"/, 'it went through the graceful stop');
});
