/**
 * A real nats-server with JetStream for end-to-end tests of the JetStream transport
 * (spec/transports.md §3). Each server listens on loopback on a port picked free up front, so a
 * restarted server comes back on the address the nodes know, and keeps its store in a temporary
 * directory, so a restarted server finds its streams again. The server binary is `/usr/sbin/nats-server`
 * (CI installs it), or `$NATS_SERVER`; a missing binary fails the test with a message saying so.
 *
 * `start()` and `restart()` resolve only once the server accepts connections and JetStream answers;
 * the server is SIGKILLed after the test (before its store directory is removed).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { accessSync, constants } from 'node:fs';
import type { TestContext } from 'node:test';
import { connect, type ConsumerInfo, type JsMsg, type NatsConnection } from 'nats';
import { defer, exited, tempDir, track, waitFor } from './index.js';
import { freePort } from './daemon.js';

export const NATS_SERVER_BIN = process.env.NATS_SERVER ?? '/usr/sbin/nats-server';

/** Why the tests cannot run a NATS server, or undefined when they can. */
export function natsServerMissing(): string | undefined {
  try {
    accessSync(NATS_SERVER_BIN, constants.X_OK);
    return undefined;
  } catch {
    return `nats-server not found at ${NATS_SERVER_BIN}: the JetStream tests need nats-server 2.9 or later (apt-get install nats-server, or set NATS_SERVER=/path/to/nats-server)`;
  }
}

export class NatsServer {
  readonly port: number;
  /** JetStream store directory (`-sd`), kept across restarts. */
  readonly storeDir: string;
  child: ChildProcess | undefined;
  /** Everything the current process printed. */
  output = '';

  private constructor(port: number, storeDir: string) {
    this.port = port;
    this.storeDir = storeDir;
  }

  /**
   * Starts a nats-server with JetStream on a free loopback port, its store in a new temporary directory.
   * @throws Error naming the missing binary when nats-server is not installed.
   */
  static async start(t: TestContext): Promise<NatsServer> {
    const missing = natsServerMissing();
    if (missing !== undefined) throw new Error(missing);
    const storeDir = await tempDir(t, 'mqlog-nats-');
    const server = new NatsServer(await freePort(), storeDir);
    defer(t, () => server.stop('SIGKILL'));
    await server.start();
    return server;
  }

  /** `nats://127.0.0.1:PORT` */
  get url(): string {
    return `nats://127.0.0.1:${this.port}`;
  }

  /** `nats://127.0.0.1:PORT/STREAM`: an mqlog destination or source. */
  streamUrl(stream: string): string {
    return `${this.url}/${stream}`;
  }

  get running(): boolean {
    return this.child !== undefined && this.child.exitCode === null && this.child.signalCode === null;
  }

  /** Starts the server (same port, same store) and waits until it accepts connections and JetStream answers. */
  async start(): Promise<void> {
    if (this.running) return;
    const child = track(spawn(NATS_SERVER_BIN, ['-js', '-sd', this.storeDir, '-a', '127.0.0.1', '-p', String(this.port)], { stdio: ['ignore', 'pipe', 'pipe'] }));
    this.child = child;
    this.output = '';
    child.stdout?.on('data', (b: Buffer) => (this.output += b.toString()));
    child.stderr?.on('data', (b: Buffer) => (this.output += b.toString()));
    child.on('error', (err) => (this.output += `spawn failed: ${err.message}\n`));
    await waitFor(
      async () => {
        if (!this.running) throw new Error(`nats-server exited with ${child.exitCode ?? child.signalCode}: ${this.output}`);
        // Accepting connections is not enough: JetStream recovers its streams before it answers.
        await this.withConnection(async (nc) => (await nc.jetstreamManager()).getAccountInfo());
        return true;
      },
      { timeoutMs: 30_000, intervalMs: 50, message: `nats-server on port ${this.port} to accept connections` },
    );
  }

  /** Stops the server (SIGTERM: a clean shutdown; SIGKILL: a crash) and waits until it is gone. */
  async stop(signal: 'SIGTERM' | 'SIGKILL' = 'SIGTERM'): Promise<void> {
    const child = this.child;
    if (child === undefined || !this.running) return;
    child.kill(signal);
    await exited(child);
  }

  async restart(signal: 'SIGTERM' | 'SIGKILL' = 'SIGTERM'): Promise<void> {
    await this.stop(signal);
    await this.start();
  }

  /** Runs `fn` with a fresh connection (no reconnecting: fails fast while the server is down), closed afterwards. */
  async withConnection<T>(fn: (nc: NatsConnection) => Promise<T>): Promise<T> {
    const nc = await connect({ servers: `127.0.0.1:${this.port}`, reconnect: false, timeout: 2000, name: 'mqlog-test' });
    try {
      return await fn(nc);
    } finally {
      await nc.close();
    }
  }

  /** Messages in `stream` (0 when it does not exist yet). */
  async streamCount(stream: string): Promise<number> {
    return this.withConnection(async (nc) => {
      const jsm = await nc.jetstreamManager();
      try {
        return (await jsm.streams.info(stream)).state.messages;
      } catch (err) {
        if ((err as { code?: string }).code === '404') return 0;
        throw err;
      }
    });
  }

  /** The state of a durable consumer, or undefined when it does not exist (yet). */
  async consumerInfo(stream: string, durable: string): Promise<ConsumerInfo | undefined> {
    return this.withConnection(async (nc) => {
      try {
        return await (await nc.jetstreamManager()).consumers.info(stream, durable);
      } catch (err) {
        if ((err as { code?: string }).code === '404') return undefined;
        throw err;
      }
    });
  }

  /** Creates `stream` the way mqlog does (subjects `STREAM.>`, two-minute duplicate window). */
  async addStream(stream: string): Promise<void> {
    await this.withConnection(async (nc) => {
      await (await nc.jetstreamManager()).streams.add({ name: stream, subjects: [`${stream}.>`], duplicate_window: 2 * 60 * 1_000_000_000 });
    });
  }

  /** Every message of `stream`, in stream order, read with an ordered consumer. */
  async readStream(stream: string): Promise<StreamMessage[]> {
    return this.withConnection(async (nc) => {
      const info = await (await nc.jetstreamManager()).streams.info(stream);
      const out: StreamMessage[] = [];
      if (info.state.messages === 0) return out;
      const consumer = await nc.jetstream().consumers.get(stream);
      const messages = await consumer.consume({ max_messages: 1000 });
      const timer = setTimeout(() => messages.stop(), 30_000);
      try {
        for await (const m of messages) {
          out.push(streamMessage(m));
          if (m.seq >= info.state.last_seq) break;
        }
      } finally {
        clearTimeout(timer);
        messages.stop();
      }
      return out;
    });
  }
}

export interface StreamMessage {
  readonly seq: number;
  readonly subject: string;
  readonly headers: ReadonlyMap<string, string>;
  readonly data: Buffer;
}

function streamMessage(m: JsMsg): StreamMessage {
  const headers = new Map<string, string>();
  for (const [k, v] of m.headers ?? []) headers.set(k, v[0] ?? '');
  return { seq: m.seq, subject: m.subject, headers, data: Buffer.from(m.data) };
}
