/**
 * Power cuts, made deterministic: a real writer process runs with a preload that records every write
 * it issues and every fsync that completed (test/fixtures/sync-recorder.mjs); it is SIGKILLed, and then
 * exactly the bytes no completed fsync covered are lost or torn the ways a power failure tears them
 * (test/helpers/power-cut.ts). Whatever the pattern, the node must open at the first try, `dump`,
 * `verify`, `stat` and `tail` must work, every acknowledged message must be there once, and no acked
 * message may come back.
 */
import assert from 'node:assert/strict';
import { mkdir, rm, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { openNode } from '../../src/daemon/node.ts';
import { newId } from '../../src/util/ids.ts';
import { assertId, assertLogIntact, feedLines, LineCollector, logUniformInt, NOWHERE, seededRandom, sendOne } from '../helpers/crash.ts';
import { DaemonProcess, makeNodes } from '../helpers/daemon.ts';
import { CLI, exited, FIXTURES, jsonLines, mqlog, spawnChild, tempDir } from '../helpers/index.ts';
import { CUT_PATTERNS, powerCut } from '../helpers/power-cut.ts';

const RECORDER = join(FIXTURES, 'sync-recorder.mjs');

test('a power cut while sending loses only messages whose send had not returned, and the node goes on', async (t) => {
  const dir = await tempDir(t, 'mqlog-cut-send-');
  const { next: random } = seededRandom(t);
  const acked = new Map<string, string>();
  const sent = new Set<string>();
  // Each pattern twice, in a shuffled order; small segments so cuts also land around segment rolls.
  await writeFile(join(dir, 'mqlog.json'), JSON.stringify({ segmentBytes: 64 * 1024 }));
  const rounds = [...CUT_PATTERNS, ...CUT_PATTERNS].sort(() => random() - 0.5);
  let damaged = 0;
  for (const [round, pattern] of rounds.entries()) {
    const label = `round ${round} (${pattern})`;
    const log = join(dir, `..`, `${round}.sync.log`);
    // The writer's fsync of a segment after a random number of them never completes: it is killed with
    // that write in flight, and the cut then tears it.
    const hangAfter = logUniformInt(random, 1, 200);
    const child = spawnChild(t, process.execPath, ['--import', RECORDER, CLI, 'send', '--data', dir, '--to', NOWHERE, '--lines'], {
      env: { ...process.env, MQLOG_SYNC_LOG: log, MQLOG_SYNC_HANG_AFTER: String(hangAfter) },
    });
    const stdout = new LineCollector(child.stdout!);
    const stderr = new LineCollector(child.stderr!);
    const feeder = feedLines(child, (n) => `r${round}-${n}-`.padEnd(20 + (n % 300), 'x'));
    await stderr.waitForLines(1, child, stderr, `${label}: the writer's fsync to hang`);
    assert.match(stderr.lines[0] ?? '', /sync-recorder: hung/);
    child.kill('SIGKILL');
    await exited(child);
    await feeder.stop();
    await Promise.all([stdout.ended, stderr.ended]);
    for (const line of feeder.written) sent.add(line);
    stdout.lines.forEach((id, n) => {
      assertId(id, label);
      acked.set(id, feeder.written[n] as string);
    });

    const cuts = await powerCut(log, pattern, random);
    damaged += cuts.reduce((n, c) => n + c.damaged, 0);
    await rm(log, { force: true });

    // The node opens at the first try, and nothing acknowledged is missing or doubled.
    await assertLogIntact(dir, { acked, sent }, label);
    const body = `after-${round}`;
    sent.add(body);
    acked.set(await sendOne(dir, body), body);
    await assertLogIntact(dir, { acked, sent }, `${label}, after the next send`);
  }
  t.diagnostic(`${acked.size} acked messages kept through ${rounds.length} cuts that damaged ${damaged} unsynced bytes`);
  assert.ok(damaged > 0, 'the cuts damaged nothing: the test tested nothing');
});

test('a power cut while consuming never bricks the inbox, and no acknowledged message comes back', async (t) => {
  const root = await tempDir(t, 'mqlog-cut-consume-');
  const { next: random } = seededRandom(t);
  let damaged = 0;
  for (const [round, pattern] of CUT_PATTERNS.entries()) {
    const label = `round ${round} (${pattern})`;
    const dir = join(root, `n${round}`);
    await mkdir(dir);
    // Messages the killed consumer had leased come back after one visibility timeout.
    await writeFile(join(dir, 'mqlog.json'), JSON.stringify({ visibilityTimeoutMs: 1000 }));
    const opened = await openNode({ data: dir });
    const inbox = await opened.inbox('jobs');
    const total = 400;
    for (let i = 0; i < total; i++) {
      const ts = Date.now();
      await inbox.append({ id: newId(ts), ts, channel: 'jobs', priority: i % 10, to: ['me'], from: 'test' }, Buffer.from(`job-${i}`));
    }
    await opened.close();

    // A consumer that claims ahead (claims are written without fsync) and prints each ack once it
    // resolved, killed while an fsync of the shared journal or of its own ack journal hangs; then the cut
    // tears what those journals had not fsync'd.
    const log = join(root, `${round}.sync.log`);
    const consumer = spawnChild(t, process.execPath, ['--import', 'tsx', '--import', RECORDER, join(FIXTURES, 'lease-consumer.ts'), '--data', dir, '--channel', 'jobs', '--follow', '--ack', '--ack-window', '4', '--prefetch', '16'], {
      env: { ...process.env, MQLOG_SYNC_LOG: log, MQLOG_SYNC_HANG_AFTER: String(logUniformInt(random, 1, 60)), MQLOG_SYNC_HANG_PATH: '/(journal-\\d+|c-[0-9a-f]+)\\.log$' },
    });
    const stdout = new LineCollector(consumer.stdout!);
    const stderr = new LineCollector(consumer.stderr!);
    await stderr.waitForLines(1, consumer, stderr, `${label}: the consumer's journal fsync to hang`);
    assert.match(stderr.lines[0] ?? '', /sync-recorder: hung/);
    consumer.kill('SIGKILL');
    await exited(consumer);
    await Promise.all([stdout.ended, stderr.ended]);
    const ackedBefore = new Set(jsonLines<{ id: string }>(stdout.lines.join('\n')).map((l) => l.id));
    const cuts = await powerCut(log, pattern, random);
    damaged += cuts.reduce((n, c) => n + c.damaged, 0);

    for (const command of [['stat', '--data', dir, '--json'], ['dump', dir, '--json'], ['verify', dir]]) {
      const result = await mqlog(command);
      assert.equal(result.code, 0, `${label}: mqlog ${command[0]} exited ${result.code}: ${result.stderr}`);
      assert.doesNotMatch(result.stderr, /ERR_CORRUPT/, `${label}: mqlog ${command[0]}`);
    }
    // The next consumer takes the rest: every message is acked once in all, none acked before comes back.
    // Acks the killed consumer had in flight (at most its ack window) may have landed without being
    // reported: those messages are done, not lost. Everything else is handed out again.
    const inFlight = 4;
    const rest = await mqlog(['tail', '--data', dir, '--channel', 'jobs', '--ack', '--json', '--follow', '--limit', String(total - ackedBefore.size), '--timeout', '5s']);
    assert.ok(rest.code === 0 || rest.code === 1, `${label}: tail exited ${rest.code}: ${rest.stderr}`);
    const ackedAfter = jsonLines<{ id: string }>(rest.stdout).map((l) => l.id);
    const back = ackedAfter.filter((id) => ackedBefore.has(id));
    assert.deepEqual(back, [], `${label}: ${back.length} acknowledged messages came back after the cut`);
    assert.equal(new Set(ackedAfter).size, ackedAfter.length, `${label}: a message was handed out twice`);
    const unreported = total - ackedBefore.size - ackedAfter.length;
    assert.ok(unreported >= 0 && unreported <= inFlight, `${label}: ${ackedBefore.size} acked before the cut and ${ackedAfter.length} after, of ${total}`);
    const states = jsonLines<{ queue: string; id: string; state: string }>((await mqlog(['dump', dir, '--json'])).stdout).filter((r) => r.queue.startsWith('inbox/'));
    assert.equal(states.length, total);
    assert.deepEqual(states.filter((r) => r.state !== 'acked'), [], `${label}: messages left undone`);
    await rm(log, { force: true });
  }
  t.diagnostic(`cuts damaged ${damaged} unsynced bytes of consumer journals`);
  assert.ok(damaged > 0, 'the cuts damaged nothing: the test tested nothing');
});

test('a daemon killed and restarted at once takes its lock over without waiting for it to go stale', async (t) => {
  const root = await tempDir(t, 'mqlog-cut-lock-');
  const { a } = await makeNodes(root, ['a']);
  const daemon = new DaemonProcess(a!);
  t.after(() => daemon.stop());
  await daemon.start();
  await daemon.kill();
  // The dead daemon's lock looks freshly refreshed (it will not go stale within the test): only
  // knowing that its holder is gone lets the next daemon in.
  const lock = join(a!.dir, 'daemon.lock');
  const future = new Date(Date.now() + 10 * 60_000);
  await utimes(lock, future, future);
  await daemon.start();
  assert.ok(daemon.running);
  await daemon.kill();

  // A power cut that left the owner file empty: the lock is taken over as the dead holder's.
  await writeFile(`${lock}.owner`, '');
  const past = new Date(Date.now() - 3000);
  await utimes(lock, past, past);
  await daemon.start();
  assert.ok(daemon.running);
  assert.doesNotMatch(daemon.output, /ERR_LOCKED/);
});
