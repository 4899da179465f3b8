/**
 * mqlog against its own conformance corpus (spec/conformance/): every node directory gives the recorded
 * `dump --json` and `verify` output and exit code, and every HTTP request body the recorded answer from a
 * fresh receiver. The corpus is what a second implementation checks itself against; this keeps it true.
 */
import assert from 'node:assert/strict';
import { cp, readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { NODE_PLACEHOLDER, answerOf } from '../spec/conformance/generate.ts';
import { daemons, makeNodes } from './helpers/daemon.js';
import { ROOT, mqlog, tempDir } from './helpers/index.js';

const CORPUS = join(ROOT, 'spec', 'conformance');

interface Recorded {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

test('every node directory of the corpus dumps and verifies as recorded', async (t) => {
  const cases = await readdir(join(CORPUS, 'nodes'));
  assert.ok(cases.length >= 5, `${cases.length} node cases`);
  for (const name of cases) {
    const dir = join(await tempDir(t), 'node');
    await cp(join(CORPUS, 'nodes', name, 'node'), dir, { recursive: true });
    for (const [file, args] of [['dump.json', ['dump', dir, '--json']], ['verify.json', ['verify', dir]]] as const) {
      const expected = JSON.parse(await readFile(join(CORPUS, 'nodes', name, file), 'utf8')) as Recorded;
      const got = await mqlog([...args]);
      const scrub = (text: string): string => text.split(dir).join(NODE_PLACEHOLDER);
      assert.deepEqual({ code: got.code, stdout: scrub(got.stdout), stderr: scrub(got.stderr) }, expected, `${name}: ${args[0]}`);
    }
  }
});

test('every HTTP request of the corpus gets the recorded answer from a fresh receiver', async (t) => {
  const files = (await readdir(join(CORPUS, 'http'))).filter((f) => f.endsWith('.json'));
  assert.ok(files.length >= 9, `${files.length} HTTP cases`);
  for (const file of files) {
    const name = file.slice(0, -'.json'.length);
    const { contentType, expect } = JSON.parse(await readFile(join(CORPUS, 'http', file), 'utf8')) as { contentType: string; expect: Record<string, unknown> };
    const { b } = await makeNodes(await tempDir(t), ['a', 'b']);
    const [db] = daemons(t, [b!]);
    await db!.start();
    assert.deepEqual(await answerOf(b!.url, { body: await readFile(join(CORPUS, 'http', `${name}.bin`)), contentType }), expect, name);
    assert.equal(await db!.stop(), 0);
  }
});
