/**
 * The command line around the commands (shared/CLI.md): --version, help for one command, negative
 * numbers as option values, a body from stdin with --file -, and shell completion run in a real bash.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { jsonLines, mqlog, run, tempDir, ROOT } from '../helpers/index.js';

const TO = 'http://127.0.0.1:9';

test('mqlog --version, -V and version print the package version and exit 0', async () => {
  const { version } = JSON.parse(await readFile(join(ROOT, 'package.json'), 'utf8')) as { version: string };
  for (const flag of ['--version', '-V', 'version']) {
    const result = await mqlog([flag]);
    assert.deepEqual([result.code, result.stdout.trim()], [0, `mqlog ${version}`], flag);
  }
});

test('mqlog help send prints what mqlog send --help prints', async () => {
  const help = await mqlog(['help', 'send']);
  const direct = await mqlog(['send', '--help']);
  assert.equal(help.code, 0);
  assert.equal(help.stdout, direct.stdout);
  assert.match(help.stdout, /^usage: mqlog send /);
});

test('a negative option value is checked as a value, not taken for an option', async (t) => {
  const dir = await tempDir(t);
  const result = await mqlog(['send', '--data', dir, '--to', TO, '--priority', '-1', 'x']);
  assert.equal(result.code, 2, result.stderr);
  assert.match(result.stderr, /ERR_USAGE: --priority must be an integer from 0 to 9, got -1/);
  assert.doesNotMatch(result.stderr, /ambiguous/);
});

test('send --file - takes the body from stdin, streaming one larger than the inline limit', async (t) => {
  const dir = await tempDir(t);
  const small = await mqlog(['send', '--data', dir, '--to', TO, '--file', '-'], { input: 'from stdin' });
  assert.equal(small.code, 0, small.stderr);
  const large = randomBytes(9 * 1024 * 1024);
  const big = await mqlog(['send', '--data', dir, '--to', TO, '--file', '-'], { input: large });
  assert.equal(big.code, 0, big.stderr);
  const records = jsonLines<{ id: string; size: number; body?: string }>((await mqlog(['dump', dir, '--json'])).stdout);
  const byId = new Map(records.map((r) => [r.id, r]));
  assert.equal(byId.get(small.stdout.trim())?.body, 'from stdin');
  assert.equal(byId.get(big.stdout.trim())?.size, large.length);
});

test('the bash completion script completes commands and the options of the command typed', async () => {
  const script = await mqlog(['completion', 'bash']);
  assert.equal(script.code, 0, script.stderr);
  const complete = async (...words: string[]): Promise<string[]> => {
    const program = `${script.stdout}\nCOMP_WORDS=(${words.map((w) => `'${w}'`).join(' ')}); COMP_CWORD=${words.length - 1}; _mqlog; printf '%s\\n' "\${COMPREPLY[@]}"`;
    const result = await run('bash', ['-c', program]);
    assert.equal(result.code, 0, result.stderr);
    return result.stdout.split('\n').filter((w) => w.length > 0);
  };
  assert.deepEqual(await complete('mqlog', 'st'), ['start', 'stop', 'status', 'stat']);
  assert.deepEqual(await complete('mqlog', 'purge', '--d'), ['--data', '--dead']);
  assert.ok((await complete('mqlog', 'send', '--')).includes('--lines'));
  assert.deepEqual(await complete('mqlog', 'pe'), ['peers']);
  assert.deepEqual(await complete('mqlog', 'retry', '--'), ['--help', '--data', '--peer', '--json']);
  assert.equal((await mqlog(['completion', 'fish'])).code, 2);
});
