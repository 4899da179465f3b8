/**
 * The backlog benchmark: what a large backlog costs `mqlog stat` and a daemon's start.
 *
 * One node directory gets 1 M messages pending in its outbox (1 KiB each, for a peer that is down, 3
 * channels, priorities 0–9) and 1 M pending in its inboxes (3 channels, priorities 0–9), written with
 * the library (64 callers). Another one stays empty. Then, each as a real `mqlog` process:
 *
 * - `mqlog stat --json`: once on the full node right after the writes (no outbox summary exists yet: it
 *   is built by reading every outbox message once, and written); then in pairs, on the empty node (the
 *   cost of starting a process and opening a node) and right after it on the full one (the summaries
 *   are there, as a running daemon keeps them). Target: the stat of 1 M + 1 M pending costs < 100 ms
 *   more than the empty one (the median of the pairs' differences).
 * - `mqlog daemon`: from spawn to `listening on`, on the empty node and on the full one (after a
 *   SIGKILL of its previous run); target < 1 s. Also, for information, until its /metrics first shows
 *   the whole backlog. The full node's daemon runs once untimed first: the inboxes were written by the
 *   library, not by a receiver, so its first start reads them once for duplicate detection (a
 *   receiver's own writes are checkpointed every second: a restart reads what came after).
 *
 * Every figure is the median of 5 runs. The library is imported from dist/ (`npm run bench` builds first).
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { openNode, type MqlogNode } from '../dist/daemon/node.js';
import { newId } from '../dist/util/ids.js';
import { GiB, KiB, formatBytes, freeBytes, median, shared, type BenchContext } from './harness.ts';
import { BenchDaemon, freePort, until } from './pair.ts';

const FULL = 1_000_000;
const QUICK = 50_000;
const BODY_BYTES = KiB;
const CHANNELS = ['alpha', 'beta', 'gamma'];
const CONCURRENCY = 64;
const RUNS = 5;
const STAT_TARGET_MS = 100;
const START_TARGET_MS = 1000;
/** Where the peer would be: nothing listens there, so the backlog stays. */
const DOWN = 'http://127.0.0.1:9';
const RESERVE_BYTES = 20 * GiB;

export async function bench(ctx: BenchContext): Promise<void> {
  const count = ctx.quick ? QUICK : FULL;
  const needed = 2 * count * (BODY_BYTES + 300);
  const free = await freeBytes(ctx.dir);
  if (needed > free - RESERVE_BYTES) {
    ctx.note(`SKIPPED: needs ~${formatBytes(needed)} plus ${formatBytes(RESERVE_BYTES)} kept free, ${formatBytes(free)} free`);
    return;
  }
  const empty = await nodeDir(ctx.dir, 'empty');
  const full = await nodeDir(ctx.dir, 'full');

  ctx.section(`set-up: ${count.toLocaleString('en-US')} messages pending in the outbox and as many in the inboxes (${BODY_BYTES / KiB} KiB, ${CHANNELS.length} channels, priorities 0–9)`);
  const started = performance.now();
  await fill(ctx, full.dir, count);
  ctx.figure({ id: 'setup.seconds', label: 'written (untimed for the figures below)', value: (performance.now() - started) / 1000, unit: 's' });

  ctx.section('mqlog stat --json, wall time of the process (medians of 5)');
  const cold = await stat(ctx, full.dir, count);
  // In pairs, one right after the other: each difference is taken at the same moment of this machine.
  const emptyStat: number[] = [];
  const warm: number[] = [];
  for (let run = 0; run < RUNS; run++) {
    emptyStat.push(await stat(ctx, empty.dir, 0));
    warm.push(await stat(ctx, full.dir, count));
  }
  ctx.figure({ id: 'stat.empty_ms', label: 'stat of an empty node', value: median(emptyStat), unit: 'ms', runs: emptyStat });
  ctx.figure({ id: 'stat.cold_ms', label: 'first stat at 1 M + 1 M pending (builds summaries)', value: cold, unit: 'ms', detail: '(info: reads every outbox message once)' });
  ctx.figure({ id: 'stat.full_ms', label: 'stat at 1 M + 1 M pending', value: median(warm), unit: 'ms', runs: warm });
  const extra = warm.map((ms, i) => ms - (emptyStat[i] as number));
  ctx.figure({ id: 'stat.extra_ms', label: 'stat at 1 M + 1 M pending − stat empty', value: median(extra), unit: 'ms', runs: extra, target: { op: '<', value: STAT_TARGET_MS } });

  ctx.section('mqlog daemon: spawn to listening (medians of 5; the full node\'s previous run SIGKILLed)');
  const emptyStart = await times(RUNS, async () => (await startDaemon(ctx, empty, 0)).listening);
  await startDaemon(ctx, full, count);
  ctx.figure({ id: 'start.empty_ms', label: 'daemon start, empty node', value: median(emptyStart), unit: 'ms', runs: emptyStart });
  const fullStarts = await times(RUNS, () => startDaemon(ctx, full, count));
  const listening = fullStarts.map((s) => s.listening);
  ctx.figure({ id: 'start.full_ms', label: 'daemon start at 1 M + 1 M pending', value: median(listening), unit: 'ms', runs: listening, target: { op: '<', value: START_TARGET_MS } });
  const startExtra = listening.map((ms, i) => ms - (emptyStart[i] ?? median(emptyStart)));
  ctx.figure({ id: 'start.extra_ms', label: 'daemon start at 1 M + 1 M pending − empty', value: median(startExtra), unit: 'ms', runs: startExtra, detail: '(info)' });
  const counted = fullStarts.map((s) => s.counted);
  ctx.figure({ id: 'start.counted_ms', label: 'spawn to /metrics showing the whole backlog', value: median(counted), unit: 'ms', runs: counted, detail: '(info)' });
}

interface NodeDir {
  readonly dir: string;
  readonly port: number;
}

async function nodeDir(root: string, name: string): Promise<NodeDir> {
  const dir = join(root, name);
  const port = await freePort();
  await mkdir(dir, { recursive: true });
  await writeFile(join(dir, 'mqlog.json'), JSON.stringify({ name, listen: `127.0.0.1:${port}`, peers: { b: { url: DOWN } } }));
  return { dir, port };
}

async function times<T>(runs: number, run: () => Promise<T>): Promise<T[]> {
  const results: T[] = [];
  for (let i = 0; i < runs; i++) results.push(await run());
  return results;
}

/** Sends `count` messages to the down peer and appends as many to the inboxes, 64 callers each. */
async function fill(ctx: BenchContext, dir: string, count: number): Promise<void> {
  const node = await openNode({ data: dir });
  const body = randomBytes(BODY_BYTES);
  try {
    await shared(count, CONCURRENCY, async (n) => {
      await node.send('b', body, { channel: CHANNELS[n % CHANNELS.length] as string, priority: n % 10 });
      if (n % 100_000 === 0) ctx.progress(`outbox: ${n.toLocaleString('en-US')}`);
    });
    const inboxes = await Promise.all(CHANNELS.map((c) => node.inbox(c)));
    await shared(count, CONCURRENCY, async (n) => {
      const channel = n % CHANNELS.length;
      const ts = Date.now();
      await inboxes[channel]?.append({ id: newId(ts), ts, channel: CHANNELS[channel] as string, priority: n % 10, to: ['full'], from: 'b' }, body);
      if (n % 100_000 === 0) ctx.progress(`inboxes: ${n.toLocaleString('en-US')}`);
    });
  } finally {
    await closeNode(node);
  }
}

async function closeNode(node: MqlogNode): Promise<void> {
  await node.close();
}

/** Runs `mqlog stat --json` and returns its wall time; checks the numbers it prints. */
async function stat(ctx: BenchContext, dir: string, pending: number): Promise<number> {
  const started = performance.now();
  const child = spawn(process.execPath, [join(ctx.root, 'dist', 'cli', 'main.js'), 'stat', '--data', dir, '--json'], { stdio: ['ignore', 'pipe', 'pipe'], signal: ctx.signal });
  let out = '';
  let err = '';
  child.stdout.on('data', (b: Buffer) => (out += b.toString()));
  child.stderr.on('data', (b: Buffer) => (err += b.toString()));
  const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
  const ms = performance.now() - started;
  if (code !== 0) throw new Error(`stat exited ${code}: ${err}`);
  const lines = out.trim().split('\n').map((l) => JSON.parse(l) as { kind?: string; pending?: number; peer?: string; backlog?: number });
  const outbox = lines.filter((l) => l.kind === 'outbox').reduce((n, l) => n + (l.pending ?? 0), 0);
  const inboxes = lines.filter((l) => l.kind === 'inbox').reduce((n, l) => n + (l.pending ?? 0), 0);
  const backlog = lines.find((l) => l.peer === 'b')?.backlog ?? 0;
  if (outbox !== pending || inboxes !== pending || backlog !== pending) throw new Error(`stat counted outbox ${outbox}, inboxes ${inboxes}, backlog ${backlog}; ${pending} expected each`);
  return ms;
}

/** Starts the daemon, times it to `listening on` and to /metrics showing the backlog, then SIGKILLs it. */
async function startDaemon(ctx: BenchContext, node: NodeDir, pending: number): Promise<{ listening: number; counted: number }> {
  const daemon = new BenchDaemon({ name: 'x', dir: node.dir, port: node.port, url: `http://127.0.0.1:${node.port}` });
  const started = performance.now();
  await daemon.start(ctx);
  const listening = performance.now() - started;
  try {
    // The only peer is b: the gauge's sum is its backlog.
    await until(ctx, async () => (await daemon.counter('mqlog_backlog_messages')) === pending, 'the backlog in /metrics', { intervalMs: 10 });
    return { listening, counted: performance.now() - started };
  } finally {
    const child = daemon.child;
    child?.kill('SIGKILL');
    if (child !== undefined && child.exitCode === null && child.signalCode === null) await new Promise((resolve) => child.once('exit', resolve));
  }
}
