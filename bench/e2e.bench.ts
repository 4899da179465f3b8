/**
 * The end-to-end benchmark: store and forward from node A to node B on loopback, both durable.
 *
 * Two daemons run as child processes (`node dist/cli/main.js daemon`, as in production). This process
 * sends through the library into A's outbox (`openNode({ data: A }).send('b', body)`, each resolving
 * after fdatasync), with 64 concurrent callers; A's forwarder reads the outbox and POSTs batches to B,
 * whose receiver answers only after its inbox fdatasync. Arrival is read from B's counter
 * `mqlog_received_messages_total` (GET /metrics), which moves after that fdatasync.
 *
 * 1. Throughput: N × 1 KiB messages, timed from the first append to the moment B has stored the last
 *    one, compared with local durable append (the same 64 callers, the same N, a fresh node directory
 *    without daemon) measured in the same round. Rounds alternate local and end-to-end; figures are
 *    medians over the rounds, ratios taken within a round. Target: ≥ 0.5×.
 * 2. Latency of a lone message on an idle pair: one send, wait until a library consumer on B (in this
 *    process: `openNode({ data: B }).tail({ follow: true })`) is handed it, ack, pause, repeat; p50
 *    (target < 5 ms) and p99 (target < 20 ms). The messages go to a channel of their own, so the
 *    consumer sees only them.
 *
 * The library is imported from dist/ (`npm run bench` builds first).
 */
import { randomBytes } from 'node:crypto';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { openNode, type MqlogNode } from '../dist/daemon/node.js';
import { KiB, median, type BenchContext } from './harness.ts';
import { CONCURRENCY, endToEnd, percentile, sendCount, startPair, syncDir, type BenchDaemon } from './pair.ts';

/** The discard port: send() never touches the network, nothing listens there. */
const NOWHERE = 'http://127.0.0.1:9';
const BODY_BYTES = KiB;
const RATIO_TARGET = 0.5;
const P50_TARGET_MS = 5;
const P99_TARGET_MS = 20;
const LATENCY_CHANNEL = 'lone';

interface Plan {
  readonly rounds: number;
  readonly messages: number;
  readonly warmupMessages: number;
  readonly latencySamples: number;
}

const FULL: Plan = { rounds: 3, messages: 50_000, warmupMessages: 5_000, latencySamples: 200 };
const QUICK: Plan = { rounds: 1, messages: 5_000, warmupMessages: 500, latencySamples: 30 };

export async function bench(ctx: BenchContext): Promise<void> {
  const plan = ctx.quick ? QUICK : FULL;
  const body = randomBytes(BODY_BYTES);
  const pair = await startPair(ctx, join(ctx.dir, 'pair'));
  let sender: MqlogNode | undefined;
  try {
    sender = await openNode({ data: pair.a.node.dir });
    ctx.progress(`warm-up: ${plan.warmupMessages} messages A → B`);
    await endToEnd(ctx, sender, pair.b, plan.warmupMessages, body);

    const rounds: { local: number; e2e: number; appendWhileForwarding: number }[] = [];
    for (let i = 0; i < plan.rounds; i++) {
      const of = `round ${i + 1}/${plan.rounds}`;
      ctx.progress(`${of}: local durable append, ${plan.messages} messages`);
      const local = await localAppend(ctx, join(ctx.dir, `local-${i}`), plan.messages, body);
      ctx.progress(`${of}: end to end, ${plan.messages} messages`);
      const e2e = await endToEnd(ctx, sender, pair.b, plan.messages, body);
      rounds.push({ local, e2e: e2e.rate, appendWhileForwarding: e2e.appendRate });
    }

    ctx.progress(`latency: ${plan.latencySamples} lone messages`);
    const latency = await loneMessages(ctx, sender, pair.b, plan.latencySamples, body);

    const runs = `median of ${plan.rounds} × ${plan.messages.toLocaleString('en-US')} messages`;
    ctx.section(`throughput, 1 KiB bodies, ${CONCURRENCY} concurrent library callers; ${runs}`);
    const local = rounds.map((r) => r.local);
    ctx.figure({ id: 'local.rate', label: 'local durable append (node.send, fresh node)', value: median(local), unit: 'msgs/s', runs: local });
    const e2e = rounds.map((r) => r.e2e);
    ctx.figure({ id: 'e2e.rate', label: 'A → B, first append to last inbox fsync', value: median(e2e), unit: 'msgs/s', runs: e2e });
    const appendRate = rounds.map((r) => r.appendWhileForwarding);
    ctx.figure({ id: 'e2e.append_rate', label: 'appends into A while A forwards (info)', value: median(appendRate), unit: 'msgs/s', runs: appendRate });
    const ratio = rounds.map((r) => r.e2e / r.local);
    ctx.figure({ id: 'e2e.ratio', label: 'end to end ÷ local durable append', value: median(ratio), unit: '×', runs: ratio, target: { op: '>=', value: RATIO_TARGET } });

    ctx.section(`latency of a lone message on an idle pair, send() on A to a library consumer on B; ${latency.total.length} samples`);
    ctx.figure({ id: 'latency.p50', label: 'send() → handed to the consumer on B, p50', value: percentile(latency.total, 50), unit: 'ms', target: { op: '<', value: P50_TARGET_MS } });
    ctx.figure({ id: 'latency.p99', label: 'send() → handed to the consumer on B, p99', value: percentile(latency.total, 99), unit: 'ms', target: { op: '<', value: P99_TARGET_MS } });
    ctx.figure({ id: 'latency.append_p50', label: 'of which the local append (send() resolved), p50', value: percentile(latency.append, 50), unit: 'ms' });
  } finally {
    await sender?.close();
    await pair.stop();
  }
}

/** Local durable append on a fresh node directory (removed afterwards); the first send is not timed. */
async function localAppend(ctx: BenchContext, dir: string, count: number, body: Buffer): Promise<number> {
  try {
    const node = await openNode({ data: dir });
    try {
      await node.send(NOWHERE, body);
      const startedMs = performance.now();
      await sendCount(node, NOWHERE, CONCURRENCY, count, body);
      ctx.signal.throwIfAborted();
      return count / ((performance.now() - startedMs) / 1000);
    } finally {
      await node.close();
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
    await syncDir(ctx.dir);
  }
}

/**
 * Sends one message at a time to a channel of its own and waits until a library consumer of B's inbox
 * (in this process, following) is handed it, acks it, pauses (an idle pair: A's forwarder back to waiting
 * for outbox changes), and repeats.
 */
async function loneMessages(ctx: BenchContext, sender: MqlogNode, b: BenchDaemon, samples: number, body: Buffer): Promise<{ total: number[]; append: number[] }> {
  const consumer = await openNode({ data: b.node.dir });
  const deliveries = consumer.tail({ channel: LATENCY_CHANNEL, follow: true, prefetch: 1 })[Symbol.asyncIterator]();
  const total: number[] = [];
  const append: number[] = [];
  try {
    for (let i = 0; i < samples; i++) {
      ctx.signal.throwIfAborted();
      await new Promise((resolve) => setTimeout(resolve, 50));
      const startedMs = performance.now();
      const handed = deliveries.next();
      await sender.send('b', body, { channel: LATENCY_CHANNEL });
      append.push(performance.now() - startedMs);
      const timeout = new Promise<never>((_, reject) => setTimeout(() => reject(new Error('a lone message took more than 30 s to reach the consumer on B')), 30_000).unref());
      const { value, done } = await Promise.race([handed, timeout]);
      if (done === true || value === undefined) throw new Error('the consumer on B stopped');
      total.push(performance.now() - startedMs);
      await value.ack();
    }
  } finally {
    await deliveries.return?.(undefined);
    await consumer.close();
  }
  return { total, append };
}
