/**
 * The end-to-end benchmark: store and forward from node A to node B on loopback, both durable.
 *
 * Two daemons run as child processes (`node dist/cli/main.js daemon`, as in production). This process
 * sends through the library into A's outbox (`openNode({ data: A }).send('b', body)`, each resolving
 * after fdatasync), with 64 concurrent callers; A's forwarder reads the outbox and POSTs batches to B,
 * whose receiver answers only after its inbox fdatasync. Arrival is read from B's counter
 * `mqlog_received_messages_total` (GET /metrics), which moves after that fdatasync.
 *
 * 1. Throughput (after a warm-up, see Plan): N × 1 KiB messages, timed from the first append to the
 *    moment B has stored the last one, compared with local durable append (the same 64 callers, the
 *    same N, a fresh node directory without daemon) measured in the same round. Rounds alternate local and end-to-end; figures are
 *    medians over the rounds, ratios taken within a round. Target: ≥ 0.5×. For information, where that
 *    rate is bound: the CPU time a message (user + system, all threads) of this process and of each
 *    daemon over the end-to-end runs, and the rate the three would reach together on this machine's
 *    cores at that cost (every message is appended, forwarded and stored on the same machine).
 * 2. Latency of a lone message on an idle pair: one send, wait until a library consumer on B (a process
 *    of its own, as B's application: `openNode({ data: B }).tail({ follow: true })`) is handed it (it
 *    acks it then), pause, repeat; p50 (target < 5 ms) and p99 (target < 20 ms). The messages go to a
 *    channel of their own, so the consumer sees only them. For information, the floor of that figure on
 *    this machine: records through the same hops (fdatasync, a watch's wake-up, an HTTP POST, fdatasync,
 *    a watch's wake-up, a pipe) with nothing of mqlog in them (hops.ts).
 *
 * The library is imported from dist/ (`npm run bench` builds first). This file is also the lone-message
 * consumer's entry point (see the end of the file).
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { rm } from 'node:fs/promises';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { openNode, type MqlogNode } from '../dist/daemon/node.js';
import { KiB, median, nextLine, runsAsChild, type BenchContext } from './harness.ts';
import { hopsFloor } from './hops.ts';
import { CONCURRENCY, endToEnd, percentile, sendCount, startPair, syncDir, type BenchDaemon, type EndToEndCpu } from './pair.ts';

/** The discard port: send() never touches the network, nothing listens there. */
const NOWHERE = 'http://127.0.0.1:9';
const BODY_BYTES = KiB;
const RATIO_TARGET = 0.5;
const P50_TARGET_MS = 5;
const P99_TARGET_MS = 20;
const LATENCY_CHANNEL = 'lone';
const LONE_CONSUMER_FLAG = '--lone-consumer';
/** The pause before each lone message: the pair is idle when it is sent. */
const LONE_PAUSE_MS = 50;
const SELF = fileURLToPath(import.meta.url);

interface Plan {
  readonly rounds: number;
  readonly messages: number;
  /**
   * Sent A → B before anything is timed. The three processes' hot paths take that long to settle (the
   * JIT's optimised code, heap sizes): after 5,000 messages, the next 50,000 still cost daemon A 26.6 µs
   * a message and the ones after 15 µs; after 100,000, the first timed round ran as fast as the later ones.
   */
  readonly warmupMessages: number;
  readonly latencySamples: number;
}

const FULL: Plan = { rounds: 3, messages: 50_000, warmupMessages: 100_000, latencySamples: 200 };
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

    const rounds: { local: number; e2e: number; appendWhileForwarding: number; cpu: EndToEndCpu }[] = [];
    for (let i = 0; i < plan.rounds; i++) {
      const of = `round ${i + 1}/${plan.rounds}`;
      ctx.progress(`${of}: local durable append, ${plan.messages} messages`);
      const local = await localAppend(ctx, join(ctx.dir, `local-${i}`), plan.messages, body);
      ctx.progress(`${of}: end to end, ${plan.messages} messages`);
      const e2e = await endToEnd(ctx, sender, pair.b, plan.messages, body, {}, pair.a);
      rounds.push({ local, e2e: e2e.rate, appendWhileForwarding: e2e.appendRate, cpu: e2e.cpu });
    }

    ctx.progress(`latency: ${plan.latencySamples} lone messages`);
    const latency = await loneMessages(ctx, sender, pair.b, plan.latencySamples, body);
    ctx.progress(`latency floor: ${plan.latencySamples} records through the same hops with nothing of mqlog`);
    const floor = await hopsFloor(ctx, ctx.dir, plan.latencySamples, LONE_PAUSE_MS);

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
    // Where the end-to-end rate is bound on this machine: the CPU each process spends a message, and
    // what the three together allow on its cores.
    const cpuFigures = [
      { id: 'cpu.send', label: 'CPU a message: the sending process (info)', of: (c: EndToEndCpu) => c.send },
      { id: 'cpu.daemon_a', label: 'CPU a message: daemon A (info)', of: (c: EndToEndCpu) => c.a },
      { id: 'cpu.daemon_b', label: 'CPU a message: daemon B (info)', of: (c: EndToEndCpu) => c.b },
    ];
    const perMessage = cpuFigures.map((f) => rounds.map((r) => f.of(r.cpu)));
    if (perMessage.every((runs) => runs.every((v) => v !== undefined))) {
      const medians = perMessage.map((runs) => median(runs));
      cpuFigures.forEach((f, i) => ctx.figure({ id: f.id, label: f.label, value: medians[i] as number, unit: 'µs', runs: perMessage[i] }));
      const total = medians.reduce((sum, v) => sum + v, 0);
      ctx.figure({ id: 'cpu.ceiling', label: `the three on ${availableParallelism()} cores at that CPU a message (info)`, value: (availableParallelism() * 1e6) / total, unit: 'msgs/s' });
    }

    ctx.section(`latency of a lone message on an idle pair, send() on A to a library consumer on B; ${latency.total.length} samples`);
    ctx.figure({ id: 'latency.p50', label: 'send() → handed to the consumer on B, p50', value: percentile(latency.total, 50), unit: 'ms', target: { op: '<', value: P50_TARGET_MS } });
    ctx.figure({ id: 'latency.p99', label: 'send() → handed to the consumer on B, p99', value: percentile(latency.total, 99), unit: 'ms', target: { op: '<', value: P99_TARGET_MS } });
    ctx.figure({ id: 'latency.append_p50', label: 'of which the local append (send() resolved), p50', value: percentile(latency.append, 50), unit: 'ms' });
    ctx.figure({ id: 'latency.floor_p50', label: 'the same hops, nothing of mqlog, p50 (info)', value: percentile(floor, 50), unit: 'ms' });
    ctx.figure({ id: 'latency.floor_p99', label: 'the same hops, nothing of mqlog, p99 (info)', value: percentile(floor, 99), unit: 'ms' });
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
 * Sends one message at a time to a channel of its own and waits until a library consumer of B's inbox is
 * handed it, pauses (an idle pair: A's forwarder back to waiting for outbox changes), and repeats. The
 * consumer runs in a process of its own, as an application on B would (in this process, its claims and
 * waits would share the event loop with the send being timed): it says on a line of its stdout that it
 * was handed a message, then acks it; the message counts as handed when that line is here (the pipe's
 * hop is included, no clocks of two processes compared).
 */
async function loneMessages(ctx: BenchContext, sender: MqlogNode, b: BenchDaemon, samples: number, body: Buffer): Promise<{ total: number[]; append: number[] }> {
  const child = spawn(process.execPath, ['--import', 'tsx', SELF, LONE_CONSUMER_FLAG, b.node.dir], { cwd: ctx.root, stdio: ['pipe', 'pipe', 'inherit'], signal: ctx.signal });
  child.on('error', () => undefined);
  const exited = new Promise<never>((_, reject) => child.on('exit', (code, signal) => reject(new Error(`the consumer on B exited with ${code ?? signal}`))));
  exited.catch(() => undefined);
  const lines = createInterface({ input: child.stdout as NodeJS.ReadableStream })[Symbol.asyncIterator]();
  const total: number[] = [];
  const append: number[] = [];
  try {
    if ((await nextLine(lines, 'the consumer on B starting', exited)) !== 'ready') throw new Error('the consumer on B did not start');
    for (let i = 0; i < samples; i++) {
      ctx.signal.throwIfAborted();
      await new Promise((resolve) => setTimeout(resolve, LONE_PAUSE_MS));
      const startedMs = performance.now();
      // The sample's number at the start of the body, so that the consumer's line names it.
      await sender.send('b', Buffer.concat([Buffer.from(`${i}:`), body]), { channel: LATENCY_CHANNEL });
      append.push(performance.now() - startedMs);
      const handed = await nextLine(lines, 'a lone message to the consumer on B', exited);
      total.push(performance.now() - startedMs);
      if (handed !== String(i)) throw new Error(`the consumer on B was handed message ${handed}, ${i} was sent`);
    }
  } finally {
    child.stdin?.end();
    await Promise.race([exited.catch(() => undefined), new Promise((resolve) => setTimeout(resolve, 10_000).unref())]);
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  }
  return { total, append };
}

/** The lone messages' consumer: follows the channel, prints each message's number as it is handed out, acks it, and stops when stdin ends. */
async function loneConsumer(dir: string): Promise<void> {
  const node = await openNode({ data: dir });
  const stop = new AbortController();
  process.stdin.on('end', () => stop.abort());
  process.stdin.resume();
  try {
    await node.inbox(LATENCY_CHANNEL);
    process.stdout.write('ready\n');
    for await (const message of node.tail({ channel: LATENCY_CHANNEL, follow: true, prefetch: 1, signal: stop.signal })) {
      process.stdout.write(`${message.body.subarray(0, message.body.indexOf(0x3a)).toString()}\n`);
      await message.ack();
    }
  } catch (err) {
    if (!stop.signal.aborted) throw err;
  } finally {
    await node.close();
  }
}

// Entry point of the consumer process: `node --import tsx bench/e2e.bench.ts --lone-consumer <B's dir>`.
if (runsAsChild(import.meta.url, LONE_CONSUMER_FLAG)) {
  await loneConsumer(process.argv[3] ?? '');
}
