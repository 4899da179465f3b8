/**
 * Crash safety of compaction (spec/log-format.md §13): `mqlog compact` rewrites and deletes segments of
 * an inbox while it is SIGKILLed at random moments, again and again. After every kill, every message
 * that was not acked is still there exactly once and is handed out again, no acked message comes back,
 * and the log verifies. Leftover temp files go away with the next compaction that runs to its end, and
 * a last full compaction leaves no segment that holds only acked messages.
 *
 * The queue is an inbox written with the library (segments of 4 KiB, ~9 messages each, ~60 segments). Each round
 * appends more messages, then acks a random choice of the live ones, segment by segment: in some rounds
 * every segment keeps at least one live message (so compaction only rewrites), in others whole segments
 * are acked (deleted) and others keep exactly one live message (rewritten to one frame).
 */
import assert from 'node:assert/strict';
import { existsSync, watch, type FSWatcher } from 'node:fs';
import { readdir, stat, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import type { ChildProcess } from 'node:child_process';
import { openNode } from '../../src/daemon/node.ts';
import { Lock } from '../../src/log/lock.ts';
import { newId } from '../../src/util/ids.ts';
import { dump, seededRandom, verify, type DumpRecord } from '../helpers/crash.ts';
import { CLI, exited, spawnChild, tempDir } from '../helpers/index.ts';

const CHANNEL = 'c';
const MIN_KILLS = Number(process.env.MQLOG_CRASH_ROUNDS ?? 20);
const MAX_ROUNDS = MIN_KILLS * 3;
const INITIAL_MESSAGES = 600;
const MESSAGES_PER_ROUND = 40;

interface Message {
  readonly id: string;
  readonly stream: string;
  /** Base offset of the segment it was appended to (compaction never renames a segment). */
  readonly segment: number;
  acked: boolean;
}

type Model = Map<string, Message>;

function queueDirOf(dataDir: string): string {
  return join(dataDir, 'inbox', CHANNEL);
}

async function makeNodeDir(t: TestContext): Promise<string> {
  const dir = await tempDir(t, 'mqlog-crash-compact-');
  // Leases never lapse during the test and nacks never send a message to the dead letters.
  await writeFile(join(dir, 'mqlog.json'), JSON.stringify({ name: 'k', segmentBytes: 4096, visibilityTimeoutMs: 600_000, maxDeliveries: 1_000_000 }));
  return dir;
}

/** Appends `n` messages of ~300 bytes to the inbox with the library, 32 at a time (group commit). */
async function append(dir: string, model: Model, n: number, tag: string): Promise<void> {
  const node = await openNode({ data: dir });
  try {
    const inbox = await node.inbox(CHANNEL);
    for (let start = 0; start < n; start += 32) {
      await Promise.all(
        Array.from({ length: Math.min(32, n - start) }, async (_, i) => {
          const id = newId();
          const body = Buffer.from(`${tag}-${start + i}-`.padEnd(300, '.'));
          const result = await inbox.append({ id, ts: Date.now(), channel: CHANNEL, priority: 4, to: ['k'], from: 'p' }, body);
          model.set(id, { id, stream: result.stream, segment: result.segment, acked: false });
        }),
      );
    }
  } finally {
    await node.close();
  }
}

/**
 * Takes every ready message with the library (a consumer's view), checks that exactly the live ones
 * come out, each once, then acks those in `toAck` and gives the others back (nack, ready at once).
 */
async function takeAndSettle(dir: string, model: Model, toAck: ReadonlySet<string>, label: string): Promise<void> {
  const node = await openNode({ data: dir });
  try {
    const consumer = await (await node.inbox(CHANNEL)).consumer();
    const taken = new Map<string, Awaited<ReturnType<typeof consumer.take>>[number]>();
    for (;;) {
      const batch = await consumer.take(500);
      if (batch.length === 0) break;
      for (const d of batch) {
        const m = model.get(d.id);
        assert.ok(m !== undefined, `${label}: the consumer got ${d.id}, a message never appended`);
        assert.equal(m.acked, false, `${label}: acked message ${d.id} (${d.stream}@${d.offset}) was handed out again`);
        assert.ok(!taken.has(d.id), `${label}: ${d.id} was handed out twice in one pass`);
        taken.set(d.id, d);
      }
    }
    const live = [...model.values()].filter((m) => !m.acked);
    const missing = live.filter((m) => !taken.has(m.id));
    assert.equal(missing.length, 0, `${label}: ${missing.length} live messages were not handed out, e.g. ${missing[0]?.id} (segment ${missing[0]?.segment})`);
    await Promise.all(
      [...taken.values()].map(async (d) => {
        if (toAck.has(d.id)) {
          await d.ack();
          (model.get(d.id) as Message).acked = true;
        } else {
          await d.nack();
        }
      }),
    );
  } finally {
    await node.close();
  }
}

/** Live messages grouped by the segment they were appended to. */
function liveBySegment(model: Model): Message[][] {
  const groups = new Map<string, Message[]>();
  for (const m of model.values()) {
    if (m.acked) continue;
    const key = `${m.stream}/${m.segment}`;
    groups.set(key, [...(groups.get(key) ?? []), m]);
  }
  return [...groups.values()];
}

/**
 * What to ack this round. `keepOnePerSegment`: every segment keeps at least one live message; otherwise
 * some segments are acked entirely, some down to exactly one live message, some at random, some not at all.
 */
function chooseAcks(model: Model, random: () => number, keepOnePerSegment: boolean): Set<string> {
  const chosen = new Set<string>();
  for (const group of liveBySegment(model)) {
    const pick = random();
    const shuffled = [...group].sort(() => random() - 0.5);
    let count: number;
    if (keepOnePerSegment) count = pick < 0.5 ? group.length - 1 : pick < 0.8 ? Math.floor(random() * group.length) : 0;
    else count = pick < 0.25 ? group.length : pick < 0.5 ? group.length - 1 : pick < 0.75 ? Math.floor(random() * (group.length + 1)) : 0;
    for (const m of shuffled.slice(0, Math.max(0, count))) chosen.add(m.id);
  }
  return chosen;
}

/** `*.compact.tmp` files anywhere in the queue. */
async function tempFiles(queueDir: string): Promise<string[]> {
  return (await readdir(queueDir, { recursive: true })).filter((name) => name.endsWith('.compact.tmp'));
}

/**
 * What must hold after any kill: dump and verify exit 0; every live message appears once, pending; an
 * acked one appears at most once and only as acked; nothing else appears; offsets rise in every stream.
 */
async function assertQueueIntact(dir: string, model: Model, label: string): Promise<DumpRecord[]> {
  const queueDir = queueDirOf(dir);
  const [dumped, verified] = await Promise.all([dump(queueDir), verify(dir)]);
  assert.equal(dumped.code, 0, `${label}: dump exited ${dumped.code}: ${dumped.stderr}`);
  assert.equal(verified.code, 0, `${label}: verify exited ${verified.code}: ${verified.stdout}${verified.stderr}`);
  assert.doesNotMatch(verified.stdout, /^CORRUPT /m, `${label}: verify found corruption`);
  const seen = new Set<string>();
  const lastOffset = new Map<string, number>();
  for (const r of dumped.records as (DumpRecord & { state: string })[]) {
    const m = model.get(r.id);
    assert.ok(m !== undefined, `${label}: dump shows ${r.id}, a message never appended`);
    assert.ok(!seen.has(r.id), `${label}: ${r.id} appears twice in the dump`);
    seen.add(r.id);
    assert.equal(r.state, m.acked ? 'acked' : 'pending', `${label}: ${r.id} (${m.acked ? 'acked' : 'live'}) shows as ${r.state}`);
    assert.ok(r.offset > (lastOffset.get(r.stream) ?? -1), `${label}: offsets of ${r.stream} do not rise at ${r.offset}`);
    lastOffset.set(r.stream, r.offset);
  }
  const lost = [...model.values()].filter((m) => !m.acked && !seen.has(m.id));
  assert.equal(lost.length, 0, `${label}: ${lost.length} live messages are missing from the dump, e.g. ${lost[0]?.id} (segment ${lost[0]?.segment})`);
  return dumped.records;
}

/**
 * Removes the locks a killed compactor left (compact.lock, a writer slot it had claimed to retire a
 * segment), as a supervisor that saw its child die may (spec §7); a lock whose owner file was not
 * written yet is waited out until it is stale.
 */
async function clearLocksOf(queueDir: string, pid: number): Promise<void> {
  for (const name of await readdir(queueDir)) {
    if (!name.endsWith('.lock')) continue;
    const path = join(queueDir, name);
    if (await Lock.breakIfHolderDied(path, pid)) continue;
    if (name !== 'compact.lock' || !existsSync(path)) continue;
    const lock = await Lock.acquire(path, { wait: true, signal: AbortSignal.timeout(30_000) });
    await lock.release();
  }
}

function spawnCompact(t: TestContext, dir: string): { child: ChildProcess; output: () => string } {
  const child = spawnChild(t, process.execPath, [CLI, 'compact', '--data', dir], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout?.on('data', (b: Buffer) => (out += b.toString()));
  child.stderr?.on('data', (b: Buffer) => (out += b.toString()));
  return { child, output: () => out };
}

/** Resolves when `path` exists (polled every millisecond) or the child is gone. */
async function appears(path: string, child: ChildProcess): Promise<boolean> {
  for (;;) {
    if (existsSync(path)) return true;
    if (child.exitCode !== null || child.signalCode !== null) return false;
    await new Promise((r) => setTimeout(r, 1));
  }
}

test('compaction killed at random moments, again and again, never loses a live message nor brings back an acked one', async (t) => {
  const dir = await makeNodeDir(t);
  const queueDir = queueDirOf(dir);
  const { next: random } = seededRandom(t);
  const model: Model = new Map();
  await append(dir, model, INITIAL_MESSAGES, 'init');
  const segmentsAtStart = new Set([...model.values()].map((m) => m.segment)).size;
  t.diagnostic(`${INITIAL_MESSAGES} messages in ${segmentsAtStart} segments`);

  let kills = 0;
  let completed = 0;
  let killsLeavingTemp = 0;
  let killsWhileEverySegmentLive = 0;
  /** How long a compaction that ran to its end took after taking compact.lock (an estimate for kill delays). */
  let runMs = 400;
  for (let round = 0; kills < MIN_KILLS && round < MAX_ROUNDS; round++) {
    // Rounds 0-7 and every third round after: no segment is emptied, compaction can only rewrite.
    const keepOne = round < 8 || round % 3 === 0;
    if (round > 0) await append(dir, model, MESSAGES_PER_ROUND, `r${round}`);
    await takeAndSettle(dir, model, chooseAcks(model, random, keepOne), `round ${round} (before compaction)`);
    const everySegmentLive = liveBySegment(model).length === new Set([...model.values()].map((m) => `${m.stream}/${m.segment}`)).size;

    // How this run ends: SIGKILL at the k-th file-system event in the queue's streams (a temp file
    // created or written, a rename, a deletion), at a random time after it took compact.lock, at a
    // random time after it was spawned (possibly before it took the lock), or not at all.
    const pick = random();
    const mode = round % 10 === 9 ? 'finish' : pick < 0.15 ? 'early' : pick < 0.6 ? 'event' : 'time';
    const streams = (await readdir(queueDir)).filter((n) => /^p\d\.w\d+$/.test(n)).map((n) => join(queueDir, n));
    const { child, output } = spawnCompact(t, dir);
    let when = '';
    let lockedAt = performance.now();
    if (mode === 'early') {
      const delayMs = Math.floor(random() * 400);
      when = `${delayMs} ms after spawn`;
      await new Promise((r) => setTimeout(r, delayMs));
      child.kill('SIGKILL');
    } else if (mode === 'event') {
      const k = 1 + Math.floor(random() * 30);
      when = `at file-system event ${k}`;
      let events = 0;
      const watchers = streams.map((s) => watch(s, () => ++events === k && child.kill('SIGKILL')));
      try {
        await exited(child);
      } finally {
        for (const w of watchers) w.close();
      }
    } else {
      await appears(join(queueDir, 'compact.lock'), child);
      lockedAt = performance.now();
      if (mode === 'time') {
        const delayMs = Math.floor(random() * runMs);
        when = `${delayMs} ms after it took compact.lock`;
        await new Promise((r) => setTimeout(r, delayMs));
        child.kill('SIGKILL');
      }
    }
    const { code, signal } = await exited(child);
    const label = `round ${round} (${mode === 'finish' ? 'run to the end' : `kill ${when}`}${keepOne ? ', every segment keeps a live message' : ''})`;
    if (signal === 'SIGKILL') {
      kills++;
      if (everySegmentLive) killsWhileEverySegmentLive++;
      if ((await tempFiles(queueDir)).length > 0) killsLeavingTemp++;
      await assertQueueIntact(dir, model, label);
      await clearLocksOf(queueDir, child.pid as number);
    } else {
      assert.equal(code, 0, `${label}: compact exited ${code}: ${output()}`);
      completed++;
      if (mode !== 'event') runMs = Math.max(50, performance.now() - lockedAt);
      assert.deepEqual(await tempFiles(queueDir), [], `${label}: temp files stayed after a compaction that ran to its end`);
      await assertQueueIntact(dir, model, label);
    }
  }
  t.diagnostic(`${kills} kills (${killsWhileEverySegmentLive} while every segment held a live message, ${killsLeavingTemp} left a temp file), ${completed} runs to the end, last full run ${Math.round(runMs)} ms`);
  assert.ok(kills >= MIN_KILLS, `only ${kills} kills`);
  assert.ok(killsWhileEverySegmentLive > 0, 'no kill happened while every segment held a live message');

  // The consumer view after the last kill: every live message is handed out, no acked one.
  await takeAndSettle(dir, model, new Set(), 'after the last kill');

  // A full compaction: no temp file stays, and no segment is left that holds only acked messages.
  const final = spawnCompact(t, dir);
  const end = await exited(final.child);
  assert.equal(end.code, 0, `the final compact exited ${end.code}: ${final.output()}`);
  assert.match(final.output(), /^reclaimed \d+ bytes/m);
  assert.deepEqual(await tempFiles(queueDir), [], 'no temp file stays after a full compaction');
  const records = await assertQueueIntact(dir, model, 'after the final compaction');
  const liveIn = new Map<string, number>();
  for (const r of records as (DumpRecord & { state: string })[]) if (r.state === 'pending') liveIn.set(r.segment, (liveIn.get(r.segment) ?? 0) + 1);
  let segments = 0;
  for (const stream of (await readdir(queueDir)).filter((n) => /^p\d\.w\d+$/.test(n))) {
    for (const name of (await readdir(join(queueDir, stream))).filter((n) => n.endsWith('.seg'))) {
      segments++;
      const size = (await stat(join(queueDir, stream, name))).size;
      if (size === 0) continue; // the empty successor of a retired last segment
      assert.ok((liveIn.get(`${stream}/${name}`) ?? 0) > 0, `${stream}/${name} (${size} bytes) holds only acked messages after a full compaction`);
    }
  }
  t.diagnostic(`${segments} segments left for ${[...model.values()].filter((m) => !m.acked).length} live messages`);
});

test('a compact run right after a killed compactor removes its temp file and does the work (it does not skip the queue)', async (t) => {
  const dir = await makeNodeDir(t);
  const queueDir = queueDirOf(dir);
  const model: Model = new Map();
  await append(dir, model, 1200, 'm');
  // Every segment keeps exactly one live message: compaction rewrites every sealed segment.
  const toAck = new Set<string>();
  for (const group of liveBySegment(model)) for (const m of group.slice(1)) toAck.add(m.id);
  await takeAndSettle(dir, model, toAck, 'set-up');
  const streamDir = join(queueDir, 'p4.w0');

  // Kill the compactor the moment it creates a temp file; try again until a kill leaves one behind.
  let killedPid: number | undefined;
  for (let attempt = 0; attempt < 20 && killedPid === undefined; attempt++) {
    const { child } = spawnCompact(t, dir);
    let watcher: FSWatcher | undefined;
    try {
      watcher = watch(streamDir, (_event, name) => {
        if (typeof name === 'string' && name.endsWith('.compact.tmp')) child.kill('SIGKILL');
      });
      await exited(child);
    } finally {
      watcher?.close();
    }
    assert.equal(child.signalCode, 'SIGKILL', `attempt ${attempt}: the compactor finished before it could be killed`);
    if ((await tempFiles(queueDir)).length > 0) killedPid = child.pid;
    else await clearLocksOf(queueDir, child.pid as number);
  }
  assert.ok(killedPid !== undefined, 'no kill left a temp file behind in 20 attempts');
  await assertQueueIntact(dir, model, 'after the kill');
  const leftovers = await tempFiles(queueDir);

  // The next run, right away: the dead compactor's lock must not make it skip the queue. Its holder
  // refreshed it every second until the kill; the checks above took a while, so the lock is given the
  // age it had at the kill (fresh) before the next run starts.
  const lockPath = join(queueDir, 'compact.lock');
  assert.ok(existsSync(lockPath), 'the killed compactor held compact.lock');
  const now = new Date();
  await utimes(lockPath, now, now);
  const next = spawnCompact(t, dir);
  const { code } = await exited(next.child);
  assert.equal(code, 0, next.output());
  const reclaimed = Number(/^reclaimed (\d+) bytes/m.exec(next.output())?.[1] ?? Number.NaN);
  const held = existsSync(join(queueDir, 'compact.lock')) ? ' (the killed compactor\'s compact.lock is still there)' : '';
  assert.deepEqual(await tempFiles(queueDir), [], `temp files ${leftovers.join(', ')} of the killed compactor stayed after the next compact exited 0 with "${next.output().trim()}"${held}`);
  assert.ok(reclaimed > 0, `the next compact reclaimed nothing: ${next.output().trim()}${held}`);
  await assertQueueIntact(dir, model, 'after the next compaction');
});
