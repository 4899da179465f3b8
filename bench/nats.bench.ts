/**
 * The NATS benchmark: how fast a daemon forwards into JetStream (spec/transports.md §3) compared with
 * forwarding over HTTP to another mqlog node, measured in the same run on the same machine.
 *
 * Per run: a fresh node A gets N messages of 1 KiB queued in its outbox (library sends, 64 callers,
 * before the daemon runs) for one destination — `nats://127.0.0.1:PORT/STREAM` (a fresh stream on a
 * nats-server started for this module, store under the scratch directory) or `http://…` (a fresh node B
 * whose daemon already runs). Then A's daemon is started, and the figure is N ÷ the time from its spawn
 * until its status page says every message was forwarded (JetStream acked every publish / B answered
 * after its fsync). The daemon's start-up is inside that time for both, and shown in the detail.
 * The two kinds alternate (3 rounds, the first kind swapped each round); figures are medians.
 *
 * The other direction: after each JetStream run, a node C takes that stream as an inbox source (durable
 * consumer) and the figure is N ÷ the time from C's spawn until JetStream shows every message acked
 * (C acks only after its inbox fsync), compared with the HTTP run of the same round.
 *
 * Targets: both ratios ≥ 1.0.
 *
 * Not like for like on durability: nats-server's file store writes each message before acking but does
 * not fsync it (sync_interval, 2 min by default), while B fsyncs each batch before answering.
 *
 * Without nats-server (`/usr/sbin/nats-server`, or $NATS_SERVER) the module prints a `skipped:` note.
 * The daemons run from dist/ (`npm run bench` builds first).
 * BENCH_DAEMON_NODE_ARGS (e.g. `--cpu-prof --cpu-prof-dir=/tmp/prof`) is passed to the daemons' node (harness.ts).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { accessSync, constants } from 'node:fs';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { jetstreamManager } from '@nats-io/jetstream';
import { openNode } from '../dist/daemon/node.js';
import { KiB, daemonArgs, median, type BenchContext } from './harness.ts';

const NATS_SERVER_BIN = process.env.NATS_SERVER ?? '/usr/sbin/nats-server';
const BODY_BYTES = KiB;
const FILL_CALLERS = 64;
const POLL_MS = 10;
const RUN_TIMEOUT_MS = 300_000;
/** JetStream, either way, at least as fast as HTTP to a peer (mqlog issue 17). */
const RATIO_TARGET = 1.0;

interface Plan {
  readonly messages: number;
  readonly rounds: number;
}

const FULL: Plan = { messages: 20_000, rounds: 3 };
const QUICK: Plan = { messages: 5_000, rounds: 1 };

interface Run {
  /** Messages per second, daemon spawn until all forwarded. */
  readonly msgsPerSec: number;
  readonly totalMs: number;
  /** Spawn until the daemon listens (inside totalMs). */
  readonly startMs: number;
}

export async function bench(ctx: BenchContext): Promise<void> {
  try {
    accessSync(NATS_SERVER_BIN, constants.X_OK);
  } catch {
    ctx.note(`skipped: no nats-server installed (looked for ${NATS_SERVER_BIN}; set NATS_SERVER to use another)`);
    return;
  }
  const plan = ctx.quick ? QUICK : FULL;
  const nats = await startNatsServer(ctx, join(ctx.dir, 'nats-store'));
  const natsRuns: Run[] = [];
  const httpRuns: Run[] = [];
  const sourceRuns: Run[] = [];
  try {
    for (let round = 0; round < plan.rounds; round++) {
      const of = `round ${round + 1}/${plan.rounds}`;
      const kinds = round % 2 === 0 ? (['nats', 'http'] as const) : (['http', 'nats'] as const);
      for (const kind of kinds) {
        if (ctx.signal.aborted) return;
        ctx.progress(`${of}: ${plan.messages} × 1 KiB to ${kind === 'nats' ? 'JetStream' : 'an HTTP peer'}`);
        if (kind === 'http') {
          httpRuns.push(await httpRun(ctx, plan, join(ctx.dir, `r${round}-http`)));
          continue;
        }
        const stream = `BENCH${round}`;
        natsRuns.push(await natsRun(ctx, plan, join(ctx.dir, `r${round}-nats`), nats.port, stream));
        ctx.progress(`${of}: the stream as C's inbox source`);
        sourceRuns.push(await sourceRun(ctx, plan, join(ctx.dir, `r${round}-source`), nats, stream));
        await jetstreamManager(nats.nc).then((jsm) => jsm.streams.delete(stream));
      }
    }
  } finally {
    await nats.stop();
  }

  ctx.section(`forwarding ${plan.messages.toLocaleString('en-US')} queued 1 KiB messages, daemon spawn until all forwarded; median of ${plan.rounds}`);
  const natsRate = median(natsRuns.map((r) => r.msgsPerSec));
  const httpRate = median(httpRuns.map((r) => r.msgsPerSec));
  ctx.figure({ id: 'forward.nats.rate', label: 'into JetStream (nats://, file store)', value: natsRate, unit: 'msgs/s', runs: natsRuns.map((r) => r.msgsPerSec), detail: detail(natsRuns) });
  ctx.figure({ id: 'forward.http.rate', label: 'over HTTP to a peer node (fsync per batch)', value: httpRate, unit: 'msgs/s', runs: httpRuns.map((r) => r.msgsPerSec), detail: detail(httpRuns) });
  const ratios = natsRuns.map((r, i) => r.msgsPerSec / (httpRuns[i]?.msgsPerSec ?? Number.NaN));
  ctx.figure({ id: 'forward.nats_vs_http', label: 'JetStream msgs/s ÷ HTTP msgs/s', value: median(ratios), unit: '×', runs: ratios, target: { op: '>=', value: RATIO_TARGET } });
  ctx.section('the other direction: a stream as an inbox source');
  ctx.figure({
    id: 'source.nats.rate',
    label: 'JetStream stream as an inbox source',
    value: median(sourceRuns.map((r) => r.msgsPerSec)),
    unit: 'msgs/s',
    runs: sourceRuns.map((r) => r.msgsPerSec),
    detail: detail(sourceRuns),
  });
  const sourceRatios = sourceRuns.map((r, i) => r.msgsPerSec / (httpRuns[i]?.msgsPerSec ?? Number.NaN));
  ctx.figure({ id: 'source.nats_vs_http', label: 'inbox source msgs/s ÷ HTTP msgs/s', value: median(sourceRatios), unit: '×', runs: sourceRatios, target: { op: '>=', value: RATIO_TARGET } });
}

function detail(runs: readonly Run[]): string {
  const total = median(runs.map((r) => r.totalMs));
  const start = median(runs.map((r) => r.startMs));
  return `(${(total / 1000).toFixed(2)} s, of which daemon start ${start.toFixed(0)} ms)`;
}

// --- the runs

async function natsRun(ctx: BenchContext, plan: Plan, dir: string, natsPort: number, stream: string): Promise<Run> {
  const port = await freePort();
  await writeConfig(dir, { name: 'a', listen: `127.0.0.1:${port}`, peers: { hub: { url: `nats://127.0.0.1:${natsPort}/${stream}` } } });
  await fill(dir, 'hub', plan.messages);
  return forwardRun(ctx, dir, port, 'hub', plan.messages);
}

async function httpRun(ctx: BenchContext, plan: Plan, root: string): Promise<Run> {
  const [portA, portB] = [await freePort(), await freePort()];
  const a = join(root, 'a');
  const b = join(root, 'b');
  await writeConfig(a, { name: 'a', listen: `127.0.0.1:${portA}`, peers: { b: { url: `http://127.0.0.1:${portB}` } } });
  await writeConfig(b, { name: 'b', listen: `127.0.0.1:${portB}`, peers: { a: { url: `http://127.0.0.1:${portA}` } } });
  await fill(a, 'b', plan.messages);
  const receiver = await Daemon.start(ctx, b);
  try {
    return await forwardRun(ctx, a, portA, 'b', plan.messages);
  } finally {
    await receiver.stop();
    await rm(root, { recursive: true, force: true });
  }
}

/** Starts A's daemon and times it until its status page says `messages` were forwarded to `peer`. */
async function forwardRun(ctx: BenchContext, dir: string, port: number, peer: string, messages: number): Promise<Run> {
  const startedMs = performance.now();
  const daemon = await Daemon.start(ctx, dir);
  const startMs = performance.now() - startedMs;
  try {
    await until(ctx, `${messages} forwarded to ${peer}`, async () => {
      daemon.check();
      const status = (await (await fetch(`http://127.0.0.1:${port}/status.json`)).json()) as { peers: { peer: string; forwarded: number }[] };
      return (status.peers.find((p) => p.peer === peer)?.forwarded ?? 0) >= messages;
    });
    const totalMs = performance.now() - startedMs;
    return { msgsPerSec: messages / (totalMs / 1000), totalMs, startMs };
  } finally {
    await daemon.stop();
    await rm(dir, { recursive: true, force: true });
  }
}

async function sourceRun(ctx: BenchContext, plan: Plan, dir: string, nats: NatsServer, stream: string): Promise<Run> {
  const port = await freePort();
  await writeConfig(dir, { name: 'c', listen: `127.0.0.1:${port}`, sources: [{ url: `nats://127.0.0.1:${nats.port}/${stream}`, durable: 'c' }] });
  const jsm = await jetstreamManager(nats.nc);
  const startedMs = performance.now();
  const daemon = await Daemon.start(ctx, dir);
  const startMs = performance.now() - startedMs;
  try {
    await until(ctx, `C to ack ${plan.messages}`, async () => {
      daemon.check();
      const info = await jsm.consumers.info(stream, 'c').catch(() => undefined);
      return info !== undefined && info.ack_floor.stream_seq >= plan.messages;
    });
    const totalMs = performance.now() - startedMs;
    return { msgsPerSec: plan.messages / (totalMs / 1000), totalMs, startMs };
  } finally {
    await daemon.stop();
    await rm(dir, { recursive: true, force: true });
  }
}

/** Queues `count` 1 KiB messages for `to` in the outbox of the node in `dir` (no daemon running). */
async function fill(dir: string, to: string, count: number): Promise<void> {
  const node = await openNode({ data: dir });
  try {
    const body = randomBytes(BODY_BYTES);
    let next = 0;
    await Promise.all(
      Array.from({ length: FILL_CALLERS }, async () => {
        while (next < count) {
          next++;
          await node.send(to, body);
        }
      }),
    );
  } finally {
    await node.close();
  }
}

async function writeConfig(dir: string, config: Record<string, unknown>): Promise<void> {
  await mkdir(dir, { recursive: true });
  await writeFile(join(dir, 'mqlog.json'), JSON.stringify(config));
}

async function until(ctx: BenchContext, what: string, condition: () => Promise<boolean>): Promise<void> {
  const deadline = performance.now() + RUN_TIMEOUT_MS;
  for (;;) {
    if (ctx.signal.aborted) throw ctx.signal.reason;
    if (await condition()) return;
    if (performance.now() > deadline) throw new Error(`timed out after ${RUN_TIMEOUT_MS} ms waiting for ${what}`);
    await sleep(POLL_MS);
  }
}

// --- processes

class Daemon {
  private readonly child: ChildProcess;
  private readonly output: { text: string };

  private constructor(child: ChildProcess, output: { text: string }) {
    this.child = child;
    this.output = output;
  }

  /** Spawns `mqlog daemon --data dir` and waits until it listens. */
  static async start(ctx: BenchContext, dir: string): Promise<Daemon> {
    const child = spawn(process.execPath, daemonArgs(ctx, dir), { cwd: ctx.root, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, MQLOG_LOG_LEVEL: 'warn' } });
    const output = { text: '' };
    child.stdout?.on('data', (b: Buffer) => (output.text += b.toString()));
    child.stderr?.on('data', (b: Buffer) => (output.text += b.toString()));
    const daemon = new Daemon(child, output);
    try {
      await until(ctx, `daemon ${dir} to listen`, () => {
        daemon.check();
        return Promise.resolve(/listening on https?:\/\//.test(output.text));
      });
    } catch (err) {
      await daemon.stop();
      throw err;
    }
    return daemon;
  }

  /** @throws Error with the daemon's output when it exited. */
  check(): void {
    if (this.child.exitCode !== null || this.child.signalCode !== null) throw new Error(`daemon exited with ${this.child.exitCode ?? this.child.signalCode}: ${this.output.text}`);
  }

  async stop(): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    const gone = new Promise((resolve) => this.child.once('exit', resolve));
    this.child.kill('SIGTERM');
    await gone;
  }
}

interface NatsServer {
  readonly port: number;
  /** The bench's own connection (stream and consumer state). */
  readonly nc: NatsConnection;
  stop(): Promise<void>;
}

async function startNatsServer(ctx: BenchContext, storeDir: string): Promise<NatsServer> {
  const port = await freePort();
  const child = spawn(NATS_SERVER_BIN, ['-js', '-sd', storeDir, '-a', '127.0.0.1', '-p', String(port)], { stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  child.stdout?.on('data', (b: Buffer) => (output += b.toString()));
  child.stderr?.on('data', (b: Buffer) => (output += b.toString()));
  const stop = async (): Promise<void> => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    const gone = new Promise((resolve) => child.once('exit', resolve));
    child.kill('SIGTERM');
    await gone;
  };
  let nc: NatsConnection | undefined;
  try {
    await until(ctx, `nats-server on port ${port}`, async () => {
      if (child.exitCode !== null || child.signalCode !== null) throw new Error(`nats-server exited with ${child.exitCode ?? child.signalCode}`);
      try {
        nc = await connect({ servers: `127.0.0.1:${port}`, reconnect: false, name: 'mqlog-bench' });
        // Accepting connections is not enough: JetStream must answer.
        await (await jetstreamManager(nc)).getAccountInfo();
        return true;
      } catch {
        await nc?.close();
        nc = undefined;
        return false;
      }
    });
  } catch (err) {
    await nc?.close();
    await stop();
    throw new Error(`nats-server did not start: ${(err as Error).message}\n${output}`, { cause: err });
  }
  const connection = nc as NatsConnection;
  return {
    port,
    nc: connection,
    stop: async () => {
      await connection.close();
      await stop();
    },
  };
}

function freePort(): Promise<number> {
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
