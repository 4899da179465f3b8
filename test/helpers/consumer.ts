/**
 * The fixture consumer process (test/fixtures/lease-consumer.ts) as tests drive it: started on a node
 * directory, its JSON lines collected as they arrive.
 */
import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import type { TestContext } from 'node:test';
import { FIXTURES, exited, spawnChild } from './index.js';

const CONSUMER = join(FIXTURES, 'lease-consumer.ts');

/** One line the fixture printed. */
export interface Printed {
  readonly id?: string;
  readonly body?: string;
  readonly deliveries?: number;
  readonly leaseUntil?: number;
  readonly at?: number;
  readonly error?: string;
  readonly ready?: boolean;
  readonly holding?: boolean;
  readonly working?: string;
}

export interface ConsumerProcess {
  readonly child: ChildProcess;
  readonly printed: Printed[];
  stderr(): string;
}

/** Starts the fixture consumer on `dir` with `args` (killed after the test). */
export function startConsumer(t: TestContext, dir: string, args: string[]): ConsumerProcess {
  const child = spawnChild(t, process.execPath, ['--import', 'tsx', CONSUMER, '--data', dir, ...args]);
  const printed: Printed[] = [];
  let partial = '';
  let stderr = '';
  child.stdout!.setEncoding('utf8');
  child.stdout!.on('data', (chunk: string) => {
    const parts = (partial + chunk).split('\n');
    partial = parts.pop() ?? '';
    for (const line of parts) if (line.trim().length > 0) printed.push(JSON.parse(line) as Printed);
  });
  child.stderr!.on('data', (b: Buffer) => (stderr += b.toString()));
  return { child, printed, stderr: () => stderr };
}

/** The lines of messages whose ack resolved (with --ack) or that were handed out (without). */
export function acked(printed: readonly Printed[]): Printed[] {
  return printed.filter((p) => p.id !== undefined && p.error === undefined && p.body !== undefined);
}

/**
 * Waits for consumers sharing a backlog to exit, and checks what they did: every message of `ids`
 * processed by exactly one of them, each consumer at least `atLeast` of them. Returns each one's share.
 */
export async function assertShared(t: TestContext, consumers: readonly ConsumerProcess[], ids: readonly string[], atLeast: number): Promise<string[][]> {
  for (const c of consumers) assert.equal((await exited(c.child)).code, 0, c.stderr());
  const shares = consumers.map((c) => acked(c.printed).map((p) => p.id as string));
  t.diagnostic(`shares: ${shares.map((s) => s.length).join(' / ')}`);
  const all = shares.flat();
  assert.equal(new Set(all).size, all.length, 'no message processed twice');
  assert.deepEqual([...all].sort(), [...ids].sort(), 'every message processed');
  for (const share of shares) assert.ok(share.length >= atLeast, `a consumer got only ${share.length} of ${ids.length}`);
  return shares;
}
