/**
 * The compaction benchmark: what background compaction costs the applications that append meanwhile.
 *
 * One node directory. Its outbox first gets a large backlog (200 MiB of 4 KiB messages in 256 KiB
 * segments, stream p3.w0), 70 % of it for destination X and 30 % for Y. Then, in rounds, 64 concurrent
 * library callers send 1 KiB messages (`node.send`, each resolves after fdatasync) to a third destination
 * for a fixed time, once alone and once while a child process compacts the same outbox in a tight loop,
 * the way a daemon's forwarders and compaction would: it moves X's cursor forward through its share of the
 * backlog (so the segments behind it are 70 % done: rewritten), Y's cursor half a share behind (segments
 * behind both are all done: deleted, rewritten ones included), and runs another round of the same
 * Compactor as soon as a round ends, as the daemon does: each round reads only the segments a cursor
 * moved into since the last (the others are judged from their summaries, unread), and works at most
 * half of its time (BACKGROUND_BUSY_SHARE, the daemon's setting).
 *
 * Figures: append throughput and per-append latency (p50, p99, max = worst pause) alone and with
 * compaction, and the ratios with ÷ alone (targets: throughput ≥ 0.8×, p99 < 2×). The phases alternate,
 * alone first (3 rounds of 7 s each), and every figure is the median over the rounds. Also reported:
 * the work compaction did meanwhile.
 *
 * The library is imported from dist/ (`npm run bench` builds first). This file is also the compaction
 * child's entry point (see the end of the file).
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { open } from 'node:fs/promises';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { openNode, type MqlogNode } from '../dist/daemon/node.js';
import { FileLogStore } from '../dist/log/index.js';
import { BACKGROUND_BUSY_SHARE, Compactor, compactNode } from '../dist/queue/compaction.js';
import { OutboxState } from '../dist/queue/outbox-state.js';
import { GiB, KiB, MiB, formatBytes, freeBytes, median, runsAsChild, shared, type BenchContext } from './harness.ts';

/** Destinations: send() never touches the network, and nothing listens on these ports. */
const DEST_X = 'http://127.0.0.1:9';
const DEST_Y = 'http://127.0.0.1:10';
const DEST_APP = 'http://127.0.0.1:11';
const BACKLOG_STREAM = 'p3.w0';
const BACKLOG_PRIORITY = 3;
const BACKLOG_BODY_BYTES = 4 * KiB;
const BACKLOG_SEGMENT_BYTES = 256 * KiB;
const BODY_BYTES = KiB;
const CONCURRENCY = 64;

const THROUGHPUT_TARGET = 0.8;
const P99_TARGET = 2;
const RESERVE_BYTES = 2 * GiB;

interface Plan {
  readonly backlogBytes: number;
  readonly rounds: number;
  readonly runMs: number;
  readonly warmupMs: number;
}

const FULL: Plan = { backlogBytes: 200 * MiB, rounds: 3, runMs: 7_000, warmupMs: 1_000 };
const QUICK: Plan = { backlogBytes: 16 * MiB, rounds: 1, runMs: 2_000, warmupMs: 300 };

interface SendPhase {
  readonly msgsPerSec: number;
  readonly p50: number;
  readonly p99: number;
  readonly max: number;
}

interface CompactionWork {
  readonly rounds: number;
  readonly roundMs: number[];
  /** Rounds of the same Compactor once the cursors stopped moving (nothing changed). */
  readonly idleMs: number[];
  /** One round of a fresh Compactor then (nothing remembered: reads every segment a cursor is in or passed partly). */
  readonly freshMs: number;
  readonly bytesReclaimed: number;
  readonly segmentsDeleted: number;
  readonly segmentsRewritten: number;
}

export async function bench(ctx: BenchContext): Promise<void> {
  const plan = ctx.quick ? QUICK : FULL;
  const free = await freeBytes(ctx.dir);
  // The backlog, plus what the timed sends write (~1.1 KiB per message at up to ~100 000/s).
  const needed = plan.backlogBytes * 1.1 + plan.rounds * 2 * (plan.runMs / 1000 + 1) * 100_000 * 1.2 * KiB;
  if (needed > free - RESERVE_BYTES) {
    ctx.note(`SKIPPED: needs ~${formatBytes(needed)} plus a ${formatBytes(RESERVE_BYTES)} reserve, only ${formatBytes(free)} free on ${ctx.dir}`);
    return;
  }
  const dir = join(ctx.dir, 'node');
  const body = randomBytes(BODY_BYTES);

  ctx.section(`set-up: a backlog of ${formatBytes(plan.backlogBytes)} in the outbox (${formatBytes(BACKLOG_BODY_BYTES)} messages, ${formatBytes(BACKLOG_SEGMENT_BYTES)} segments, 70 % for X, 30 % for Y)`);
  const backlog = await prepareBacklog(ctx, dir, plan.backlogBytes);
  ctx.figure({
    id: 'setup.backlog_rate',
    label: `backlog written (${backlog.messages.toLocaleString('en-US')} messages)`,
    value: plan.backlogBytes / MiB / (backlog.ms / 1000),
    unit: 'MiB/s',
    detail: `(${(backlog.ms / 1000).toFixed(1)} s; untimed for the figures below)`,
  });

  const node = await openNode({ data: dir });
  const alone: SendPhase[] = [];
  const withCompaction: SendPhase[] = [];
  const work: CompactionWork[] = [];
  try {
    await sendFor(node, plan.warmupMs, body, ctx.signal);
    for (let round = 0; round < plan.rounds; round++) {
      ctx.progress(`round ${round + 1}/${plan.rounds}: ${CONCURRENCY} callers alone for ${plan.runMs / 1000} s`);
      alone.push(summarize(await sendFor(node, plan.runMs, body, ctx.signal)));
      ctx.progress(`round ${round + 1}/${plan.rounds}: ${CONCURRENCY} callers while compacting for ${plan.runMs / 1000} s`);
      // Each with-phase works through its share of the backlog.
      const share = backlog.messages / plan.rounds;
      const xFrom = Math.round(round * share);
      const xTo = Math.round((round + 1) * share);
      const child = startCompactionChild(ctx, {
        dir,
        durationMs: plan.runMs + 500,
        x: { from: xFrom, to: xTo },
        y: { from: Math.max(0, Math.round(xFrom - share / 2)), to: Math.round(xTo - share / 2) },
      });
      await child.ready;
      withCompaction.push(summarize(await sendFor(node, plan.runMs, body, ctx.signal)));
      work.push(await child.result);
    }
  } finally {
    await node.close();
  }

  ctx.note(`load average over the last minute ${loadavg()[0]?.toFixed(1)} on this machine: other processes' work lands in both phases alike only on average`);
  const runs = `${plan.rounds} round${plan.rounds === 1 ? '' : 's'} of ${plan.runMs / 1000} s each`;
  ctx.section(`${CONCURRENCY} concurrent node.send(1 KiB), alone and while compaction runs (${runs}; medians)`);
  const rate = (phases: SendPhase[]): number[] => phases.map((p) => p.msgsPerSec);
  const p = (phases: SendPhase[], key: 'p50' | 'p99' | 'max'): number[] => phases.map((s) => s[key]);
  ctx.figure({ id: 'alone.rate', label: 'throughput alone', value: median(rate(alone)), unit: 'msgs/s', runs: rate(alone) });
  ctx.figure({ id: 'with.rate', label: 'throughput while compacting', value: median(rate(withCompaction)), unit: 'msgs/s', runs: rate(withCompaction) });
  const rateRatio = alone.map((a, i) => (withCompaction[i] as SendPhase).msgsPerSec / a.msgsPerSec);
  ctx.figure({ id: 'ratio.rate', label: 'throughput while compacting ÷ alone', value: median(rateRatio), unit: '×', runs: rateRatio, target: { op: '>=', value: THROUGHPUT_TARGET } });
  for (const key of ['p50', 'p99', 'max'] as const) {
    const what = key === 'max' ? 'worst append latency (longest pause)' : `${key} append latency`;
    ctx.figure({ id: `alone.${key}`, label: `${what}, alone`, value: median(p(alone, key)), unit: 'ms', runs: p(alone, key) });
    ctx.figure({ id: `with.${key}`, label: `${what}, while compacting`, value: median(p(withCompaction, key)), unit: 'ms', runs: p(withCompaction, key) });
  }
  const p99Ratio = alone.map((a, i) => (withCompaction[i] as SendPhase).p99 / a.p99);
  ctx.figure({ id: 'ratio.p99', label: 'p99 latency while compacting ÷ alone', value: median(p99Ratio), unit: '×', runs: p99Ratio, target: { op: '<', value: P99_TARGET } });
  const maxRatio = alone.map((a, i) => (withCompaction[i] as SendPhase).max / a.max);
  ctx.figure({ id: 'ratio.max', label: 'worst pause while compacting ÷ alone', value: median(maxRatio), unit: '×', runs: maxRatio, detail: '(info)' });

  ctx.section('the work compaction did meanwhile (all with-phases together)');
  const roundMs = work.flatMap((w) => w.roundMs);
  ctx.figure({ id: 'compaction.rounds', label: 'compaction rounds', value: work.reduce((n, w) => n + w.rounds, 0), unit: 'rounds' });
  ctx.figure({ id: 'compaction.round_ms', label: 'compaction round, median duration', value: median(roundMs), unit: 'ms', detail: `(longest ${Math.round(Math.max(...roundMs))} ms; each reads what the cursors moved into)` });
  const idleMs = work.flatMap((w) => w.idleMs);
  ctx.figure({ id: 'compaction.idle_round_ms', label: 'round with nothing changed, median', value: median(idleMs), unit: 'ms', detail: '(the same Compactor once the cursors stopped)' });
  const freshMs = work.map((w) => w.freshMs);
  ctx.figure({ id: 'compaction.fresh_round_ms', label: 'round of a fresh Compactor then, median', value: median(freshMs), unit: 'ms', runs: freshMs, detail: '(info: nothing remembered from earlier rounds)' });
  const reclaimed = work.reduce((n, w) => n + w.bytesReclaimed, 0);
  ctx.figure({ id: 'compaction.reclaimed', label: 'bytes reclaimed', value: reclaimed / MiB, unit: 'MiB', detail: `(${formatBytes(reclaimed / ((plan.rounds * plan.runMs) / 1000))}/s)` });
  ctx.figure({ id: 'compaction.deleted', label: 'segments deleted', value: work.reduce((n, w) => n + w.segmentsDeleted, 0), unit: 'files' });
  ctx.figure({ id: 'compaction.rewritten', label: 'segments rewritten', value: work.reduce((n, w) => n + w.segmentsRewritten, 0), unit: 'files' });
}

/** Writes the backlog with 64 concurrent callers into its own stream; returns how many messages and how long. */
async function prepareBacklog(ctx: BenchContext, dir: string, bytes: number): Promise<{ messages: number; ms: number }> {
  const node = await openNode({ data: dir, config: { segmentBytes: BACKLOG_SEGMENT_BYTES } });
  const count = Math.ceil(bytes / BACKLOG_BODY_BYTES);
  const body = randomBytes(BACKLOG_BODY_BYTES);
  const started = performance.now();
  try {
    await shared(count, CONCURRENCY, async (n) => {
      ctx.signal.throwIfAborted();
      await node.send(n % 10 < 7 ? DEST_X : DEST_Y, body, { priority: BACKLOG_PRIORITY });
      if (n % 10_000 === 0 && n > 0) ctx.progress(`backlog: ${n.toLocaleString('en-US')}/${count.toLocaleString('en-US')} messages`);
    });
  } finally {
    await node.close();
  }
  await syncDir(join(dir, 'outbox', BACKLOG_STREAM));
  return { messages: count, ms: performance.now() - started };
}

/** 64 callers send one message after another for `durationMs`; returns every send's latency (ms) and the elapsed time. */
async function sendFor(node: MqlogNode, durationMs: number, body: Buffer, signal: AbortSignal): Promise<{ latencies: Float64Array; ms: number }> {
  const latencies: number[] = [];
  const startedMs = performance.now();
  const deadlineMs = startedMs + durationMs;
  const caller = async (): Promise<void> => {
    while (!signal.aborted) {
      const t0 = performance.now();
      if (t0 >= deadlineMs) return;
      await node.send(DEST_APP, body);
      latencies.push(performance.now() - t0);
    }
  };
  await Promise.all(Array.from({ length: CONCURRENCY }, caller));
  signal.throwIfAborted();
  return { latencies: Float64Array.from(latencies), ms: performance.now() - startedMs };
}

function summarize(run: { latencies: Float64Array; ms: number }): SendPhase {
  const sorted = run.latencies.slice().sort();
  const at = (q: number): number => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] ?? Number.NaN;
  return { msgsPerSec: sorted.length / (run.ms / 1000), p50: at(0.5), p99: at(0.99), max: sorted[sorted.length - 1] ?? Number.NaN };
}

// --- the compaction child

const CHILD_FLAG = '--compaction-child';
const SELF = fileURLToPath(import.meta.url);

interface ChildArgs {
  readonly dir: string;
  readonly durationMs: number;
  /** Offsets of the backlog stream X's (and Y's) cursor moves between, linearly over durationMs. */
  readonly x: { readonly from: number; readonly to: number };
  readonly y: { readonly from: number; readonly to: number };
}

function startCompactionChild(ctx: BenchContext, args: ChildArgs): { ready: Promise<void>; result: Promise<CompactionWork> } {
  const child = spawn(process.execPath, ['--import', 'tsx', SELF, CHILD_FLAG, JSON.stringify(args)], { cwd: ctx.root, stdio: ['ignore', 'pipe', 'inherit'], signal: ctx.signal });
  const lines = createInterface({ input: child.stdout });
  let resolveReady: () => void = () => undefined;
  let rejectReady: (err: Error) => void = () => undefined;
  const ready = new Promise<void>((resolve, reject) => {
    resolveReady = resolve;
    rejectReady = reject;
  });
  let last = '';
  lines.on('line', (line) => {
    if (line === 'ready') resolveReady();
    else last = line;
  });
  const result = new Promise<CompactionWork>((resolve, reject) => {
    child.on('error', (err) => {
      rejectReady(err);
      reject(err);
    });
    child.on('close', (code, signal) => {
      const failure = new Error(`compaction child exited with ${code ?? signal}`);
      rejectReady(failure);
      if (code !== 0) {
        reject(failure);
        return;
      }
      try {
        resolve(JSON.parse(last) as CompactionWork);
      } catch (err) {
        reject(new Error(`compaction child printed no result: ${JSON.stringify(last.slice(-300))}`, { cause: err }));
      }
    });
  });
  // Whoever awaits only `ready` must not leave `result` rejected unhandled.
  result.catch(() => undefined);
  return { ready, result };
}

/** The child's side: move the cursors, compact, repeat, until the time is up; print what it did. */
async function compactionChild(args: ChildArgs): Promise<CompactionWork> {
  const roundMs: number[] = [];
  let bytesReclaimed = 0;
  let segmentsDeleted = 0;
  let segmentsRewritten = 0;
  const store = new FileLogStore(args.dir, { segmentBytes: BACKLOG_SEGMENT_BYTES });
  const state = await OutboxState.load(join(args.dir, 'outbox'));
  // As the daemon does: one Compactor, round after round. A first round (untimed) builds the outbox
  // summaries that a daemon's backlog counter builds as messages arrive.
  const compactor = new Compactor({ store, dataDir: args.dir, busyShare: BACKGROUND_BUSY_SHARE });
  await compactor.round();
  process.stdout.write('ready\n');
  const started = performance.now();
  for (;;) {
    const f = Math.min(1, (performance.now() - started) / args.durationMs);
    const at = (range: { from: number; to: number }): number => Math.round(range.from + f * (range.to - range.from));
    // What the forwarders of X and Y would do: move their cursors forward, and write them.
    state.cursor(DEST_X).advance(BACKLOG_STREAM, { offset: at(args.x) });
    state.cursor(DEST_Y).advance(BACKLOG_STREAM, { offset: at(args.y) });
    await state.flush(DEST_X);
    await state.flush(DEST_Y);
    const result = await compactor.round();
    roundMs.push(result.durationMs);
    bytesReclaimed += result.bytesReclaimed;
    for (const q of result.queues) {
      segmentsDeleted += q.segmentsDeleted;
      segmentsRewritten += q.segmentsRewritten;
    }
    if (f >= 1) break;
  }
  const idleMs: number[] = [];
  for (let i = 0; i < 3; i++) idleMs.push((await compactor.round()).durationMs);
  await compactor.close();
  const freshMs = (await compactNode({ store, dataDir: args.dir })).durationMs;
  return { rounds: roundMs.length, roundMs, idleMs, freshMs, bytesReclaimed, segmentsDeleted, segmentsRewritten };
}

/** fsync a directory, so that the backlog's segment names are committed before the timed phases. */
async function syncDir(dir: string): Promise<void> {
  const handle = await open(dir, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

// Entry point of the compaction child: `node --import tsx bench/compaction.bench.ts --compaction-child '<json>'`.
if (runsAsChild(import.meta.url, CHILD_FLAG)) {
  const result = await compactionChild(JSON.parse(process.argv[3] ?? '') as ChildArgs);
  process.stdout.write(`${JSON.stringify(result)}\n`);
}
