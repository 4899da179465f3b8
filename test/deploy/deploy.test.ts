/**
 * The deployment examples in deploy/: the systemd unit passes `systemd-analyze verify` (where systemd is
 * installed; .ci/run installs it), and the commands the unit and the Dockerfile run are real: the daemon starts with the
 * Dockerfile's CMD (only its port changed), answers the HEALTHCHECK's request, and stops on the
 * STOPSIGNAL with exit 0. No image is built here (that needs a Docker daemon).
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { freePort } from '../helpers/daemon.js';
import { CLI, ROOT, exited, mqlog, spawnChild, tempDir, waitFor } from '../helpers/index.js';

const DEPLOY = join(ROOT, 'deploy');

/** Instructions of a Dockerfile (continuation lines joined, comments dropped) as [keyword, rest]. */
async function dockerfile(): Promise<[string, string][]> {
  const text = (await readFile(join(DEPLOY, 'Dockerfile'), 'utf8')).replace(/\\\n/g, ' ');
  return text
    .split('\n')
    .map((line) => line.trim())
    .filter((line) => line.length > 0 && !line.startsWith('#'))
    .map((line) => {
      const space = line.indexOf(' ');
      return [line.slice(0, space).toUpperCase(), line.slice(space + 1).trim()];
    });
}

/** The JSON array of an exec-form instruction (after any --options and, for HEALTHCHECK, CMD). */
const execForm = (rest: string): string[] => JSON.parse(rest.slice(rest.indexOf('['))) as string[];

test('the systemd unit passes systemd-analyze verify and runs a real mqlog command in the foreground', async () => {
  const unitPath = join(DEPLOY, 'mqlog.service');
  const unit = await readFile(unitPath, 'utf8');
  const exec = /^ExecStart=\/usr\/bin\/env mqlog (.+)$/m.exec(unit)?.[1]?.split(/\s+/) ?? [];
  assert.deepEqual(exec.slice(0, 1), ['daemon'], 'systemd supervises the daemon itself, not an angel');
  const help = await mqlog([exec[0]!, '--help']);
  for (const flag of exec.filter((a) => a.startsWith('--'))) assert.match(help.stdout, new RegExp(`${flag}\\b`), `mqlog daemon has no ${flag}`);
  const analyze = spawnSync('systemd-analyze', ['verify', unitPath], { encoding: 'utf8' });
  assert.equal(analyze.error, undefined, 'systemd-analyze is needed to lint the unit (Debian package systemd; .ci/run installs it)');
  assert.equal(analyze.status, 0, analyze.stderr);
  // Unknown keys and bad values are only warnings (exit 0): any line about the unit is a failure.
  assert.equal(analyze.stderr.split('\n').filter((line) => line.includes('mqlog.service')).join('\n'), '');
});

test("the Dockerfile's CMD starts a daemon that answers its HEALTHCHECK and stops cleanly on its STOPSIGNAL", async (t) => {
  const steps = await dockerfile();
  const last = (keyword: string): string => steps.filter(([k]) => k === keyword).at(-1)?.[1] ?? '';
  for (const [keyword, rest] of steps.filter(([k, r]) => k === 'COPY' && !r.startsWith('--from='))) {
    for (const source of rest.split(/\s+/).slice(0, -1)) assert.ok(existsSync(join(ROOT, source)), `${keyword} ${source}: not in the repository`);
  }
  const entrypoint = execForm(last('ENTRYPOINT'));
  assert.deepEqual(entrypoint, ['node', '/app/dist/cli/main.js']);
  const cmd = execForm(last('CMD'));
  const data = await tempDir(t);
  const port = await freePort();
  const args = cmd.map((a) => (a === '/var/lib/mqlog' ? data : a.replace(/^0\.0\.0\.0:7420$/, `127.0.0.1:${port}`)));
  assert.notDeepEqual(args, cmd, 'the CMD names the data volume and the port as expected');
  const child = spawnChild(t, process.execPath, [CLI, ...args]);
  let output = '';
  child.stdout?.on('data', (b: Buffer) => (output += b.toString()));
  child.stderr?.on('data', (b: Buffer) => (output += b.toString()));
  await waitFor(() => /listening on http:\/\//.test(output) || child.exitCode !== null, { message: 'the daemon to listen' });
  assert.equal(child.exitCode, null, output);

  const health = execForm(last('HEALTHCHECK'));
  assert.equal(health[0], 'node');
  const probe = spawnSync(process.execPath, health.slice(1).map((a) => a.replace('127.0.0.1:7420', `127.0.0.1:${port}`)), { encoding: 'utf8', timeout: 30_000 });
  assert.equal(probe.status, 0, `the HEALTHCHECK failed: ${probe.stderr}`);

  assert.equal(last('STOPSIGNAL'), 'SIGTERM');
  child.kill('SIGTERM');
  assert.deepEqual(await exited(child), { code: 0, signal: null });
});
