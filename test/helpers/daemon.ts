/**
 * Real daemons for end-to-end tests: each runs `mqlog daemon` as a child process on loopback.
 * Ports are picked free up front (so a restarted daemon comes back on the same address its peers know).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdir, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { join } from 'node:path';
import type { TestContext } from 'node:test';
import { CLI, ROOT, defer, exited, jsonLines, mqlog, track, waitFor } from './index.js';

/** Ports freePort() returned in this process: never returned twice. */
const handedOut = new Set<number>();

/**
 * A TCP port that was free a moment ago, picked at random below the kernel's ephemeral range (32768 and
 * up on Linux): a port from bind(0) is an ephemeral one, which any outgoing connection of a test running
 * alongside may take as its source port before the daemon listens on it.
 */
export async function freePort(): Promise<number> {
  for (let attempt = 0; ; attempt++) {
    const port = 20_000 + Math.floor(Math.random() * 12_000);
    // A port handed out before may not be bound yet (a cluster asks for six before starting any server).
    if (handedOut.has(port)) continue;
    const free = await new Promise<boolean>((resolve, reject) => {
      const server = createServer();
      server.once('error', (err: NodeJS.ErrnoException) => (err.code === 'EADDRINUSE' || err.code === 'EACCES' ? resolve(false) : reject(err)));
      server.listen(port, '127.0.0.1', () => server.close(() => resolve(true)));
    });
    if (free) {
      handedOut.add(port);
      return port;
    }
    if (attempt > 100) throw new Error('no free port between 20000 and 32000');
  }
}

export interface NodeSpec {
  readonly name: string;
  readonly dir: string;
  readonly port: number;
  readonly url: string;
}

/** Creates node directories with mqlog.json naming every other node as a peer. */
export async function makeNodes(root: string, names: string[], extra: Record<string, unknown> = {}): Promise<Record<string, NodeSpec>> {
  const nodes: Record<string, NodeSpec> = {};
  for (const name of names) {
    const port = await freePort();
    nodes[name] = { name, dir: join(root, name), port, url: `http://127.0.0.1:${port}` };
  }
  for (const node of Object.values(nodes)) {
    await mkdir(node.dir, { recursive: true });
    const peers = Object.fromEntries(Object.values(nodes).filter((n) => n !== node).map((n) => [n.name, { url: n.url }]));
    await writeFile(join(node.dir, 'mqlog.json'), JSON.stringify({ name: node.name, listen: `127.0.0.1:${node.port}`, peers, ...extra }));
  }
  return nodes;
}

export class DaemonProcess {
  readonly node: NodeSpec;
  child: ChildProcess | undefined;
  output = '';

  constructor(node: NodeSpec) {
    this.node = node;
  }

  /** Starts the daemon and waits until it prints `listening on`. */
  async start(extraArgs: string[] = []): Promise<void> {
    const child = track(spawn(process.execPath, [CLI, 'daemon', '--data', this.node.dir, ...extraArgs], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] }));
    this.child = child;
    this.output = '';
    child.stdout?.on('data', (b: Buffer) => (this.output += b.toString()));
    child.stderr?.on('data', (b: Buffer) => (this.output += b.toString()));
    await waitFor(() => child.exitCode !== null || child.signalCode !== null || /listening on https?:\/\//.test(this.output), {
      timeoutMs: 60_000,
      message: `daemon ${this.node.name} to listen`,
    });
    if (child.exitCode !== null || child.signalCode !== null) throw new Error(`daemon ${this.node.name} exited with ${child.exitCode ?? child.signalCode}: ${this.output}`);
  }

  get running(): boolean {
    return this.child !== undefined && this.child.exitCode === null && this.child.signalCode === null;
  }

  /** SIGKILL, and wait until the process is gone. */
  async kill(): Promise<void> {
    const child = this.child;
    if (child === undefined || !this.running) return;
    child.kill('SIGKILL');
    await exited(child);
  }

  /** SIGTERM, and wait for the exit code (the daemon drains first). */
  async stop(): Promise<number | null> {
    const child = this.child;
    if (child === undefined || !this.running) return child?.exitCode ?? null;
    child.kill('SIGTERM');
    const { code } = await exited(child);
    return code;
  }
}

/** Starts daemons for the given nodes, stopping them (SIGKILL) after the test. */
export function daemons(t: TestContext, nodes: NodeSpec[]): DaemonProcess[] {
  const list = nodes.map((n) => new DaemonProcess(n));
  defer(t, async () => {
    for (const d of list) await d.kill();
  });
  return list;
}

/** Messages currently in a node's inbox of `channel`, via `mqlog dump --json`. */
export async function inboxDump(dir: string, channel = 'common'): Promise<Record<string, unknown>[]> {
  const result = await mqlog(['dump', dir, '--json']);
  return jsonLines(result.stdout).filter((r) => r.queue !== 'outbox' && typeof r.queue === 'string' && (r.queue).startsWith('inbox/') && r.channel === channel);
}

/** Every inbox message of a node, all channels. */
export async function allInbox(dir: string): Promise<Record<string, unknown>[]> {
  const result = await mqlog(['dump', dir, '--json']);
  if (result.code !== 0) throw new Error(`dump failed: ${result.stderr}`);
  return jsonLines(result.stdout).filter((r) => typeof r.queue === 'string' && (r.queue).startsWith('inbox/'));
}
