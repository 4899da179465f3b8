/**
 * Real nats-servers with JetStream for end-to-end tests of the JetStream transport
 * (spec/transports.md §3): one server, or a cluster of three on loopback. Each server listens on a port
 * picked free up front, so a restarted server comes back on the address the nodes know, and keeps its
 * store in a temporary directory, so a restarted server finds its streams again. A server runs from a
 * config file (`server.conf` in its directory) to which a test may add lines (authorization, TLS,
 * limits). The binary is `/usr/sbin/nats-server` (CI installs it), or `$NATS_SERVER`; a missing binary
 * fails the test with a message saying so.
 *
 * `start()` and `restart()` resolve only once the server accepts connections and JetStream answers;
 * servers are SIGKILLed after the test (before their directories are removed).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { accessSync, constants } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { TestContext } from 'node:test';
import { connect, type ConnectionOptions, type NatsConnection } from '@nats-io/transport-node';
import { jetstream, jetstreamManager, type ConsumerInfo, type JsMsg, type StreamConfig } from '@nats-io/jetstream';
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

export interface NatsServerOptions {
  /** Lines added to the server's config (authorization, tls, max_payload…). */
  readonly config?: string;
  /** How the test's own connections authenticate and reach it (user/pass, TLS). */
  readonly client?: Partial<ConnectionOptions>;
  /** `tls` when clients must use TLS. */
  readonly scheme?: 'nats' | 'tls';
  /** false: a server without JetStream. */
  readonly jetstream?: boolean;
}

function isNotFound(err: unknown): boolean {
  const code = (err as { code?: unknown }).code;
  return code === 10059 || code === 10014;
}

export class NatsServer {
  readonly port: number;
  readonly dir: string;
  /** JetStream store directory, kept across restarts. */
  readonly storeDir: string;
  readonly options: NatsServerOptions;
  /** Other config text (a cluster's), written before `options.config`. */
  clusterConfig = '';
  name = 'n1';
  child: ChildProcess | undefined;
  /** Everything the current process printed. */
  output = '';

  constructor(port: number, dir: string, options: NatsServerOptions = {}) {
    this.port = port;
    this.dir = dir;
    this.storeDir = join(dir, 'store');
    this.options = options;
  }

  /**
   * Starts a nats-server with JetStream on a free loopback port, its store in a new temporary directory.
   * @throws Error naming the missing binary when nats-server is not installed.
   */
  static async start(t: TestContext, options: NatsServerOptions = {}): Promise<NatsServer> {
    const missing = natsServerMissing();
    if (missing !== undefined) throw new Error(missing);
    const server = new NatsServer(await freePort(), await tempDir(t, 'mqlog-nats-'), options);
    defer(t, () => server.stop('SIGKILL'));
    await server.start();
    return server;
  }

  /** `nats://127.0.0.1:PORT` (or tls://) */
  get url(): string {
    return `${this.options.scheme ?? 'nats'}://127.0.0.1:${this.port}`;
  }

  /** `nats://127.0.0.1:PORT/STREAM`: an mqlog destination or source. */
  streamUrl(stream: string): string {
    return `${this.url}/${stream}`;
  }

  get running(): boolean {
    return this.child !== undefined && this.child.exitCode === null && this.child.signalCode === null;
  }

  /** Starts the server (same port, same store) and waits until it accepts connections and JetStream answers. */
  async start(wait = true): Promise<void> {
    if (this.running) return;
    const conf = join(this.dir, 'server.conf');
    await writeFile(conf, [`server_name: ${this.name}`, `listen: "127.0.0.1:${this.port}"`, this.options.jetstream === false ? '' : `jetstream { store_dir: ${JSON.stringify(this.storeDir)} }`, this.clusterConfig, this.options.config ?? ''].join('\n'));
    const child = track(spawn(NATS_SERVER_BIN, ['-c', conf], { stdio: ['ignore', 'pipe', 'pipe'] }));
    this.child = child;
    this.output = '';
    child.stdout?.on('data', (b: Buffer) => (this.output += b.toString()));
    child.stderr?.on('data', (b: Buffer) => (this.output += b.toString()));
    child.on('error', (err) => (this.output += `spawn failed: ${err.message}\n`));
    if (wait) await this.ready();
  }

  /** Waits until the server accepts connections and JetStream answers. */
  async ready(): Promise<void> {
    const child = this.child;
    await waitFor(
      async () => {
        if (!this.running) throw new Error(`nats-server exited with ${child?.exitCode ?? child?.signalCode}: ${this.output}`);
        // Accepting connections is not enough: JetStream recovers its streams before it answers.
        await this.withConnection(async (nc) => (this.options.jetstream === false ? undefined : (await jetstreamManager(nc)).getAccountInfo()));
        return true;
      },
      { timeoutMs: 60_000, intervalMs: 100, message: `nats-server on port ${this.port} to accept connections` },
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
    const nc = await connect({ servers: `127.0.0.1:${this.port}`, reconnect: false, timeout: 2000, name: 'mqlog-test', ...this.options.client });
    try {
      return await fn(nc);
    } finally {
      await nc.close();
    }
  }

  /** Messages in `stream` (0 when it does not exist yet). */
  async streamCount(stream: string): Promise<number> {
    return this.withConnection(async (nc) => {
      try {
        return (await (await jetstreamManager(nc)).streams.info(stream)).state.messages;
      } catch (err) {
        if (isNotFound(err)) return 0;
        throw err;
      }
    });
  }

  /** The state of a durable consumer, or undefined when it does not exist (yet). */
  async consumerInfo(stream: string, durable: string): Promise<ConsumerInfo | undefined> {
    return this.withConnection(async (nc) => {
      try {
        return await (await jetstreamManager(nc)).consumers.info(stream, durable);
      } catch (err) {
        if (isNotFound(err)) return undefined;
        throw err;
      }
    });
  }

  /** Creates `stream` the way mqlog does (subjects `STREAM.>`, two-minute duplicate window), with `config` on top. */
  async addStream(stream: string, config: Partial<StreamConfig> = {}): Promise<void> {
    await this.withConnection(async (nc) => {
      await (await jetstreamManager(nc)).streams.add({ name: stream, subjects: [`${stream}.>`], duplicate_window: 2 * 60 * 1_000_000_000, ...config });
    });
  }

  /** Every message of `stream`, in stream order, read with an ordered consumer. */
  async readStream(stream: string): Promise<StreamMessage[]> {
    return this.withConnection(async (nc) => {
      const info = await (await jetstreamManager(nc)).streams.info(stream);
      const out: StreamMessage[] = [];
      if (info.state.messages === 0) return out;
      const consumer = await jetstream(nc).consumers.get(stream);
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

/** Three JetStream servers routed to each other on loopback (cluster `mqlog`). */
export class NatsCluster {
  readonly servers: NatsServer[];

  private constructor(servers: NatsServer[]) {
    this.servers = servers;
  }

  static async start(t: TestContext, size = 3): Promise<NatsCluster> {
    const missing = natsServerMissing();
    if (missing !== undefined) throw new Error(missing);
    const servers: NatsServer[] = [];
    const routePorts: number[] = [];
    for (let i = 0; i < size; i++) {
      const server = new NatsServer(await freePort(), await tempDir(t, 'mqlog-nats-'));
      defer(t, () => server.stop('SIGKILL'));
      servers.push(server);
      routePorts.push(await freePort());
    }
    servers.forEach((server, i) => {
      server.name = `n${i + 1}`;
      const routes = routePorts.filter((_, j) => j !== i).map((p) => `"nats-route://127.0.0.1:${p}"`);
      server.clusterConfig = `cluster { name: mqlog, listen: "127.0.0.1:${routePorts[i]}", routes: [${routes.join(', ')}] }`;
    });
    // Started together: JetStream waits for a quorum of the cluster before it answers.
    for (const server of servers) await server.start(false);
    for (const server of servers) await server.ready();
    return new NatsCluster(servers);
  }

  /** `nats://127.0.0.1:PORT` of each server. */
  get urls(): string[] {
    return this.servers.map((s) => s.url);
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
