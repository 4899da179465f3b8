/**
 * A really full disk (spec/log-format.md §4.4, spec/errors.md ERR_DISK_FULL): node directories live on a
 * small tmpfs mounted for the test. Appends that do not fit fail with ERR_DISK_FULL and leave nothing
 * behind; everything acknowledged before stays; once space is back, the same processes append again.
 * A receiver whose disk is full answers 507 and its senders keep their backlog until it has room.
 *
 * Needs root (mount). Where mounting is impossible the tests fail, naming the reason: they must not pass
 * by not running.
 */
import assert from 'node:assert/strict';
import { mkdir, rm, statfs, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import { DaemonProcess, freePort, type NodeSpec } from '../helpers/daemon.ts';
import { fillUp, smallDisk } from '../helpers/disk.ts';
import { defer, jsonLines, mqlog, tempDir, waitFor } from '../helpers/index.ts';

const KiB = 1024;
const MiB = 1024 * KiB;
const NOWHERE = 'http://127.0.0.1:9';

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

async function freeBytes(dir: string): Promise<number> {
  const s = await statfs(dir);
  return s.bavail * s.bsize;
}

/** Two node specs whose directories may live on different file systems, each naming the other as a peer. */
async function pair(aDir: string, bDir: string, extraA: Record<string, unknown> = {}, extraB: Record<string, unknown> = {}): Promise<[NodeSpec, NodeSpec]> {
  const [pa, pb] = [await freePort(), await freePort()];
  const a: NodeSpec = { name: 'a', dir: aDir, port: pa, url: `http://127.0.0.1:${pa}` };
  const b: NodeSpec = { name: 'b', dir: bDir, port: pb, url: `http://127.0.0.1:${pb}` };
  for (const [node, other, extra] of [[a, b, extraA], [b, a, extraB]] as const) {
    await mkdir(node.dir, { recursive: true });
    await writeFile(join(node.dir, 'mqlog.json'), JSON.stringify({ name: node.name, listen: `127.0.0.1:${node.port}`, peers: { [other.name]: { url: other.url } }, ...extra }));
  }
  return [a, b];
}

function startDaemon(t: TestContext, node: NodeSpec): DaemonProcess {
  const daemon = new DaemonProcess(node);
  defer(t, () => daemon.kill());
  return daemon;
}

function lines(tag: string, n: number, bytes = KiB): string[] {
  return Array.from({ length: n }, (_, i) => `${tag}-${String(i).padStart(6, '0')}-`.padEnd(bytes, 'x'));
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

async function verifyClean(dir: string): Promise<void> {
  const result = await mqlog(['verify', dir]);
  assert.equal(result.code, 0, `verify ${dir}: ${result.stdout}${result.stderr}`);
}

/** `send --lines`; returns the exit code, the ids printed and stderr. */
async function sendLines(dir: string, to: string, input: string[]): Promise<{ code: number | null; ids: string[]; stderr: string }> {
  const result = await mqlog(['send', '--data', dir, '--to', to, '--lines'], { input: `${input.join('\n')}\n` });
  return { code: result.code, ids: result.stdout.split('\n').filter((l) => l.length > 0), stderr: result.stderr };
}

/** Asserts that `dump` of `dir` holds every id of `ids` exactly once, in queues starting with `queue`. */
async function assertHoldsOnce(dir: string, queue: string, ids: Iterable<string>, what: string): Promise<DumpLine[]> {
  const records = (await dumpOf(dir)).filter((r) => r.queue.startsWith(queue));
  const count = new Map<string, number>();
  for (const r of records) count.set(r.id, (count.get(r.id) ?? 0) + 1);
  for (const id of ids) assert.equal(count.get(id), 1, `${what}: ${id} is in ${queue} ${count.get(id) ?? 0} times`);
  return records;
}

test('send --lines on a full disk fails with ERR_DISK_FULL, keeps every id it printed, and sends again once space is freed', async (t) => {
  const disk = await smallDisk(t, 8 * MiB);
  const dir = join(disk, 'node');
  await mkdir(dir);
  await writeFile(join(dir, 'mqlog.json'), JSON.stringify({ name: 'a' }));
  await writeFile(join(disk, 'filler'), Buffer.alloc(MiB));

  const input = lines('fill', 12_000); // 12 MiB of bodies for 7 MiB of room
  const first = await sendLines(dir, NOWHERE, input);
  assert.equal(first.code, 1, `send exited ${first.code}: ${first.stderr}`);
  assert.match(first.stderr, /^mqlog: ERR_DISK_FULL: /m);
  assert.ok(first.ids.length > 1000 && first.ids.length < input.length, `send printed ${first.ids.length} ids before the disk was full`);
  const stored = await assertHoldsOnce(dir, 'outbox', first.ids, 'after the disk filled');
  const byId = new Map(stored.map((r) => [r.id, r.body]));
  // The ids printed are those of the lines sent, in input order; a line that was not sent is named on
  // stderr (lines in flight when the disk filled may fail while later ones still fit).
  const failedLines = new Set([...first.stderr.matchAll(/line (\d+) was not sent/g)].map((m) => Number(m[1])));
  const sentLines = input.map((_, i) => i).filter((i) => !failedLines.has(i + 1)).slice(0, first.ids.length);
  first.ids.forEach((id, i) => assert.equal(byId.get(id), input[sentLines[i] as number], `the message of line ${(sentLines[i] as number) + 1} has its body`));
  await verifyClean(dir);

  // Still full (the last free pages taken too): a send fails the same way and adds nothing. (A tiny
  // message may still fit in the part of a page the segment file already has, so this one is 64 KiB.)
  await fillUp(join(disk, 'filler-2'));
  const one = await mqlog(['send', '--data', dir, '--to', NOWHERE, 'one more '.padEnd(64 * KiB, 'x')]);
  assert.equal(one.code, 1);
  assert.match(one.stderr, /^mqlog: ERR_DISK_FULL: /m);
  assert.equal(one.stdout, '');

  await rm(join(disk, 'filler'));
  await rm(join(disk, 'filler-2'));
  const again = await sendLines(dir, NOWHERE, lines('again', 100));
  assert.equal(again.code, 0, again.stderr);
  assert.equal(again.ids.length, 100);
  await assertHoldsOnce(dir, 'outbox', [...first.ids, ...again.ids], 'after space came back');
  await verifyClean(dir);
});

test("a running daemon on a full disk refuses appends with ERR_DISK_FULL and takes them again once space is back, without a restart", async (t) => {
  const disk = await smallDisk(t, 8 * MiB);
  const elsewhere = await tempDir(t);
  // A compacts nothing, so that only removing the filler frees space.
  const [a, b] = await pair(join(disk, 'a'), join(elsewhere, 'b'), { compactIntervalMs: 0 });
  const da = startDaemon(t, a);
  const db = startDaemon(t, b);
  await da.start();
  const pid = da.child?.pid;
  // 3 MiB, so that once it is removed there is room for the writers' 1 MiB zero-filled preallocation too.
  await writeFile(join(disk, 'filler'), Buffer.alloc(3 * MiB));

  // A's outbox fills the disk while B is down; then the last bytes are taken by a second filler.
  const filled = await sendLines(a.dir, 'b', lines('a2b', 12_000));
  assert.equal(filled.code, 1, filled.stderr);
  assert.match(filled.stderr, /^mqlog: ERR_DISK_FULL: /m);
  await fillUp(join(disk, 'filler-2'));
  const refused = await mqlog(['send', '--data', a.dir, '--to', 'b', 'while full '.padEnd(64 * KiB, 'x')]);
  assert.equal(refused.code, 1);
  assert.match(refused.stderr, /ERR_DISK_FULL/);

  // B comes up and sends to A: A's receiver cannot store them and answers 507 ERR_DISK_FULL.
  await db.start();
  const toA = await sendLines(b.dir, 'a', lines('b2a', 20));
  assert.equal(toA.code, 0, toA.stderr);
  const failing = await waitFor(async () => {
    const s = await peerStat(b, 'a');
    return s?.lastError != null && /507/.test(s.lastError) && /ERR_DISK_FULL/.test(s.lastError) ? s : undefined;
  }, { timeoutMs: 60_000, intervalMs: 200, message: "B's forwarder to report A's 507 ERR_DISK_FULL" });
  assert.equal(failing.backlog, 20, 'B keeps all 20 messages for A');
  assert.ok(da.running, "A's daemon survives its full disk");
  await verifyClean(a.dir);

  await rm(join(disk, 'filler'));
  await rm(join(disk, 'filler-2'));
  // The same daemon (no restart) takes B's messages and forwards A's, old and new.
  const more = await sendLines(a.dir, 'b', lines('a2b-after', 50));
  assert.equal(more.code, 0, more.stderr);
  await waitFor(async () => (await peerStat(b, 'a'))?.backlog === 0, { timeoutMs: 120_000, intervalMs: 250, message: "B's backlog for A to drain into A's inbox" });
  await waitFor(async () => (await peerStat(a, 'b'))?.backlog === 0, { timeoutMs: 120_000, intervalMs: 250, message: "A's backlog for B to drain" });
  assert.ok(da.running && da.child?.pid === pid, "A's daemon is the same process");
  assert.equal((await assertHoldsOnce(a.dir, 'inbox/', toA.ids, "A's inbox")).length, toA.ids.length, 'A holds nothing else');
  await assertHoldsOnce(b.dir, 'inbox/', [...filled.ids, ...more.ids], "B's inbox");
  await verifyClean(a.dir);
  await verifyClean(b.dir);
});

test('a receiver whose disk is full answers 507; the sender keeps its backlog and it drains exactly once when space is back', async (t) => {
  const disk = await smallDisk(t, 8 * MiB);
  const elsewhere = await tempDir(t);
  const [a, b] = await pair(join(elsewhere, 'a'), join(disk, 'b'), {}, { segmentBytes: 256 * KiB });
  const da = startDaemon(t, a);
  const db = startDaemon(t, b);
  await Promise.all([da.start(), db.start()]);
  // Leave B about 2 MiB; A sends about 4.5 MiB.
  await writeFile(join(disk, 'filler'), Buffer.alloc(Math.max(0, (await freeBytes(disk)) - 2 * MiB)));

  const sent = await sendLines(a.dir, 'b', lines('big', 4000));
  assert.equal(sent.code, 0, sent.stderr);
  const stalled = await waitFor(async () => {
    const s = await peerStat(a, 'b');
    return s?.lastError != null && /507/.test(s.lastError) && /ERR_DISK_FULL/.test(s.lastError) ? s : undefined;
  }, { timeoutMs: 60_000, intervalMs: 200, message: "A's forwarder to report B's 507 ERR_DISK_FULL" });
  assert.ok(stalled.backlog > 0 && stalled.backlog < 4000, `A keeps a backlog (${stalled.backlog})`);
  assert.ok(db.running, "B's daemon survives its full disk");
  await verifyClean(b.dir);

  await rm(join(disk, 'filler'));
  await waitFor(async () => (await peerStat(a, 'b'))?.backlog === 0, { timeoutMs: 120_000, intervalMs: 250, message: "A's backlog to drain once B has room" });
  const inB = await assertHoldsOnce(b.dir, 'inbox/', sent.ids, "B's inbox");
  assert.equal(inB.length, sent.ids.length, 'B holds each message once and nothing else');
  assert.equal((await peerStat(a, 'b'))?.lastError, null, 'the error is cleared');
  await verifyClean(b.dir);
  await verifyClean(a.dir);
});
