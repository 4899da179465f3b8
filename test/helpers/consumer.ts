/**
 * The fixture consumer process (test/fixtures/lease-consumer.ts) as tests drive it: started on a node
 * directory, its JSON lines collected as they arrive.
 */
import type { ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import type { TestContext } from 'node:test';
import { FIXTURES, spawnChild } from './index.js';

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
