/**
 * Crash safety of the library: a fixture process runs 64 concurrent node.send() loops (spread over all
 * ten priorities, so one writer slot has many streams) and prints each id once send() resolved. It is
 * SIGKILLed at random moments, again and again on the same node directory; every printed message must
 * survive with its body, and the log must verify.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test } from 'node:test';
import { assertId, assertLogIntact, assertPrefix, LineCollector, logUniformInt, NOWHERE, randomHex, seededRandom, sendOne } from '../helpers/crash.ts';
import { exited, FIXTURES, spawnChild, tempDir } from '../helpers/index.ts';

const ROUNDS = Number(process.env.MQLOG_CRASH_ROUNDS ?? 20);
const LOOPS = 64;
const MAX_SENDS_BEFORE_KILL = 2000;

interface Printed {
  readonly id: string;
  readonly body: string;
  readonly loop: number;
  readonly seq: number;
}

test('a library writer with 64 concurrent sends killed at random moments keeps every resolved send', async (t) => {
  const dir = await tempDir(t, 'mqlog-crash-lib-');
  const { next: random } = seededRandom(t);
  const acked = new Map<string, string>();
  const sent = new Set<string>();
  let tornTails = 0;

  for (let round = 0; round < ROUNDS; round++) {
    const killAfter = logUniformInt(random, 1, MAX_SENDS_BEFORE_KILL);
    const label = `round ${round} (kill after ${killAfter} sends)`;
    const tag = `r${round}x${randomHex(random)}`;
    const child = spawnChild(t, process.execPath, [
      '--import',
      'tsx',
      join(FIXTURES, 'append-concurrent.ts'),
      ...['--data', dir, '--to', NOWHERE, '--tag', tag, '--loops', String(LOOPS), '--priorities'],
    ]);
    const stdout = new LineCollector(child.stdout!);
    const stderr = new LineCollector(child.stderr!);

    await stdout.waitForLines(killAfter, child, stderr, label);
    child.kill('SIGKILL');
    const { signal } = await exited(child);
    await Promise.all([stdout.ended, stderr.ended]);
    assert.equal(signal, 'SIGKILL', `${label}: the fixture ended on its own; stderr: ${stderr.lines.join('\n')}`);

    const printedPerLoop = new Array<number>(LOOPS).fill(0);
    for (const line of stdout.lines) {
      const p = JSON.parse(line) as Printed;
      assertId(p.id, label);
      assert.equal(p.body, `${tag}-${p.loop}-${p.seq}`, `${label}: fixture printed an unexpected body`);
      assert.equal(p.seq, printedPerLoop[p.loop], `${label}: loop ${p.loop} printed seq ${p.seq} out of order`);
      printedPerLoop[p.loop] = p.seq + 1;
      acked.set(p.id, p.body);
    }
    // The fixture only sends what it prints (or the one send per loop still in flight), so every body
    // in the log must be one it printed, or the next one of its loop.
    for (const [loop, count] of printedPerLoop.entries()) {
      for (let seq = 0; seq <= count; seq++) sent.add(`${tag}-${loop}-${seq}`);
    }

    const { records, torn } = await assertLogIntact(dir, { acked, sent }, label);
    tornTails += torn.length;
    // Each loop waits for one send before the next, so the log holds a gap-free prefix of each loop:
    // every printed message, plus at most the one that was in flight.
    for (const [loop, printed] of printedPerLoop.entries()) {
      const prefix = `${tag}-${loop}-`;
      const held = assertPrefix(records, (body) => (body.startsWith(prefix) ? Number(body.slice(prefix.length)) : undefined), `${label}, loop ${loop}`);
      assert.ok(held === printed || held === printed + 1, `${label}: loop ${loop} printed ${printed} ids but the log holds ${held} of its messages`);
    }

    const body = `after-${tag}`;
    sent.add(body);
    acked.set(await sendOne(dir, body), body);
  }

  const { records } = await assertLogIntact(dir, { acked, sent }, 'after the last round');
  t.diagnostic(`${acked.size} acked ids, ${records.length} messages in ${new Set(records.map((r) => r.stream)).size} streams, ${tornTails} torn tails seen`);
});
