/**
 * `npm start` / `mqlog demo`: two nodes exchanging messages under var/demo, narrated, ending by itself
 * and leaving data that `mqlog verify` accepts and `mqlog dump` shows. The demo runs in a temporary
 * directory, never in the repository's var/.
 */
import assert from 'node:assert/strict';
import { copyFile, mkdir, readdir, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { ROOT, jsonLines, mqlog, run, tempDir } from '../helpers/index.js';

interface Dumped {
  readonly queue: string;
  readonly id: string;
  readonly channel: string;
  readonly priority: number;
  readonly from: string;
  readonly state: string;
  readonly body?: string;
}

/** The user messages of the demo, as [node/queue, channel, body], sorted. */
const EXPECTED_INBOXES = [
  ['alpha/inbox/events', 'events', 'inventory changed'],
  ['beta/inbox/events', 'events', 'inventory changed'],
  ['beta/inbox/jobs', 'jobs', 'hello beta, please resize photo 42'],
  ['beta/inbox/jobs', 'jobs', 'invoice 1234'],
  ['beta/inbox/jobs', 'jobs', 'nightly report (low priority)'],
  ['beta/inbox/jobs', 'jobs', 'server on fire (urgent)'],
];

/** Checks the narration of a demo run. */
function assertNarrates(stdout: string): void {
  for (const n of [1, 2, 3, 4, 5, 6]) assert.match(stdout, new RegExp(`^\\[${n}\\] \\S`, 'm'), `step ${n} is announced`);
  assert.match(stdout, /receipt came back to alpha.*: processed$/m, 'the receipt came back: processed');
  assert.match(stdout, /^ +multicast receipt: processed \(/m, 'the multicast was processed');
  const backlog = /alpha's backlog for beta: (\d+); last error: (.+)$/m.exec(stdout);
  assert.ok(backlog !== null, 'it shows the backlog while beta was down');
  assert.ok(Number(backlog[1]) >= 3, `backlog of the 3 messages sent while beta was down: ${backlog[1]}`);
  assert.notEqual(backlog[2]!.trim(), 'null', 'and the last error');
  const priorities = [...stdout.matchAll(/^ +beta: priority (\d): "/gm)].map((m) => Number(m[1]));
  assert.deepEqual(priorities, [9, 4, 1], 'beta gets the most urgent first');
  assert.match(stdout, /^Finished in \d+(\.\d+)? s\.$/m);
}

/** Checks the data a demo left under `root` (relative to `cwd`) with verify, dump and stat. */
async function assertDemoData(root: string, cwd: string): Promise<void> {
  const verify = await mqlog(['verify', root], { cwd });
  assert.equal(verify.code, 0, `mqlog verify ${root}: ${verify.stdout}${verify.stderr}`);
  assert.match(verify.stdout, /^ok: /);

  const dump = await mqlog(['dump', root, '--json'], { cwd });
  assert.equal(dump.code, 0, dump.stderr);
  const records = jsonLines<Dumped>(dump.stdout);
  const inboxes = records.filter((r) => r.queue.includes('/inbox/')).map((r) => [r.queue, r.channel, r.body ?? '']).sort();
  assert.deepEqual(inboxes, EXPECTED_INBOXES, 'each inbox holds its messages, once');
  for (const r of records.filter((r) => r.queue.includes('/inbox/'))) {
    assert.equal(r.state, 'acked', `${r.queue} ${r.body}: processed by the demo`);
    assert.equal(r.from, 'alpha');
  }
  const sent = records.filter((r) => r.queue === 'alpha/outbox' && !r.channel.startsWith('$'));
  assert.equal(sent.length, 5, 'alpha sent 5 messages');
  assert.ok(sent.every((r) => r.state === 'sent'), 'all of them forwarded');

  const stat = await mqlog(['stat', '--data', join(root, 'alpha'), '--json'], { cwd });
  assert.equal(stat.code, 0, stat.stderr);
  const beta = jsonLines<{ peer?: string; backlog?: number }>(stat.stdout).find((r) => r.peer === 'beta');
  assert.equal(beta?.backlog, 0, "nothing left in alpha's backlog for beta");
}

test('npm start on a fresh clone exits 0 within 30 s, narrates each step and leaves data that mqlog verify var/demo accepts', async (t) => {
  // A checkout-like directory: the repository's package.json with its built dist and node_modules, so
  // that `npm start` there writes var/demo there.
  const clone = await tempDir(t, 'mqlog-demo-');
  await copyFile(join(ROOT, 'package.json'), join(clone, 'package.json'));
  await symlink(join(ROOT, 'dist'), join(clone, 'dist'));
  await symlink(join(ROOT, 'node_modules'), join(clone, 'node_modules'));

  const since = Date.now();
  const result = await run('npm', ['start'], { cwd: clone, timeoutMs: 60_000 });
  const took = Date.now() - since;
  assert.equal(result.code, 0, `npm start: ${result.stdout}\n${result.stderr}`);
  assert.ok(took < 30_000, `npm start took ${took} ms`);
  assertNarrates(result.stdout);
  assert.ok(result.stdout.includes(join(clone, 'var', 'demo')), 'it says where the nodes live');
  assert.deepEqual((await readdir(join(clone, 'var', 'demo'))).sort(), ['alpha', 'beta']);
  await assertDemoData(join('var', 'demo'), clone);
});

test('mqlog demo --dir DIR runs again on its own previous data, replacing it', async (t) => {
  const root = await tempDir(t);
  const dir = join(root, 'demo');
  for (const round of [1, 2]) {
    const result = await mqlog(['demo', '--dir', dir], { timeoutMs: 60_000 });
    assert.equal(result.code, 0, `round ${round}: ${result.stdout}\n${result.stderr}`);
    assertNarrates(result.stdout);
  }
  await assertDemoData(dir, root);
});

test('mqlog demo --dir refuses a directory that holds anything but demo nodes, and leaves it alone', async (t) => {
  const root = await tempDir(t);
  const dir = join(root, 'precious');
  await mkdir(join(dir, 'alpha'), { recursive: true });
  await writeFile(join(dir, 'thesis.txt'), 'do not delete');
  await writeFile(join(dir, 'alpha', 'keep.txt'), 'kept too');
  const result = await mqlog(['demo', '--dir', dir], { timeoutMs: 60_000 });
  assert.notEqual(result.code, 0);
  assert.match(result.stderr, /^mqlog: ERR_[A-Z_]+: .*thesis\.txt.*\n$/);
  assert.deepEqual((await readdir(dir)).sort(), ['alpha', 'thesis.txt']);
  assert.deepEqual(await readdir(join(dir, 'alpha')), ['keep.txt']);
});
