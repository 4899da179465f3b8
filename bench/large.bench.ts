/**
 * The large-payload benchmark: one 1 GiB streamed body from node A to node B, against what the disk can
 * do, and the memory every process needs for it.
 *
 * 1. Raw limit: 1 MiB blocks appended to a new file, each write followed by fdatasync (the log's own
 *    calls; the same measure as `log`'s raw.append_1mib_fsync), before and after the transfer; the
 *    reference is their mean (this disk's speed drifts).
 * 2. The transfer: two daemons as child processes, `mqlog send --file` on A (streams the file into A's
 *    outbox as 1 MiB chunks, each durable), A's forwarder sends the chunks and then the message, B
 *    stores them and checks the SHA-256 before the message becomes visible. Timed from the start of
 *    `send` to the moment B stored the message (B's counter `mqlog_received_messages_total`, polled every
 *    50 ms). Target: ≥ 0.5× the raw limit. Each byte is written durably twice on the way (A's outbox,
 *    B's inbox), so 0.5× means the pipeline keeps the disk busy. How busy a disk can be kept by two
 *    writers is measured too (two raw runs at once, each to a file of its own): half their sum is the
 *    fastest a transfer between two nodes on this one disk can go, and the transfer is shown against it.
 *    For information: the rate of `send` alone, and of `mqlog tail --body-to` reading the body back out
 *    of B's inbox afterwards.
 * 3. For information, what bounds the transfer when the disk does not: the CPU time (user + system, all
 *    threads, from /proc) that `send`, A and B spent on it, and their sum over the transfer's time (how
 *    many of the machine's cores the three kept busy).
 * 4. Peak RSS (VmHWM, polled every 50 ms, and read once more before each process stops) of the two
 *    daemons, `send` and `tail`. Target: < 200 MiB each.
 *
 * The random source file is written before anything is timed, and every file is removed afterwards.
 */
import { spawn } from 'node:child_process';
import { randomFill, randomBytes } from 'node:crypto';
import { open, rm } from 'node:fs/promises';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { GiB, MiB, formatBytes, freeBytes, writeFully, type BenchContext } from './harness.ts';
import { PeakRssSampler, RECEIVED, cpuSeconds, exitedChildrenCpuSeconds, minus, startPair, syncDir, until } from './pair.ts';

const RATIO_TARGET = 0.5;
const RSS_TARGET_MIB = 200;
const RESERVE_BYTES = 2 * GiB;

interface Plan {
  readonly bodyBytes: number;
  readonly rawMs: number;
}

const FULL: Plan = { bodyBytes: GiB, rawMs: 5_000 };
const QUICK: Plan = { bodyBytes: 128 * MiB, rawMs: 1_000 };

export async function bench(ctx: BenchContext): Promise<void> {
  const plan = ctx.quick ? QUICK : FULL;
  const free = await freeBytes(ctx.dir);
  // The source, A's outbox, B's inbox, tail's copy; the raw runs stop at a quarter of what is free.
  const needed = 4 * plan.bodyBytes + RESERVE_BYTES;
  if (free < needed) {
    ctx.note(`SKIPPED: ${formatBytes(free)} free on ${ctx.dir}, ${formatBytes(needed)} needed (4 × ${formatBytes(plan.bodyBytes)} plus a ${formatBytes(RESERVE_BYTES)} reserve)`);
    return;
  }
  const maxRawBytes = Math.min(8 * GiB, (free - needed) / 4);

  ctx.progress('raw 1 MiB write+fdatasync, appending (before)');
  const rawBefore = await rawAppend(ctx, join(ctx.dir, 'raw-before.dat'), plan.rawMs, maxRawBytes);

  const source = join(ctx.dir, 'body.bin');
  ctx.progress(`writing the ${formatBytes(plan.bodyBytes)} random source file (not timed)`);
  await writeRandomFile(source, plan.bodyBytes);
  await syncDir(ctx.dir);

  const cli = join(ctx.root, 'dist', 'cli', 'main.js');
  const pair = await startPair(ctx, join(ctx.dir, 'pair'));
  const rss = new PeakRssSampler(50);
  let transfer: { totalMs: number; sendMs: number; tailMs: number; cpu: { id: string; label: string; seconds: number | undefined }[] };
  try {
    rss.watch('daemon A', pair.a.pid);
    rss.watch('daemon B', pair.b.pid);
    const base = await pair.b.counter(RECEIVED);
    ctx.progress(`sending ${formatBytes(plan.bodyBytes)} A → B`);
    const cpuBefore = { a: cpuSeconds(pair.a.pid), b: cpuSeconds(pair.b.pid), children: exitedChildrenCpuSeconds() };
    const startedMs = performance.now();
    const sendMs = await runCli(ctx, cli, ['send', '--data', pair.a.node.dir, '--to', 'b', '--file', source], (pid) => rss.watch('send --file', pid)).then(() => performance.now() - startedMs);
    const sendCpu = minus(exitedChildrenCpuSeconds(), cpuBefore.children);
    await until(ctx, async () => (await pair.b.counter(RECEIVED)) > base, 'B to store the message', { intervalMs: 50 });
    const totalMs = performance.now() - startedMs;
    const cpu = [
      { id: 'cpu.send', label: 'send --file', seconds: sendCpu },
      { id: 'cpu.daemon_a', label: 'daemon A', seconds: minus(cpuSeconds(pair.a.pid), cpuBefore.a) },
      { id: 'cpu.daemon_b', label: 'daemon B', seconds: minus(cpuSeconds(pair.b.pid), cpuBefore.b) },
    ];
    ctx.progress('reading it back with tail --body-to');
    const tailStartedMs = performance.now();
    await runCli(ctx, cli, ['tail', '--data', pair.b.node.dir, '--limit', '1', '--ack', '--json', '--body-to', join(ctx.dir, 'out')], (pid) => rss.watch('tail --body-to', pid));
    const tailMs = performance.now() - tailStartedMs;
    transfer = { totalMs, sendMs, tailMs, cpu };
    rss.sample();
  } finally {
    rss.stop();
    await pair.stop();
    await rm(join(ctx.dir, 'out'), { recursive: true, force: true });
    await rm(join(ctx.dir, 'pair'), { recursive: true, force: true });
    await rm(source, { force: true });
    await syncDir(ctx.dir);
  }

  ctx.progress('raw 1 MiB write+fdatasync, appending (after)');
  const rawAfter = await rawAppend(ctx, join(ctx.dir, 'raw-after.dat'), plan.rawMs, maxRawBytes);
  const raw = (rawBefore + rawAfter) / 2;
  // A and B share this disk: what it gives two such writers at once, each with a file of its own.
  ctx.progress('raw 1 MiB write+fdatasync, two writers at once');
  const shared = await Promise.all([0, 1].map((i) => rawAppend(ctx, join(ctx.dir, `raw-shared-${i}.dat`), plan.rawMs, maxRawBytes / 2)));
  const sharedTotal = shared.reduce((a, b) => a + b, 0);
  const mibps = (ms: number): number => plan.bodyBytes / MiB / (ms / 1000);

  ctx.section(`raw limit of this disk: 1 MiB write+fdatasync, appending to a new file, ${plan.rawMs / 1000} s before and after the transfer`);
  ctx.figure({ id: 'raw.append_1mib_fsync', label: '1 MiB write+fdatasync, appending (mean)', value: raw, unit: 'MiB/s', runs: [rawBefore, rawAfter] });
  ctx.figure({ id: 'raw.two_writers', label: 'the same, two writers at once (sum, info)', value: sharedTotal, unit: 'MiB/s', runs: shared });

  ctx.section(`one ${formatBytes(plan.bodyBytes)} body A → B (child-process daemons, loopback)`);
  const rate = mibps(transfer.totalMs);
  ctx.figure({ id: 'transfer.rate', label: 'send --file start → message stored at B', value: rate, unit: 'MiB/s', detail: `(${(transfer.totalMs / 1000).toFixed(1)} s)` });
  ctx.figure({ id: 'transfer.ratio', label: 'transfer MiB/s ÷ raw 1 MiB append MiB/s', value: rate / raw, unit: '×', target: { op: '>=', value: RATIO_TARGET } });
  // Every byte is written durably by A and by B: on one disk, half of what two writers get together is
  // as fast as a transfer can go (1.0 here), whatever the software does.
  ctx.figure({ id: 'transfer.shared_disk_ratio', label: 'transfer MiB/s ÷ half the two writers\' sum (info)', value: rate / (sharedTotal / 2), unit: '×' });
  ctx.figure({ id: 'send.rate', label: 'send --file alone (into A\'s outbox, info)', value: mibps(transfer.sendMs), unit: 'MiB/s', detail: `(${(transfer.sendMs / 1000).toFixed(1)} s)` });
  ctx.figure({ id: 'tail.rate', label: 'tail --body-to afterwards (out of B\'s inbox, info)', value: mibps(transfer.tailMs), unit: 'MiB/s', detail: `(${(transfer.tailMs / 1000).toFixed(1)} s)` });

  // Where the transfer is bound when the disk is not: the CPU each process spent on it, against the
  // two vCPUs' worth of the time it took.
  if (transfer.cpu.every((c) => c.seconds !== undefined)) {
    const cpuTotal = transfer.cpu.reduce((sum, c) => sum + (c.seconds as number), 0);
    ctx.section(`CPU time (user + system, all threads) spent on the transfer, from the start of send to the message stored at B`);
    for (const { id, label, seconds } of transfer.cpu) ctx.figure({ id, label: `${label} (info)`, value: seconds as number, unit: 's' });
    ctx.figure({ id: 'cpu.cores_busy', label: 'the three together ÷ the transfer\'s time: cores kept busy (info)', value: cpuTotal / (transfer.totalMs / 1000), unit: '×', detail: `(of ${availableParallelism()})` });
  }

  ctx.section('peak RSS (VmHWM) of each process');
  const ids: Record<string, string> = { 'daemon A': 'rss.daemon_a', 'daemon B': 'rss.daemon_b', 'send --file': 'rss.send', 'tail --body-to': 'rss.tail' };
  for (const [label, bytes] of rss.results()) {
    ctx.figure({ id: ids[label] ?? `rss.${label}`, label, value: bytes / MiB, unit: 'MiB', target: { op: '<', value: RSS_TARGET_MIB } });
  }
}

/** Runs a CLI command to completion; fails unless it exits 0. */
function runCli(ctx: BenchContext, cli: string, args: string[], onStart: (pid: number | undefined) => void): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [cli, ...args], { cwd: ctx.root, stdio: ['ignore', 'ignore', 'pipe'], signal: ctx.signal });
    onStart(child.pid);
    let stderr = '';
    child.stderr.on('data', (b: Buffer) => (stderr = (stderr + b.toString()).slice(-4000)));
    child.on('error', reject);
    child.on('close', (code, signal) => (code === 0 ? resolve() : reject(new Error(`mqlog ${args[0]} exited with ${code ?? signal}: ${stderr}`))));
  });
}

/** 1 MiB blocks appended to a new file, each followed by fdatasync, for `runMs`; MiB/s. Removed afterwards. */
async function rawAppend(ctx: BenchContext, path: string, runMs: number, maxBytes: number): Promise<number> {
  const block = randomBytes(MiB);
  const handle = await open(path, 'wx+', 0o600);
  try {
    let position = 0;
    const startedMs = performance.now();
    while (performance.now() - startedMs < runMs && position + block.length <= maxBytes) {
      ctx.signal.throwIfAborted();
      await writeFully(handle, block, position);
      await handle.datasync();
      position += block.length;
    }
    return position / MiB / ((performance.now() - startedMs) / 1000);
  } finally {
    await handle.close();
    await rm(path, { force: true });
    await syncDir(ctx.dir);
  }
}

/** `size` random bytes into a new file, 8 MiB at a time, then fsync'd. */
async function writeRandomFile(path: string, size: number): Promise<void> {
  const handle = await open(path, 'wx', 0o600);
  try {
    const piece = Buffer.allocUnsafe(8 * MiB);
    for (let at = 0; at < size; at += piece.length) {
      const n = Math.min(piece.length, size - at);
      await new Promise<void>((resolve, reject) => randomFill(piece, 0, n, (err) => (err === null ? resolve() : reject(err))));
      await writeFully(handle, piece.subarray(0, n), at);
    }
    await handle.sync();
  } finally {
    await handle.close();
  }
}
