/**
 * The consume benchmark: how fast applications drain an inbox, compared with how fast forwarding fills
 * it, how that scales with consumer processes, what lease renewal costs, and how long a "job done"
 * receipt takes to come back.
 *
 * Two daemons run as child processes (`node dist/cli/main.js daemon`). This process fills channels of
 * B's inbox by sending N × 1 KiB messages each from A (library, 64 concurrent callers); each fill is
 * timed from the first append to the moment B stored the last message (B's counter
 * `mqlog_received_messages_total`), which gives the end-to-end forwarding rate of this run.
 *
 * Then each channel is drained by consumer processes that use the library as an application would
 * (`openNode({ data: B }).tail({ channel })`, ack each message after it was handled, up to 256 acks in
 * flight so that they share fsyncs, as `mqlog tail --ack` does): one process, four, and eight in
 * parallel, each on a channel of its own, and one process again after them (the figure for one is the
 * median — the mean — of its two drains: the machine's pace drifts over minutes). The consumers start,
 * open the node, take their first `warmPerProcess` messages of the channel together (30,000 a
 * process), and wait for a go; the rate is timed from the go over the channel's remaining 400,000
 * messages, to the moment the last ack of the last consumer was durable (each process reports that
 * moment on the host's clock; closing its node and exiting come after). Targets: one process ≥ 2× the
 * forwarding rate; four and eight processes ≥ 1.5× one.
 *
 * The warm-up is what makes the figures those of a consumer that has run on its channel for a while,
 * not those of V8 compiling it. Each process pays for its own compilation: measured per 5,000 messages,
 * every consumer — one alone as well as one of eight — spent 26–38 µs of CPU a message on the first
 * 10,000 after starting on a channel and 10–15 µs from then on, and V8 traced the hot functions
 * compiled again after a switch of channel even following 40,000 messages of another one. Eight
 * processes pay that eight times over a share of the messages: with 8,000 messages of a warm-up channel
 * and 200,000 timed, eight processes drained at 0.8× one; after 30,000 of the same channel, 0.95–0.97×;
 * with 600,000 timed, 1.12×. So the warm-up is on the channel itself and the timed drain is long.
 *
 * B's background compaction is off (`compactIntervalMs: 0`): a round reclaiming the segments of a
 * channel just drained took up to 9 s of B's time (a quarter of it working) and slowed whichever drain
 * it overlapped, one of a pair of runs more than the other (the compaction bench measures its cost).
 *
 * Lease renewal: one process drains a channel with a 1 s visibility timeout (so renewals come every
 * few hundred ms), once as it is and once while it holds 1,000 messages of the channel unacked (taken
 * first, acked at the end: their claims are renewed all along); three times each, alternating, and the median
 * of each (two drains each gave 0.93–1.05× on one build: the pace of this machine drifts). Target: holding
 * them costs < 5% of the rate.
 *
 * For the scale targets, what this machine gives several processes of consumer work without any I/O or
 * coordination: processes that CRC-check frames held in memory and decode their messages' fields (the
 * library's own functions), a fixed total split between them, 1, 4 and 8 at once, each warmed first.
 * Four and eight consumers ÷ one cannot go past what this reference shows (two vCPUs here).
 *
 * Finally the receipt round trip: A sends with `receipt: true`, a consumer on B (in this process) acks,
 * B reports back through its outbox, A's `waitFor(id, 'processed')` resolves; repeated, p50 and p99.
 *
 * The library is imported from dist/ (`npm run bench` builds first). This file is also the consumer
 * processes' entry point (see the end of the file).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { openNode, type MqlogNode } from '../dist/daemon/node.js';
import { FrameType, decodeFrame, encodeFrame } from '../dist/log/frame.js';
import { decodeMeta, encodeMessagePayload } from '../dist/queue/codec.js';
import { newId } from '../dist/util/ids.js';
import type { Delivery } from '../dist/queue/consumer.js';
import { KiB, median, runsAsChild, type BenchContext } from './harness.ts';
import { endToEnd, percentile, startPair } from './pair.ts';

const BODY_BYTES = KiB;
const RATIO_TARGET = 2;
const SCALE_TARGET = 1.5;
const RENEWAL_TARGET = 0.95;
const ACK_WINDOW = 256;
const HELD = 1000;
const RENEWAL_VISIBILITY_MS = 1000;

interface Plan {
  readonly messages: number;
  /** Messages decoded in all by the processes of the decode reference (and by each before the go). */
  readonly decodeMessages: number;
  readonly decodeWarm: number;
  /** Messages of the channels drained by one, four and eight processes. */
  readonly scaleMessages: number;
  /** Messages each consumer process of the scale drains takes of its channel before the go. */
  readonly warmPerProcess: number;
  /** The same for the lease renewal drains. */
  readonly renewalWarm: number;
  readonly warmupMessages: number;
  readonly receiptSamples: number;
}

const FULL: Plan = { messages: 50_000, decodeMessages: 2_000_000, decodeWarm: 200_000, scaleMessages: 400_000, warmPerProcess: 30_000, renewalWarm: 8_000, warmupMessages: 2_000, receiptSamples: 50 };
const QUICK: Plan = { messages: 5_000, decodeMessages: 100_000, decodeWarm: 20_000, scaleMessages: 5_000, warmPerProcess: 500, renewalWarm: 500, warmupMessages: 200, receiptSamples: 10 };

export async function bench(ctx: BenchContext): Promise<void> {
  const plan = ctx.quick ? QUICK : FULL;
  const body = randomBytes(BODY_BYTES);
  // No background compaction on B: a round reclaiming a drained channel (up to 9 s here) fell on whichever
  // drain ran then. The compaction bench measures what compaction costs appends.
  const pair = await startPair(ctx, join(ctx.dir, 'pair'), { compactIntervalMs: 0 });
  let nodeA: MqlogNode | undefined;
  let nodeB: MqlogNode | undefined;
  try {
    nodeA = await openNode({ data: pair.a.node.dir });
    const dir = pair.b.node.dir;
    ctx.progress(`warm-up: ${plan.warmupMessages} messages A → B, then consumed`);
    await endToEnd(ctx, nodeA, pair.b, plan.warmupMessages, body, { channel: 'warmup' });
    await consume(ctx, { dir, channel: 'warmup' }, 1, plan.warmupMessages);

    const fills: number[] = [];
    const drains = [
      { channel: 'one', processes: 1, count: plan.scaleMessages, warm: plan.warmPerProcess },
      { channel: 'four', processes: 4, count: plan.scaleMessages, warm: plan.warmPerProcess },
      { channel: 'eight', processes: 8, count: plan.scaleMessages, warm: plan.warmPerProcess },
      { channel: 'one-again', processes: 1, count: plan.scaleMessages, warm: plan.warmPerProcess },
      ...RENEWAL_DRAINS.map(([, channel]) => ({ channel, processes: 1, count: plan.messages, warm: plan.renewalWarm })),
    ];
    for (const { channel, processes, count, warm } of drains) {
      // The warm-up's messages first: they are the first the consumers take.
      ctx.progress(`filling channel ${channel}: ${processes * warm} messages A → B for the warm-up, then ${count} timed`);
      await endToEnd(ctx, nodeA, pair.b, processes * warm, body, { channel });
      fills.push((await endToEnd(ctx, nodeA, pair.b, count, body, { channel })).rate);
    }
    // One process before and after the others: the machine's pace drifts over a minute, and the ratios
    // of four and eight to one would otherwise rest on a single drain of one.
    const drained = new Map<number, { rate: number; consumed: number; cpuUsPerMessage: number }>();
    const ones: { rate: number; consumed: number; cpuUsPerMessage: number }[] = [];
    for (const [processes, channel] of [[1, 'one'], [4, 'four'], [8, 'eight'], [1, 'one-again']] as const) {
      ctx.progress(`draining channel ${channel} with ${processes} consumer process(es)`);
      const result = await consume(ctx, { dir, channel, warm: plan.warmPerProcess }, processes, plan.scaleMessages);
      if (processes === 1) ones.push(result);
      else drained.set(processes, result);
    }
    const plain: number[] = [];
    const held: number[] = [];
    for (const [kind, channel] of RENEWAL_DRAINS) {
      const [runs, hold] = kind === 'plain' ? [plain, 0] : [held, HELD];
      ctx.progress(`draining channel ${channel} with a ${RENEWAL_VISIBILITY_MS} ms visibility timeout${hold > 0 ? `, holding ${hold} messages` : ''}`);
      runs.push((await consume(ctx, { dir, channel, hold, visibilityTimeoutMs: RENEWAL_VISIBILITY_MS, warm: plan.renewalWarm }, 1, plan.messages)).rate);
    }

    const decoded = new Map<number, number>();
    for (const processes of [1, 4, 8]) {
      ctx.progress(`decode reference: ${plan.decodeMessages} messages in ${processes} process(es)`);
      const count = Math.ceil(plan.decodeMessages / processes);
      decoded.set(processes, (await consume(ctx, { dir: '', channel: 'decode', warm: plan.decodeWarm, count }, processes, count * processes, DECODE_FLAG)).rate);
    }

    ctx.progress(`receipt round trips: ${plan.receiptSamples}`);
    nodeB = await openNode({ data: dir });
    const roundTrips = await receiptRoundTrips(ctx, nodeA, nodeB, plan.receiptSamples, body);

    const forwarding = median(fills);
    const one = { rate: median(ones.map((r) => r.rate)), consumed: ones.reduce((n, r) => n + r.consumed, 0) };
    ctx.section(`forwarding into the inbox (reference): ${plan.messages.toLocaleString('en-US')} and ${plan.scaleMessages.toLocaleString('en-US')} × 1 KiB, 64 callers on A, first append to last inbox fsync`);
    ctx.figure({ id: 'forward.rate', label: 'end-to-end forwarding A → B', value: forwarding, unit: 'msgs/s', runs: fills });

    ctx.section(`consume + ack from a full inbox: ${plan.scaleMessages.toLocaleString('en-US')} × 1 KiB, library tail (default prefetch), ≤ ${ACK_WINDOW} acks in flight per process`);
    ctx.figure({ id: 'consume.c1.rate', label: '1 consumer process (before and after the others)', value: one.rate, unit: 'msgs/s', runs: ones.map((r) => r.rate), detail: `(${one.consumed.toLocaleString('en-US')} handed out)` });
    for (const [processes, result] of drained) {
      ctx.figure({ id: `consume.c${processes}.rate`, label: `${processes} consumer processes`, value: result.rate, unit: 'msgs/s', detail: `(${result.consumed.toLocaleString('en-US')} handed out)` });
    }
    ctx.figure({ id: 'consume.c1.ratio', label: '1 consumer ÷ forwarding', value: one.rate / forwarding, unit: '×', target: { op: '>=', value: RATIO_TARGET } });
    for (const processes of [4, 8]) {
      const result = drained.get(processes) as { rate: number };
      ctx.figure({ id: `consume.c${processes}.scale`, label: `${processes} consumers ÷ 1 consumer`, value: result.rate / one.rate, unit: '×', target: { op: '>=', value: SCALE_TARGET } });
    }
    // What coordination costs in CPU: the consumers' CPU time (all processes) per message handed out.
    const cpuOne = median(ones.map((r) => r.cpuUsPerMessage));
    ctx.figure({ id: 'consume.c1.cpu', label: 'CPU a message, 1 consumer process (info)', value: cpuOne, unit: 'µs', runs: ones.map((r) => r.cpuUsPerMessage) });
    for (const processes of [4, 8]) {
      const result = drained.get(processes) as { cpuUsPerMessage: number };
      ctx.figure({ id: `consume.c${processes}.cpu`, label: `CPU a message, ${processes} processes together (info)`, value: result.cpuUsPerMessage, unit: 'µs' });
    }
    const decodeOne = decoded.get(1) as number;
    for (const processes of [4, 8]) {
      ctx.figure({ id: `decode.c${processes}.scale`, label: `decode only: ${processes} processes ÷ 1 (info)`, value: (decoded.get(processes) as number) / decodeOne, unit: '×', detail: `(1: ${Math.round(decodeOne).toLocaleString('en-US')} msgs/s)` });
    }

    ctx.section(`lease renewal: 1 consumer process, visibility timeout ${RENEWAL_VISIBILITY_MS} ms, with and without ${HELD.toLocaleString('en-US')} messages held unacked (renewed) meanwhile`);
    ctx.figure({ id: 'consume.renew.plain', label: 'consume + ack, nothing held', value: median(plain), unit: 'msgs/s', runs: plain });
    ctx.figure({ id: 'consume.renew.held', label: `consume + ack, ${HELD.toLocaleString('en-US')} held`, value: median(held), unit: 'msgs/s', runs: held });
    ctx.figure({ id: 'consume.renew.ratio', label: `with ${HELD.toLocaleString('en-US')} held ÷ without`, value: median(held) / median(plain), unit: '×', target: { op: '>=', value: RENEWAL_TARGET } });

    ctx.section(`receipt round trip on loopback: send(receipt) on A → consume + ack on B → waitFor(processed) on A; ${roundTrips.length} samples`);
    ctx.figure({ id: 'receipt.p50', label: 'receipt round trip, p50', value: percentile(roundTrips, 50), unit: 'ms' });
    ctx.figure({ id: 'receipt.p99', label: 'receipt round trip, p99', value: percentile(roundTrips, 99), unit: 'ms' });
  } finally {
    await nodeB?.close();
    await nodeA?.close();
    await pair.stop();
  }
}

interface ConsumerResult {
  readonly consumed: number;
  /** When its last ack was durable, on the clock every process of the host shares (ms since the epoch). */
  readonly doneAt: number;
  /** CPU time (user + system) the process spent from the go to doneAt, ms. */
  readonly cpuMs: number;
}

/** CPU time (user + system) this process spent since `start` (a process.cpuUsage()), ms. */
function cpuMsSince(start: NodeJS.CpuUsage): number {
  const cpu = process.cpuUsage(start);
  return (cpu.user + cpu.system) / 1000;
}

/** Now on the clock every process of the host shares, to a fraction of a millisecond. */
function clock(): number {
  return performance.timeOrigin + performance.now();
}

/**
 * Drains a channel with `processes` consumer processes; resolves with the messages handed out and the
 * rate from the go to the last process done. Fails unless at least `expected` were handed out.
 */
async function consume(ctx: BenchContext, args: ConsumerArgs, processes: number, expected: number, flag = CONSUMER_FLAG): Promise<{ rate: number; consumed: number; cpuUsPerMessage: number }> {
  const children = Array.from({ length: processes }, () => startConsumer(ctx, args, flag));
  // One abort listener for all of them (a signal per spawn would pass the listener limit).
  const onAbort = (): void => {
    for (const c of children) c.child.kill('SIGKILL');
  };
  ctx.signal.addEventListener('abort', onAbort, { once: true });
  try {
    // All warm up together, as they then drain together.
    await Promise.all(children.map((c) => c.opened));
    for (const c of children) c.child.stdin?.write('warm\n');
    await Promise.all(children.map((c) => c.ready));
    const startedAt = clock();
    for (const c of children) c.child.stdin?.write('go\n');
    const results = await Promise.all(children.map((c) => c.result));
    // Until the last ack was durable: closing the node and reporting come after and are not consuming.
    const ms = Math.max(...results.map((r) => r.doneAt)) - startedAt;
    const consumed = results.reduce((n, r) => n + r.consumed, 0);
    if (consumed < expected) throw new Error(`${processes} consumer(s) of ${args.channel} handed out ${consumed} messages, ${expected} were sent`);
    const cpuMs = results.reduce((n, r) => n + r.cpuMs, 0);
    return { rate: expected / (ms / 1000), consumed, cpuUsPerMessage: (cpuMs * 1000) / expected };
  } finally {
    ctx.signal.removeEventListener('abort', onAbort);
    for (const c of children) if (c.child.exitCode === null && c.child.signalCode === null) c.child.kill('SIGKILL');
  }
}

interface ConsumerArgs {
  readonly dir: string;
  readonly channel: string;
  /** Messages to take first and hold unacked (renewed) until the channel is drained. */
  readonly hold?: number;
  readonly visibilityTimeoutMs?: number;
  /** Messages each consumer takes (and acks) of the channel before the go. */
  readonly warm?: number;
  /** Decode reference: messages to decode after the go. */
  readonly count?: number;
}

/** The lease renewal drains, alternating: without and with messages held. */
const RENEWAL_DRAINS = [1, 2, 3].flatMap((i) => [['plain', `plain${i}`], ['held', `held${i}`]] as const);

const CONSUMER_FLAG = '--consumer-child';
const DECODE_FLAG = '--decode-child';
const SELF = fileURLToPath(import.meta.url);

function startConsumer(ctx: BenchContext, args: ConsumerArgs, flag: string): { child: ChildProcess; opened: Promise<void>; ready: Promise<void>; result: Promise<ConsumerResult> } {
  const child = spawn(process.execPath, ['--import', 'tsx', SELF, flag, JSON.stringify(args)], {
    cwd: ctx.root,
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  child.on('error', () => undefined);
  const lines = createInterface({ input: child.stdout as NodeJS.ReadableStream });
  let onOpened: () => void = () => undefined;
  let onReady: () => void = () => undefined;
  const opened = new Promise<void>((resolve) => (onOpened = resolve));
  const ready = new Promise<void>((resolve) => (onReady = resolve));
  const result = new Promise<ConsumerResult>((resolve, reject) => {
    lines.on('line', (line) => {
      if (line === 'opened') onOpened();
      else if (line === 'ready') onReady();
      else if (line.startsWith('{')) resolve(JSON.parse(line) as ConsumerResult);
    });
    child.on('exit', (code, signal) => reject(new Error(`consumer exited with ${code ?? signal} before its result`)));
  });
  // A consumer that dies before a stage fails the wait for that stage too.
  const failed = result.then(() => undefined);
  return { child, opened: Promise.race([opened, failed]), ready: Promise.race([ready, failed]), result };
}

/**
 * The consumer process: open the node, say so, wait for the word, take its `warm` messages of the
 * channel with the others, say ready, wait for go, (take and hold `hold` messages,) drain the rest of
 * the channel, (ack the held ones,) print the result.
 */
async function consumerChild(args: ConsumerArgs): Promise<ConsumerResult> {
  const node = await openNode({ data: args.dir, ...(args.visibilityTimeoutMs === undefined ? {} : { config: { visibilityTimeoutMs: args.visibilityTimeoutMs } }) });
  const words = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
  try {
    await node.inbox(args.channel);
    process.stdout.write('opened\n');
    await words.next();
    if (args.warm !== undefined) await drain(node, args.channel, args.warm);
    process.stdout.write('ready\n');
    await words.next();
    const cpuAtGo = process.cpuUsage();
    let consumed = 0;
    const held: Delivery[] = [];
    if (args.hold !== undefined && args.hold > 0) {
      for await (const message of node.tail({ channel: args.channel, limit: args.hold })) held.push(message);
      consumed += held.length;
    }
    consumed += await drain(node, args.channel);
    await Promise.all(held.map((message) => message.ack()));
    return { consumed, doneAt: clock(), cpuMs: cpuMsSince(cpuAtGo) };
  } finally {
    await words.return?.();
    await node.close();
  }
}

/**
 * Takes every message of the channel there is for this process (or `limit` of them), acking each
 * (≤ ACK_WINDOW in flight); resolves with how many.
 */
async function drain(node: MqlogNode, channel: string, limit?: number): Promise<number> {
  let consumed = 0;
  const acks: Promise<void>[] = [];
  for await (const message of node.tail({ channel, ...(limit === undefined ? {} : { limit }) })) {
    consumed++;
    // "Handling" the message: touch its body.
    if (message.body.length !== BODY_BYTES) throw new Error(`body of ${message.body.length} bytes`);
    acks.push(message.ack());
    if (acks.length >= ACK_WINDOW) await Promise.all(acks.splice(0));
  }
  await Promise.all(acks);
  return consumed;
}

/**
 * A process of the decode reference: the steps of consumerChild, with frames held in memory that are
 * CRC-checked and whose messages' fields are decoded, `warm` of them before the go and `count` after.
 */
async function decodeChild(args: ConsumerArgs): Promise<ConsumerResult> {
  const body = randomBytes(BODY_BYTES);
  const now = Date.now();
  const node = randomUUID();
  const frames = Array.from({ length: 4096 }, (_, i) =>
    encodeFrame(FrameType.MESSAGE, i, encodeMessagePayload({ id: newId(now), ts: now, channel: 'decode', priority: i % 10, to: ['b'], from: 'a', node, expiresAt: undefined, notBefore: undefined, headers: undefined, receipt: undefined, replyTo: undefined }, body)),
  );
  const decode = (count: number): number => {
    let seen = 0;
    for (let i = 0; i < count; i++) {
      const decoded = decodeFrame(frames[i & 4095] as Buffer);
      if (!decoded.ok) throw new Error('a frame held in memory did not decode');
      const { meta, bodyStart } = decodeMeta(decoded.frame.payload);
      if (decoded.frame.payload.length - bodyStart !== BODY_BYTES) throw new Error('wrong body length');
      seen += meta.priority >= 0 ? 1 : 0;
    }
    return seen;
  };
  const words = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
  try {
    process.stdout.write('opened\n');
    await words.next();
    decode(args.warm ?? 0);
    process.stdout.write('ready\n');
    await words.next();
    const cpuAtGo = process.cpuUsage();
    const consumed = decode(args.count ?? 0);
    return { consumed, doneAt: clock(), cpuMs: cpuMsSince(cpuAtGo) };
  } finally {
    await words.return?.();
  }
}

/** Round trips of messages asking for a receipt: send on A, ack on B (this process), processed on A. */
async function receiptRoundTrips(ctx: BenchContext, nodeA: MqlogNode, nodeB: MqlogNode, samples: number, body: Buffer): Promise<number[]> {
  const stop = new AbortController();
  const consumer = (async () => {
    try {
      for await (const message of nodeB.tail({ channel: 'receipts', follow: true, signal: stop.signal })) await message.ack();
    } catch (err) {
      if (!stop.signal.aborted) throw err;
    }
  })();
  const times: number[] = [];
  try {
    for (let i = 0; i < samples; i++) {
      ctx.signal.throwIfAborted();
      await new Promise((resolve) => setTimeout(resolve, 20));
      const startedMs = performance.now();
      const id = await nodeA.send('b', body, { channel: 'receipts', receipt: true });
      const status = await nodeA.waitFor(id, 'processed', { signal: AbortSignal.timeout(60_000) });
      if (status.state !== 'processed') throw new Error(`receipt of ${id} ended as ${status.state}`);
      times.push(performance.now() - startedMs);
    }
  } finally {
    stop.abort();
    await consumer;
  }
  return times;
}

// Entry point of a consumer process, `node --import tsx bench/consume.bench.ts --consumer-child '<json>'`,
// and of a process of the decode reference (`--decode-child`).
for (const [flag, child] of [[CONSUMER_FLAG, consumerChild], [DECODE_FLAG, decodeChild]] as const) {
  if (!runsAsChild(import.meta.url, flag)) continue;
  const result = await child(JSON.parse(process.argv[3] ?? '') as ConsumerArgs);
  process.stdout.write(`${JSON.stringify(result)}\n`);
}
