/**
 * The README's examples, as a user runs them: the setup commands in a shell (two nodes, started with
 * `mqlog start`), then the two application snippets, verbatim, as two processes that import 'mqlog' —
 * one works through the channel, the other sends a job and waits until it was processed. Only the
 * ports of the setup are changed (to free ones).
 */
import assert from 'node:assert/strict';
import { mkdir, readFile, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { freePort } from '../helpers/daemon.ts';
import { CLI, ROOT, defer, mqlog, run, spawnChild, tempDir, waitFor } from '../helpers/index.ts';

/** The fenced code block after each `<!-- example: NAME -->` line of the README. */
async function examples(): Promise<Map<string, string>> {
  const readme = await readFile(join(ROOT, 'README.md'), 'utf8');
  const found = new Map<string, string>();
  for (const match of readme.matchAll(/<!-- example: (\S+) -->\n```\w*\n([\s\S]*?)\n```/g)) found.set(match[1] as string, `${match[2] as string}\n`);
  return found;
}

test("the README's setup, sender and worker run as written and a job goes from alpha to beta and back as processed", async (t) => {
  const code = await examples();
  for (const name of ['setup.sh', 'send.mjs', 'work.mjs']) assert.ok(code.has(name), `the README has the example ${name}`);
  const dir = await tempDir(t);
  // A project that installed mqlog: `import 'mqlog'` and `npx mqlog` find this checkout.
  await mkdir(join(dir, 'node_modules', '.bin'), { recursive: true });
  await symlink(ROOT, join(dir, 'node_modules', 'mqlog'));
  await symlink(CLI, join(dir, 'node_modules', '.bin', 'mqlog'));
  const [alphaPort, betaPort] = [await freePort(), await freePort()];
  const setup = (code.get('setup.sh') as string).replaceAll('7421', String(alphaPort)).replaceAll('7422', String(betaPort));
  for (const name of ['send.mjs', 'work.mjs']) await writeFile(join(dir, name), code.get(name) as string);
  defer(t, async () => {
    for (const node of ['alpha', 'beta']) await mqlog(['stop', '--data', join(dir, 'var', node)]);
  });

  const started = await run('bash', ['-e', '-c', setup], { cwd: dir, timeoutMs: 120_000 });
  assert.equal(started.code, 0, `setup: ${started.stdout}${started.stderr}`);

  const worker = spawnChild(t, process.execPath, ['work.mjs'], { cwd: dir });
  let workerOutput = '';
  worker.stdout?.on('data', (b: Buffer) => (workerOutput += b.toString()));
  worker.stderr?.on('data', (b: Buffer) => (workerOutput += b.toString()));
  const sent = await run(process.execPath, ['send.mjs'], { cwd: dir, timeoutMs: 120_000 });
  assert.equal(sent.code, 0, `send.mjs: ${sent.stdout}${sent.stderr}`);
  const id = /^sent (\S+)$/m.exec(sent.stdout)?.[1];
  assert.ok(id !== undefined, `send.mjs printed the id: ${sent.stdout}`);
  assert.match(sent.stdout, new RegExp(`^processed ${id}$`, 'm'));
  await waitFor(() => workerOutput.includes('working on resize photo 42'), { message: `the worker's output: ${workerOutput}` });
  assert.equal(worker.exitCode, null, `the worker keeps following: ${workerOutput}`);
});
