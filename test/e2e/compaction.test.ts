/**
 * Compaction and retention end to end (spec/log-format.md §13): daemons that compact in the background
 * keep a node's disk use bounded however many messages went through it, offsets keep rising after the
 * segments that held them are gone, `mqlog compact` reports what it reclaimed, and `retainDoneMs` keeps
 * done messages visible in `dump` until they are older than it.
 */
import assert from 'node:assert/strict';
import type { Dirent } from 'node:fs';
import { readdir, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { openNode } from '../../src/daemon/node.ts';
import { newId } from '../../src/util/ids.ts';
import { daemons, makeNodes, type NodeSpec } from '../helpers/daemon.ts';
import { CLI, exited, jsonLines, mqlog, spawnChild, tempDir, waitFor } from '../helpers/index.ts';

const KiB = 1024;
const MiB = 1024 * KiB;

interface DumpLine {
  readonly queue: string;
  readonly stream: string;
  readonly segment: string;
  readonly offset: number;
  readonly id: string;
  readonly ts: number;
  readonly state: string;
}

interface PeerStat {
  readonly peer: string;
  readonly backlog: number;
  readonly lastError: string | null;
}

/** Every entry under `dir`, listed again when a directory vanished mid-listing (a compactor's lock). */
async function entries(dir: string): Promise<Dirent[]> {
  for (let attempt = 0; ; attempt++) {
    try {
      return await readdir(dir, { recursive: true, withFileTypes: true });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT' || attempt >= 20) throw err;
    }
  }
}

/** Bytes of every file under `dir` (fs.stat sizes): segments, consumer state, cursors, lock owners, all. */
async function treeBytes(dir: string): Promise<number> {
  let total = 0;
  for (const entry of await entries(dir)) {
    if (!entry.isFile()) continue;
    total += await stat(join(entry.parentPath, entry.name)).then((s) => s.size, () => 0);
  }
  return total;
}

/** Bytes of the segment files under `dir`. */
async function segmentBytes(dir: string): Promise<number> {
  let total = 0;
  for (const entry of await entries(dir)) {
    if (entry.isFile() && entry.name.endsWith('.seg')) total += await stat(join(entry.parentPath, entry.name)).then((s) => s.size, () => 0);
  }
  return total;
}

async function dumpOf(path: string): Promise<DumpLine[]> {
  const result = await mqlog(['dump', path, '--json'], { timeoutMs: 180_000 });
  assert.equal(result.code, 0, `dump ${path}: ${result.stderr}`);
  return jsonLines<DumpLine>(result.stdout);
}

async function peerStat(node: NodeSpec, peer: string): Promise<PeerStat | undefined> {
  const result = await mqlog(['stat', '--data', node.dir, '--json']);
  assert.equal(result.code, 0, result.stderr);
  return jsonLines<PeerStat>(result.stdout).find((r) => r.peer === peer);
}

/** Completed background compaction rounds of a running daemon (from /metrics). */
async function compactionRounds(node: NodeSpec): Promise<number> {
  const text = await (await fetch(`${node.url}/metrics`)).text();
  const match = /^mqlog_compaction_duration_seconds_count(?:\{[^}]*\})? (\d+)/m.exec(text);
  return match === null ? 0 : Number(match[1]);
}

async function sendLines(from: NodeSpec, to: string, lines: string[]): Promise<string[]> {
  const result = await mqlog(['send', '--data', from.dir, '--to', to, '--lines'], { input: `${lines.join('\n')}\n`, timeoutMs: 180_000 });
  assert.equal(result.code, 0, `send: ${result.stderr}`);
  const ids = result.stdout.trim().split('\n');
  assert.equal(ids.length, lines.length, 'send printed one id per line');
  return ids;
}

/** `n` bodies of exactly `bytes` bytes, each starting with its tag and number. */
function bodies(tag: string, n: number, bytes = KiB): string[] {
  return Array.from({ length: n }, (_, i) => `${tag}-${String(i).padStart(6, '0')}-`.padEnd(bytes, 'x'));
}

async function verifyClean(dir: string): Promise<void> {
  const result = await mqlog(['verify', dir], { timeoutMs: 180_000 });
  assert.equal(result.code, 0, `verify ${dir}: ${result.stdout}${result.stderr}`);
  assert.doesNotMatch(result.stdout, /^CORRUPT /m);
}

test('50 000 messages of 1 KiB from A to B, all acked: background compaction keeps both queues under 3 MiB and offsets keep rising', async (t) => {
  const root = await tempDir(t, 'mqlog-compaction-');
  const { a, b } = await makeNodes(root, ['a', 'b'], { segmentBytes: MiB, compactIntervalMs: 500 });
  const COUNT = 50_000;

  // The outbox is filled before the daemons run, so its offsets can be read back once.
  const ids = await sendLines(a!, 'b', bodies('old', COUNT));
  const outboxBefore = await dumpOf(join(a!.dir, 'outbox'));
  assert.equal(outboxBefore.length, COUNT);
  const oldOutboxMax = maxOffsetPerStream(outboxBefore);
  assert.ok((await treeBytes(join(a!.dir, 'outbox'))) > 50 * MiB, 'the outbox really held 50 MiB before');

  const [da, db] = daemons(t, [a!, b!]);
  await Promise.all([da!.start(), db!.start()]);
  // B holds everything before its consumer runs (its compaction has nothing done to remove yet).
  await waitFor(async () => (await peerStat(a!, 'b'))?.backlog === 0, { timeoutMs: 120_000, intervalMs: 500, message: "A's backlog for b to drain" });
  const inboxBefore = await dumpOf(join(b!.dir, 'inbox', 'common'));
  assert.deepEqual(new Set(inboxBefore.map((r) => r.id)), new Set(ids), 'B holds every message A sent');
  assert.equal(inboxBefore.length, COUNT, 'B holds each message once');
  const oldInboxMax = maxOffsetPerStream(inboxBefore);

  const tailed = await mqlog(['tail', '--data', b!.dir, '--ack', '--json', '--follow', '--limit', String(COUNT), '--timeout', '60s'], { timeoutMs: 180_000 });
  assert.equal(tailed.code, 0, `tail: ${tailed.stderr}`);
  const tailedIds = jsonLines<{ id: string }>(tailed.stdout).map((m) => m.id);
  assert.equal(tailedIds.length, COUNT);
  assert.equal(new Set(tailedIds).size, COUNT, 'each message was handed out once');

  // Both daemons compact every 500 ms: wait for the disk use to come down.
  let sizes = { outbox: 0, inbox: 0 };
  await waitFor(
    async () => {
      sizes = { outbox: await treeBytes(join(a!.dir, 'outbox')), inbox: await treeBytes(join(b!.dir, 'inbox')) };
      return sizes.outbox < 3 * MiB && sizes.inbox < 3 * MiB;
    },
    { timeoutMs: 90_000, intervalMs: 250, message: `A's outbox and B's inbox to shrink below 3 MiB (last: ${JSON.stringify(sizes)})` },
  );
  t.diagnostic(`after compaction: A's outbox ${sizes.outbox} bytes, B's inbox ${sizes.inbox} bytes`);

  // `mqlog compact` alongside the daemons: exits 0 and says how much it reclaimed (little is left to do).
  const compact = await mqlog(['compact', '--data', b!.dir]);
  assert.equal(compact.code, 0, compact.stderr);
  assert.match(compact.stdout, /^reclaimed \d+ bytes/m);

  // New messages get offsets above every old one, in both queues, although the old segments are gone.
  const newIds = await sendLines(a!, 'b', bodies('new', 100));
  await waitFor(async () => (await peerStat(a!, 'b'))?.backlog === 0, { timeoutMs: 60_000, intervalMs: 200, message: 'the new messages to reach B' });
  // A's cursor for b stands right after them: they took the next offsets of the same stream.
  const cursor = JSON.parse(await readFile(join(a!.dir, 'outbox', 'cursors', 'b.json'), 'utf8')) as { streams: Record<string, { offset: number }> };
  assert.deepEqual(Object.keys(cursor.streams), ['p4.w0']);
  assert.equal(cursor.streams['p4.w0']?.offset, (oldOutboxMax.get('outbox/p4.w0') ?? Number.NaN) + 101, "A's cursor is past the 100 new messages, right after the old ones");
  const fresh = new Set(newIds);
  const outboxAfter = (await dumpOf(join(a!.dir, 'outbox'))).filter((r) => fresh.has(r.id));
  const inboxAfter = (await dumpOf(join(b!.dir, 'inbox', 'common'))).filter((r) => fresh.has(r.id));
  assert.equal(inboxAfter.length, 100, 'B holds the new messages');
  assertAbove(inboxAfter, oldInboxMax, "B's inbox");
  // A may already have compacted its sent ones away; those still there must be above the old ones.
  assertAbove(outboxAfter, oldOutboxMax, "A's outbox");
  assert.equal((await dumpOf(join(b!.dir, 'inbox', 'common'))).filter((r) => !fresh.has(r.id) && r.state !== 'acked').length, 0, 'no old message came back as pending');

  await verifyClean(a!.dir);
  await verifyClean(b!.dir);
});

function maxOffsetPerStream(records: readonly DumpLine[]): Map<string, number> {
  const max = new Map<string, number>();
  for (const r of records) max.set(`${r.queue}/${r.stream}`, Math.max(max.get(`${r.queue}/${r.stream}`) ?? -1, r.offset));
  return max;
}

function assertAbove(records: readonly DumpLine[], oldMax: ReadonlyMap<string, number>, what: string): void {
  for (const r of records) {
    const floor = oldMax.get(`${r.queue}/${r.stream}`);
    assert.ok(floor !== undefined, `${what}: new message ${r.id} went to ${r.stream}, a stream that held no old message`);
    assert.ok(r.offset > floor, `${what}: new message ${r.id} got offset ${r.offset} in ${r.stream}, not above the old ones (up to ${floor})`);
  }
}

test('retainDoneMs keeps acked and sent messages in dump until they are older than it; mqlog compact prints the bytes it reclaimed', async (t) => {
  const root = await tempDir(t, 'mqlog-retain-');
  const { a, b } = await makeNodes(root, ['a', 'b'], { segmentBytes: 4 * KiB, compactIntervalMs: 200, retainDoneMs: 60_000 });
  const [da, db] = daemons(t, [a!, b!]);
  await Promise.all([da!.start(), db!.start()]);

  const recent = await sendLines(a!, 'b', bodies('recent', 60));
  const tailed = await mqlog(['tail', '--data', b!.dir, '--ack', '--json', '--follow', '--limit', '60', '--timeout', '60s']);
  assert.equal(tailed.code, 0, tailed.stderr);
  assert.equal(jsonLines(tailed.stdout).length, 60);
  await waitFor(async () => (await peerStat(a!, 'b'))?.backlog === 0, { timeoutMs: 60_000, intervalMs: 100, message: "A's backlog to drain" });

  // Let both daemons run at least two full compaction rounds with everything done.
  const [roundsA, roundsB] = [await compactionRounds(a!), await compactionRounds(b!)];
  await waitFor(async () => (await compactionRounds(a!)) >= roundsA + 2 && (await compactionRounds(b!)) >= roundsB + 2, {
    timeoutMs: 30_000,
    intervalMs: 100,
    message: 'two background compaction rounds on A and B',
  });
  const inbox = new Map((await dumpOf(join(b!.dir, 'inbox', 'common'))).map((r) => [r.id, r.state]));
  const outbox = new Map((await dumpOf(join(a!.dir, 'outbox'))).map((r) => [r.id, r.state]));
  for (const id of recent) {
    assert.equal(inbox.get(id), 'acked', `B's dump still shows ${id} as acked`);
    assert.equal(outbox.get(id), 'sent', `A's dump still shows ${id} as sent`);
  }

  // Messages older than retainDoneMs go. They are written into B's inbox directly with a send time ten
  // minutes back (while B's daemon is stopped, so that only `mqlog compact` removes them).
  assert.equal(await db!.stop(), 0);
  const node = await openNode({ data: b!.dir });
  const oldIds: string[] = [];
  try {
    const box = await node.inbox('common');
    const ts = Date.now() - 10 * 60_000;
    for (const body of bodies('old', 30)) {
      const id = newId(ts);
      oldIds.push(id);
      await box.append({ id, ts, channel: 'common', priority: 4, to: ['b'], from: 'a' }, Buffer.from(body));
    }
  } finally {
    await node.close();
  }
  const tailedOld = await mqlog(['tail', '--data', b!.dir, '--ack', '--json', '--limit', '30']);
  assert.equal(tailedOld.code, 0, tailedOld.stderr);
  assert.deepEqual(new Set(jsonLines<{ id: string }>(tailedOld.stdout).map((m) => m.id)), new Set(oldIds));

  const before = await segmentBytes(join(b!.dir, 'inbox'));
  const compact = await mqlog(['compact', '--data', b!.dir]);
  assert.equal(compact.code, 0, compact.stderr);
  const reclaimed = /^reclaimed (\d+) bytes/m.exec(compact.stdout);
  assert.ok(reclaimed !== null, `compact printed ${JSON.stringify(compact.stdout)}`);
  const after = await segmentBytes(join(b!.dir, 'inbox'));
  assert.ok(Number(reclaimed[1]) > 30 * KiB, `compact reclaimed the 30 old messages (printed ${reclaimed[1]})`);
  assert.equal(Number(reclaimed[1]), before - after, 'the bytes compact printed are the bytes the segments shrank by');

  const dumped = new Map((await dumpOf(join(b!.dir, 'inbox', 'common'))).map((r) => [r.id, r.state]));
  for (const id of oldIds) assert.equal(dumped.has(id), false, `old acked message ${id} was removed`);
  for (const id of recent) assert.equal(dumped.get(id), 'acked', `recent acked message ${id} is still shown`);
  await verifyClean(b!.dir);
  await verifyClean(a!.dir);
});

test('a queue drained to the end leaves almost nothing on disk, whatever the segment size: idle open segments are sealed and reclaimed', async (t) => {
  const root = await tempDir(t, 'mqlog-drain-');
  // The default 64 MiB segments: without sealing idle ones, every open segment would keep its acked frames.
  const { a, b } = await makeNodes(root, ['a', 'b'], { segmentRollIdleMs: 300, compactIntervalMs: 300 });
  const [da, db] = daemons(t, [a!, b!]);
  await Promise.all([da!.start(), db!.start()]);
  const COUNT = 3000;
  const node = await openNode({ data: a!.dir });
  try {
    // Three priorities and two channels: five open streams on each side.
    await Promise.all(
      Array.from({ length: COUNT }, (_, i) => node.send('b', `m-${i}`.padEnd(KiB, 'x'), { priority: [0, 4, 9][i % 3] as number, ...(i % 2 === 0 ? {} : { channel: 'jobs' }) })),
    );
  } finally {
    await node.close();
  }
  for (const channel of ['common', 'jobs']) {
    const tailed = await mqlog(['tail', '--data', b!.dir, '--channel', channel, '--ack', '--json', '--follow', '--limit', String(COUNT / 2), '--timeout', '60s'], { timeoutMs: 180_000 });
    assert.equal(tailed.code, 0, `tail ${channel}: ${tailed.stderr}`);
    assert.equal(jsonLines(tailed.stdout).length, COUNT / 2);
  }
  let sizes = { outbox: 0, inbox: 0 };
  await waitFor(
    async () => {
      sizes = { outbox: await segmentBytes(join(a!.dir, 'outbox')), inbox: await segmentBytes(join(b!.dir, 'inbox')) };
      return sizes.outbox === 0 && sizes.inbox === 0;
    },
    { timeoutMs: 90_000, intervalMs: 250, message: `every segment byte of A's outbox and B's inbox to be reclaimed (last: ${JSON.stringify(sizes)})` },
  );
  // What stays is state, bounded whatever went through: the consumer journals fold at 1 MiB.
  const trees = { outbox: await treeBytes(join(a!.dir, 'outbox')), inbox: await treeBytes(join(b!.dir, 'inbox')) };
  t.diagnostic(`after the drain: no segment bytes; whole trees: ${JSON.stringify(trees)}`);
  assert.ok(trees.outbox < 64 * KiB && trees.inbox < 3 * MiB, `state files only: ${JSON.stringify(trees)}`);
  await verifyClean(a!.dir);
  await verifyClean(b!.dir);
});

test('the chunks of a body whose sender died mid-body are removed by compaction once older than orphanChunkMs, on both nodes, not before', async (t) => {
  const root = await tempDir(t, 'mqlog-orphans-');
  const { a, b } = await makeNodes(root, ['a', 'b']);
  const [da, db] = daemons(t, [a!, b!]);
  await Promise.all([da!.start(), db!.start()]);
  // A body from stdin, 12 MiB of it written (past the 8 MiB kept inline) and the rest never coming: the
  // sender is SIGKILLed once its first chunks were forwarded to B.
  const sender = spawnChild(t, process.execPath, [CLI, 'send', '--data', a!.dir, '--to', 'b', '--file', '-']);
  sender.stdin!.on('error', () => undefined); // the part still unwritten when it dies
  sender.stdin!.write(Buffer.alloc(12 * MiB, 0x62));
  await waitFor(async () => (await chunkBytes(join(b!.dir, 'inbox'))) >= 4 * MiB, { timeoutMs: 60_000, message: "four chunks in B's inbox" });
  sender.kill('SIGKILL');
  await exited(sender);
  await waitFor(async () => (await peerStat(a!, 'b'))?.backlog === 0 && (await chunkFrames(join(b!.dir, 'inbox'))) === (await chunkFrames(join(a!.dir, 'outbox'))), {
    timeoutMs: 60_000,
    message: 'every chunk A stored forwarded to B',
  });
  assert.equal(await da!.stop(), 0);
  assert.equal(await db!.stop(), 0);

  for (const [node, queue] of [[a!, 'outbox'], [b!, 'inbox']] as const) {
    const stored = await chunkBytes(join(node.dir, queue));
    assert.ok(stored >= 4 * MiB, `${node.name}: ${stored} bytes of chunks`);
    // Young orphans stay (their message may still come)…
    const early = await mqlog(['compact', '--data', node.dir]);
    assert.equal(early.code, 0, early.stderr);
    assert.equal(await chunkBytes(join(node.dir, queue)), stored, `${node.name}: chunks younger than orphanChunkMs are kept`);
    // …and go once older than orphanChunkMs.
    const config = JSON.parse(await readFile(join(node.dir, 'mqlog.json'), 'utf8')) as Record<string, unknown>;
    await writeFile(join(node.dir, 'mqlog.json'), JSON.stringify({ ...config, orphanChunkMs: 1 }));
    const late = await mqlog(['compact', '--data', node.dir]);
    assert.equal(late.code, 0, late.stderr);
    assert.equal(await chunkBytes(join(node.dir, queue)), 0, `${node.name}: no chunk left (compact said ${late.stdout.trim()})`);
    await verifyClean(node.dir);
  }
});

/** Bytes of BODY_CHUNK frames (type 2) under `dir`, headers included, walking the frame headers of its segments. */
async function chunkBytes(dir: string): Promise<number> {
  return (await chunks(dir)).bytes;
}

async function chunkFrames(dir: string): Promise<number> {
  return (await chunks(dir)).frames;
}

async function chunks(dir: string): Promise<{ frames: number; bytes: number }> {
  let frames = 0;
  let bytes = 0;
  for (const entry of await entries(dir)) {
    if (!entry.isFile() || !entry.name.endsWith('.seg')) continue;
    const data = await readFile(join(entry.parentPath, entry.name)).catch(() => Buffer.alloc(0));
    for (let at = 0; at + 20 <= data.length && data[at] === 0xa7; at += 20 + data.readUInt32LE(at + 4)) {
      if (data[at + 2] !== 2) continue;
      frames++;
      bytes += 20 + data.readUInt32LE(at + 4);
    }
  }
  return { frames, bytes };
}
