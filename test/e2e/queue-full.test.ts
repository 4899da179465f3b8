/**
 * Bounded queues (spec/log-format.md §14, spec/errors.md ERR_QUEUE_FULL): with `maxQueueBytes`, an append
 * that would take a queue past the limit is refused and nothing is written. On the sending node `send`
 * fails; once the daemon forwarded the messages and compaction removed them, sending works again. On a
 * receiving node the peer's forwarder gets a retryable 507 and keeps its backlog until the receiving
 * application acked and compaction made room; nothing is lost and nothing arrives twice.
 */
import assert from 'node:assert/strict';
import { readdir, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { daemons, makeNodes, type NodeSpec } from '../helpers/daemon.ts';
import { jsonLines, mqlog, tempDir, waitFor } from '../helpers/index.ts';

const KiB = 1024;
const LIMIT = 256 * KiB;
const SEGMENT = 16 * KiB;

interface DumpLine {
  readonly queue: string;
  readonly id: string;
  readonly state: string;
  readonly body?: string;
}

interface PeerStat {
  readonly peer: string;
  readonly backlog: number;
  readonly lastError: string | null;
}

function lines(tag: string, n: number, bytes = KiB): string[] {
  return Array.from({ length: n }, (_, i) => `${tag}-${String(i).padStart(6, '0')}-`.padEnd(bytes, 'x'));
}

async function sendLines(dir: string, to: string, input: string[]): Promise<{ code: number | null; ids: string[]; stderr: string }> {
  const result = await mqlog(['send', '--data', dir, '--to', to, '--lines'], { input: `${input.join('\n')}\n` });
  return { code: result.code, ids: result.stdout.split('\n').filter((l) => l.length > 0), stderr: result.stderr };
}

async function dumpOf(path: string): Promise<DumpLine[]> {
  const result = await mqlog(['dump', path, '--json']);
  assert.equal(result.code, 0, `dump ${path}: ${result.stderr}`);
  return jsonLines<DumpLine>(result.stdout);
}

async function peerStat(node: NodeSpec, peer: string): Promise<PeerStat | undefined> {
  const result = await mqlog(['stat', '--data', node.dir, '--json']);
  assert.equal(result.code, 0, result.stderr);
  return jsonLines<PeerStat>(result.stdout).find((r) => r.peer === peer);
}

/** Bytes of the segment files of a queue (what maxQueueBytes limits). */
async function segmentBytes(queueDir: string): Promise<number> {
  let total = 0;
  for (const entry of await readdir(queueDir, { recursive: true, withFileTypes: true })) {
    if (entry.isFile() && entry.name.endsWith('.seg')) total += await stat(join(entry.parentPath, entry.name)).then((s) => s.size, () => 0);
  }
  return total;
}

async function verifyClean(dir: string): Promise<void> {
  const result = await mqlog(['verify', dir]);
  assert.equal(result.code, 0, `verify ${dir}: ${result.stdout}${result.stderr}`);
}

async function setConfig(node: NodeSpec, extra: Record<string, unknown>): Promise<void> {
  const path = join(node.dir, 'mqlog.json');
  const config = JSON.parse(await readFile(path, 'utf8')) as Record<string, unknown>;
  await writeFile(path, JSON.stringify({ ...config, ...extra }));
}

test('send fails with ERR_QUEUE_FULL once the outbox reaches maxQueueBytes, keeps what it printed, and works again after forwarding and compaction', async (t) => {
  const root = await tempDir(t);
  const { a, b } = await makeNodes(root, ['a', 'b'], { segmentBytes: SEGMENT, compactIntervalMs: 500 });
  await setConfig(a!, { maxQueueBytes: LIMIT });

  // No daemon yet: the outbox only grows.
  const input = lines('full', 1000);
  const first = await sendLines(a!.dir, 'b', input);
  assert.equal(first.code, 1, `send exited ${first.code}: ${first.stderr}`);
  assert.match(first.stderr, /^mqlog: ERR_QUEUE_FULL: /m);
  assert.ok(first.ids.length > 100 && first.ids.length < input.length, `send printed ${first.ids.length} ids`);
  const outbox = new Map((await dumpOf(join(a!.dir, 'outbox'))).map((r) => [r.id, r]));
  first.ids.forEach((id, i) => assert.equal(outbox.get(id)?.body, input[i], `printed message ${i} (${id}) is in the outbox with its body`));
  await verifyClean(a!.dir);
  // The refused line did not fit in what is left; a message four times its size does not either.
  const refused = await mqlog(['send', '--data', a!.dir, '--to', 'b', 'one more '.padEnd(4 * KiB, 'x')]);
  assert.equal(refused.code, 1, 'a full outbox refuses the next send too');
  assert.match(refused.stderr, /^mqlog: ERR_QUEUE_FULL: /m);

  // The daemons forward the backlog, A compacts what was sent, and there is room again.
  const [da, db] = daemons(t, [a!, b!]);
  await Promise.all([da!.start(), db!.start()]);
  await waitFor(async () => (await peerStat(a!, 'b'))?.backlog === 0, { timeoutMs: 60_000, intervalMs: 200, message: "A's backlog to drain" });
  await waitFor(async () => (await segmentBytes(join(a!.dir, 'outbox'))) < LIMIT / 4, { timeoutMs: 60_000, intervalMs: 200, message: "A's outbox to be compacted" });
  const again = await sendLines(a!.dir, 'b', lines('again', 100));
  assert.equal(again.code, 0, again.stderr);
  assert.equal(again.ids.length, 100);

  await waitFor(async () => (await peerStat(a!, 'b'))?.backlog === 0, { timeoutMs: 60_000, intervalMs: 200, message: 'the new messages to reach B' });
  const inB = await dumpOf(join(b!.dir, 'inbox', 'common'));
  const count = new Map<string, number>();
  for (const r of inB) count.set(r.id, (count.get(r.id) ?? 0) + 1);
  for (const id of [...first.ids, ...again.ids]) assert.equal(count.get(id), 1, `${id} reached B once`);
  await verifyClean(a!.dir);
  await verifyClean(b!.dir);
});

test('send --lines into a full outbox stops at the limit: the outbox stays within maxQueueBytes and holds only messages send printed', async (t) => {
  const dir = join(await tempDir(t), 'a');
  const { a } = await makeNodes(join(dir, '..'), ['a'], { segmentBytes: SEGMENT, maxQueueBytes: LIMIT });
  const input = lines('full', 1000);
  const result = await sendLines(a!.dir, 'http://127.0.0.1:9', input);
  assert.equal(result.code, 1, result.stderr);
  assert.match(result.stderr, /ERR_QUEUE_FULL/);
  const stored = await dumpOf(join(a!.dir, 'outbox'));
  const onDisk = await segmentBytes(join(a!.dir, 'outbox'));
  // The writer is gone, so its segments hold no preallocated zeros: this is frame bytes.
  assert.ok(onDisk <= LIMIT, `the outbox holds ${onDisk} bytes in segments, more than maxQueueBytes ${LIMIT} (${stored.length} messages stored)`);
  const printed = new Set(result.ids);
  const unprinted = stored.filter((r) => !printed.has(r.id));
  assert.equal(
    unprinted.length,
    0,
    `${unprinted.length} messages are stored (and will be forwarded) although send printed no id for them and exited 1 after ${result.ids.length} ids; e.g. input line ${unprinted[0]?.body?.slice(0, 11)}`,
  );
});

test('a receiver at maxQueueBytes answers 507 ERR_QUEUE_FULL; the sender keeps its backlog, which drains exactly once after the app acks and the receiver compacts', async (t) => {
  const root = await tempDir(t);
  const { a, b } = await makeNodes(root, ['a', 'b'], { segmentBytes: SEGMENT, compactIntervalMs: 500 });
  await setConfig(b!, { maxQueueBytes: LIMIT });
  const [da, db] = daemons(t, [a!, b!]);
  await Promise.all([da!.start(), db!.start()]);

  // Watch the size of B's inbox for the whole test.
  const inboxDir = join(b!.dir, 'inbox', 'common');
  let largest = 0;
  let sampling = true;
  const sampler = (async () => {
    while (sampling) {
      largest = Math.max(largest, await segmentBytes(inboxDir).catch(() => 0));
      await new Promise((r) => setTimeout(r, 20));
    }
  })();
  t.after(async () => {
    sampling = false;
    await sampler;
  });

  const COUNT = 1000; // about 1.1 MiB for a 256 KiB inbox
  const sent = await sendLines(a!.dir, 'b', lines('to-b', COUNT));
  assert.equal(sent.code, 0, sent.stderr);
  const stalled = await waitFor(async () => {
    const s = await peerStat(a!, 'b');
    return s?.lastError != null && /507/.test(s.lastError) && /ERR_QUEUE_FULL/.test(s.lastError) ? s : undefined;
  }, { timeoutMs: 60_000, intervalMs: 200, message: "A's forwarder to report B's 507 ERR_QUEUE_FULL" });
  assert.ok(stalled.backlog > 0, 'A keeps a backlog');
  await verifyClean(b!.dir);

  // B's application takes and acks everything as it comes; B compacts every 500 ms, so room comes back.
  const tailed = await mqlog(['tail', '--data', b!.dir, '--ack', '--json', '--follow', '--limit', String(COUNT), '--timeout', '90s'], { timeoutMs: 240_000 });
  assert.equal(tailed.code, 0, tailed.stderr);
  const got = jsonLines<{ id: string }>(tailed.stdout).map((m) => m.id);
  assert.equal(got.length, COUNT, 'the app got every message');
  assert.equal(new Set(got).size, COUNT, 'no message was handed out twice');
  assert.deepEqual(new Set(got), new Set(sent.ids), 'the app got exactly the messages A sent');
  const done = await waitFor(async () => {
    const s = await peerStat(a!, 'b');
    return s?.backlog === 0 ? s : undefined;
  }, { timeoutMs: 60_000, intervalMs: 200, message: "A's backlog to reach 0" });
  assert.equal(done.lastError, null);
  const left = await dumpOf(inboxDir);
  assert.equal(left.filter((r) => r.state !== 'acked').length, 0, 'nothing is left pending in B');
  await verifyClean(a!.dir);
  await verifyClean(b!.dir);

  // How far B's inbox went. Not asserted here: whether concurrent appends of one batch overshoot the
  // limit depends on timing; the sending-side test above checks the limit deterministically.
  sampling = false;
  await sampler;
  t.diagnostic(`B's inbox peaked at ${largest} bytes of segments (maxQueueBytes ${LIMIT}, plus up to ${SEGMENT} of its own preallocation)`);
});

test('a receiver at maxQueueBytes with the default segment size (larger than the limit) drains once its app acked everything', async (t) => {
  const root = await tempDir(t);
  const { a, b } = await makeNodes(root, ['a', 'b'], { compactIntervalMs: 500 });
  const limit = 128 * KiB;
  await setConfig(b!, { maxQueueBytes: limit });
  const [da, db] = daemons(t, [a!, b!]);
  await Promise.all([da!.start(), db!.start()]);

  const COUNT = 300; // about 330 KiB for a 128 KiB inbox, all in B's first (64 MiB) segment
  const sent = await sendLines(a!.dir, 'b', lines('to-b', COUNT));
  assert.equal(sent.code, 0, sent.stderr);
  await waitFor(async () => /ERR_QUEUE_FULL/.test((await peerStat(a!, 'b'))?.lastError ?? ''), { timeoutMs: 60_000, intervalMs: 200, message: "A's forwarder to report B's ERR_QUEUE_FULL" });

  // The app acks whatever arrives; B must then make room, however its segments are sized.
  const tailed = await mqlog(['tail', '--data', b!.dir, '--ack', '--json', '--follow', '--limit', String(COUNT), '--timeout', '30s'], { timeoutMs: 120_000 });
  assert.equal(tailed.code, 0, tailed.stderr);
  const got = jsonLines<{ id: string }>(tailed.stdout).map((m) => m.id);
  const stat = (await mqlog(['stat', '--data', b!.dir, '--json'])).stdout.split('\n').find((l) => l.includes('"inbox/common"')) ?? '';
  assert.equal(
    got.length,
    COUNT,
    `the app got ${got.length} of ${COUNT} messages and no more for 30 s: B's inbox stays full after every message in it was acked (B: ${stat.trim()}; A's backlog ${(await peerStat(a!, 'b'))?.backlog})`,
  );
  assert.equal(new Set(got).size, COUNT);
});
