/**
 * Streamed bodies end to end, with real daemons on loopback: a 2 GiB file from `send --file` on A to
 * `tail --body-to` on B with flat memory in every process; the same transfer surviving SIGKILLs of the
 * receiver and of the sender daemon without starting over; a chunk damaged on the wire refused and sent
 * again; an urgent message overtaking a 1 GiB transfer; and `dump` of a streamed body.
 *
 * The random source files are generated here (written in pieces, never whole in memory) and removed
 * afterwards; the 2 GiB one is shared by the first two tests. Traffic between A and B goes through a
 * TCP proxy (test/helpers/proxy.ts) where a test needs to count or damage it.
 */
import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test, type TestContext } from 'node:test';
import { openNode } from '../../src/daemon/node.js';
import { CLI, defer, exited, jsonLines, mqlog, spawnChild, tempDir, waitFor } from '../helpers/index.js';
import { daemons, makeNodes, type DaemonProcess, type NodeSpec } from '../helpers/daemon.js';
import { GiB, MiB, PeakRss, freeBytes, segmentBytes, sha256File, sha256Of, writeRandomFile } from '../helpers/large.js';
import { TcpProxy, type BodyTap } from '../helpers/proxy.js';

const BIG_BYTES = 2 * GiB;
const RSS_LIMIT_BYTES = 200 * MiB;
/** Room left on the disk on top of what a test writes. */
const SLACK_BYTES = 1 * GiB;

// ---------------------------------------------------------------------------------------------------
// The shared 2 GiB source file

interface Source {
  readonly path: string;
  readonly size: number;
  readonly sha256: string;
}

let bigSource: Promise<Source> | undefined;
let bigSourceDir: string | undefined;

/** The 2 GiB random file, made on first use, removed after the last test of this file. */
function big(): Promise<Source> {
  bigSource ??= (async () => {
    // The file itself, then A's outbox, B's inbox and the received copy of the first test.
    await requireFree(tmpdir(), 4 * BIG_BYTES, 'the 2 GiB source file and one transfer of it (A outbox, B inbox, received copy)');
    bigSourceDir = await mkdtemp(join(tmpdir(), 'mqlog-large-source-'));
    const path = join(bigSourceDir, 'big.bin');
    return { path, size: BIG_BYTES, sha256: await writeRandomFile(path, BIG_BYTES) };
  })();
  return bigSource;
}

after(async () => {
  if (bigSourceDir !== undefined) await rm(bigSourceDir, { recursive: true, force: true });
});

async function requireFree(dir: string, bytes: number, what: string): Promise<void> {
  const free = await freeBytes(dir);
  assert.ok(
    free >= bytes + SLACK_BYTES,
    `not enough free disk space on the file system of ${dir}: ${(free / GiB).toFixed(1)} GiB free, ` +
      `${((bytes + SLACK_BYTES) / GiB).toFixed(1)} GiB needed for ${what} (plus ${SLACK_BYTES / GiB} GiB to spare)`,
  );
}

// ---------------------------------------------------------------------------------------------------
// Helpers

/** Two nodes; with `proxy`, A reaches B through a TcpProxy (A's `peers.b.url` points at it). */
async function pair(t: TestContext, root: string, options: { proxy?: boolean; tap?: BodyTap; config?: Record<string, unknown> } = {}): Promise<{ a: NodeSpec; b: NodeSpec; da: DaemonProcess; db: DaemonProcess; proxy: TcpProxy | undefined }> {
  const { a, b } = await makeNodes(root, ['a', 'b'], options.config ?? {});
  let proxy: TcpProxy | undefined;
  if (options.proxy === true || options.tap !== undefined) {
    const started = await TcpProxy.start(b!.port, options.tap);
    proxy = started;
    defer(t, () => started.close());
    const configPath = join(a!.dir, 'mqlog.json');
    const config = JSON.parse(await readFile(configPath, 'utf8')) as { peers: Record<string, { url: string }> };
    config.peers.b = { url: started.url };
    await writeFile(configPath, JSON.stringify(config));
  }
  const [da, db] = daemons(t, [a!, b!]);
  return { a: a!, b: b!, da: da!, db: db!, proxy };
}

/** Spawns `mqlog <args>` and collects its output. */
function spawnMqlog(t: TestContext, args: string[]): { child: ChildProcess; output: () => { stdout: string; stderr: string } } {
  const child = spawnChild(t, process.execPath, [CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout?.on('data', (b: Buffer) => (stdout += b.toString()));
  child.stderr?.on('data', (b: Buffer) => (stderr += b.toString()));
  return { child, output: () => ({ stdout, stderr }) };
}

/** Waits for a spawned mqlog command and returns its stdout; fails with its stderr unless it exits 0. */
async function succeeded(name: string, run: ReturnType<typeof spawnMqlog>): Promise<string> {
  const { code, signal } = await exited(run.child);
  const { stdout, stderr } = run.output();
  assert.equal(code, 0, `${name} exited with ${code ?? signal}: ${stderr}`);
  return stdout;
}

function mib(bytes: number): string {
  return `${(bytes / MiB).toFixed(1)} MiB`;
}

function seconds(fromMs: number): string {
  return `${((performance.now() - fromMs) / 1000).toFixed(1)} s`;
}

/** The count of messages a daemon stored in its inboxes (GET /metrics, `mqlog_received_messages_total`). */
async function receivedCount(node: NodeSpec): Promise<number> {
  const text = await (await fetch(`${node.url}/metrics`)).text();
  return text
    .split('\n')
    .filter((line) => line.startsWith('mqlog_received_messages_total{'))
    .reduce((n, line) => n + Number(line.slice(line.lastIndexOf(' ') + 1)), 0);
}

/** Consumes the one message that arrives on `channel` of B (library, in this process), hashes and acks it. */
async function receiveOne(t: TestContext, dir: string, channel = 'common'): Promise<{ id: string; sha256: string; size: number; declared: { size: number; sha256: string } | undefined }> {
  const node = await openNode({ data: dir });
  defer(t, () => node.close());
  for await (const message of node.tail({ channel, follow: true, limit: 1, idleTimeoutMs: 600_000 })) {
    const { sha256, size } = await sha256Of(message.bodyStream());
    await message.ack();
    return { id: message.id, sha256, size, declared: message.streamed === undefined ? undefined : { size: message.streamed.size, sha256: message.streamed.sha256 } };
  }
  throw new Error(`no message arrived on ${channel}`);
}

/** After the one message was acked: nothing else is ready on the channel (it was delivered once). */
async function assertNothingMore(dir: string, channel = 'common'): Promise<void> {
  const node = await openNode({ data: dir });
  try {
    const more: string[] = [];
    for await (const message of node.tail({ channel, limit: 10 })) more.push(message.id);
    assert.deepEqual(more, [], `nothing else is delivered on ${channel}`);
  } finally {
    await node.close();
  }
}

// ---------------------------------------------------------------------------------------------------
// The tests

test('a 2 GiB random file goes A → B → tail --body-to with an identical SHA-256, and no mqlog process peaks above 200 MiB of RSS', async (t) => {
  const started = performance.now();
  const source = await big();
  t.diagnostic(`source ready (${mib(source.size)}) after ${seconds(started)}`);
  const root = await tempDir(t, 'mqlog-large-');
  await requireFree(root, 3 * source.size, "A's outbox, B's inbox and the received copy");
  const { a, b, da, db } = await pair(t, root);
  const rss = new PeakRss(50);
  defer(t, () => rss.stop());
  await Promise.all([da.start(), db.start()]);
  rss.watch('daemon a', da.child?.pid);
  rss.watch('daemon b', db.child?.pid);

  const transferStarted = performance.now();
  const send = spawnMqlog(t, ['send', '--data', a.dir, '--to', 'b', '--file', source.path]);
  rss.watch('send --file', send.child.pid);
  const id = (await succeeded('send --file', send)).trim();
  t.diagnostic(`send --file done after ${seconds(transferStarted)}`);
  // B counts the message once every chunk is stored and the SHA-256 checked, when it becomes visible.
  await waitFor(async () => (await receivedCount(b)) >= 1, { timeoutMs: 600_000, intervalMs: 100, message: 'B to store the message' });
  t.diagnostic(`stored at B after ${seconds(transferStarted)} (${(source.size / MiB / ((performance.now() - transferStarted) / 1000)).toFixed(0)} MiB/s)`);

  // Read out as one would once the file is there: a consumer started now.
  const out = join(root, 'received');
  const tailStarted = performance.now();
  const tail = spawnMqlog(t, ['tail', '--data', b.dir, '--limit', '1', '--ack', '--json', '--body-to', out]);
  rss.watch('tail --body-to', tail.child.pid);
  const lines = jsonLines(await succeeded('tail --body-to', tail));
  t.diagnostic(`tail --body-to took ${seconds(tailStarted)}`);
  assert.equal(lines.length, 1, 'one message tailed');
  const line = lines[0]!;
  assert.equal(line.id, id);
  assert.equal(line.size, source.size);
  assert.equal(line.sha256, source.sha256, 'the declared SHA-256 is that of the file');
  assert.ok(!('body' in line) && !('bodyBase64' in line), 'with --body-to the JSON line has no body');
  const received = await sha256File(join(out, id));
  assert.deepEqual(received, { sha256: source.sha256, size: source.size }, 'the received file is the sent one');

  // The daemons' high-water marks, read right before they stop (they must stop cleanly, too).
  rss.sample();
  assert.equal(await da.stop(), 0, 'daemon a exits 0 on SIGTERM');
  assert.equal(await db.stop(), 0, 'daemon b exits 0 on SIGTERM');
  const peaks = rss.results();
  t.diagnostic(`peak RSS (VmHWM): ${[...peaks].map(([label, bytes]) => `${label} ${mib(bytes)}`).join(', ')}`);
  for (const [label, bytes] of peaks) assert.ok(bytes > 0 && bytes < RSS_LIMIT_BYTES, `${label}: peak RSS ${mib(bytes)} must stay below ${mib(RSS_LIMIT_BYTES)}`);
  t.diagnostic(`test took ${seconds(started)}`);
});

test('the 2 GiB transfer survives SIGKILL of the receiver at 50 % and of the sender daemon later, resending well under the full size after the restart', async (t) => {
  const started = performance.now();
  const source = await big();
  const root = await tempDir(t, 'mqlog-large-');
  await requireFree(root, 2 * source.size, "A's outbox and B's inbox");
  const { a, b, da, db, proxy } = await pair(t, root, { proxy: true });
  await Promise.all([da.start(), db.start()]);
  const inbox = join(b.dir, 'inbox');

  const send = spawnMqlog(t, ['send', '--data', a.dir, '--to', 'b', '--file', source.path]);
  await waitFor(async () => (await segmentBytes(inbox)) >= source.size / 2, { timeoutMs: 180_000, intervalMs: 20, message: "B's inbox to hold half of the body" });
  const atKill = await segmentBytes(inbox);
  await db.kill();
  t.diagnostic(`B SIGKILLed with ${mib(atKill)} of chunks in its inbox (${seconds(started)}); ${mib(proxy!.bytesUp)} through the proxy so far`);
  // Everything A sends from here on counts, its attempts while B is down included.
  const bytesAtRestart = proxy!.bytesUp;
  await db.start();

  await waitFor(async () => (await segmentBytes(inbox)) >= source.size * 0.75, { timeoutMs: 180_000, intervalMs: 20, message: "B's inbox to hold three quarters of the body" });
  const atKillA = await segmentBytes(inbox);
  await da.kill();
  t.diagnostic(`A SIGKILLed with ${mib(atKillA)} in B's inbox (${seconds(started)})`);
  await da.start();

  const id = (await succeeded('send --file', send)).trim();
  const got = await receiveOne(t, b.dir);
  t.diagnostic(`delivered after ${seconds(started)}`);
  assert.equal(got.id, id);
  assert.deepEqual({ sha256: got.sha256, size: got.size }, { sha256: source.sha256, size: source.size }, 'the delivered body is the file');
  assert.deepEqual(got.declared, { sha256: source.sha256, size: source.size });
  await assertNothingMore(b.dir);

  const afterRestart = proxy!.bytesUp - bytesAtRestart;
  t.diagnostic(`bytes A sent after B's restart: ${mib(afterRestart)} = ${((afterRestart / source.size) * 100).toFixed(1)} % of the body (${mib(proxy!.bytesUp)} in all = ${((proxy!.bytesUp / source.size) * 100).toFixed(1)} %)`);
  assert.ok(afterRestart < source.size * 0.6, `after the restart A sent ${mib(afterRestart)}, which must be well under the body's ${mib(source.size)} (< 60 %): it resumes, it does not start over`);
  assert.ok(proxy!.bytesUp < source.size * 1.1, `in all A sent ${mib(proxy!.bytesUp)} for a body of ${mib(source.size)}`);
  assert.match(db.output, /listening on/, 'B came back');

  // Verified with the daemons stopped (verify is not safe against compaction deleting segments under it).
  assert.equal(await da.stop(), 0, 'daemon a exits 0 on SIGTERM');
  assert.equal(await db.stop(), 0, 'daemon b exits 0 on SIGTERM');
  const verified = await Promise.all([a, b].map((node) => mqlog(['verify', node.dir], { timeoutMs: 300_000 })));
  for (const [i, verify] of verified.entries()) assert.equal(verify.code, 0, `verify ${[a, b][i]!.name}: ${verify.stdout}${verify.stderr}`);
  t.diagnostic(`test took ${seconds(started)}`);
});

test('a chunk damaged on the wire is refused with 400 ERR_CORRUPT_FRAME, sent again, and the body is delivered once and intact', async (t) => {
  const started = performance.now();
  const root = await tempDir(t, 'mqlog-large-');
  const size = 24 * MiB;
  const path = join(root, 'body.bin');
  const sha256 = await writeRandomFile(path, size);

  // Damage one byte 512 KiB into the first request large enough to carry a chunk: that is inside the data
  // of its first frame (its chunk data starts a few hundred bytes in and runs for 1 MiB).
  const FLIP_AT = 512 * 1024 + 4321;
  let damaged: { index: number; contentLength: number } | undefined;
  /** The first 4 KiB of each request body until one was damaged (to check where the damage landed). */
  const starts = new Map<number, Buffer>();
  const tap: BodyTap = (request, offset, piece) => {
    if (request.contentLength < 2 * MiB || (damaged !== undefined && damaged.index !== request.index)) return;
    const start = starts.get(request.index) ?? Buffer.alloc(0);
    if (offset === start.length && start.length < 4096) starts.set(request.index, Buffer.concat([start, piece.subarray(0, 4096 - start.length)]));
    if (damaged === undefined && FLIP_AT >= offset && FLIP_AT < offset + piece.length) {
      piece[FLIP_AT - offset] = (piece[FLIP_AT - offset] as number) ^ 0x5a;
      damaged = { index: request.index, contentLength: request.contentLength };
    }
  };
  const { a, b, da, db, proxy } = await pair(t, root, { tap });
  await Promise.all([da.start(), db.start()]);

  const send = await mqlog(['send', '--data', a.dir, '--to', 'b', '--file', path]);
  assert.equal(send.code, 0, send.stderr);
  const id = send.stdout.trim();
  const got = await receiveOne(t, b.dir);
  assert.equal(got.id, id);
  assert.deepEqual({ sha256: got.sha256, size: got.size }, { sha256, size }, 'the delivered body is the file, not the damaged bytes');
  await assertNothingMore(b.dir);

  // The damage landed inside a BODY_CHUNK frame's data (envelope: "MQLB", u32 header length at 8, 16-byte prefix; record:
  // u16 stream, u32 frame bytes; frame: magic, version, type 2, …; see spec/http-protocol.md §3).
  assert.ok(damaged !== undefined, 'the proxy damaged a request');
  const bodyStart = starts.get(damaged.index) ?? Buffer.alloc(0);
  assert.equal(bodyStart.length, 4096);
  assert.equal(bodyStart.toString('latin1', 0, 4), 'MQLB');
  const record = 16 + bodyStart.readUInt32LE(8);
  const frameBytes = bodyStart.readUInt32LE(record + 2);
  assert.equal(bodyStart[record + 6 + 2], 2, 'the first frame of the damaged request is a BODY_CHUNK');
  assert.ok(FLIP_AT > record + 6 + 20 + 64 && FLIP_AT < record + 6 + frameBytes, 'the damaged byte is inside that chunk');

  // B refused it as corrupt (seen on the wire)...
  assert.match(proxy!.answers, /HTTP\/1\.1 400[^\n]*\r\n[\s\S]*?"code":"ERR_CORRUPT_FRAME"/, 'B answered 400 ERR_CORRUPT_FRAME');
  // ...A retried, and dead-lettered nothing.
  const aLog = jsonLines(da.output.split('\n').filter((l) => l.startsWith('{')).join('\n'));
  assert.ok(aLog.some((e) => e.event === 'forward_failed' && /ERR_CORRUPT_FRAME/.test(String(e.error))), `A's log shows the failed attempt: ${da.output.slice(-2000)}`);
  assert.ok(!aLog.some((e) => e.event === 'dead_lettered'), 'A dead-lettered nothing');
  const dumpA = await mqlog(['dump', a.dir, '--json']);
  assert.equal(dumpA.code, 0, dumpA.stderr);
  assert.deepEqual(jsonLines(dumpA.stdout).filter((r) => r.queue === 'outbox-dead'), [], "A's outbox-dead is empty");
  // Exactly one copy in B's inbox, acked.
  const dumpB = await mqlog(['dump', b.dir, '--json']);
  assert.equal(dumpB.code, 0, dumpB.stderr);
  const copies = jsonLines(dumpB.stdout).filter((r) => r.id === id);
  assert.equal(copies.length, 1, 'one copy in B');
  assert.equal(copies[0]!.state, 'acked');
  // B's own log names the refusal.
  assert.match(db.output, /ERR_CORRUPT_FRAME/, `B's log shows the 400 ERR_CORRUPT_FRAME rejection; B's log was:\n${db.output.slice(-3000)}`);
  t.diagnostic(`test took ${seconds(started)}`);
});

test('while a 1 GiB body is being forwarded, a small priority-9 message to the same peer reaches its inbox within 1 s', async (t) => {
  const started = performance.now();
  const root = await tempDir(t, 'mqlog-large-');
  const size = 1 * GiB;
  await requireFree(root, 3 * size, "the 1 GiB file, A's outbox and B's inbox");
  const path = join(root, 'body.bin');
  await writeRandomFile(path, size);
  const { a, b, da, db } = await pair(t, root);
  await Promise.all([da.start(), db.start()]);

  // The urgent channel's consumer waits from the start (library, in this process).
  const nodeB = await openNode({ data: b.dir });
  defer(t, () => nodeB.close());
  const urgent = nodeB.tail({ channel: 'urgent', follow: true, limit: 2, idleTimeoutMs: 600_000 })[Symbol.asyncIterator]();
  const nodeA = await openNode({ data: a.dir });
  defer(t, () => nodeA.close());
  // Warm-up: the first send claims a writer slot at A, the first message of the channel creates its
  // inbox and writer at B. What is measured is overtaking, not setting a channel up.
  await nodeA.send('b', 'warm-up', { priority: 9, channel: 'urgent' });
  const warmedUp = await urgent.next();
  await warmedUp.value?.ack();
  const arrival = urgent.next();

  const send = spawnMqlog(t, ['send', '--data', a.dir, '--to', 'b', '--file', path]);
  const common = join(b.dir, 'inbox');
  await waitFor(async () => (await segmentBytes(common)) >= size / 4, { timeoutMs: 120_000, intervalMs: 20, message: "B's inbox to hold a quarter of the body" });
  const before = await segmentBytes(common);

  const sentAt = performance.now();
  const id = await nodeA.send('b', 'urgent', { priority: 9, channel: 'urgent' });
  const sendMs = performance.now() - sentAt;
  const message = await arrival;
  const latencyMs = performance.now() - sentAt;
  const atArrival = await segmentBytes(common);
  assert.equal(message.done, false);
  assert.equal(message.value?.id, id);
  assert.equal(message.value?.body.toString(), 'urgent');
  await message.value?.ack();
  t.diagnostic(`priority-9 message arrived ${latencyMs.toFixed(0)} ms after send() began (send() took ${sendMs.toFixed(0)} ms), with ${mib(before)} → ${mib(atArrival)} of the 1 GiB body in B's inbox`);
  assert.ok(atArrival < size, 'the 1 GiB transfer was still running when the urgent message arrived');
  assert.ok(latencyMs < 1000, `the priority-9 message took ${latencyMs.toFixed(0)} ms (limit 1000 ms)`);
  await urgent.return(undefined);
  // The large transfer is not waited for: the test only needed it in flight.
  send.child.kill('SIGKILL');
  await exited(send.child);
  t.diagnostic(`test took ${seconds(started)}`);
});

test('dump shows a streamed body as size and sha256 without a body field, and dump --body-to extracts it intact', async (t) => {
  const started = performance.now();
  const root = await tempDir(t, 'mqlog-large-');
  const size = 40 * MiB + 12345;
  const path = join(root, 'body.bin');
  const sha256 = await writeRandomFile(path, size);
  // Small segments: the chunks span several segment files.
  const { a, b, da, db } = await pair(t, root, { config: { segmentBytes: 16 * MiB } });

  // Sent while no daemon runs: the outbox copy can be dumped before anything forwards it.
  const send = await mqlog(['send', '--data', a.dir, '--to', 'b', '--file', path]);
  assert.equal(send.code, 0, send.stderr);
  const id = send.stdout.trim();
  const check = (record: Record<string, unknown> | undefined, where: string): void => {
    assert.ok(record !== undefined, `${where} has the message`);
    assert.equal(record.size, size, `${where}: size`);
    assert.equal(record.sha256, sha256, `${where}: sha256`);
    assert.ok(!('body' in record) && !('bodyBase64' in record), `${where}: no body field`);
  };
  const outbox = await mqlog(['dump', a.dir, '--json']);
  assert.equal(outbox.code, 0, outbox.stderr);
  const outboxRecords = jsonLines(outbox.stdout);
  assert.equal(outboxRecords.length, 1, 'chunks are not shown as messages');
  check(outboxRecords.find((r) => r.id === id && r.queue === 'outbox'), "A's outbox");
  const plain = await mqlog(['dump', a.dir]);
  assert.equal(plain.code, 0, plain.stderr);
  assert.match(plain.stdout, new RegExp(`${id}.*<${size} bytes streamed, sha256 ${sha256}>`));
  assert.equal(plain.stdout.split('\n')[0], 'QUEUE STREAM@OFFSET ID TIME CHANNEL PRIORITY FROM->TO STATE SIZE BODY', 'a header row names the columns');

  await Promise.all([da.start(), db.start()]);
  const inboxRecord = await waitFor(async () => {
    const result = await mqlog(['dump', b.dir, '--json']);
    return jsonLines(result.stdout).find((r) => r.id === id && String(r.queue).startsWith('inbox/'));
  }, { timeoutMs: 60_000, intervalMs: 100, message: "the message in B's inbox" });
  check(inboxRecord, "B's inbox");
  assert.equal(inboxRecord.state, 'pending');

  const extracted = join(root, 'extracted');
  const dump = spawnMqlog(t, ['dump', b.dir, '--json', '--body-to', extracted]);
  const rss = new PeakRss(20);
  defer(t, () => rss.stop());
  rss.watch('dump --body-to', dump.child.pid);
  const records = jsonLines(await succeeded('dump --body-to', dump));
  check(records.find((r) => r.id === id), 'dump --body-to');
  assert.deepEqual(await readdir(extracted), [id], 'one body extracted, named by the id');
  assert.deepEqual(await sha256File(join(extracted, id)), { sha256, size }, 'the extracted body is the file');
  t.diagnostic(`dump --body-to peak RSS ${mib(rss.results().get('dump --body-to') ?? 0)}; test took ${seconds(started)}`);
});
