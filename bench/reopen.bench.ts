/**
 * The reopen benchmark: how long a large queue takes to come back after its writer was killed.
 *
 * A child process appends 16 KiB frames to one stream of a queue (64 appends in flight, 64 MiB
 * segments) until the queue holds 10 GiB (less when the disk has not that much room to spare: said in a
 * note), keeps appending, and is SIGKILLed. Then, in a fresh process each time:
 *
 * - the writer reopens the stream: claim the slot the dead writer held, recover the stream (cut the torn
 *   tail, if any), append one frame;
 * - a reader opens at a late offset (the middle of the last sealed segment) and reads one frame, and
 *   another one near the end (inside the open segment).
 *
 * Figures: each step's time and their sum (target < 1 s), once as the killed writer left the queue,
 * and, for information, once more after removing every segment index (the cost without them: recovery
 * reads the whole last segment, a reader its segment up to the offset, rebuilding that index). The page
 * cache is warm (the data was just written, and dropping it needs root): a cold disk adds its seek
 * and read time to the few reads the indexes leave.
 *
 * The library is imported from dist/ (`npm run bench` builds first). This file is also the children's
 * entry point (see the end of the file).
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { FileLogStore, FrameType } from '../dist/log/index.js';
import { GiB, MiB, formatBytes, freeBytes, type BenchContext } from './harness.ts';

const QUEUE = 'outbox';
const KEY = 'p4';
const STREAM = 'p4.w0';
const FRAME_PAYLOAD_BYTES = 16 * 1024;
const SEGMENT_BYTES = 64 * MiB;
const IN_FLIGHT = 64;
const TARGET_MS = 1000;
const FULL_BYTES = 10 * GiB;
const QUICK_BYTES = 256 * MiB;
/** Left free on the disk whatever the data set wants (the machine is shared). */
const RESERVE_BYTES = 20 * GiB;

interface Reopened {
  readonly claimMs: number;
  readonly writerMs: number;
  readonly sealedReadMs: number;
  readonly openReadMs: number;
  readonly nextOffset: number;
}

export async function bench(ctx: BenchContext): Promise<void> {
  const wanted = ctx.quick ? QUICK_BYTES : FULL_BYTES;
  const free = await freeBytes(ctx.dir);
  const bytes = Math.min(wanted, Math.floor((free - RESERVE_BYTES) / GiB) * GiB);
  if (bytes < 256 * MiB) {
    ctx.note(`SKIPPED: only ${formatBytes(free)} free on ${ctx.dir}, ${formatBytes(RESERVE_BYTES)} of it kept free`);
    return;
  }
  if (bytes < wanted) ctx.note(`the queue holds ${formatBytes(bytes)}, not ${formatBytes(wanted)}: ${formatBytes(free)} free on ${ctx.dir}, ${formatBytes(RESERVE_BYTES)} of it kept free`);

  ctx.section(`set-up: ${formatBytes(bytes)} of ${FRAME_PAYLOAD_BYTES / 1024} KiB frames in one stream (${formatBytes(SEGMENT_BYTES)} segments), writer SIGKILLed while appending`);
  const started = performance.now();
  const frames = await fillAndKill(ctx, ctx.dir, bytes);
  ctx.progress(`writer killed after ${frames} acknowledged frames`);
  ctx.figure({ id: 'setup.rate', label: `written (${frames.toLocaleString('en-US')} frames acknowledged when full)`, value: bytes / MiB / ((performance.now() - started) / 1000), unit: 'MiB/s', detail: '(untimed for the figures below)' });

  ctx.section('reopening after the SIGKILL, each step in a fresh process (warm page cache)');
  const streamDir = join(ctx.dir, QUEUE, STREAM);
  const withIndexes = await reopen(ctx, ctx.dir, streamDir);
  report(ctx, 'indexed', withIndexes, true);

  const removed = (await readdir(streamDir)).filter((name) => name.endsWith('.idx'));
  for (const name of removed) await rm(join(streamDir, name));
  ctx.section(`the same without segment indexes (${removed.length} removed; for comparison)`);
  report(ctx, 'unindexed', await reopen(ctx, ctx.dir, streamDir), false);
}

function report(ctx: BenchContext, id: string, r: Reopened, target: boolean): void {
  ctx.figure({ id: `${id}.claim_ms`, label: 'writer: claim the dead writer\'s slot', value: r.claimMs, unit: 'ms' });
  ctx.figure({ id: `${id}.writer_ms`, label: 'writer: then recover the stream, append one', value: r.writerMs, unit: 'ms' });
  ctx.figure({ id: `${id}.sealed_read_ms`, label: 'reader: open mid last sealed segment, read one', value: r.sealedReadMs, unit: 'ms' });
  ctx.figure({ id: `${id}.open_read_ms`, label: 'reader: open near the end (the open segment), read one', value: r.openReadMs, unit: 'ms' });
  const total = r.claimMs + r.writerMs + r.sealedReadMs + r.openReadMs;
  ctx.figure({ id: `${id}.total_ms`, label: 'reopen and first reads, together', value: total, unit: 'ms', ...(target ? { target: { op: '<', value: TARGET_MS } } : { detail: '(info)' }) });
}

/** Runs the writer child until the queue holds `bytes`, lets it go on a moment, SIGKILLs it; returns the frames it acknowledged. */
async function fillAndKill(ctx: BenchContext, dir: string, bytes: number): Promise<number> {
  const child = spawn(process.execPath, ['--import', 'tsx', SELF, WRITER_FLAG, JSON.stringify({ dir, bytes })], { cwd: ctx.root, stdio: ['ignore', 'pipe', 'inherit'], signal: ctx.signal });
  const lines = createInterface({ input: child.stdout });
  let acked = 0;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  await new Promise<void>((resolve, reject) => {
    lines.on('line', (line) => {
      const [what, value] = line.split(' ');
      acked = Math.max(acked, Number(value));
      if (what === 'progress') ctx.progress(`written ${formatBytes(acked * (FRAME_PAYLOAD_BYTES + 20))}`);
      if (what === 'reached') resolve();
    });
    child.once('exit', (code, signal) => reject(new Error(`writer child exited with ${code ?? signal} before the queue was full`)));
  });
  // Killed in the middle of appending: the last segment ends in whatever the last writes left.
  await new Promise((resolve) => setTimeout(resolve, 300));
  child.kill('SIGKILL');
  await exited;
  return acked;
}

/** Times the writer's and the readers' first steps, each in a process of its own. */
async function reopen(ctx: BenchContext, dir: string, streamDir: string): Promise<Reopened> {
  const writer = await child<{ claimMs: number; ms: number; nextOffset: number }>(ctx, { dir, step: 'writer' });
  // The middle of the last sealed segment: the base of the last one and of the one before it.
  const bases = (await readdir(streamDir)).filter((name) => name.endsWith('.seg')).map((name) => Number(name.slice(0, 20))).sort((a, b) => a - b);
  const [before, last] = [bases.at(-2) ?? 0, bases.at(-1) ?? 0];
  const sealed = await child<{ ms: number }>(ctx, { dir, step: 'read', offset: Math.floor((before + last) / 2) });
  const openRead = await child<{ ms: number }>(ctx, { dir, step: 'read', offset: writer.nextOffset - 2 });
  return { claimMs: writer.claimMs, writerMs: writer.ms, sealedReadMs: sealed.ms, openReadMs: openRead.ms, nextOffset: writer.nextOffset };
}

async function child<T>(ctx: BenchContext, args: StepArgs): Promise<T> {
  const proc = spawn(process.execPath, ['--import', 'tsx', SELF, STEP_FLAG, JSON.stringify(args)], { cwd: ctx.root, stdio: ['ignore', 'pipe', 'inherit'], signal: ctx.signal });
  let out = '';
  proc.stdout.on('data', (b: Buffer) => (out += b.toString()));
  const code = await new Promise<number | null>((resolve) => proc.once('exit', resolve));
  if (code !== 0) throw new Error(`${args.step} child exited with ${code}: ${out}`);
  return JSON.parse(out.trim().split('\n').at(-1) ?? '') as T;
}

// --- the children

const WRITER_FLAG = '--reopen-writer';
const STEP_FLAG = '--reopen-step';
const SELF = fileURLToPath(import.meta.url);

interface StepArgs {
  readonly dir: string;
  readonly step: 'writer' | 'read';
  readonly offset?: number;
}

/** Appends until the stream holds `bytes`, then says so and goes on until killed. */
async function writerChild(args: { dir: string; bytes: number }): Promise<void> {
  const store = new FileLogStore(args.dir, { segmentBytes: SEGMENT_BYTES });
  const writer = await store.claimWriter(QUEUE, { segmentBytes: SEGMENT_BYTES });
  const payload = randomBytes(FRAME_PAYLOAD_BYTES);
  const frameBytes = FRAME_PAYLOAD_BYTES + 20;
  let acked = 0;
  let said = false;
  const loop = async (): Promise<void> => {
    for (;;) {
      await writer.append(KEY, FrameType.MESSAGE, payload);
      acked++;
      if (acked % 20_000 === 0) process.stdout.write(`progress ${acked}\n`);
      if (!said && acked * frameBytes >= args.bytes) {
        said = true;
        process.stdout.write(`reached ${acked}\n`);
      }
    }
  };
  await Promise.all(Array.from({ length: IN_FLIGHT }, loop));
}

async function stepChild(args: StepArgs): Promise<unknown> {
  const started = performance.now();
  const store = new FileLogStore(args.dir, { segmentBytes: SEGMENT_BYTES });
  if (args.step === 'writer') {
    const writer = await store.claimWriter(QUEUE, { segmentBytes: SEGMENT_BYTES });
    const claimed = performance.now();
    if (writer.slot !== 0) throw new Error(`claimed slot ${writer.slot}, not the dead writer's`);
    const appended = await writer.append(KEY, FrameType.MESSAGE, Buffer.from('after the kill'));
    const ms = performance.now() - claimed;
    await writer.close();
    return { claimMs: claimed - started, ms, nextOffset: appended.offset + 1 };
  }
  const reader = store.reader(QUEUE, STREAM, { offset: args.offset ?? 0 });
  const read = await reader.read({ maxFrames: 1 });
  const ms = performance.now() - started;
  await reader.close();
  if (read.frames[0]?.offset !== args.offset) throw new Error(`read offset ${read.frames[0]?.offset}, wanted ${args.offset}`);
  return { ms };
}

// Entry point of the children: `node --import tsx bench/reopen.bench.ts --reopen-writer|--reopen-step '<json>'`.
if (process.argv[1] !== undefined && pathToFileURL(process.argv[1]).href === import.meta.url) {
  if (process.argv[2] === WRITER_FLAG) await writerChild(JSON.parse(process.argv[3] ?? '') as { dir: string; bytes: number });
  else if (process.argv[2] === STEP_FLAG) process.stdout.write(`${JSON.stringify(await stepChild(JSON.parse(process.argv[3] ?? '') as StepArgs))}\n`);
}
