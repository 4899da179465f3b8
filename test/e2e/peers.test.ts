/**
 * Seeing and waking peers that wait to retry: `mqlog peers` (state, backlog, last error, next attempt;
 * live from DIR/peers.json while a daemon runs, `stopped` otherwise), `mqlog retry` (a request in
 * DIR/control/ and SIGUSR2, for a foreground daemon and one run by the angel), and POST
 * /peers/NAME/retry behind the admin token, with the status page's "Retry now" button.
 *
 * The nodes use a first retry delay of minutes (forwardRetryDelayMs), so that a peer that failed once
 * waits long: a message that arrives well before the next scheduled attempt was sent because of the
 * retry, whatever the machine's load. Assertions compare arrival with nextAttemptAt, never elapsed time.
 */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { access, readFile, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import { chromium } from 'playwright-core';
import { CHROMIUM, CHROMIUM_ARGS } from '../helpers/browser.js';
import { defer, jsonLines, mqlog, tempDir, waitFor } from '../helpers/index.js';
import { allInbox, daemons, makeNodes, type NodeSpec } from '../helpers/daemon.js';

/** First retry delay 4 min, cap 8 min: the first failure waits 2 to 4 min (equal jitter). */
const SLOW_RETRIES = { forwardRetryDelayMs: 240_000, forwardMaxRetryDelayMs: 480_000 };
const ADMIN_TOKEN = 'admin-token-0123456789abcdef';

interface PeerRow {
  readonly type: string;
  readonly peer: string;
  readonly url: string | null;
  readonly state: string;
  readonly backlog: number;
  readonly lastError: string | null;
  readonly lastSentAt: number | null;
  readonly nextAttemptAt: number | null;
}

async function peers(node: NodeSpec): Promise<PeerRow[]> {
  const result = await mqlog(['peers', '--data', node.dir, '--json']);
  assert.equal(result.code, 0, result.stderr);
  return jsonLines<PeerRow>(result.stdout);
}

async function peer(node: NodeSpec, name: string): Promise<PeerRow | undefined> {
  return (await peers(node)).find((p) => p.peer === name);
}

async function send(node: NodeSpec, to: string, body: string): Promise<void> {
  const result = await mqlog(['send', '--data', node.dir, '--to', to, body]);
  assert.equal(result.code, 0, result.stderr);
}

/** Waits until A's peer `name` is retrying with its message waiting, and returns that row. */
function retrying(node: NodeSpec, name: string, backlog = 1): Promise<PeerRow> {
  return waitFor(
    async () => {
      const row = await peer(node, name);
      return row?.state === 'retrying' && row.backlog === backlog && row.lastError !== null && row.nextAttemptAt !== null ? row : undefined;
    },
    { timeoutMs: 60_000, intervalMs: 100, message: `${name} retrying with ${backlog} waiting` },
  );
}

async function bodies(node: NodeSpec): Promise<string[]> {
  return (await allInbox(node.dir)).map((m) => String(m.body)).sort();
}

/**
 * After the test: `mqlog stop`, then SIGKILL whatever still runs with `dir` on its command line (an
 * angel is detached: it would outlive the test). Linux /proc.
 */
function stopAfter(t: TestContext, dir: string): void {
  defer(t, async () => {
    await mqlog(['stop', '--data', dir], { timeoutMs: 60_000 });
    for (const entry of await readdir('/proc')) {
      if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue;
      const cmdline = await readFile(`/proc/${entry}/cmdline`, 'utf8').catch(() => '');
      if (!cmdline.split('\0').includes(dir)) continue;
      try {
        process.kill(Number(entry), 'SIGKILL');
      } catch {
        // gone meanwhile
      }
    }
  });
}

test('mqlog peers shows a peer that is down as retrying with its error and next attempt, and mqlog retry --peer makes the daemon deliver to it long before that attempt', async (t) => {
  const root = await tempDir(t);
  const { a, b } = await makeNodes(root, ['a', 'b'], SLOW_RETRIES);
  const [da, db] = daemons(t, [a!, b!]);
  await da!.start();
  await send(a!, 'b', 'hello b');

  const before = await retrying(a!, 'b');
  assert.equal(before.type, 'peer');
  assert.equal(before.url, b!.url);
  assert.match(before.lastError!, /ECONNREFUSED|refused/i);
  assert.ok(before.nextAttemptAt! > Date.now() + 60_000, `the next attempt is minutes away: ${before.nextAttemptAt! - Date.now()} ms`);
  const table = await mqlog(['peers', '--data', a!.dir]);
  assert.equal(table.code, 0, table.stderr);
  const [header, row] = table.stdout.split('\n');
  assert.match(header!, /^PEER\s+URL\s+STATE\s+BACKLOG\s+NEXT ATTEMPT\s+LAST SENT\s+LAST ERROR$/);
  assert.match(row!, /^b\s+\S+\s+retrying\s+1\s+in \d+ s\s+-\s+\S/);

  await db!.start();
  const retried = await mqlog(['retry', '--data', a!.dir, '--peer', 'b']);
  assert.equal(retried.code, 0, retried.stderr);
  assert.equal(retried.stdout, 'b: retrying now\n');
  await waitFor(async () => (await bodies(b!)).includes('hello b'), { timeoutMs: 60_000, message: 'the message at b' });
  assert.ok(Date.now() < before.nextAttemptAt!, 'delivered before the attempt the backoff had scheduled');
  assert.deepEqual(await bodies(b!), ['hello b']);
  const after = await waitFor(
    async () => {
      const row = await peer(a!, 'b');
      return row?.state === 'idle' && row.backlog === 0 ? row : undefined;
    },
    { timeoutMs: 30_000, intervalMs: 100, message: 'b idle with nothing waiting' },
  );
  assert.equal(after.lastError, null);
  assert.equal(after.nextAttemptAt, null);
  assert.ok(after.lastSentAt !== null);
  assert.ok(/"event":"retry_now"/.test(da!.output), 'the daemon logged the retry');

  // Nothing waits any more: a retry wakes nobody and says so.
  const again = await mqlog(['retry', '--data', a!.dir, '--peer', 'b', '--json']);
  assert.equal(again.code, 0, again.stderr);
  assert.deepEqual(jsonLines(again.stdout), [{ woken: [] }]);
});

test('mqlog retry refuses a peer the node does not have and a node without a daemon; without a daemon mqlog peers shows every peer stopped with its backlog', async (t) => {
  const root = await tempDir(t);
  const { a, b } = await makeNodes(root, ['a', 'b'], SLOW_RETRIES);
  const [da] = daemons(t, [a!]);
  await da!.start();
  await send(a!, 'b', 'waits');
  await retrying(a!, 'b');

  const unknown = await mqlog(['retry', '--data', a!.dir, '--peer', 'nosuch']);
  assert.equal(unknown.code, 1, unknown.stdout);
  assert.match(unknown.stderr, /^mqlog: ERR_NOT_FOUND: no peer "nosuch" .*\bb\b.*\n$/);
  assert.ok(da!.running, 'the daemon runs on');
  assert.deepEqual(await readdir(join(a!.dir, 'control')).catch(() => []), [], 'no request was filed for it');

  assert.equal(await da!.stop(), 0);
  await assert.rejects(access(join(a!.dir, 'peers.json')), { code: 'ENOENT' }, 'a stopped daemon removes its peers.json');
  const rows = await peers(a!);
  assert.deepEqual(rows, [{ type: 'peer', peer: 'b', url: b!.url, state: 'stopped', backlog: 1, lastError: rows[0]!.lastError, lastSentAt: null, nextAttemptAt: null }]);
  assert.match(rows[0]!.lastError ?? '', /ECONNREFUSED|refused/i, 'the last error kept in the outbox state');
  const stat = jsonLines<{ peer?: string; backlog?: number }>((await mqlog(['stat', '--data', a!.dir, '--json'])).stdout).find((r) => r.peer === 'b');
  assert.equal(stat?.backlog, 1, 'peers and stat agree');
  const table = await mqlog(['peers', '--data', a!.dir]);
  assert.match(table.stdout, /^PEER\s+URL\s+STATE\s.*\nb\s+\S+\s+stopped\s+1\s+-\s/);

  const noDaemon = await mqlog(['retry', '--data', a!.dir, '--peer', 'b']);
  assert.equal(noDaemon.code, 1);
  assert.match(noDaemon.stderr, /^mqlog: ERR_NOT_FOUND: no daemon is running on .*\n$/);

  // A killed daemon leaves its peers.json behind: it no longer counts.
  await da!.start();
  await retrying(a!, 'b');
  await da!.kill();
  await access(join(a!.dir, 'peers.json'));
  assert.equal((await peer(a!, 'b'))?.state, 'stopped', 'the state of a daemon that is gone is not shown as live');
  assert.equal((await mqlog(['retry', '--data', a!.dir])).code, 1, 'no daemon to ask');
  const noNode = await mqlog(['peers', '--data', join(root, 'nothing-here')]);
  assert.equal(noNode.code, 1);
  assert.match(noNode.stderr, /^mqlog: ERR_NOT_FOUND: /);
});

test('a daemon run by the angel takes mqlog retry (SIGUSR2), and SIGUSR2 sent to the angel is passed on, not fatal', async (t) => {
  const root = await tempDir(t);
  const { a } = await makeNodes(root, ['a', 'b'], SLOW_RETRIES);
  stopAfter(t, a!.dir);
  const started = await mqlog(['start', '--data', a!.dir], { timeoutMs: 90_000 });
  assert.equal(started.code, 0, started.stderr);
  const state = JSON.parse(await readFile(join(a!.dir, 'angel.json'), 'utf8')) as { angelPid: number; daemonPid: number };
  await send(a!, 'b', 'waits');
  const first = await retrying(a!, 'b');

  process.kill(state.angelPid, 'SIGUSR2');
  const woken = await mqlog(['retry', '--data', a!.dir]);
  assert.equal(woken.code, 0, woken.stderr);
  assert.equal(woken.stdout, 'b: retrying now\n');
  // Woken, it tried again at once (b is still down): a new next attempt.
  const second = await waitFor(
    async () => {
      const row = await peer(a!, 'b');
      return row?.state === 'retrying' && row.nextAttemptAt !== first.nextAttemptAt ? row : undefined;
    },
    { timeoutMs: 30_000, intervalMs: 100, message: 'b retrying again with a new next attempt' },
  );
  assert.ok(second.nextAttemptAt! > Date.now() + 60_000);
  const status = await mqlog(['status', '--data', a!.dir, '--json']);
  assert.equal(status.code, 0, `the node still runs: ${status.stdout}`);
  assert.deepEqual(
    (({ angelPid, daemonPid, restarts }) => ({ angelPid, daemonPid, restarts }))(JSON.parse(status.stdout) as { angelPid: number; daemonPid: number; restarts: number }),
    { angelPid: state.angelPid, daemonPid: state.daemonPid, restarts: 0 },
    'neither process died of the signal',
  );
  const log = await readFile(join(a!.dir, 'logs', 'angel.log'), 'utf8');
  assert.match(log, /passing SIGUSR2/);

  const stopped = await mqlog(['stop', '--data', a!.dir], { timeoutMs: 60_000 });
  assert.equal(stopped.code, 0, stopped.stderr);
  assert.equal((await peer(a!, 'b'))?.state, 'stopped');
});

test('POST /peers/NAME/retry wakes a peer waiting to retry, answers 404 for an unknown peer and 401 without the admin token; the status page offers it as a button', async (t) => {
  assert.ok(existsSync(CHROMIUM), `Chromium is not installed at ${CHROMIUM}: this test needs it (apt-get install chromium; .ci/run installs it)`);
  const root = await tempDir(t);
  const { a } = await makeNodes(root, ['a', 'b'], { ...SLOW_RETRIES, admin: { token: ADMIN_TOKEN } });
  const [da] = daemons(t, [a!]);
  await da!.start();
  await send(a!, 'b', 'waits');
  const first = await retrying(a!, 'b');
  const post = (path: string, headers: Record<string, string> = {}): Promise<Response> => fetch(`${a!.url}${path}`, { method: 'POST', headers });
  const bearer = { authorization: `Bearer ${ADMIN_TOKEN}` };

  for (const [what, response] of [
    ['no token', await post('/peers/b/retry')],
    ['a wrong token', await post('/peers/b/retry', { authorization: 'Bearer not-the-admin-token-at-all' })],
  ] as const) {
    assert.equal(response.status, 401, what);
    assert.equal(((await response.json()) as { code: string }).code, 'ERR_UNAUTHORIZED', what);
  }
  assert.equal((await peer(a!, 'b'))?.nextAttemptAt, first.nextAttemptAt, 'a refused request woke nobody');

  const unknown = await post('/peers/nosuch/retry', bearer);
  assert.equal(unknown.status, 404);
  assert.equal(((await unknown.json()) as { code: string }).code, 'ERR_NOT_FOUND');

  const woken = await post('/peers/b/retry', bearer);
  assert.equal(woken.status, 200);
  assert.deepEqual(await woken.json(), { woken: ['b'] });
  const second = await waitFor(
    async () => {
      const row = await peer(a!, 'b');
      return row?.state === 'retrying' && row.nextAttemptAt !== first.nextAttemptAt ? row : undefined;
    },
    { timeoutMs: 30_000, intervalMs: 100, message: 'b tried again at once and waits anew' },
  );

  // The page, opened with ?token=, shows b retrying and its button asks the daemon to retry it.
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS, timeout: 60_000 });
  defer(t, () => browser.close());
  const page = await browser.newPage();
  await page.goto(`${a!.url}/?token=${ADMIN_TOKEN}`);
  await waitFor(async () => ((await page.textContent('tr[data-peer="b"] td[data-field="state"]', { timeout: 1000 }).catch(() => null)) ?? '').startsWith('retrying'), {
    timeoutMs: 30_000,
    intervalMs: 100,
    message: 'the page shows b retrying',
  });
  await page.click('tr[data-peer="b"] button[data-action="retry"]', { timeout: 10_000 });
  await waitFor(
    async () => {
      const row = await peer(a!, 'b');
      return row?.state === 'retrying' && row.nextAttemptAt !== second.nextAttemptAt ? row : undefined;
    },
    { timeoutMs: 30_000, intervalMs: 100, message: 'the button woke b' },
  );
  assert.equal(da!.output.split('\n').filter((line) => line.includes('"event":"retry_now"') && line.includes('"woken":["b"]')).length, 2, 'two retries woke b: the POST and the button');
  assert.equal(page.url(), `${a!.url}/`, 'the token left the address bar');

  // Opened without the token (a new tab of its own): the page asks for it, then shows the node.
  const fresh = await (await browser.newContext()).newPage();
  await fresh.goto(`${a!.url}/`);
  await fresh.waitForSelector('#login:not([hidden])', { timeout: 30_000 });
  assert.equal(await fresh.getAttribute('#banner', 'data-state'), 'login');
  assert.equal(await fresh.$('tr[data-peer="b"]'), null, 'nothing of the node is shown before the token');
  await fresh.fill('#token', ADMIN_TOKEN);
  await fresh.click('#login button[type="submit"]');
  await fresh.waitForSelector('tr[data-peer="b"]', { timeout: 30_000 });
  assert.equal(await fresh.isHidden('#login'), true);
});
