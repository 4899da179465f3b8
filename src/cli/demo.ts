/**
 * `mqlog demo` (and `npm start`): two nodes under var/demo exchanging messages, narrated step by step —
 * a message with a receipt, a multicast, and messages sent while the peer is down. Ends by itself and
 * leaves the data for `mqlog dump`, `mqlog stat` and `mqlog verify`.
 */
import { rm, writeFile, mkdir, readdir } from 'node:fs/promises';
import { createServer } from 'node:net';
import { join, resolve } from 'node:path';
import { Daemon } from '../daemon/daemon.js';
import { createLogger } from '../daemon/logger.js';
import { MqlogError } from '../errors.js';
import { RotatingFile } from '../util/rotating-file.js';
import { stringFlag, type Command, type ParsedArgs } from './args.js';

export const demoCommand: Command = {
  name: 'demo',
  summary: 'run two local nodes under var/demo and show them exchanging messages',
  usage: `[--dir DIR]
  --dir DIR   where the two nodes live (default var/demo; its previous contents are replaced)`,
  options: { dir: { type: 'string' } },
  allowPositionals: false,
  run,
};

const say = (text: string): void => void process.stdout.write(`${text}\n`);
const step = (n: number, text: string): void => say(`\n[${n}] ${text}`);

async function run(args: ParsedArgs): Promise<number> {
  const root = resolve(stringFlag(args, 'dir') ?? join('var', 'demo'));
  const started = Date.now();
  await resetDemoDir(root);
  const [portA, portB] = [await freePort(), await freePort()];
  const nodes = {
    alpha: { dir: join(root, 'alpha'), listen: `127.0.0.1:${portA}` },
    beta: { dir: join(root, 'beta'), listen: `127.0.0.1:${portB}` },
  };
  for (const [name, node] of Object.entries(nodes)) {
    const peers = Object.fromEntries(Object.entries(nodes).filter(([n]) => n !== name).map(([n, other]) => [n, { url: `http://${other.listen}` }]));
    await mkdir(node.dir, { recursive: true, mode: 0o700 });
    await writeFile(join(node.dir, 'mqlog.json'), `${JSON.stringify({ name, listen: node.listen, peers, visibilityTimeoutMs: 5000 }, null, 2)}\n`);
  }

  step(1, `Two nodes under ${root}: alpha (${nodes.alpha.listen}) and beta (${nodes.beta.listen}). Starting both daemons.`);
  const logs: RotatingFile[] = [];
  const start = async (name: 'alpha' | 'beta'): Promise<Daemon> => {
    await mkdir(join(nodes[name].dir, 'logs'), { recursive: true });
    const log = new RotatingFile(join(nodes[name].dir, 'logs', 'daemon.log'));
    logs.push(log);
    return Daemon.start({ data: nodes[name].dir, logger: createLogger({ name, destination: { write: (line: string) => log.write(line) } }) });
  };
  const alpha = await start('alpha');
  let beta = await start('beta');
  say(`    alpha listens on ${alpha.url}, beta on ${beta.url} (status pages there; logs in <node>/logs/)`);

  try {
    step(2, 'alpha drops a message for beta into its local outbox, asking for a "job done" receipt.');
    const id = await alpha.node.send('beta', 'hello beta, please resize photo 42', { receipt: true, channel: 'jobs' });
    say(`    send() returned id ${id} once the message was fsync'd on alpha's disk (no network involved).`);
    say(`    receipt now: ${(await alpha.node.waitFor(id, 'sent', { signal: AbortSignal.timeout(10_000) })).state} (it reached beta's inbox)`);
    for await (const message of beta.node.tail({ channel: 'jobs', follow: true, limit: 1, idleTimeoutMs: 10_000 })) {
      say(`    beta's app takes it from its inbox: "${message.body.toString()}" (from ${message.from}, channel ${message.channel})`);
      await message.ack();
      say('    beta acks it: processed.');
    }
    const done = await alpha.node.waitFor(id, 'processed', { signal: AbortSignal.timeout(15_000) });
    say(`    the receipt came back to alpha through beta's outbox: ${done.state}`);

    step(3, 'alpha multicasts one message to both nodes (beta, and alpha itself): one id, each copy delivered once.');
    const multi = await alpha.node.send(['beta', alpha.url], 'inventory changed', { receipt: true, channel: 'events', priority: 7 });
    for (const [name, daemon] of [['beta', beta], ['alpha', alpha]] as const) {
      for await (const message of daemon.node.tail({ channel: 'events', follow: true, limit: 1, idleTimeoutMs: 10_000 })) {
        say(`    ${name} got "${message.body.toString()}" (priority ${message.priority}) and acks it`);
        await message.ack();
      }
    }
    const multiStatus = await alpha.node.waitFor(multi, 'processed', { signal: AbortSignal.timeout(15_000) });
    say(`    multicast receipt: ${multiStatus.state} (${Object.entries(multiStatus.peers).map(([peer, p]) => `${peer}: ${p.state}`).join(', ')})`);

    step(4, 'beta goes down. alpha keeps sending: nothing blocks, the messages wait in its outbox.');
    await beta.stop();
    const low = await alpha.node.send('beta', 'nightly report (low priority)', { priority: 1, channel: 'jobs' });
    const normal = await alpha.node.send('beta', 'invoice 1234', { channel: 'jobs' });
    const urgent = await alpha.node.send('beta', 'server on fire (urgent)', { priority: 9, channel: 'jobs' });
    say(`    sent ${[low, normal, urgent].length} messages while beta is down.`);
    const waiting = await waitUntil(() => {
      const peer = alpha.statusSnapshot().peers.find((p) => p.peer === 'beta');
      return peer !== undefined && peer.lastError !== null && peer.backlog >= 3 ? peer : undefined;
    }, 10_000);
    say(`    alpha's backlog for beta: ${waiting.backlog}; last error: ${waiting.lastError}`);

    step(5, 'beta comes back. alpha retries (with backoff) and the backlog drains; beta gets the most urgent first.');
    beta = await start('beta');
    await waitUntil(() => (alpha.statusSnapshot().peers.find((p) => p.peer === 'beta')?.backlog === 0 ? true : undefined), 20_000);
    for await (const message of beta.node.tail({ channel: 'jobs', follow: true, limit: 3, idleTimeoutMs: 10_000 })) {
      say(`    beta: priority ${message.priority}: "${message.body.toString()}"`);
      await message.ack();
    }

    step(6, 'Done. Everything stays on disk; look at it with:');
    say(`    mqlog stat --data ${nodes.alpha.dir}`);
    say(`    mqlog dump ${nodes.beta.dir}`);
    say(`    mqlog verify ${root}`);
  } finally {
    await alpha.stop();
    await beta.stop();
    for (const log of logs) await log.close();
  }
  say(`\nFinished in ${((Date.now() - started) / 1000).toFixed(1)} s.`);
  return 0;
}

/** Clears a previous demo, refusing to touch a directory that holds anything but demo nodes. */
async function resetDemoDir(root: string): Promise<void> {
  let entries: string[] = [];
  try {
    entries = await readdir(root);
  } catch {
    // does not exist yet
  }
  const foreign = entries.filter((e) => e !== 'alpha' && e !== 'beta');
  if (foreign.length > 0) throw new MqlogError('ERR_INVALID_ARG', `${root} holds other files (${foreign.slice(0, 3).join(', ')}); choose another --dir`);
  await rm(join(root, 'alpha'), { recursive: true, force: true });
  await rm(join(root, 'beta'), { recursive: true, force: true });
}

async function waitUntil<T>(check: () => T | undefined, timeoutMs: number): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = check();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new MqlogError('ERR_TIMEOUT', 'the demo waited too long for a step');
    await new Promise((r) => setTimeout(r, 50));
  }
}

function freePort(): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => resolvePort(typeof address === 'object' && address !== null ? address.port : 0));
    });
  });
}
