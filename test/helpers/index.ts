/**
 * Shared test helpers: temporary directories, running the built CLI, waiting for conditions.
 * Tests never sleep for a fixed time to let something happen; they wait for a condition with a
 * generous deadline.
 */
import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import type { TestContext } from 'node:test';

export const ROOT = resolve(import.meta.dirname, '..', '..');
export const CLI = join(ROOT, 'dist', 'cli', 'main.js');
export const FIXTURES = join(ROOT, 'test', 'fixtures');

const cleanups = new WeakMap<TestContext, (() => Promise<void> | void)[]>();

/**
 * Runs `fn` after the test, in reverse order of registration (processes started after a directory was
 * made are stopped before it is removed). Errors are reported but do not stop the other clean-ups.
 */
export function defer(t: TestContext, fn: () => Promise<void> | void): void {
  let stack = cleanups.get(t);
  if (stack === undefined) {
    const fresh: (() => Promise<void> | void)[] = [];
    stack = fresh;
    cleanups.set(t, fresh);
    t.after(async () => {
      for (const cleanup of fresh.reverse()) {
        try {
          await cleanup();
        } catch (err) {
          process.stderr.write(`clean-up failed: ${err instanceof Error ? err.message : String(err)}\n`);
        }
      }
    });
  }
  stack.push(fn);
}

/** A fresh temporary directory, removed after the test (after everything registered later is cleaned up). */
export async function tempDir(t: TestContext, prefix = 'mqlog-test-'): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  defer(t, () => rm(dir, { recursive: true, force: true, maxRetries: 5 }));
  return dir;
}

export interface RunResult {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly stdout: string;
  readonly stderr: string;
}

/** Children still running; killed when this test process exits, however it ends (a timed-out test runs no cleanup). */
const running = new Set<ChildProcess>();
function killRunning(): void {
  for (const child of running) child.kill('SIGKILL');
}
process.on('exit', killRunning);
// The test runner ends a file that ran past its timeout with a signal.
for (const signal of ['SIGTERM', 'SIGINT'] as const) {
  process.once(signal, () => {
    killRunning();
    process.kill(process.pid, signal);
  });
}

/** Makes sure a spawned child cannot outlive this test process. */
export function track<T extends ChildProcess>(child: T): T {
  running.add(child);
  child.once('exit', () => running.delete(child));
  return child;
}

/** Runs `mqlog <args>` (the built CLI) to completion. `input` is written to stdin, which is then closed. */
export function mqlog(args: string[], options: { input?: string | Buffer; env?: NodeJS.ProcessEnv; cwd?: string; timeoutMs?: number } = {}): Promise<RunResult> {
  return run(process.execPath, [CLI, ...args], options);
}

export function run(
  command: string,
  args: string[],
  options: { input?: string | Buffer; env?: NodeJS.ProcessEnv; cwd?: string; timeoutMs?: number } = {},
): Promise<RunResult> {
  return new Promise((resolvePromise, reject) => {
    const child = track(
      spawn(command, args, {
        cwd: options.cwd ?? ROOT,
        env: { ...process.env, ...options.env },
        stdio: ['pipe', 'pipe', 'pipe'],
      }),
    );
    const stdout: Buffer[] = [];
    const stderr: Buffer[] = [];
    child.stdout.on('data', (b: Buffer) => stdout.push(b));
    child.stderr.on('data', (b: Buffer) => stderr.push(b));
    const timer = setTimeout(() => child.kill('SIGKILL'), options.timeoutMs ?? 120_000);
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolvePromise({ code, signal, stdout: Buffer.concat(stdout).toString('utf8'), stderr: Buffer.concat(stderr).toString('utf8') });
    });
    child.stdin.on('error', () => undefined);
    child.stdin.end(options.input ?? '');
  });
}

/** Spawns a long-running child and kills it (SIGKILL) after the test if still alive. */
export function spawnChild(t: TestContext, command: string, args: string[], options: SpawnOptions = {}): ChildProcess {
  const child = track(spawn(command, args, { cwd: ROOT, stdio: ['pipe', 'pipe', 'pipe'], ...options }));
  defer(t, async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGKILL');
      await exited(child);
    }
  });
  return child;
}

/** Waits until `condition` returns a truthy value (polled), or fails after `timeoutMs`. */
export async function waitFor<T>(
  condition: () => T | Promise<T>,
  { timeoutMs = 60_000, intervalMs = 25, message = 'condition' }: { timeoutMs?: number; intervalMs?: number; message?: string } = {},
): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const value = await condition();
      if (value) return value;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${message}${last === undefined ? "" : `: ${last instanceof Error ? last.message : JSON.stringify(last)}`}`);
    }
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

/** Parses JSON Lines output. */
export function jsonLines<T = Record<string, unknown>>(text: string): T[] {
  return text
    .split('\n')
    .filter((line) => line.trim().length > 0)
    .map((line) => JSON.parse(line) as T);
}

/** Resolves when the child exits; returns its exit code and signal. */
export function exited(child: ChildProcess): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve({ code: child.exitCode, signal: child.signalCode });
  return new Promise((resolvePromise) => child.once('exit', (code, signal) => resolvePromise({ code, signal })));
}
