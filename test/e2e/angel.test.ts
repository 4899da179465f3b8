/**
 * Running a node in the background: `mqlog start` (the angel supervising the daemon), `status`, `stop`,
 * the locks that keep one node per directory, the log files under DIR/logs, and the angel giving up on a
 * daemon that cannot boot. Every node started here is stopped after its test, and whatever it left
 * behind is SIGKILLed (the angel is detached, so it would outlive the test otherwise).
 */
import assert from 'node:assert/strict';
import { readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import { defer, jsonLines, mqlog, tempDir, waitFor, type RunResult } from '../helpers/index.js';
import { DaemonProcess, allInbox, daemons, freePort, makeNodes } from '../helpers/daemon.js';

// Debug level: A's `forwarded` events say the moment a batch went through (the trigger for the kill
// below), and the logs test gets every event the daemons can write. Each test file runs in its own
// process, so this reaches only the daemons (and angels) started here.
process.env.MQLOG_LOG_LEVEL = 'debug';

const SECRET = '0123456789abcdef-secret';

interface Status {
  readonly running: boolean;
  readonly angelPid: number | null;
  readonly daemonPid: number | null;
  readonly restarts: number;
  readonly listen: string | null;
}

async function status(dir: string): Promise<Status> {
  const result = await mqlog(['status', '--data', dir, '--json']);
  const lines = jsonLines<Status>(result.stdout);
  assert.equal(lines.length, 1, `one JSON line: ${result.stdout}`);
  // The exit code says it too, as LSB init scripts do: 0 running, 3 not running.
  assert.equal(result.code, lines[0]!.running ? 0 : 3, `${result.stdout}${result.stderr}`);
  return lines[0]!;
}

/** True when no process has this pid (process.kill(pid, 0) throws ESRCH). */
function gone(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return false;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'ESRCH';
  }
}

/** Live processes (other than this one) with `dir` as one of their command-line arguments (Linux /proc). */
async function processesOf(dir: string): Promise<number[]> {
  const pids: number[] = [];
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue;
    let cmdline: string;
    try {
      cmdline = await readFile(`/proc/${entry}/cmdline`, 'utf8');
    } catch {
      continue; // exited meanwhile
    }
    if (cmdline.split('\0').includes(dir)) pids.push(Number(entry));
  }
  return pids;
}

/** After the test: `mqlog stop`, then SIGKILL anything still running on `dir`. */
function cleanUpNode(t: TestContext, dir: string): void {
  defer(t, async () => {
    await mqlog(['stop', '--data', dir], { timeoutMs: 30_000 });
    for (const pid of await processesOf(dir)) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // gone already
      }
    }
  });
}

/** `mqlog start --data DIR …`, with the node cleaned up after the test. */
function start(t: TestContext, dir: string, args: string[] = []): Promise<RunResult> {
  cleanUpNode(t, dir);
  return mqlog(['start', '--data', dir, ...args], { timeoutMs: 90_000 });
}

function assertLocked(result: RunResult, what: string): void {
  assert.equal(result.code, 1, `${what}: exit 1 (stdout: ${result.stdout}, stderr: ${result.stderr})`);
  assert.match(result.stderr, /^mqlog: ERR_LOCKED: \S.*\n$/, `${what}: one ERR_LOCKED line on stderr`);
}

/** How many log events named `event` a foreground daemon printed. */
function events(d: DaemonProcess, event: string): number {
  return d.output.split('\n').filter((line) => line.includes(`"event":"${event}"`)).length;
}

/** The JSON lines of a log file (other lines, such as `listening on …`, are skipped). */
async function logEvents(path: string): Promise<Record<string, unknown>[]> {
  const text = await readFile(path, 'utf8');
  return text
    .split('\n')
    .filter((line) => line.startsWith('{'))
    .map((line) => JSON.parse(line) as Record<string, unknown>);
}

/** Keys that occur more than once at the top level of a JSON object text (JSON.parse keeps the last silently). */
function duplicateTopLevelKeys(text: string): string[] {
  JSON.parse(text); // valid JSON first
  const seen = new Set<string>();
  const duplicates: string[] = [];
  let depth = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === '"') {
      let end = i + 1;
      while (text[end] !== '"') end += text[end] === '\\' ? 2 : 1;
      const key = depth === 1 && /^\s*:/.test(text.slice(end + 1, end + 8)) ? (JSON.parse(text.slice(i, end + 1)) as string) : undefined;
      if (key !== undefined) {
        if (seen.has(key)) duplicates.push(key);
        seen.add(key);
      }
      i = end;
    } else if (c === '{' || c === '[') depth++;
    else if (c === '}' || c === ']') depth--;
  }
  return duplicates;
}

async function healthz(url: string): Promise<number> {
  const response = await fetch(`${url}/healthz`);
  await response.arrayBuffer();
  return response.status;
}

test('the angel restarts a SIGKILLed daemon within seconds, no message sent before, during or after is lost or doubled, and stop returns once both processes are gone', async (t) => {
  const root = await tempDir(t);
  const { a, b } = await makeNodes(root, ['a', 'b']);
  const [da] = daemons(t, [a!]);
  await da!.start();

  // start returns once the daemon listens: /healthz answers at once.
  const started = await start(t, b!.dir, ['--listen', `127.0.0.1:${b!.port}`]);
  assert.equal(started.code, 0, started.stderr);
  assert.equal(await healthz(b!.url), 200, 'the daemon listens when start returns');
  const first = await status(b!.dir);
  assert.equal(first.running, true);
  assert.equal(first.restarts, 0);
  assert.equal(first.listen, `127.0.0.1:${b!.port}`);
  assert.equal(typeof first.angelPid, 'number');
  assert.equal(typeof first.daemonPid, 'number');
  assert.notEqual(first.angelPid, first.daemonPid);
  assert.ok(!gone(first.angelPid!) && !gone(first.daemonPid!), 'both processes run');

  const expected = new Map<string, string>();
  const send = async (label: string, count: number): Promise<void> => {
    const lines = Array.from({ length: count }, (_, i) => `${label} ${i} ${'m'.repeat(i % 37)}`);
    const result = await mqlog(['send', '--data', a!.dir, '--to', 'b', '--lines'], { input: `${lines.join('\n')}\n` });
    assert.equal(result.code, 0, result.stderr);
    const ids = result.stdout.trim().split('\n');
    assert.equal(ids.length, count);
    ids.forEach((id, i) => expected.set(id, lines[i]!));
  };

  // Before the kill: delivered.
  await send('before', 100);
  await waitFor(async () => (await allInbox(b!.dir)).length >= 100, { timeoutMs: 30_000, intervalMs: 200, message: 'the first 100 messages to reach B' });

  // During: A is forwarding a large batch when B's daemon is SIGKILLed; more is sent while it is down.
  const forwardedBefore = events(da!, 'forwarded');
  const during = send('during', 2000);
  await waitFor(() => events(da!, 'forwarded') > forwardedBefore, { timeoutMs: 30_000, message: 'A to forward part of the large batch' });
  process.kill(first.daemonPid!, 'SIGKILL');
  const whileDown = send('while down', 50);

  // The angel starts a new daemon within 10 s of the kill.
  const second = await waitFor(
    async () => {
      const s = await status(b!.dir);
      return s.running && s.daemonPid !== null && s.daemonPid !== first.daemonPid ? s : undefined;
    },
    { timeoutMs: 10_000, intervalMs: 100, message: 'status to show a new daemon pid' },
  );
  assert.equal(second.restarts, 1);
  assert.equal(second.angelPid, first.angelPid, 'the same angel');
  assert.ok(gone(first.daemonPid!), 'the killed daemon is gone');
  const listening = await waitFor(
    async () => {
      const s = await status(b!.dir);
      return s.listen !== null ? s : undefined;
    },
    { timeoutMs: 30_000, intervalMs: 100, message: 'the new daemon to listen' },
  );
  assert.equal(listening.listen, `127.0.0.1:${b!.port}`, 'the same address');
  assert.equal(listening.daemonPid, second.daemonPid);
  assert.equal(await healthz(b!.url), 200);

  // After: the restarted daemon takes more.
  await during;
  await whileDown;
  await send('after', 100);
  await waitFor(async () => new Set((await allInbox(b!.dir)).map((m) => m.id)).size >= expected.size, {
    timeoutMs: 60_000,
    intervalMs: 500,
    message: `B to hold all ${expected.size} messages`,
  });
  const inbox = await allInbox(b!.dir);
  const ids = inbox.map((m) => m.id as string);
  assert.equal(new Set(ids).size, ids.length, 'no message twice in B');
  assert.deepEqual([...ids].sort(), [...expected.keys()].sort(), 'exactly the messages A sent');
  for (const m of inbox) assert.equal(m.body, expected.get(m.id as string), `body of ${m.id as string}`);

  // stop returns only once the angel and the daemon are gone, and leaves no process on B's directory.
  const beforeStop = await status(b!.dir);
  const stopped = await mqlog(['stop', '--data', b!.dir], { timeoutMs: 90_000 });
  assert.equal(stopped.code, 0, stopped.stderr);
  for (const pid of [first.angelPid!, first.daemonPid!, beforeStop.daemonPid!]) assert.ok(gone(pid), `process ${pid} is gone when stop returns`);
  assert.deepEqual(await processesOf(b!.dir), [], "no process left on B's directory");
  const after = await status(b!.dir);
  assert.equal(after.running, false);
  assert.equal(after.daemonPid, null);
  assert.equal(after.angelPid, null);
  const verify = await mqlog(['verify', b!.dir]);
  assert.equal(verify.code, 0, verify.stdout + verify.stderr);
});

test('removing the logs directory of a running node stops nothing: the angel and the daemon run on and their logs come back', async (t) => {
  const root = await tempDir(t);
  const { n } = await makeNodes(root, ['n']);
  const started = await start(t, n!.dir);
  assert.equal(started.code, 0, started.stderr);
  const before = await status(n!.dir);
  await rm(join(n!.dir, 'logs'), { recursive: true });
  // Work that makes the daemon log (a destination that cannot be reached, retried), and the angel log.
  for (let i = 0; i < 3; i++) assert.equal((await mqlog(['send', '--data', n!.dir, '--to', 'http://127.0.0.1:9', `after ${i}`])).code, 0);
  await waitFor(async () => (await readFile(join(n!.dir, 'logs', 'daemon.log'), 'utf8').catch(() => '')).length > 0, { message: 'daemon.log written again' });
  const still = await status(n!.dir);
  assert.deepEqual([still.running, still.angelPid, still.daemonPid, still.restarts], [true, before.angelPid, before.daemonPid, before.restarts], 'the same angel and daemon run on');
  assert.equal(await healthz(n!.url), 200);
  const stopped = await mqlog(['stop', '--data', n!.dir]);
  assert.equal(stopped.code, 0, stopped.stderr);
});

test('a second mqlog start or mqlog daemon on a directory in use fails with exit 1 and ERR_LOCKED, disturbing nothing', async (t) => {
  const root = await tempDir(t);
  const { n } = await makeNodes(root, ['n']);
  const otherListen = `127.0.0.1:${await freePort()}`;

  // Under the angel.
  const started = await start(t, n!.dir);
  assert.equal(started.code, 0, started.stderr);
  const before = await status(n!.dir);
  assertLocked(await mqlog(['start', '--data', n!.dir, '--listen', otherListen], { timeoutMs: 30_000 }), 'second start');
  assertLocked(await mqlog(['daemon', '--data', n!.dir, '--listen', otherListen], { timeoutMs: 30_000 }), 'daemon while started');
  const still = await status(n!.dir);
  assert.deepEqual(still, before, 'the running node is untouched');
  assert.equal(await healthz(n!.url), 200);
  const stopped = await mqlog(['stop', '--data', n!.dir]);
  assert.equal(stopped.code, 0, stopped.stderr);

  // In the foreground.
  const [fg] = daemons(t, [n!]);
  await fg!.start();
  assertLocked(await mqlog(['start', '--data', n!.dir, '--listen', otherListen], { timeoutMs: 30_000 }), 'start while a foreground daemon runs');
  assertLocked(await mqlog(['daemon', '--data', n!.dir, '--listen', otherListen], { timeoutMs: 30_000 }), 'second foreground daemon');
  assert.ok(fg!.running, 'the first daemon still runs');
  assert.equal(await healthz(n!.url), 200);
  assert.equal((await status(n!.dir)).running, false, 'the refused start left no angel');
});

test('after a SIGKILL of the foreground daemon, a new mqlog daemon and then mqlog start wait out the dead holder\'s lock and run', async (t) => {
  const root = await tempDir(t);
  const { n } = await makeNodes(root, ['n']);
  const [first, second] = daemons(t, [n!, n!]);
  await first!.start();
  await first!.kill();

  let since = Date.now();
  await second!.start(); // fails if it exits (with ERR_LOCKED) instead of waiting
  assert.ok(Date.now() - since < 30_000, `the new daemon waited ${Date.now() - since} ms, a few seconds at most`);
  assert.equal(await healthz(n!.url), 200);
  await second!.kill();

  since = Date.now();
  const started = await start(t, n!.dir);
  assert.equal(started.code, 0, started.stderr);
  assert.ok(Date.now() - since < 30_000, `start waited ${Date.now() - since} ms, a few seconds at most`);
  assert.equal(await healthz(n!.url), 200);
  const s = await status(n!.dir);
  assert.equal(s.running, true);
  assert.equal(s.restarts, 0, 'the daemon started at the first attempt');
  const stopped = await mqlog(['stop', '--data', n!.dir]);
  assert.equal(stopped.code, 0, stopped.stderr);
  assert.ok(gone(s.angelPid!) && gone(s.daemonPid!));
});

test('under mqlog start the daemon logs JSON lines to DIR/logs/daemon.log and the angel to DIR/logs/angel.log, and no peer key appears in any log file', async (t) => {
  const root = await tempDir(t);
  const { a, b } = await makeNodes(root, ['a', 'b']);
  // One shared secret for the pair a-b, in both configurations.
  for (const [node, peer] of [[a!, b!], [b!, a!]] as const) {
    await writeFile(join(node.dir, 'mqlog.json'), JSON.stringify({ name: node.name, listen: `127.0.0.1:${node.port}`, peers: { [peer.name]: { url: peer.url, key: SECRET } } }));
  }
  for (const node of [a!, b!]) {
    const started = await start(t, node.dir);
    assert.equal(started.code, 0, started.stderr);
  }
  const statusA = await status(a!.dir);
  const statusB = await status(b!.dir);

  // Traffic both ways: messages with receipts A -> B, acked on B, receipts B -> A.
  const lines = Array.from({ length: 20 }, (_, i) => `logged traffic ${i}`);
  const sent = await mqlog(['send', '--data', a!.dir, '--to', 'b', '--receipt', '--lines'], { input: `${lines.join('\n')}\n` });
  assert.equal(sent.code, 0, sent.stderr);
  const ids = sent.stdout.trim().split('\n');
  const tail = await mqlog(['tail', '--data', b!.dir, '--follow', '--ack', '--limit', '20', '--timeout', '30s']);
  assert.equal(tail.code, 0, tail.stderr);
  const receipt = await mqlog(['receipt', '--data', a!.dir, ids.at(-1)!, '--wait', 'processed', '--timeout', '30s']);
  assert.equal(receipt.code, 0, receipt.stdout + receipt.stderr);

  for (const node of [a!, b!]) {
    const stopped = await mqlog(['stop', '--data', node.dir]);
    assert.equal(stopped.code, 0, stopped.stderr);
  }

  for (const [node, s] of [[a!, statusA], [b!, statusB]] as const) {
    const logs = join(node.dir, 'logs');
    const daemonLog = await logEvents(join(logs, 'daemon.log'));
    assert.ok(
      daemonLog.some((e) => e.event === 'started' && e.pid === s.daemonPid && e.node === node.name),
      `${node.name}: daemon.log has the daemon's "started" event`,
    );
    assert.ok(daemonLog.some((e) => e.event === 'stopped' && e.pid === s.daemonPid), `${node.name}: daemon.log has the daemon's "stopped" event`);
    assert.ok(daemonLog.some((e) => e.event === (node === a ? 'forwarded' : 'received')), `${node.name}: daemon.log has the traffic at debug level`);

    const angelText = await readFile(join(logs, 'angel.log'), 'utf8');
    const angelLines = angelText.split('\n').filter((line) => line.length > 0);
    assert.ok(angelLines.length > 0);
    const angelLog = angelLines.map((line) => JSON.parse(line) as Record<string, unknown>); // every line is JSON
    assert.ok(angelLog.every((e) => e.node === 'angel'), `${node.name}: angel.log is written by the angel`);
    assert.ok(angelLog.some((e) => e.event === 'daemon_started'), `${node.name}: angel.log says it started the daemon`);
    assert.ok(angelLog.some((e) => e.event === 'daemon_stopped'), `${node.name}: angel.log says the daemon stopped`);

    const files = await readdir(logs);
    assert.ok(files.includes('daemon.log') && files.includes('angel.log'), `${node.name}: ${files.join(', ')}`);
    for (const file of files) {
      const text = await readFile(join(logs, file), 'utf8');
      assert.ok(!text.includes(SECRET), `${node.name}: the peer key appears in logs/${file}`);
    }
  }
});

test('every line the angel and the daemon log is a JSON object without duplicate keys, so log tools read the right pid and node', async (t) => {
  const root = await tempDir(t);
  const { n } = await makeNodes(root, ['n']);
  const started = await start(t, n!.dir);
  assert.equal(started.code, 0, started.stderr);
  const stopped = await mqlog(['stop', '--data', n!.dir]);
  assert.equal(stopped.code, 0, stopped.stderr);
  const problems: string[] = [];
  for (const file of ['angel.log', 'daemon.log']) {
    const text = await readFile(join(n!.dir, 'logs', file), 'utf8');
    for (const line of text.split('\n').filter((l) => l.startsWith('{'))) {
      const duplicates = duplicateTopLevelKeys(line);
      if (duplicates.length > 0) problems.push(`${file}: duplicate ${duplicates.join(', ')} in ${line}`);
    }
  }
  assert.deepEqual(problems, []);
});

test('the angel gives up on a daemon that crashes at every boot: start fails with exit 1 and angel.log says giving_up', async (t) => {
  const root = await tempDir(t);
  const { n } = await makeNodes(root, ['n']);
  const since = Date.now();
  const started = await start(t, n!.dir, ['--listen', `127.0.0.1:${n!.port}`, '--handler', join(root, 'no-such-handler.mjs')]);
  const took = Date.now() - since;
  assert.equal(started.code, 1, `start fails (stdout: ${started.stdout}, stderr: ${started.stderr})`);
  assert.match(started.stderr, /^mqlog: ERR_[A-Z_]+: \S.*\n$/);
  assert.ok(took < 60_000, `start gave up after ${took} ms`);

  const angelLog = await logEvents(join(n!.dir, 'logs', 'angel.log'));
  const givingUp = angelLog.find((e) => e.event === 'giving_up');
  assert.ok(givingUp !== undefined, `angel.log has a giving_up event: ${JSON.stringify(angelLog)}`);
  const boots = angelLog.filter((e) => e.event === 'daemon_started').length;
  assert.ok(boots >= 2, `the angel tried more than once (${boots})`);
  assert.equal(givingUp.crashes, boots, 'it gave up after the crashes it saw');
  const daemonLog = await readFile(join(n!.dir, 'logs', 'daemon.log'), 'utf8');
  assert.ok(daemonLog.includes('no-such-handler.mjs'), "daemon.log has the daemon's reason");

  // Nothing keeps running.
  const angelPid = angelLog[0]!.pid as number;
  await waitFor(() => gone(angelPid), { timeoutMs: 30_000, message: 'the angel to exit' });
  assert.deepEqual(await processesOf(n!.dir), []);
  const s = await status(n!.dir);
  assert.equal(s.running, false);
});

test('mqlog start with a bad config fails within seconds with the daemon\'s ERR_CONFIG, which the angel does not retry; the next start after the fix never reports the old failure', async (t) => {
  const root = await tempDir(t);
  const { n } = await makeNodes(root, ['n']);
  const config = JSON.parse(await readFile(join(n!.dir, 'mqlog.json'), 'utf8')) as Record<string, unknown>;
  await writeFile(join(n!.dir, 'mqlog.json'), JSON.stringify({ ...config, segmentByts: 4096 }));
  const since = Date.now();
  const failed = await start(t, n!.dir);
  const took = Date.now() - since;
  assert.equal(failed.code, 1, `start fails (stdout: ${failed.stdout}, stderr: ${failed.stderr})`);
  assert.match(failed.stderr, /^mqlog: ERR_CONFIG: .*segmentByts.*\n$/, 'the daemon\'s own code and message, on one line');
  assert.ok(took < 30_000, `start failed after ${took} ms`);
  const angelLog = await logEvents(join(n!.dir, 'logs', 'angel.log'));
  assert.equal(angelLog.filter((e) => e.event === 'daemon_started').length, 1, `one attempt, no retry: ${JSON.stringify(angelLog)}`);
  const angelPid = angelLog[0]!.pid as number;
  await waitFor(() => gone(angelPid), { timeoutMs: 30_000, message: 'the angel to exit' });
  assert.equal((await status(n!.dir)).running, false);

  // Fixed: the next start runs, and neither it nor status shows the failed angel's state.
  await writeFile(join(n!.dir, 'mqlog.json'), JSON.stringify(config));
  const started = await start(t, n!.dir);
  assert.equal(started.code, 0, started.stderr);
  const s = await status(n!.dir);
  assert.equal(s.running, true);
  assert.equal(s.restarts, 0);
  assert.notEqual(s.angelPid, angelPid);
  assert.equal(await healthz(n!.url), 200);
});

test('mqlog start on a port in use fails within seconds with ERR_ADDRESS_IN_USE naming the address, and leaves nothing running', async (t) => {
  const root = await tempDir(t);
  const { n } = await makeNodes(root, ['n']);
  const squatter = createServer();
  await new Promise<void>((resolve) => squatter.listen(n!.port, '127.0.0.1', resolve));
  defer(t, () => new Promise<void>((resolve) => squatter.close(() => resolve())));
  const since = Date.now();
  const failed = await start(t, n!.dir);
  const took = Date.now() - since;
  assert.equal(failed.code, 1, `start fails (stdout: ${failed.stdout}, stderr: ${failed.stderr})`);
  assert.match(failed.stderr, new RegExp(`^mqlog: ERR_ADDRESS_IN_USE: .*127\\.0\\.0\\.1:${n!.port}.*\\n$`));
  assert.ok(took < 30_000, `start failed after ${took} ms`);
  const angelLog = await logEvents(join(n!.dir, 'logs', 'angel.log'));
  assert.equal(angelLog.filter((e) => e.event === 'daemon_started').length, 1, 'one attempt, no retry');
  await waitFor(async () => (await processesOf(n!.dir)).length === 0, { timeoutMs: 30_000, message: 'nothing left running' });
});

test('a fresh start ignores the state a previous angel left: start succeeds and status shows the new angel only', async (t) => {
  const root = await tempDir(t);
  const { n } = await makeNodes(root, ['n']);
  // What a crashed, given-up angel leaves behind (its pid long gone).
  await writeFile(join(n!.dir, 'angel.json'), JSON.stringify({ angelPid: 2 ** 22 + 7, daemonPid: null, restarts: 4, listen: null, state: 'failed', startedAt: new Date(0).toISOString(), lastExit: 'exit code 1' }));
  const started = await start(t, n!.dir);
  assert.equal(started.code, 0, started.stderr);
  const s = await status(n!.dir);
  assert.equal(s.running, true);
  assert.equal(s.restarts, 0, 'not the previous angel\'s restarts');
});

test('a reload under mqlog start that moves the listen address: mqlog status shows the new one, and the node serves there', async (t) => {
  const root = await tempDir(t);
  const { n } = await makeNodes(root, ['n']);
  const started = await start(t, n!.dir);
  assert.equal(started.code, 0, started.stderr);
  assert.equal((await status(n!.dir)).listen, `127.0.0.1:${n!.port}`);
  const port = await freePort();
  const config = JSON.parse(await readFile(join(n!.dir, 'mqlog.json'), 'utf8')) as Record<string, unknown>;
  await writeFile(join(n!.dir, 'mqlog.json'), JSON.stringify({ ...config, listen: `127.0.0.1:${port}` }));
  const reloaded = await mqlog(['reload', '--data', n!.dir]);
  assert.equal(reloaded.code, 0, reloaded.stderr);
  await waitFor(async () => (await status(n!.dir)).listen === `127.0.0.1:${port}`, { timeoutMs: 30_000, message: 'mqlog status to show the new address' });
  assert.equal(await healthz(`http://127.0.0.1:${port}`), 200);
  assert.equal((await status(n!.dir)).restarts, 0, 'no restart');
});

test('SIGHUP to the angel reaches the daemon as a reload, killing neither; mqlog restart replaces both and the node serves again', async (t) => {
  const root = await tempDir(t);
  const { n } = await makeNodes(root, ['n']);
  const started = await start(t, n!.dir);
  assert.equal(started.code, 0, started.stderr);
  const before = await status(n!.dir);
  process.kill(before.angelPid!, 'SIGHUP');
  await waitFor(async () => (await readFile(join(n!.dir, 'logs', 'daemon.log'), 'utf8')).includes('"event":"reloaded"'), { message: 'the daemon reloaded' });
  assert.deepEqual(await status(n!.dir), before, 'the same angel and daemon run on');

  const restarted = await mqlog(['restart', '--data', n!.dir], { timeoutMs: 90_000 });
  assert.equal(restarted.code, 0, restarted.stderr);
  assert.match(restarted.stdout, /^stopped\nstarted: /);
  const after = await status(n!.dir);
  assert.equal(after.running, true);
  assert.notEqual(after.daemonPid, before.daemonPid);
  assert.equal(after.restarts, 0);
  assert.ok(gone(before.angelPid!) && gone(before.daemonPid!), 'the old processes are gone');
  assert.equal(await healthz(n!.url), 200);
});
