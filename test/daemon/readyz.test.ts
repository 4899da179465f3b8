/**
 * GET /readyz beside /healthz: ready (200) once the receiver listens and the queues are open; the JSON
 * body says why not otherwise. Served on the peer port, and on the admin address when there is one.
 */
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { Daemon } from '../../src/daemon/daemon.js';
import { silentLogger } from '../../src/daemon/logger.js';
import { defer, tempDir } from '../helpers/index.js';
import { freePort } from '../helpers/daemon.js';

async function get(url: string): Promise<{ status: number; body: unknown }> {
  const response = await fetch(url);
  return { status: response.status, body: await response.json() };
}

test('a running daemon answers GET /readyz 200 {ready:true} on its peer port and on its admin address', async (t) => {
  const dir = await tempDir(t);
  const adminPort = await freePort();
  await writeFile(join(dir, 'mqlog.json'), JSON.stringify({ listen: '127.0.0.1:0', admin: { listen: `127.0.0.1:${adminPort}` } }));
  const daemon = await Daemon.start({ data: dir, logger: silentLogger() });
  defer(t, () => daemon.stop());
  assert.deepEqual(await get(`${daemon.url}/readyz`), { status: 200, body: { ready: true, reasons: [] } });
  assert.deepEqual(await get(`${daemon.adminUrl}/readyz`), { status: 200, body: { ready: true, reasons: [] } });
  assert.equal((await get(`${daemon.url}/healthz`)).status, 200, 'liveness stays where it was');
});
