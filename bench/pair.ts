/**
 * Two real daemons for the end-to-end benchmarks: node directories `a` and `b` under a scratch
 * directory, each naming the other as a peer, each run as `node dist/cli/main.js daemon` in a child
 * process (as in production: the daemons' event loops and garbage collectors are not the benchmark's).
 * Also: reading a daemon's counters from GET /metrics, peak RSS from /proc, and percentiles.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdir, open, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { join } from 'node:path';
import type { MqlogNode } from '../dist/daemon/node.js';
import type { SendOptions } from '../dist/queue/outbox.js';
import { daemonArgs, shared, type BenchContext } from './harness.ts';

/** Concurrent library callers in the throughput runs. */
export const CONCURRENCY = 64;
/** B's counter of messages stored in its inboxes (moves after the inbox fdatasync). */
export const RECEIVED = 'mqlog_received_messages_total';

export interface BenchNode {
  readonly name: string;
  readonly dir: string;
  readonly port: number;
  readonly url: string;
}

/** A daemon child process. Its log is kept (the last 64 KiB) for error messages. */
export class BenchDaemon {
  readonly node: BenchNode;
  child: ChildProcess | undefined;
  private log = '';

  constructor(node: BenchNode) {
    this.node = node;
  }

  get pid(): number | undefined {
    return this.child?.pid;
  }

  /** Starts `mqlog daemon` (harness.ts daemonArgs) and resolves once it prints `listening on`. */
  async start(ctx: BenchContext): Promise<void> {
    const child = spawn(process.execPath, daemonArgs(ctx, this.node.dir), {
      cwd: ctx.root,
      stdio: ['ignore', 'pipe', 'pipe'],
      signal: ctx.signal,
    });
    this.child = child;
    const keep = (b: Buffer): void => {
      this.log = (this.log + b.toString()).slice(-64 * 1024);
    };
    child.stdout.on('data', keep);
    child.stderr.on('data', keep);
    child.on('error', () => undefined);
    await new Promise<void>((resolve, reject) => {
      const check = (): void => {
        if (this.log.includes('listening on')) {
          child.stdout.off('data', check);
          child.off('exit', onExit);
          resolve();
        }
      };
      const onExit = (code: number | null, signal: NodeJS.Signals | null): void => reject(new Error(`daemon ${this.node.name} exited with ${code ?? signal} before listening:\n${this.log}`));
      child.stdout.on('data', check);
      child.once('exit', onExit);
    });
  }

  /** SIGTERM, and wait for the exit (the daemon drains first). */
  async stop(): Promise<void> {
    const child = this.child;
    if (child === undefined || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    child.kill('SIGTERM');
    await exited;
  }

  /** The last part of the daemon's log. */
  get output(): string {
    return this.log;
  }

  /** The sum of a counter over all its label sets (0 when it has none yet). */
  async counter(name: string): Promise<number> {
    const response = await fetch(`${this.node.url}/metrics`);
    const text = await response.text();
    if (response.status !== 200) throw new Error(`GET /metrics of ${this.node.name}: ${response.status} ${text.slice(0, 200)}`);
    let total = 0;
    for (const line of text.split('\n')) {
      if (!line.startsWith(name)) continue;
      const rest = line.slice(name.length);
      if (rest[0] !== ' ' && rest[0] !== '{') continue;
      total += Number(line.slice(line.lastIndexOf(' ') + 1));
    }
    return total;
  }
}

export interface Pair {
  readonly a: BenchDaemon;
  readonly b: BenchDaemon;
  stop(): Promise<void>;
}

/**
 * Creates nodes `a` and `b` under `root` (each a peer of the other, on free loopback ports, with `extra`
 * config keys) and starts both daemons. Stop them with `pair.stop()` (also on failure).
 */
export async function startPair(ctx: BenchContext, root: string, extra: Record<string, unknown> = {}): Promise<Pair> {
  const nodes: BenchNode[] = [];
  for (const name of ['a', 'b']) {
    const port = await freePort();
    nodes.push({ name, dir: join(root, name), port, url: `http://127.0.0.1:${port}` });
  }
  for (const node of nodes) {
    await mkdir(node.dir, { recursive: true });
    const peers = Object.fromEntries(nodes.filter((n) => n !== node).map((n) => [n.name, { url: n.url }]));
    await writeFile(join(node.dir, 'mqlog.json'), JSON.stringify({ name: node.name, listen: `127.0.0.1:${node.port}`, peers, ...extra }));
  }
  const a = new BenchDaemon(nodes[0] as BenchNode);
  const b = new BenchDaemon(nodes[1] as BenchNode);
  const stop = async (): Promise<void> => {
    await Promise.all([a.stop(), b.stop()]);
  };
  try {
    await Promise.all([a.start(ctx), b.start(ctx)]);
  } catch (err) {
    await stop();
    throw err;
  }
  return { a, b, stop };
}

/** A TCP port that was free a moment ago. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      const port = typeof address === 'object' && address !== null ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

/** Polls `condition` every `intervalMs` until it holds; fails after `timeoutMs` or when the run is interrupted. */
export async function until(ctx: BenchContext, condition: () => Promise<boolean> | boolean, what: string, { intervalMs = 20, timeoutMs = 600_000 } = {}): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!(await condition())) {
    ctx.signal.throwIfAborted();
    if (performance.now() > deadline) throw new Error(`timed out after ${timeoutMs / 1000} s waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, intervalMs));
  }
}

/** VmHWM (peak resident set size) of a live process in bytes, undefined once it is gone. */
export function vmHWM(pid: number | undefined): number | undefined {
  if (pid === undefined) return undefined;
  try {
    const match = /^VmHWM:\s+(\d+)\s+kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return match === null ? undefined : Number(match[1]) * 1024;
  } catch {
    return undefined;
  }
}

/** Clock ticks a second of /proc's CPU times (USER_HZ: 100 on every Linux this runs on). */
const TICKS_PER_SECOND = 100;

/** CPU time (user + system, every thread) of a live process, in seconds; undefined where /proc cannot tell. */
export function cpuSeconds(pid: number | undefined): number | undefined {
  return pid === undefined ? undefined : procCpuSeconds(String(pid), 11);
}

/** CPU time of this process's children that exited and were waited for (cutime + cstime), in seconds. */
export function exitedChildrenCpuSeconds(): number | undefined {
  return procCpuSeconds('self', 13);
}

/** The two CPU-time fields of /proc/<pid>/stat from `field` on (counted after the command name), in seconds. */
function procCpuSeconds(pid: string, field: number): number | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The fields after the command name (which may hold spaces) in parentheses; utime is field 14.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ').map(Number);
    const [user, system] = [fields[field], fields[field + 1]];
    return user === undefined || system === undefined ? undefined : (user + system) / TICKS_PER_SECOND;
  } catch {
    return undefined;
  }
}

/** `after − before`, undefined when either is. */
export function minus(after: number | undefined, before: number | undefined): number | undefined {
  return after === undefined || before === undefined ? undefined : after - before;
}

/** Keeps the last VmHWM read of each process, polled every `intervalMs` (the last reading before exit is its peak). */
export class PeakRssSampler {
  private readonly peaks = new Map<string, { pid: number | undefined; bytes: number }>();
  private readonly timer: NodeJS.Timeout;

  constructor(intervalMs = 50) {
    this.timer = setInterval(() => this.sample(), intervalMs);
  }

  watch(label: string, pid: number | undefined): void {
    this.peaks.set(label, { pid, bytes: vmHWM(pid) ?? 0 });
  }

  sample(): void {
    for (const entry of this.peaks.values()) entry.bytes = Math.max(entry.bytes, vmHWM(entry.pid) ?? 0);
  }

  results(): Map<string, number> {
    return new Map([...this.peaks].map(([label, e]) => [label, e.bytes]));
  }

  stop(): void {
    clearInterval(this.timer);
  }
}

/** The `p`-th percentile (0..100) of `values`, nearest rank. */
export function percentile(values: readonly number[], p: number): number {
  if (values.length === 0) return Number.NaN;
  const sorted = [...values].sort((x, y) => x - y);
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[rank] as number;
}

/** `concurrency` callers share `count` sends. */
export async function sendCount(node: MqlogNode, to: string, concurrency: number, count: number, body: Buffer, options: SendOptions = {}): Promise<void> {
  await shared(count, concurrency, async () => {
    await node.send(to, body, options);
  });
}

/** CPU time a message (µs) of the sending process and of daemons A and B over one `endToEnd`; undefined where /proc cannot tell. */
export interface EndToEndCpu {
  readonly send: number;
  readonly a: number | undefined;
  readonly b: number | undefined;
}

/**
 * Sends `count` messages to B and waits until B stored them all. B's counter is not polled while the
 * sends run (none of them can be the last), then every 50 ms (each GET /metrics costs B about 1 ms of CPU).
 * With `a`, also the CPU a message each process spent from the first send to the last message stored.
 */
export async function endToEnd(ctx: BenchContext, sender: MqlogNode, b: BenchDaemon, count: number, body: Buffer, options: SendOptions = {}, a?: BenchDaemon): Promise<{ rate: number; appendRate: number; cpu: EndToEndCpu }> {
  const base = await b.counter(RECEIVED);
  const before = { send: process.cpuUsage(), a: cpuSeconds(a?.pid), b: cpuSeconds(b.pid) };
  const startedMs = performance.now();
  await sendCount(sender, 'b', CONCURRENCY, count, body, options);
  const appendedMs = performance.now() - startedMs;
  await until(ctx, async () => (await b.counter(RECEIVED)) >= base + count, `B to store ${count} messages`, { intervalMs: 50 });
  const ms = performance.now() - startedMs;
  const sendUsage = process.cpuUsage(before.send);
  const perMessage = (seconds: number | undefined): number | undefined => (seconds === undefined ? undefined : (seconds * 1e6) / count);
  const cpu = { send: (sendUsage.user + sendUsage.system) / count, a: perMessage(minus(cpuSeconds(a?.pid), before.a)), b: perMessage(minus(cpuSeconds(b.pid), before.b)) };
  return { rate: count / (ms / 1000), appendRate: count / (appendedMs / 1000), cpu };
}

/** fsync a directory, so that removals in it are committed (and paid for) now. */
export async function syncDir(dir: string): Promise<void> {
  const handle = await open(dir, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}
