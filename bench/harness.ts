/**
 * What a benchmark module gets from bench/run.ts, and small helpers they share.
 *
 * A benchmark module exports `bench(ctx: BenchContext): Promise<void>`. It does its I/O under `ctx.dir`
 * (an empty scratch directory on the project's disk, removed after the module returns or throws), reports
 * each measured number through `ctx.figure()`, and stops early when `ctx.signal` aborts (Ctrl-C).
 * Modules run one at a time, never concurrently, so one module's I/O does not disturb another's figures.
 */
import type { FileHandle } from 'node:fs/promises';
import { statfs } from 'node:fs/promises';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';

export const KiB = 1024;
export const MiB = 1024 * 1024;
export const GiB = 1024 * MiB;

/** A goal a figure is checked against: `>=` for rates and ratios, `<` for costs such as memory. */
export interface Target {
  readonly op: '>=' | '<';
  readonly value: number;
}

export interface FigureInput {
  /** Stable, machine-readable name within the module, e.g. `raw.append_1kib_fsync`. Part of the JSON output. */
  readonly id: string;
  /** What a reader sees on the aligned line. */
  readonly label: string;
  readonly value: number;
  readonly unit: string;
  /** The individual runs the value was taken from (the value is their median). */
  readonly runs?: readonly number[];
  readonly target?: Target;
  /** Human-readable extra shown after the value (not a substitute for a separate figure). */
  readonly detail?: string;
}

export interface Figure extends FigureInput {
  readonly bench: string;
  /** Present when the figure has a target. */
  readonly pass?: boolean;
}

export interface BenchContext {
  /** The module's name, as used to select it on the command line. */
  readonly name: string;
  /** The project root (where package.json is). */
  readonly root: string;
  /** An empty scratch directory on the project's disk; removed after the module. */
  readonly dir: string;
  /** `--quick`: short runs and small data sets, for a smoke test rather than trustworthy numbers. */
  readonly quick: boolean;
  /** Aborts on SIGINT/SIGTERM; pass it to spawn() and check it in timed loops. */
  readonly signal: AbortSignal;
  /** Prints a heading for the figures that follow. */
  section(title: string): void;
  /** Prints one figure as an aligned line now, and keeps it for the JSON summary. */
  figure(figure: FigureInput): Figure;
  /** Prints a note that belongs with the figures (e.g. a data set was scaled down). */
  note(text: string): void;
  /** Progress for the impatient: goes to stderr, never into the figures. */
  progress(text: string): void;
}

export type BenchFn = (ctx: BenchContext) => Promise<void>;

/**
 * The arguments of node for `mqlog daemon --data DIR` from the built CLI, preceded by
 * BENCH_DAEMON_NODE_ARGS (e.g. `--cpu-prof --cpu-prof-dir=/tmp/prof`) where it is set: the benches'
 * daemons are profiled that way.
 */
export function daemonArgs(ctx: BenchContext, dataDir: string): string[] {
  return [...(process.env.BENCH_DAEMON_NODE_ARGS?.split(' ').filter(Boolean) ?? []), join(ctx.root, 'dist', 'cli', 'main.js'), 'daemon', '--data', dataDir];
}

/**
 * True when the module at `moduleUrl` is this process's entry point, started as a module's child process
 * with `flag` (`node --import tsx <module> <flag> …`).
 */
export function runsAsChild(moduleUrl: string, flag: string): boolean {
  return process.argv[2] === flag && process.argv[1] !== undefined && pathToFileURL(process.argv[1]).href === moduleUrl;
}

/**
 * The next line a child process printed; fails naming `what` when none comes within `timeoutMs`, when
 * the output ends, or when `failed` (the child's exit) rejects first.
 */
export async function nextLine(lines: AsyncIterator<string>, what: string, failed?: Promise<never>, timeoutMs = 30_000): Promise<string> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: nothing from the child process in ${timeoutMs / 1000} s`)), timeoutMs);
  });
  try {
    const line = await Promise.race([lines.next(), timeout, ...(failed === undefined ? [] : [failed])]);
    if (line.done === true) throw new Error(`${what}: the child process's output ended`);
    return line.value;
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Runs `task(0)` … `task(count - 1)` with `concurrency` callers, each taking the next number once its
 * last task is done (as that many application threads sending one message after another).
 */
export async function shared(count: number, concurrency: number, task: (n: number) => Promise<void>): Promise<void> {
  let next = 0;
  const caller = async (): Promise<void> => {
    while (next < count) await task(next++);
  };
  await Promise.all(Array.from({ length: concurrency }, caller));
}

export function median(values: readonly number[]): number {
  if (values.length === 0) return Number.NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 === 1 ? (sorted[mid] as number) : ((sorted[mid - 1] as number) + (sorted[mid] as number)) / 2;
}

export function meets(value: number, target: Target): boolean {
  return target.op === '>=' ? value >= target.value : value < target.value;
}

/** Bytes an unprivileged process may still write on the file system holding `path`. */
export async function freeBytes(path: string): Promise<number> {
  const stats = await statfs(path);
  return stats.bavail * stats.bsize;
}

/** Writes all of `buffer` at `position` (a regular file rarely takes less, but may). */
export async function writeFully(handle: FileHandle, buffer: Uint8Array, position: number): Promise<void> {
  let done = 0;
  while (done < buffer.length) {
    const { bytesWritten } = await handle.write(buffer, done, buffer.length - done, position + done);
    done += bytesWritten;
  }
}

/** A number formatted for the aligned lines: ratios with 2 decimals, large values grouped, small ones with decimals. */
export function formatValue(value: number, unit: string): string {
  if (!Number.isFinite(value)) return String(value);
  if (unit === '×') return value.toFixed(2);
  const abs = Math.abs(value);
  if (abs >= 1000) return Math.round(value).toLocaleString('en-US');
  if (abs >= 100) return value.toFixed(0);
  if (abs >= 10) return value.toFixed(1);
  return value.toFixed(2);
}

export function formatBytes(bytes: number): string {
  if (bytes >= GiB) return `${(bytes / GiB).toFixed(1)} GiB`;
  if (bytes >= MiB) return `${(bytes / MiB).toFixed(1)} MiB`;
  if (bytes >= KiB) return `${(bytes / KiB).toFixed(1)} KiB`;
  return `${bytes} B`;
}
