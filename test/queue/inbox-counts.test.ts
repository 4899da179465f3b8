/**
 * The counts of an inbox and its dead letters come from the log's segment summaries and the consumer
 * state (inbox-counts.ts, stored-messages.ts), never from reading the queue; they must equal a read of
 * every message with its state (queue-scan.ts statQueue). Random histories of appends (and chunks whose
 * message never came), acks, nacks that end in the dead letters, purges, compactions, segment rolls and
 * restarts, against both stores.
 *
 * MQLOG_FUZZ_RUNS scales the runs, MQLOG_FUZZ_SEED changes the seed (as in test/fuzz).
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import fc from 'fast-check';
import { openNode, type MqlogNode } from '../../src/daemon/node.ts';
import { FileLogStore } from '../../src/log/file-log-store.ts';
import type { LogStore } from '../../src/log/log-store.ts';
import { MemoryLogStore } from '../../src/log/memory-log-store.ts';
import type { MessageMeta } from '../../src/queue/codec.ts';
import { compactNode } from '../../src/queue/compaction.ts';
import type { Inbox } from '../../src/queue/inbox.ts';
import { statQueue } from '../../src/queue/queue-scan.ts';
import { newId } from '../../src/util/ids.ts';
import { tempDir } from '../helpers/index.ts';
import { fuzzRuns, fuzzSeed } from '../helpers/security.ts';

const CHANNEL = 'jobs';
/** Small segments, so that a few messages fill several and compaction has whole ones to take. */
const CONFIG = { name: 'b', segmentBytes: 1024, maxDeliveries: 1, segmentRollIdleMs: 0 };

type Op =
  | { readonly op: 'append'; readonly priority: number; readonly bytes: number; readonly count: number }
  | { readonly op: 'chunk'; readonly priority: number }
  | { readonly op: 'ack'; readonly count: number }
  | { readonly op: 'fail' }
  | { readonly op: 'purge' }
  | { readonly op: 'compact' }
  | { readonly op: 'restart' };

const ops: fc.Arbitrary<Op[]> = fc.array(
  fc.oneof(
    { weight: 6, arbitrary: fc.record({ op: fc.constant('append' as const), priority: fc.integer({ min: 0, max: 2 }), bytes: fc.integer({ min: 0, max: 400 }), count: fc.integer({ min: 1, max: 6 }) }) },
    { weight: 1, arbitrary: fc.record({ op: fc.constant('chunk' as const), priority: fc.integer({ min: 0, max: 2 }) }) },
    { weight: 4, arbitrary: fc.record({ op: fc.constant('ack' as const), count: fc.integer({ min: 1, max: 5 }) }) },
    { weight: 3, arbitrary: fc.constant({ op: 'fail' as const }) },
    { weight: 1, arbitrary: fc.constant({ op: 'purge' as const }) },
    { weight: 2, arbitrary: fc.constant({ op: 'compact' as const }) },
    { weight: 1, arbitrary: fc.constant({ op: 'restart' as const }) },
  ),
  { minLength: 1, maxLength: 30, size: 'max' },
);

class Run {
  private node!: MqlogNode;
  private store: LogStore;
  private readonly dir: string;
  private readonly kind: 'file' | 'memory';
  step = 'open';

  private constructor(dir: string, kind: 'file' | 'memory') {
    this.dir = dir;
    this.kind = kind;
    this.store = kind === 'file' ? new FileLogStore(dir) : new MemoryLogStore();
  }

  static async open(dir: string, kind: 'file' | 'memory'): Promise<Run> {
    const run = new Run(dir, kind);
    run.node = await openNode({ data: dir, store: run.store, config: CONFIG });
    return run;
  }

  private inbox(): Promise<Inbox> {
    return this.node.inbox(CHANNEL);
  }

  async apply(op: Op): Promise<void> {
    const inbox = await this.inbox();
    switch (op.op) {
      case 'append':
        for (let i = 0; i < op.count; i++) await inbox.append(meta(op.priority), Buffer.alloc(op.bytes, i));
        return;
      case 'chunk': {
        const ts = Date.now();
        await inbox.appendChunk({ id: newId(ts), position: 0, ts, channel: CHANNEL, priority: op.priority, to: ['b'] }, Buffer.alloc(200, 7));
        return;
      }
      case 'ack':
        for await (const delivery of inbox.consume({ limit: op.count })) await delivery.ack();
        return;
      case 'fail':
        // maxDeliveries 1: the next hand-out moves it to the dead letters.
        for await (const delivery of inbox.consume({ limit: 1 })) await delivery.nack({ delayMs: 0 });
        return;
      case 'purge':
        await inbox.purge();
        return;
      case 'compact': {
        const result = await compactNode({ store: this.store, dataDir: this.dir });
        for (const q of result.queues) {
          coverage.add('segments deleted', q.segmentsDeleted);
          coverage.add('segments rewritten', q.segmentsRewritten);
        }
        return;
      }
      case 'restart':
        await this.node.close();
        if (this.kind === 'file') {
          await this.store.close();
          this.store = new FileLogStore(this.dir);
        }
        this.node = await openNode({ data: this.dir, store: this.store, config: CONFIG });
        return;
    }
  }

  /** Each queue's counts against a read of every message with its state. */
  async check(): Promise<void> {
    const inbox = await this.inbox();
    for (const queue of [inbox, await inbox.deadLetters()]) {
      const counted = await queue.stat();
      const scanned = await statQueue(this.store, queue.info, await queue.stateView());
      coverage.add(`${queue.info.kind} messages`, counted.messages);
      coverage.add(`${queue.info.kind} pending`, counted.pending);
      coverage.add(`${queue.info.kind} segments`, counted.segments);
      assert.deepEqual(counted, scanned, `${this.step}: ${queue.info.queue}: the counts from summaries and state equal a read of every message`);
    }
  }

  async close(): Promise<void> {
    await this.node.close();
    await this.store.close();
  }
}

/** What the checks saw, summed over every check: shows that the histories reach what they are about. */
const coverage = {
  counts: new Map<string, number>(),
  add(what: string, n: number): void {
    this.counts.set(what, (this.counts.get(what) ?? 0) + n);
  },
};

function meta(priority: number): MessageMeta {
  const ts = Date.now();
  return { id: newId(ts), ts, channel: CHANNEL, priority, to: ['b'], from: 'a' };
}

async function runProperty(t: TestContext, kind: 'file' | 'memory', runs: number, seed: number): Promise<void> {
  const root = await tempDir(t, 'mqlog-inbox-counts-');
  let passed = 0;
  await fc.assert(
    fc.asyncProperty(ops, async (list) => {
      const dir = await mkdtemp(join(root, 'run-'));
      const run = await Run.open(dir, kind);
      try {
        await run.check();
        for (const [i, op] of list.entries()) {
          run.step = `step ${i} ${JSON.stringify(op)}`;
          await run.apply(op);
          await run.check();
        }
      } finally {
        await run.close();
        await rm(dir, { recursive: true, force: true });
      }
      passed++;
    }),
    { numRuns: runs, seed: fuzzSeed(t, seed), includeErrorInReport: true },
  );
  t.diagnostic(`${passed} passing runs; summed over the checks: ${[...coverage.counts].map(([k, v]) => `${k} ${v}`).join(', ')}`);
}

test('an inbox and its dead letters are counted from segment summaries and the consumer state as a read of every message counts them (file store)', async (t) => {
  await runProperty(t, 'file', fuzzRuns(15), 0x1bc0);
});

test('an inbox and its dead letters are counted from segment summaries and the consumer state as a read of every message counts them (memory store)', async (t) => {
  await runProperty(t, 'memory', fuzzRuns(30), 0x1bc1);
});
