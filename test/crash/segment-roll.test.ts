/**
 * Segment roll: a stream is a chain of segment files, each named by the 20-digit offset of its first
 * frame. A segment is sealed (cut to its last frame, fsync'd) before its successor is created, so every
 * segment but the last ends exactly at its data and stays within segmentBytes (unless it holds one
 * frame bigger than that). Offsets run on across segments, writer restarts and writer crashes.
 */
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { test } from 'node:test';
import {
  assertId,
  assertLogIntact,
  assertPrefix,
  feedLines,
  framesOf,
  LineCollector,
  logUniformInt,
  NOWHERE,
  randomHex,
  seededRandom,
  segmentFiles,
  sendOne,
  streamDirs,
  verify,
  type RawFrame,
} from '../helpers/crash.ts';
import { CLI, exited, mqlog, spawnChild, tempDir } from '../helpers/index.ts';

interface SegmentInfo {
  readonly path: string;
  readonly base: number;
  readonly size: number;
  readonly frames: RawFrame[];
}

/**
 * Checks the segment chain of one stream and returns it. The last segment may end in a torn frame or
 * zero fill when its writer was killed (`lastMayBeOpen`); every other one must end exactly at its data.
 */
async function assertSegmentChain(streamDir: string, segmentBytes: number, label: string, { lastMayBeOpen = false } = {}): Promise<SegmentInfo[]> {
  const chain: SegmentInfo[] = [];
  const files = await segmentFiles(streamDir);
  assert.ok(files.length > 0, `${label}: ${streamDir} has no segment`);
  let nextOffset = 0;
  for (const [index, path] of files.entries()) {
    const name = basename(path);
    assert.match(name, /^\d{20}\.seg$/, `${label}: segment name ${name}`);
    const base = Number(name.slice(0, 20));
    const { frames, end, size } = await framesOf(path);
    const isLast = index === files.length - 1;
    const where = `${label}: ${path}`;
    assert.equal(base, nextOffset, `${where}: its name says base offset ${base}, but the previous segment ended before offset ${nextOffset}`);
    assert.deepEqual(
      frames.map((f) => f.offset),
      frames.map((_, i) => base + i),
      `${where}: frame offsets do not run on from the base offset`,
    );
    if (!isLast || !lastMayBeOpen) assert.equal(end, size, `${where}: ${size - end} bytes after the last whole frame`);
    if (!isLast) {
      assert.ok(frames.length > 0, `${where}: an empty segment before the last one`);
      assert.ok(size <= segmentBytes || frames.length === 1, `${where}: ${size} bytes in ${frames.length} frames exceeds segmentBytes ${segmentBytes}`);
    }
    chain.push({ path, base, size, frames });
    nextOffset = base + frames.length;
  }
  return chain;
}

test('segments roll at segmentBytes, are named by base offset, and offsets run on across segments and restarts', async (t) => {
  const SEGMENT_BYTES = 4096;
  const RUNS = 5;
  const PER_RUN = 100;
  const dir = await tempDir(t, 'mqlog-roll-');
  await writeFile(join(dir, 'mqlog.json'), JSON.stringify({ segmentBytes: SEGMENT_BYTES }));

  const sent: [id: string, body: string][] = [];
  const big = `big-${'B'.repeat(6000)}`;
  for (let run = 0; run < RUNS; run++) {
    const bodies = Array.from({ length: PER_RUN }, (_, i) => `run-${run}-msg-${i}-`.padEnd(200, String.fromCharCode(97 + run)));
    const result = await mqlog(['send', '--data', dir, '--to', NOWHERE, '--lines'], { input: `${bodies.join('\n')}\n` });
    assert.equal(result.code, 0, result.stderr);
    const ids = result.stdout.trim().split('\n');
    assert.equal(ids.length, PER_RUN);
    for (const [i, id] of ids.entries()) {
      assertId(id, `run ${run}`);
      sent.push([id, bodies[i] as string]);
    }
    // One frame bigger than a segment, in the middle: it gets a segment of its own.
    if (run === 2) sent.push([await sendOne(dir, big), big]);
  }

  const { records } = await assertLogIntact(dir, { acked: new Map(sent), sent: new Set(sent.map(([, body]) => body)) }, 'after all runs');
  assert.deepEqual(
    records.map((r) => [r.stream, r.offset, r.id]),
    sent.map(([id], offset) => ['p4.w0', offset, id]),
    'one stream whose offsets run 0..N-1 in send order across restarts',
  );

  const chain = await assertSegmentChain(join(dir, 'outbox', 'p4.w0'), SEGMENT_BYTES, 'after all runs');
  assert.ok(chain.length >= 10, `expected many segments, got ${chain.length}`);
  const lone = chain.filter((s) => s.size > SEGMENT_BYTES);
  assert.equal(lone.length, 1, 'exactly the big frame has a segment bigger than segmentBytes');
  assert.equal(lone[0]?.frames.length, 1);
  // A segment is only left when the next frame did not fit: a restart goes on in the last segment.
  for (const [i, segment] of chain.slice(0, -1).entries()) {
    const nextFrame = chain[i + 1]?.frames[0] as RawFrame;
    assert.ok(segment.size + nextFrame.bytes > SEGMENT_BYTES, `${segment.path} was left with room for the next frame (${segment.size} + ${nextFrame.bytes} bytes)`);
  }

  const verified = await verify(dir);
  assert.match(verified.stdout, new RegExp(`^ok: verified ${chain.length} segments, ${sent.length} frames`, 'm'));
});

test('a writer killed at random moments while rolling small segments leaves every sealed segment whole', async (t) => {
  const SEGMENT_BYTES = 1024;
  const ROUNDS = Number(process.env.MQLOG_CRASH_ROUNDS ?? 20) / 2;
  const dir = await tempDir(t, 'mqlog-roll-kill-');
  await writeFile(join(dir, 'mqlog.json'), JSON.stringify({ segmentBytes: SEGMENT_BYTES }));
  const { next: random } = seededRandom(t);
  const acked = new Map<string, string>();
  const sent = new Set<string>();

  for (let round = 0; round < ROUNDS; round++) {
    const killAfter = logUniformInt(random, 1, 300);
    const label = `round ${round} (kill after ${killAfter} ids)`;
    const tag = randomHex(random);
    const child = spawnChild(t, process.execPath, [CLI, 'send', '--data', dir, '--to', NOWHERE, '--lines']);
    const stdout = new LineCollector(child.stdout!);
    const stderr = new LineCollector(child.stderr!);
    // About 300 bytes a frame: three or so to a segment, so a kill often lands near a roll.
    const feeder = feedLines(child, (n) => {
      const line = `roll-${round}-${n}-${tag}-`.padEnd(250, 'r');
      sent.add(line);
      return line;
    });

    await stdout.waitForLines(killAfter, child, stderr, label);
    child.kill('SIGKILL');
    const { signal } = await exited(child);
    await Promise.all([stdout.ended, stderr.ended, feeder.stop()]);
    assert.equal(signal, 'SIGKILL', `${label}: the writer ended on its own; stderr: ${stderr.lines.join('\n')}`);
    for (const [n, id] of stdout.lines.entries()) {
      assertId(id, label);
      acked.set(id, feeder.written[n] as string);
    }

    const { records } = await assertLogIntact(dir, { acked, sent }, label);
    const prefix = `roll-${round}-`;
    const held = assertPrefix(records, (body) => (body.startsWith(prefix) ? Number(body.split('-')[2]) : undefined), label);
    assert.ok(held >= stdout.lines.length, `${label}: the log holds ${held} of this writer's lines but it printed ${stdout.lines.length} ids`);
    for (const stream of await streamDirs(join(dir, 'outbox'))) {
      await assertSegmentChain(stream, SEGMENT_BYTES, label, { lastMayBeOpen: true });
    }
    // Every index the killed writer wrote (sealed segments', checkpoints of the open one) still describes its segment.
    const checked = await verify(dir);
    assert.doesNotMatch(checked.stdout, /^INDEX /m, `${label}: an index does not describe its segment`);

    const body = `after-${round}-${tag}`;
    sent.add(body);
    acked.set(await sendOne(dir, body), body);
  }

  await assertLogIntact(dir, { acked, sent }, 'after the last round');
  for (const stream of await streamDirs(join(dir, 'outbox'))) {
    await assertSegmentChain(stream, SEGMENT_BYTES, 'after the last round', { lastMayBeOpen: true });
  }
});
