/**
 * The log benchmark: how close durable appends come to what the disk can do, and whether memory stays
 * flat while they run. All figures come from one run on one disk (the scratch directory's).
 *
 * 1. Raw limits, with node:fs/promises FileHandle write + datasync, the calls the log makes: 1 MiB blocks
 *    appended to a new file (MiB/s), 1 KiB blocks appended to a new file (write+fdatasync pairs/s), a
 *    naive loop that appends 64 × 1 KiB with one write each and then fdatasyncs (1 KiB writes/s: what 64
 *    callers would get from a log without group commit into one write), and, for information, 1 KiB and
 *    64 KiB blocks overwriting a zero-filled file.
 * 2. Durable append through the library, `openNode({ data }).send(url, body)` (resolves after fdatasync),
 *    with 1 caller (÷ raw 1 KiB write+fdatasync pairs) and with 64 concurrent callers (÷ the naive 64
 *    writes per fdatasync; and, for information, body bandwidth ÷ raw 1 MiB bandwidth).
 *    1 and 2 run in rounds (each kind once per round); every figure is the median over the rounds.
 * 3. RSS before and after 1 M appends by 64 callers, in a child process started with --expose-gc so that
 *    both readings follow a full GC.
 *
 * The library is imported from dist/ (`npm run bench` builds first): the figures are those of the
 * JavaScript that ships. This file is also the RSS child's entry point (see the end of the file).
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { open, readdir, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { openNode, type MqlogNode } from '../dist/daemon/node.js';
import { GiB, KiB, MiB, formatBytes, freeBytes, median, runsAsChild, writeFully, type BenchContext } from './harness.ts';

/** The discard port: a valid URL destination; send() never touches the network, so nothing listens. */
const DESTINATION = 'http://127.0.0.1:9';
const BODY_BYTES = KiB;
const RAW_BLOCK_BYTES = MiB;
const CONCURRENCY_HIGH = 64;

const ONE_CALLER_TARGET = 0.9;
const MANY_CALLERS_TARGET = 1.0;
const RSS_GROWTH_TARGET_MIB = 50;

/** Left free on the disk whatever the data sets want. */
const RESERVE_BYTES = 2 * GiB;
/** A stream's last segment may hold up to a segment's worth of zero-filled tail. */
const SEGMENT_SLACK_BYTES = 2 * 64 * MiB;
/** Assumed until a run has measured it: a 1 KiB body plus header and metadata. */
const FALLBACK_DISK_BYTES_PER_MESSAGE = 1300;

interface Plan {
  /** Rounds, that is timed runs per figure; the figure is their median. */
  readonly runs: number;
  readonly runMs: number;
  /** Untimed sends before each timed library run (JIT, first segment, buffers). */
  readonly warmupMs: number;
  /** Size of the zero-filled file the raw overwrite runs write over (round and round). */
  readonly zeroFilledBytes: number;
  readonly rssMessages: number;
  readonly rssWarmupMessages: number;
}

const FULL: Plan = { runs: 3, runMs: 3000, warmupMs: 300, zeroFilledBytes: 64 * MiB, rssMessages: 1_000_000, rssWarmupMessages: 20_000 };
const QUICK: Plan = { runs: 1, runMs: 500, warmupMs: 100, zeroFilledBytes: 16 * MiB, rssMessages: 50_000, rssWarmupMessages: 5_000 };

export async function bench(ctx: BenchContext): Promise<void> {
  const plan = ctx.quick ? QUICK : FULL;
  const rounds: Round[] = [];
  for (let i = 0; i < plan.runs; i++) rounds.push(await round(ctx, plan, i));
  const diskBytesPerMessage = report(ctx, plan, rounds);
  await rssGrowth(ctx, plan, diskBytesPerMessage);
}

// --- 1 and 2: raw limits and durable append, measured in rounds

/**
 * One measurement of each kind. This disk's speed drifts over tens of seconds, so each library run is
 * measured right after the raw limit it is compared with, and each ratio is taken within a round.
 */
interface Round {
  readonly appendMiBps: number;
  readonly append1KiBPerSec: number;
  /** 1 KiB writes per second when 64 separate writes share one fdatasync. */
  readonly naiveWritesPerSec: number;
  readonly overwrite1KiBPerSec: number;
  readonly overwrite64KiBMiBps: number;
  readonly one: SendRun;
  readonly many: SendRun;
}

async function round(ctx: BenchContext, plan: Plan, index: number): Promise<Round> {
  const of = `round ${index + 1}/${plan.runs}`;
  const free = await freeBytes(ctx.dir);
  // A fast disk could fill a lot in a few seconds: stop a run early rather than fill the disk.
  const maxFileBytes = Math.max(64 * MiB, Math.min(8 * GiB, (free - RESERVE_BYTES) / 2));
  const small = randomBytes(KiB);
  const big = randomBytes(RAW_BLOCK_BYTES);
  const body = randomBytes(BODY_BYTES);

  ctx.progress(`${of}: raw 1 KiB write+fdatasync, appending`);
  const append1KiB = await timedWrites(ctx, join(ctx.dir, `raw-1k-${index}.dat`), small, { runMs: plan.runMs, fileBytes: maxFileBytes });
  ctx.progress(`${of}: send(), 1 caller`);
  const one = await sendRun(ctx, join(ctx.dir, `node-c1-${index}`), 1, plan, body);
  ctx.progress(`${of}: raw 1 MiB write+fdatasync, appending`);
  const append1MiB = await timedWrites(ctx, join(ctx.dir, `raw-1m-${index}.dat`), big, { runMs: plan.runMs, fileBytes: maxFileBytes });
  ctx.progress(`${of}: raw ${CONCURRENCY_HIGH} × 1 KiB writes per fdatasync, appending`);
  const naive = await timedWrites(ctx, join(ctx.dir, `raw-naive-${index}.dat`), small, { runMs: plan.runMs, fileBytes: maxFileBytes, writesPerSync: CONCURRENCY_HIGH });
  ctx.progress(`${of}: send(), ${CONCURRENCY_HIGH} callers`);
  const many = await sendRun(ctx, join(ctx.dir, `node-c${CONCURRENCY_HIGH}-${index}`), CONCURRENCY_HIGH, plan, body);
  // Information: the log zero-fills up to 1 MiB ahead of its writes (stream-writer.ts, writeRun), so most
  // of its fdatasyncs overwrite blocks inside the file's size and need no inode size update (on ext4/xfs:
  // no journal commit). These show what that buys on this disk, for one small frame and for what 64
  // callers' 1 KiB bodies amount to in one group commit. The zero-filled region is overwritten round
  // and round: still overwrites of allocated blocks, and no huge file for a fast disk.
  ctx.progress(`${of}: raw 1 KiB and 64 KiB write+fdatasync, overwriting a zero-filled file`);
  const overwrite1KiB = await timedWrites(ctx, join(ctx.dir, `raw-1k-pre-${index}.dat`), small, { runMs: plan.runMs, fileBytes: plan.zeroFilledBytes, zeroFilled: true });
  const overwrite64KiB = await timedWrites(ctx, join(ctx.dir, `raw-64k-pre-${index}.dat`), big.subarray(0, 64 * KiB), { runMs: plan.runMs, fileBytes: plan.zeroFilledBytes, zeroFilled: true });
  return {
    appendMiBps: bytesPerSec(append1MiB, big.length) / MiB,
    append1KiBPerSec: opsPerSec(append1KiB),
    naiveWritesPerSec: opsPerSec(naive),
    overwrite1KiBPerSec: opsPerSec(overwrite1KiB),
    overwrite64KiBMiBps: bytesPerSec(overwrite64KiB, 64 * KiB) / MiB,
    one,
    many,
  };
}

/** Prints the figures of all rounds; returns the measured on-disk bytes per message. */
function report(ctx: BenchContext, plan: Plan, rounds: readonly Round[]): number | undefined {
  const each = (f: (r: Round) => number): number[] => rounds.map(f);
  const runs = `median of ${plan.runs} × ${plan.runMs / 1000} s`;

  ctx.section(`raw limits of this disk: node:fs/promises FileHandle write + datasync, as the log does; ${runs}`);
  const appendMiBps = each((r) => r.appendMiBps);
  ctx.figure({ id: 'raw.append_1mib_fsync', label: '1 MiB write+fdatasync, appending to a new file', value: median(appendMiBps), unit: 'MiB/s', runs: appendMiBps });
  const append1KiB = each((r) => r.append1KiBPerSec);
  ctx.figure({ id: 'raw.append_1kib_fsync', label: '1 KiB write+fdatasync pairs, appending', value: median(append1KiB), unit: 'ops/s', runs: append1KiB });
  const naive = each((r) => r.naiveWritesPerSec);
  ctx.figure({ id: 'raw.naive_64x1kib_fsync', label: `${CONCURRENCY_HIGH} × 1 KiB writes, then fdatasync, appending`, value: median(naive), unit: 'writes/s', runs: naive });
  const overwrite1KiB = each((r) => r.overwrite1KiBPerSec);
  ctx.figure({
    id: 'raw.overwrite_1kib_fsync',
    label: '1 KiB write+fdatasync pairs, zero-filled file',
    value: median(overwrite1KiB),
    unit: 'ops/s',
    runs: overwrite1KiB,
    detail: '(info: the log zero-fills ahead, fdatasync skips the size update)',
  });
  const overwrite64KiB = each((r) => r.overwrite64KiBMiBps);
  ctx.figure({
    id: 'raw.overwrite_64kib_fsync',
    label: '64 KiB write+fdatasync, zero-filled file',
    value: median(overwrite64KiB),
    unit: 'MiB/s',
    runs: overwrite64KiB,
    detail: `(info: ${CONCURRENCY_HIGH} × 1 KiB per fsync is the most ${CONCURRENCY_HIGH} waiting callers can hand over)`,
  });

  ctx.section(`durable append: node.send(url, 1 KiB body), each resolves after fdatasync; ${runs}, ratios within a round`);
  const oneRate = each((r) => r.one.msgsPerSec);
  ctx.figure({ id: 'send.c1.rate', label: '1 caller', value: median(oneRate), unit: 'msgs/s', runs: oneRate });
  ctx.figure({ id: 'send.c1.body_bandwidth', label: '1 caller, bodies', value: (median(oneRate) * BODY_BYTES) / MiB, unit: 'MiB/s' });
  const oneRatio = rounds.map((r) => r.one.msgsPerSec / r.append1KiBPerSec);
  ctx.figure({
    id: 'send.c1.ratio',
    label: '1 caller msgs/s ÷ raw 1 KiB append ops/s',
    value: median(oneRatio),
    unit: '×',
    runs: oneRatio,
    target: { op: '>=', value: ONE_CALLER_TARGET },
  });

  const manyRate = each((r) => r.many.msgsPerSec);
  const diskBytesPerMessage = bytesPerMessage(rounds.map((r) => r.many));
  ctx.figure({ id: 'send.c64.rate', label: `${CONCURRENCY_HIGH} concurrent callers`, value: median(manyRate), unit: 'msgs/s', runs: manyRate });
  ctx.figure({
    id: 'send.c64.body_bandwidth',
    label: `${CONCURRENCY_HIGH} concurrent callers, bodies`,
    value: (median(manyRate) * BODY_BYTES) / MiB,
    unit: 'MiB/s',
    ...(diskBytesPerMessage === undefined
      ? {}
      : { detail: `(${((median(manyRate) * diskBytesPerMessage) / MiB).toFixed(1)} MiB/s of frames, ${diskBytesPerMessage.toFixed(0)} B on disk per message)` }),
  });
  const manyRatio = rounds.map((r) => r.many.msgsPerSec / r.naiveWritesPerSec);
  ctx.figure({
    id: 'send.c64.ratio',
    label: `${CONCURRENCY_HIGH} callers msgs/s ÷ naive ${CONCURRENCY_HIGH} writes per fdatasync`,
    value: median(manyRatio),
    unit: '×',
    runs: manyRatio,
    target: { op: '>=', value: MANY_CALLERS_TARGET },
  });
  const bandwidthRatio = rounds.map((r) => (r.many.msgsPerSec * BODY_BYTES) / MiB / r.appendMiBps);
  ctx.figure({ id: 'send.c64.bandwidth_ratio', label: `${CONCURRENCY_HIGH} callers body MiB/s ÷ raw 1 MiB append MiB/s`, value: median(bandwidthRatio), unit: '×', runs: bandwidthRatio, detail: '(info)' });
  return diskBytesPerMessage;
}

interface TimedWrites {
  readonly ops: number;
  readonly ms: number;
}

function opsPerSec(run: TimedWrites): number {
  return run.ops / (run.ms / 1000);
}

function bytesPerSec(run: TimedWrites, blockBytes: number): number {
  return (run.ops * blockBytes) / (run.ms / 1000);
}

/**
 * Writes `block` at increasing positions of a new file, each write followed by datasync, for `runMs`.
 * Appending (the default), the run stops early rather than grow the file past `fileBytes`. With
 * `zeroFilled`, the file is first filled with `fileBytes` zeros and synced (untimed), and the timed writes
 * overwrite it, wrapping around to the start at its end, so the file's size never changes.
 * The file is removed afterwards, and the removal made durable so that its cost (and the discard the
 * file system may issue) lands before the next run rather than in it.
 */
async function timedWrites(ctx: BenchContext, path: string, block: Uint8Array, options: { runMs: number; fileBytes: number; zeroFilled?: boolean; writesPerSync?: number }): Promise<TimedWrites> {
  const handle = await open(path, 'wx+', 0o600);
  try {
    const lastStart = Math.floor(options.fileBytes / block.length) * block.length - block.length;
    if (options.zeroFilled === true) {
      const zeros = Buffer.alloc(MiB);
      for (let at = 0; at < options.fileBytes; at += zeros.length) {
        await writeFully(handle, zeros.subarray(0, Math.min(zeros.length, options.fileBytes - at)), at);
      }
      await handle.sync();
    }
    let position = 0;
    let ops = 0;
    const startedMs = performance.now();
    const deadlineMs = startedMs + options.runMs;
    while (performance.now() < deadlineMs) {
      ctx.signal.throwIfAborted();
      if (position > lastStart) {
        if (options.zeroFilled !== true) break;
        position = 0;
      }
      // The naive loop: one write per message, one fdatasync per `writesPerSync` of them.
      for (let i = 0; i < (options.writesPerSync ?? 1) && position <= lastStart; i++) {
        await writeFully(handle, block, position);
        position += block.length;
        ops++;
      }
      await handle.datasync();
    }
    return { ops, ms: performance.now() - startedMs };
  } finally {
    await handle.close();
    await rm(path, { force: true });
    await syncDir(ctx.dir);
  }
}

interface SendRun {
  readonly msgsPerSec: number;
  /** Every message the run's node stored, warm-up included, and the segment bytes they took. */
  readonly storedMessages: number;
  readonly segmentBytes: number;
}

/**
 * One timed run on a fresh node directory, removed afterwards. The set-up (first send: destination
 * record, writer slot, first segment) and a short warm-up are not timed.
 */
async function sendRun(ctx: BenchContext, dir: string, concurrency: number, plan: Plan, body: Buffer): Promise<SendRun> {
  try {
    const node = await openNode({ data: dir });
    let timed: { sent: number; ms: number };
    let stored = 0;
    try {
      await node.send(DESTINATION, body);
      stored += 1 + (await sendFor(node, concurrency, plan.warmupMs, body, ctx.signal)).sent;
      timed = await sendFor(node, concurrency, plan.runMs, body, ctx.signal);
      stored += timed.sent;
    } finally {
      await node.close();
    }
    // After close: the writer has cut the zero-filled tail, so segment sizes are frame bytes.
    return { msgsPerSec: timed.sent / (timed.ms / 1000), storedMessages: stored, segmentBytes: await segmentBytes(join(dir, 'outbox')) };
  } finally {
    await rm(dir, { recursive: true, force: true });
    await syncDir(ctx.dir);
  }
}

/** `concurrency` callers each send one message after another until `durationMs` passes. */
async function sendFor(node: MqlogNode, concurrency: number, durationMs: number, body: Buffer, signal: AbortSignal): Promise<{ sent: number; ms: number }> {
  const startedMs = performance.now();
  const deadlineMs = startedMs + durationMs;
  let sent = 0;
  const caller = async (): Promise<void> => {
    while (performance.now() < deadlineMs && !signal.aborted) {
      await node.send(DESTINATION, body);
      sent++;
    }
  };
  await Promise.all(Array.from({ length: concurrency }, caller));
  signal.throwIfAborted();
  return { sent, ms: performance.now() - startedMs };
}

/** `concurrency` callers share `count` sends. */
async function sendCount(node: MqlogNode, concurrency: number, count: number, body: Buffer, onProgress?: (sent: number) => void): Promise<void> {
  let started = 0;
  let sent = 0;
  const progressEvery = Math.max(1, Math.floor(count / 4));
  const caller = async (): Promise<void> => {
    while (started < count) {
      started++;
      await node.send(DESTINATION, body);
      sent++;
      if (sent % progressEvery === 0) onProgress?.(sent);
    }
  };
  await Promise.all(Array.from({ length: concurrency }, caller));
}

function bytesPerMessage(runs: readonly SendRun[]): number | undefined {
  const messages = runs.reduce((n, r) => n + r.storedMessages, 0);
  const bytes = runs.reduce((n, r) => n + r.segmentBytes, 0);
  return messages > 0 && bytes > 0 ? bytes / messages : undefined;
}

async function segmentBytes(dir: string): Promise<number> {
  let total = 0;
  for (const entry of await readdir(dir, { recursive: true })) {
    if (entry.endsWith('.seg')) total += (await stat(join(dir, entry))).size;
  }
  return total;
}

// --- 3. RSS over many appends, in a child with --expose-gc

const RSS_CHILD_FLAG = '--rss-child';
const SELF = fileURLToPath(import.meta.url);

interface RssChildArgs {
  readonly dir: string;
  readonly messages: number;
  readonly warmupMessages: number;
  readonly concurrency: number;
  readonly bodyBytes: number;
}

interface Memory {
  readonly rss: number;
  readonly heapTotal: number;
  readonly heapUsed: number;
  readonly external: number;
}

interface RssChildResult {
  readonly gcExposed: boolean;
  readonly before: Memory;
  readonly after: Memory;
  readonly peakRss: number;
  readonly ms: number;
}

async function rssGrowth(ctx: BenchContext, plan: Plan, measuredBytesPerMessage: number | undefined): Promise<void> {
  ctx.section(`memory: RSS before/after appending ${plan.rssMessages.toLocaleString('en-US')} × 1 KiB, ${CONCURRENCY_HIGH} callers, child process with --expose-gc`);
  const perMessage = measuredBytesPerMessage ?? FALLBACK_DISK_BYTES_PER_MESSAGE;
  const free = await freeBytes(ctx.dir);
  const room = free - RESERVE_BYTES - SEGMENT_SLACK_BYTES;
  let messages = plan.rssMessages;
  if ((messages + plan.rssWarmupMessages) * perMessage > room) {
    messages = Math.floor(room / perMessage) - plan.rssWarmupMessages;
    if (messages < 50_000) {
      ctx.note(`SKIPPED: only ${formatBytes(free)} free on ${ctx.dir}; ${plan.rssMessages.toLocaleString('en-US')} messages need ~${formatBytes(plan.rssMessages * perMessage)} plus a ${formatBytes(RESERVE_BYTES)} reserve`);
      return;
    }
    ctx.note(`SCALED DOWN to ${messages.toLocaleString('en-US')} messages: only ${formatBytes(free)} free, ${plan.rssMessages.toLocaleString('en-US')} would need ~${formatBytes(plan.rssMessages * perMessage)} plus a ${formatBytes(RESERVE_BYTES)} reserve`);
  }
  ctx.note(`${messages.toLocaleString('en-US')} messages (+${plan.rssWarmupMessages.toLocaleString('en-US')} warm-up) take ~${formatBytes((messages + plan.rssWarmupMessages) * perMessage)} on disk (${formatBytes(free)} free); deleted afterwards`);

  const dir = join(ctx.dir, 'node-rss');
  let result: RssChildResult;
  try {
    result = await runRssChild(ctx, { dir, messages, warmupMessages: plan.rssWarmupMessages, concurrency: CONCURRENCY_HIGH, bodyBytes: BODY_BYTES });
  } finally {
    await rm(dir, { recursive: true, force: true });
    await syncDir(ctx.dir);
  }
  if (!result.gcExposed) ctx.note('global.gc was not available in the child: readings are not after a full GC');
  const growth = result.after.rss - result.before.rss;
  ctx.figure({ id: 'rss.before', label: 'RSS before (after warm-up and GC)', value: result.before.rss / MiB, unit: 'MiB' });
  ctx.figure({ id: 'rss.after', label: `RSS after ${messages.toLocaleString('en-US')} messages (after GC)`, value: result.after.rss / MiB, unit: 'MiB' });
  ctx.figure({
    id: 'rss.growth',
    label: 'RSS growth',
    value: growth / MiB,
    unit: 'MiB',
    target: { op: '<', value: RSS_GROWTH_TARGET_MIB },
    detail: `(V8 heap reserved ${signedMiB(result.after.heapTotal - result.before.heapTotal)}, used ${signedMiB(result.after.heapUsed - result.before.heapUsed)}; external ${signedMiB(result.after.external - result.before.external)})`,
  });
  ctx.figure({ id: 'rss.peak', label: 'RSS peak during the run (sampled every 100 ms)', value: result.peakRss / MiB, unit: 'MiB' });
  ctx.figure({ id: 'rss.send_rate', label: `send rate over the ${messages.toLocaleString('en-US')} messages`, value: messages / (result.ms / 1000), unit: 'msgs/s' });
}

function runRssChild(ctx: BenchContext, args: RssChildArgs): Promise<RssChildResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--expose-gc', '--import', 'tsx', SELF, RSS_CHILD_FLAG, JSON.stringify(args)], {
      cwd: ctx.root,
      stdio: ['ignore', 'pipe', 'inherit'],
      signal: ctx.signal,
    });
    let stdout = '';
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => {
      stdout += chunk;
    });
    child.on('error', reject);
    child.on('close', (code, signal) => {
      if (code !== 0) {
        reject(new Error(`RSS child exited with ${code ?? signal}`));
        return;
      }
      try {
        resolve(JSON.parse(stdout.trim().split('\n').at(-1) ?? '') as RssChildResult);
      } catch (err) {
        reject(new Error(`RSS child printed no result: ${JSON.stringify(stdout.slice(-500))}`, { cause: err }));
      }
    });
  });
}

/** The child's side: warm up, GC, read memory, send, GC, read memory. Prints its result as one JSON line. */
async function rssChild(args: RssChildArgs): Promise<RssChildResult> {
  const gc = globalThis.gc;
  const collect = async (): Promise<void> => {
    // Several rounds, yielding in between, so that finalizers and weak callbacks run and free their memory.
    for (let i = 0; i < 3; i++) {
      gc?.();
      await new Promise<void>((resolve) => setImmediate(resolve));
    }
  };
  const read = (): Memory => {
    const usage = process.memoryUsage();
    return { rss: usage.rss, heapTotal: usage.heapTotal, heapUsed: usage.heapUsed, external: usage.external };
  };
  const body = randomBytes(args.bodyBytes);
  const node = await openNode({ data: args.dir });
  try {
    await sendCount(node, args.concurrency, args.warmupMessages, body);
    await collect();
    const before = read();
    let peakRss = before.rss;
    const sampler = setInterval(() => {
      peakRss = Math.max(peakRss, process.memoryUsage.rss());
    }, 100);
    const startedMs = performance.now();
    try {
      await sendCount(node, args.concurrency, args.messages, body, (sent) => {
        process.stderr.write(`    … RSS run: ${sent.toLocaleString('en-US')}/${args.messages.toLocaleString('en-US')} sent, RSS ${(process.memoryUsage.rss() / MiB).toFixed(0)} MiB\n`);
      });
    } finally {
      clearInterval(sampler);
    }
    const ms = performance.now() - startedMs;
    peakRss = Math.max(peakRss, process.memoryUsage.rss());
    await collect();
    return { gcExposed: gc !== undefined, before, after: read(), peakRss, ms };
  } finally {
    await node.close();
  }
}

// --- helpers

/** fsync a directory, so that removals in it are committed (and their cost paid) now. */
async function syncDir(dir: string): Promise<void> {
  const handle = await open(dir, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

function signedMiB(bytes: number): string {
  return `${bytes >= 0 ? '+' : ''}${(bytes / MiB).toFixed(1)} MiB`;
}

// Entry point of the RSS child: `node --expose-gc --import tsx bench/log.bench.ts --rss-child '<json>'`.
if (runsAsChild(import.meta.url, RSS_CHILD_FLAG)) {
  const result = await rssChild(JSON.parse(process.argv[3] ?? '') as RssChildArgs);
  process.stdout.write(`${JSON.stringify(result)}\n`);
}
