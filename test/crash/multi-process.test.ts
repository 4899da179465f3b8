/**
 * Several processes appending to one outbox at once: each claims a writer slot of its own, so no
 * message is lost, duplicated or interleaved into another writer's stream, and every stream's offsets
 * run 0, 1, 2, … without a gap.
 */
import assert from 'node:assert/strict';
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { assertId, assertLogIntact, assertPrefix, dump, LineCollector, NOWHERE, sendOne, verify, type DumpRecord } from '../helpers/crash.ts';
import { CLI, exited, FIXTURES, jsonLines, run, spawnChild, tempDir, waitFor } from '../helpers/index.ts';
import { ConsumerJournal } from '../../src/queue/consumer-journal.ts';

const WRITERS = 4;
const WRITER_LOCKS = ['w0.lock', 'w1.lock', 'w2.lock', 'w3.lock'];

/** Groups records by stream, keeping log order. */
function byStream(records: readonly DumpRecord[]): Map<string, DumpRecord[]> {
  const streams = new Map<string, DumpRecord[]>();
  for (const r of records) {
    const list = streams.get(r.stream) ?? [];
    list.push(r);
    streams.set(r.stream, list);
  }
  return streams;
}

function assertOffsetsFromZero(records: readonly DumpRecord[], label: string): void {
  for (const [stream, list] of byStream(records)) {
    assert.deepEqual(
      list.map((r) => r.offset),
      list.map((_, i) => i),
      `${label}: offsets of ${stream} are not 0..${list.length - 1}`,
    );
  }
}

/**
 * Uses a node directory once before the concurrent writers start, so that the tests below check
 * concurrent appends alone; concurrent first use has a test of its own. The primer is a priority-9
 * message, so it lands in stream p9.w0, apart from the writers' p4 streams.
 */
async function primed(dir: string): Promise<[id: string, body: string]> {
  const body = 'primer';
  return [await sendOne(dir, body, ['--priority', '9']), body];
}

test('four send --lines processes appending at once each keep all their messages in order in a stream of their own', async (t) => {
  const dir = await tempDir(t, 'mqlog-multi-send-');
  const primer = await primed(dir);
  const LINES = 2000;
  const FIRST = 100;
  const writers = Array.from({ length: WRITERS }, (_, w) => {
    const child = spawnChild(t, process.execPath, [CLI, 'send', '--data', dir, '--to', NOWHERE, '--lines']);
    child.stdin!.on('error', () => undefined);
    const lines = Array.from({ length: LINES }, (_, n) => `writer-${w}-${n}`);
    return { child, lines, stdout: new LineCollector(child.stdout!), stderr: new LineCollector(child.stderr!) };
  });

  // All four hold a writer slot at the same time: each has started sending and still has input open.
  for (const w of writers) w.child.stdin!.write(`${w.lines.slice(0, FIRST).join('\n')}\n`);
  const outbox = join(dir, 'outbox');
  const started = await waitFor(
    async () => {
      if (writers.some((w) => w.child.exitCode !== null)) return 'a writer exited';
      const names = await readdir(outbox).catch((): string[] => []);
      return WRITER_LOCKS.every((lock) => names.includes(lock)) ? 'all slots held' : undefined;
    },
    { message: `writer slot locks ${WRITER_LOCKS.join(', ')}` },
  );
  assert.equal(started, 'all slots held', `a writer exited early: ${writers.map((w) => w.stderr.lines.join('\n')).join('\n')}`);

  // A reader runs while they append: what it sees is sound, though maybe not complete.
  const during = dump(dir);
  for (const w of writers) w.child.stdin!.end(`${w.lines.slice(FIRST).join('\n')}\n`);
  const seen = await during;
  assert.equal(seen.code, 0, `dump during the appends exited ${seen.code}: ${seen.stderr}`);
  assert.doesNotMatch(seen.stderr, /ERR_/);
  assertOffsetsFromZero(seen.records, 'dump during the appends');

  const acked = new Map<string, string>([primer]);
  for (const [i, w] of writers.entries()) {
    const { code } = await exited(w.child);
    await Promise.all([w.stdout.ended, w.stderr.ended]);
    assert.equal(code, 0, `writer ${i} exited ${code}: ${w.stderr.lines.join('\n')}`);
    assert.equal(w.stdout.lines.length, LINES, `writer ${i} printed ${w.stdout.lines.length} ids`);
    for (const [n, id] of w.stdout.lines.entries()) {
      assertId(id, `writer ${i}`);
      acked.set(id, w.lines[n] as string);
    }
  }
  const sent = new Set([primer[1], ...writers.flatMap((w) => w.lines)]);
  for (const r of seen.records) assert.equal(acked.get(r.id), r.body, `a message seen during the appends is ${r.id} with body ${r.body}`);

  const { records, torn } = await assertLogIntact(dir, { acked, sent }, 'after all writers finished');
  assert.deepEqual(torn, []);
  assert.equal(records.length, 1 + WRITERS * LINES);
  const streams = byStream(records.filter((r) => r.stream !== 'p9.w0'));
  assert.deepEqual([...streams.keys()].sort(), ['p4.w0', 'p4.w1', 'p4.w2', 'p4.w3'], 'each writer appends to a stream of its own slot');
  assertOffsetsFromZero(records, 'after all writers finished');
  for (const [stream, list] of streams) {
    const writer = /^writer-(\d+)-/.exec(list[0]?.body ?? '')?.[1];
    assert.ok(writer !== undefined, `${stream} starts with an unexpected body`);
    const prefix = `writer-${writer}-`;
    assert.ok(list.every((r) => r.body?.startsWith(prefix)), `${stream} mixes messages of several writers`);
    assert.equal(assertPrefix(list, (body) => Number(body.slice(prefix.length)), stream), LINES);
  }

  const verified = await verify(dir);
  assert.match(verified.stdout, new RegExp(`^ok: verified ${WRITERS + 1} segments, ${WRITERS * LINES + 1} frames`, 'm'));
});

test('four library processes with concurrent sends at every priority keep every message exactly once', async (t) => {
  const dir = await tempDir(t, 'mqlog-multi-lib-');
  const primer = await primed(dir);
  const LOOPS = 16;
  const PER_LOOP = 50;
  const writers = Array.from({ length: WRITERS }, (_, w) => {
    const child = spawnChild(t, process.execPath, [
      '--import',
      'tsx',
      join(FIXTURES, 'append-concurrent.ts'),
      ...['--data', dir, '--to', NOWHERE, '--tag', `proc${w}`, '--loops', String(LOOPS), '--per-loop', String(PER_LOOP), '--priorities'],
    ]);
    return { child, stdout: new LineCollector(child.stdout!), stderr: new LineCollector(child.stderr!) };
  });

  const acked = new Map<string, string>([primer]);
  for (const [i, w] of writers.entries()) {
    const { code } = await exited(w.child);
    await Promise.all([w.stdout.ended, w.stderr.ended]);
    assert.equal(code, 0, `writer ${i} exited ${code}: ${w.stderr.lines.join('\n')}`);
    assert.equal(w.stdout.lines.length, LOOPS * PER_LOOP, `writer ${i} printed ${w.stdout.lines.length} messages`);
    for (const line of w.stdout.lines) {
      const { id, body } = JSON.parse(line) as { id: string; body: string };
      assertId(id, `writer ${i}`);
      acked.set(id, body);
    }
  }
  assert.equal(acked.size, 1 + WRITERS * LOOPS * PER_LOOP, 'ids are unique across processes');

  const sent = new Set(acked.values());
  const { records, torn } = await assertLogIntact(dir, { acked, sent }, 'after all writers finished');
  assert.deepEqual(torn, []);
  assert.equal(records.length, 1 + WRITERS * LOOPS * PER_LOOP);
  assertOffsetsFromZero(records, 'after all writers finished');
  for (const r of records) assert.equal(r.stream.split('.')[0], `p${r.priority}`, `${r.id} is in stream ${r.stream} but has priority ${r.priority}`);
  for (let w = 0; w < WRITERS; w++) {
    for (let loop = 0; loop < LOOPS; loop++) {
      const prefix = `proc${w}-${loop}-`;
      const held = assertPrefix(records, (body) => (body.startsWith(prefix) ? Number(body.slice(prefix.length)) : undefined), `process ${w}, loop ${loop}`);
      assert.equal(held, PER_LOOP);
    }
  }
});

test('processes that open a fresh node directory at the same instant all succeed', async (t) => {
  // Each fixture loads, says `ready`, and opens the node only when told: all four then create the
  // node's files (node.json, outbox/queue.json, the destination record) at the same time.
  const ROUNDS = 6;
  const LOOPS = 4;
  const PER_LOOP = 5;
  const failures: string[] = [];
  for (let round = 0; round < ROUNDS; round++) {
    const dir = await tempDir(t, 'mqlog-multi-fresh-');
    const writers = Array.from({ length: WRITERS }, (_, w) => {
      const child = spawnChild(t, process.execPath, [
        '--import',
        'tsx',
        join(FIXTURES, 'append-concurrent.ts'),
        ...['--data', dir, '--to', NOWHERE, '--tag', `fresh${round}p${w}`, '--loops', String(LOOPS), '--per-loop', String(PER_LOOP), '--barrier'],
      ]);
      return { child, stdout: new LineCollector(child.stdout!), stderr: new LineCollector(child.stderr!) };
    });
    await Promise.all(writers.map((w, i) => w.stdout.waitForLines(1, w.child, w.stderr, `round ${round}: fixture ${i} ready`)));
    for (const w of writers) w.child.stdin!.write('go\n');

    const acked = new Map<string, string>();
    let failed = false;
    for (const [i, w] of writers.entries()) {
      const { code } = await exited(w.child);
      await Promise.all([w.stdout.ended, w.stderr.ended]);
      if (code !== 0) {
        failed = true;
        failures.push(`round ${round}, process ${i} exited ${code}: ${w.stderr.lines.find((l) => l.startsWith('MqlogError')) ?? w.stderr.lines.join(' ')}`);
        continue;
      }
      assert.equal(w.stdout.lines[0], 'ready');
      for (const line of w.stdout.lines.slice(1)) {
        const { id, body } = JSON.parse(line) as { id: string; body: string };
        acked.set(id, body);
      }
    }
    if (failed) continue;
    const { records } = await assertLogIntact(dir, { acked, sent: new Set(acked.values()) }, `round ${round}`);
    assert.equal(records.length, WRITERS * LOOPS * PER_LOOP);
  }
  assert.deepEqual(failures, [], `concurrent first use of a node directory failed in ${new Set(failures.map((f) => f.split(',')[0])).size} of ${ROUNDS} rounds`);
});

test('two processes taking turns at the consumer journal as fast as the lock allows lose no record and cut no tail', async (t) => {
  const dir = await tempDir(t);
  const COUNT = 1500;
  // Small records land in the zeros reserved ahead of the data within one timestamp tick: the file's
  // size and mtime stay the same, so a holder must not trust them to know whether it missed a record.
  const runs = await Promise.all(['a', 'b'].map((tag) => run(process.execPath, ['--import', 'tsx', join(FIXTURES, 'journal-appender.ts'), dir, tag, String(COUNT)], { timeoutMs: 300_000 })));
  for (const r of runs) {
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(jsonLines(r.stdout), [{ done: COUNT }], 'no torn tail was cut');
  }
  const journal = await ConsumerJournal.open(dir);
  try {
    for (const tag of ['a', 'b']) assert.equal(journal.state.doneCount(`s-${tag}`, 0, COUNT), COUNT, `every record of ${tag} is in the journal`);
  } finally {
    await journal.close();
  }
});
