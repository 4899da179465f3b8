/**
 * Daemon.start as a library caller uses it: an option it does not know is refused (not ignored), and a
 * daemon inside an application logs nothing unless given a logger.
 */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { Daemon, type DaemonOptions } from '../../src/daemon/daemon.js';
import { ROOT, run, tempDir } from '../helpers/index.js';

test('an option Daemon.start does not know is refused with ERR_INVALID_ARG naming it, and nothing starts', async (t) => {
  const dir = await tempDir(t);
  const options = { data: dir, config: { listen: '127.0.0.1:0' } } as unknown as DaemonOptions;
  await assert.rejects(Daemon.start(options), (err: { code?: string; message?: string }) => err.code === 'ERR_INVALID_ARG' && /unknown option of Daemon\.start: config/.test(err.message ?? ''));
  assert.equal(existsSync(join(dir, 'daemon.lock')), false, 'no lock was taken');
});

test('a daemon started in-process without a logger writes nothing to stdout; with logger "stdout" it logs JSON lines', async (t) => {
  const dir = await tempDir(t);
  await writeFile(join(dir, 'mqlog.json'), JSON.stringify({ name: 'inproc', listen: '127.0.0.1:0' }));
  const script = (logger: string): string => `
    const { Daemon } = await import(${JSON.stringify(join(ROOT, 'dist', 'daemon', 'index.js'))});
    const daemon = await Daemon.start({ data: ${JSON.stringify(dir)}${logger} });
    await daemon.stop();
    process.stdout.write('stopped\\n');`;
  const quiet = await run(process.execPath, ['--input-type=module', '-e', script('')]);
  assert.equal(quiet.code, 0, quiet.stderr);
  assert.equal(quiet.stdout, 'stopped\n');
  const loud = await run(process.execPath, ['--input-type=module', '-e', script(", logger: 'stdout'")]);
  assert.equal(loud.code, 0, loud.stderr);
  const lines = loud.stdout.trim().split('\n');
  assert.equal(lines.at(-1), 'stopped');
  assert.ok(lines.length > 1 && lines.slice(0, -1).every((l) => (JSON.parse(l) as { node?: string }).node === 'inproc'), loud.stdout);
});
