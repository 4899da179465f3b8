/**
 * Crash safety of `mqlog send --lines`: a writer fed a steady stream of lines is SIGKILLed at random
 * moments, again and again on the same node directory. Whatever it printed was durable, so it must be
 * in the log, once, with its body; the log must verify; and the next writer must work.
 */
import assert from 'node:assert/strict';
import { open, stat } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { test } from 'node:test';
import {
  assertId,
  assertLogIntact,
  assertPrefix,
  feedLines,
  FRAME_HEADER_BYTES,
  FRAME_MAGIC,
  framesOf,
  LineCollector,
  logUniformInt,
  NOWHERE,
  randomHex,
  seededRandom,
  segmentFiles,
  sendOne,
  verify,
} from '../helpers/crash.ts';
import { CLI, exited, spawnChild, tempDir, waitFor } from '../helpers/index.ts';

/** proper-lockfile's staleness rule as src/log/lock.ts configures it (DEFAULT_LOCK_STALE_MS). */
const LOCK_STALE_MS = 5000;

const ROUNDS = Number(process.env.MQLOG_CRASH_ROUNDS ?? 20);
const MAX_IDS_BEFORE_KILL = 2000;

test('a send --lines writer killed at random moments loses no printed id and leaves a log that verifies', async (t) => {
  const dir = await tempDir(t, 'mqlog-crash-send-');
  const { next: random } = seededRandom(t);
  const acked = new Map<string, string>();
  const sent = new Set<string>();
  const tornSeen = new Set<string>();

  for (let round = 0; round < ROUNDS; round++) {
    const killAfter = logUniformInt(random, 1, MAX_IDS_BEFORE_KILL);
    const label = `round ${round} (kill after ${killAfter} ids)`;
    const tag = randomHex(random);
    const child = spawnChild(t, process.execPath, [CLI, 'send', '--data', dir, '--to', NOWHERE, '--lines']);
    const stdout = new LineCollector(child.stdout!);
    const stderr = new LineCollector(child.stderr!);
    const feeder = feedLines(child, (n) => {
      const line = `msg-${round}-${n}-${tag}`;
      sent.add(line);
      return line;
    });

    await stdout.waitForLines(killAfter, child, stderr, label);
    child.kill('SIGKILL');
    const { signal } = await exited(child);
    await Promise.all([stdout.ended, stderr.ended, feeder.stop()]);
    assert.equal(signal, 'SIGKILL', `${label}: the writer ended on its own; stderr: ${stderr.lines.join('\n')}`);

    // The n-th id printed belongs to the n-th line written: send --lines prints in input order.
    const printed = stdout.lines;
    for (const [n, id] of printed.entries()) {
      assertId(id, `${label}: line ${n} of stdout`);
      const body = feeder.written[n];
      assert.ok(body !== undefined, `${label}: ${printed.length} ids printed for only ${feeder.written.length} lines written`);
      acked.set(id, body);
    }

    const { records, torn } = await assertLogIntact(dir, { acked, sent }, label);
    for (const file of torn) tornSeen.add(`${round}:${file}`);
    // What this writer made durable is a prefix of its input: at least every line whose id it printed.
    const prefix = `msg-${round}-`;
    const held = assertPrefix(records, (body) => (body.startsWith(prefix) ? Number(body.split('-')[2]) : undefined), label);
    assert.ok(held >= printed.length, `${label}: the log holds ${held} of this writer's lines but it printed ${printed.length} ids`);

    // The next writer works at once, even while the killed writer's slot lock is still fresh.
    const body = `after-${round}-${tag}`;
    sent.add(body);
    acked.set(await sendOne(dir, body), body);
  }

  const { records } = await assertLogIntact(dir, { acked, sent }, 'after the last round');
  t.diagnostic(`${acked.size} acked ids, ${records.length} messages in ${new Set(records.map((r) => r.stream)).size} streams, ${tornSeen.size} torn tails seen`);
});

test('send --lines prints the id of a durable message without waiting for the next input line', async (t) => {
  const dir = await tempDir(t, 'mqlog-crash-send-');
  const child = spawnChild(t, process.execPath, [CLI, 'send', '--data', dir, '--to', NOWHERE, '--lines']);
  const stdout = new LineCollector(child.stdout!);
  const stderr = new LineCollector(child.stderr!);
  const feeder = feedLines(child, (n) => `only-${n}`, { linesPerChunk: 1, limit: 1 });
  await feeder.stop();

  // A producer that waits for each id before writing its next line (request/response over a pipe)
  // must get the id once the message is durable; stdin stays open meanwhile.
  await stdout.waitForLines(1, child, stderr, 'the id of the only line written so far (ids must be printed as messages become durable, not when more input arrives)', 10_000);
  const [id] = stdout.lines;
  assertId(id ?? '', 'printed id');

  child.stdin!.end();
  const { code } = await exited(child);
  await Promise.all([stdout.ended, stderr.ended]);
  assert.equal(code, 0, stderr.lines.join('\n'));
  assert.deepEqual(stdout.lines, [id]);
  await assertLogIntact(dir, { acked: new Map([[id ?? '', 'only-0']]), sent: new Set(['only-0']) }, 'after one line');
});

test("a killed writer's slot is taken over once its lock is stale, and the new writer cuts its torn tail off", async (t) => {
  const dir = await tempDir(t, 'mqlog-crash-takeover-');
  const child = spawnChild(t, process.execPath, [CLI, 'send', '--data', dir, '--to', NOWHERE, '--lines']);
  const stdout = new LineCollector(child.stdout!);
  const stderr = new LineCollector(child.stderr!);
  const feeder = feedLines(child, (n) => `takeover-${n}`);
  await stdout.waitForLines(50, child, stderr, '50 ids');
  child.kill('SIGKILL');
  await exited(child);
  await Promise.all([stdout.ended, stderr.ended, feeder.stop()]);
  const acked = new Map(stdout.lines.map((id, n) => [id, feeder.written[n] as string]));
  const sent = new Set(feeder.written);

  // A kill rarely lands inside a write, so put the torn frame there by hand: the header and half the
  // payload of a frame with the next offset, written where the killed writer's data ends.
  const stream = join(dir, 'outbox', 'p4.w0');
  const last = (await segmentFiles(stream)).at(-1) as string;
  const { frames, end } = await framesOf(last);
  // The next offset: after the last whole frame, or the base offset of a segment still empty.
  const durable = frames.length > 0 ? (frames.at(-1)?.offset as number) + 1 : Number(basename(last).slice(0, 20));
  const torn = Buffer.alloc(FRAME_HEADER_BYTES + 40, 0x5a);
  torn.writeUInt8(FRAME_MAGIC, 0);
  torn.writeUInt8(1, 1); // version
  torn.writeUInt8(1, 2); // MESSAGE
  torn.writeUInt8(0, 3);
  torn.writeUInt32LE(80, 4);
  torn.writeBigUInt64LE(BigInt(durable), 8);
  const handle = await open(last, 'r+');
  await handle.write(torn, 0, torn.length, end);
  await handle.close();
  const before = await verify(dir);
  assert.equal(before.code, 0, before.stdout + before.stderr);
  assert.match(before.stdout, new RegExp(`^TORN ${last} ${end} `, 'm'));

  // Wait (for a condition, not a fixed time) until the killed writer's lock is stale: the next
  // writer then takes over slot 0 instead of opening slot 1.
  const lock = join(dir, 'outbox', 'w0.lock');
  await waitFor(async () => Date.now() - (await stat(lock)).mtimeMs > LOCK_STALE_MS + 250, { intervalMs: 100, message: 'the lock of the killed writer to go stale' });
  const id = await sendOne(dir, 'took over');
  acked.set(id, 'took over');
  sent.add('took over');

  const { records, torn: tornAfter } = await assertLogIntact(dir, { acked, sent }, 'after the takeover');
  assert.deepEqual(tornAfter, []);
  const mine = records.find((r) => r.id === id);
  assert.deepEqual([mine?.stream, mine?.offset], ['p4.w0', durable], "the new writer continues the killed writer's stream right after its last durable frame");
  assert.ok(!records.some((r) => r.stream !== 'p4.w0'), 'no other slot was needed');
});
