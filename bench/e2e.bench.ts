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
 * 2. Latency of a lone message on an idle pair: one send, wait until B stored it, pause, repeat;
 *    p50 (target < 100 ms) and p99. B's counter is read when its inbox stream changes (inotify), then
 *    every millisecond until it moves, so readings are about 1-2 ms late.
 *
 * The library is imported from dist/ (`npm run bench` builds first).
 */
import { randomBytes } from 'node:crypto';
import { watch } from 'node:fs';
import { readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { openNode, type MqlogNode } from '../dist/daemon/node.js';
import { KiB, median, type BenchContext } from './harness.ts';
import { CONCURRENCY, RECEIVED, endToEnd, percentile, sendCount, startPair, syncDir, type BenchDaemon } from './pair.ts';

/** The discard port: send() never touches the network, nothing listens there. */
const NOWHERE = 'http://127.0.0.1:9';
const BODY_BYTES = KiB;
const RATIO_TARGET = 0.5;
const P50_TARGET_MS = 100;

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

    ctx.section(`latency of a lone message on an idle pair, send() to B's inbox fsync; ${latency.total.length} samples`);
    ctx.figure({ id: 'latency.p50', label: 'append → inbox, p50', value: percentile(latency.total, 50), unit: 'ms', target: { op: '<', value: P50_TARGET_MS } });
    ctx.figure({ id: 'latency.p99', label: 'append → inbox, p99', value: percentile(latency.total, 99), unit: 'ms' });
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
 * Sends one message at a time and waits until B stored it, with a pause in between (an idle pair).
 * B's counter is read when B's inbox stream changes (inotify on its directory, 100 ms fallback), then
 * every millisecond until it moves: the write is seen at once, the fdatasync a little later. Polling
 * GET /metrics all along would load B (about 1 ms of its CPU per request).
 */
async function loneMessages(ctx: BenchContext, sender: MqlogNode, b: BenchDaemon, samples: number, body: Buffer): Promise<{ total: number[]; append: number[] }> {
  const inbox = join(b.node.dir, 'inbox', 'common');
  const streams = (await readdir(inbox)).filter((name) => /^p4\.w\d+$/.test(name));
  if (streams.length === 0) throw new Error(`no p4 stream in ${inbox} after the warm-up`);
  // A generation count closes the race between "counter not moved yet" and "wait for a change".
  let changes = 0;
  let wake: (() => void) | undefined;
  const watchers = streams.map((name) =>
    watch(join(inbox, name), () => {
      changes++;
      wake?.();
    }),
  );
  const total: number[] = [];
  const append: number[] = [];
  try {
    let stored = await b.counter(RECEIVED);
    for (let i = 0; i < samples; i++) {
      ctx.signal.throwIfAborted();
      // Let both daemons go idle: A's forwarder back to waiting for outbox changes.
      await new Promise((resolve) => setTimeout(resolve, 50));
      const startedMs = performance.now();
      await sender.send('b', body);
      append.push(performance.now() - startedMs);
      for (;;) {
        const seen = changes;
        if ((await b.counter(RECEIVED)) > stored) break;
        if (performance.now() - startedMs > 30_000) throw new Error('a lone message took more than 30 s to reach B');
        if (changes === seen) {
          await new Promise<void>((resolve) => {
            const timer = setTimeout(done, 100);
            function done(): void {
              clearTimeout(timer);
              wake = undefined;
              resolve();
            }
            wake = done;
          });
        }
        for (let polls = 0; polls < 50 && (await b.counter(RECEIVED)) <= stored; polls++) await new Promise((resolve) => setTimeout(resolve, 1));
      }
      total.push(performance.now() - startedMs);
      stored++;
    }
  } finally {
    for (const w of watchers) w.close();
  }
  return { total, append };
}
