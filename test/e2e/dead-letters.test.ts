/**
 * Handler mode and dead letters, with real daemons: `mqlog daemon --handler MODULE` calls the module for
 * every inbox message; true acks it, false or a throw retries it with a growing delay, and after
 * `maxDeliveries` hand-outs it moves to `dead/<channel>`; `mqlog redrive` puts it back.
 *
 * The handler fixtures (test/fixtures/handler-*.mjs) print one JSON line per call, which the test reads
 * from the daemon's output.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import { openNode } from '../../src/daemon/node.js';
import { DEAD_REASON_HEADER } from '../../src/queue/codec.js';
import { newId } from '../../src/util/ids.js';
import { FIXTURES, jsonLines, mqlog, tempDir, waitFor } from '../helpers/index.js';
import { daemons as startable, makeNodes, type DaemonProcess, type NodeSpec } from '../helpers/daemon.js';

const CONFIG = { maxDeliveries: 3, handlerRetryDelayMs: 20 };

interface HandlerCall {
  readonly handler: string;
  readonly id: string;
  readonly deliveries: number;
  readonly body: string;
  readonly at: number;
  readonly threw?: boolean;
}

type Dumped = Record<string, unknown> & { queue: string; id: string; state: string; headers?: Record<string, string> };

/** Appends messages to a node's inbox of `channel` with the library, as a peer's delivery would; returns their ids. */
async function append(dir: string, channel: string, bodies: readonly string[]): Promise<string[]> {
  const node = await openNode({ data: dir });
  try {
    const inbox = await node.inbox(channel);
    const ids: string[] = [];
    for (const body of bodies) {
      const id = newId();
      await inbox.append({ id, ts: Date.now(), channel, priority: 4, to: ['b'], from: 'a' }, Buffer.from(body));
      ids.push(id);
    }
    return ids;
  } finally {
    await node.close();
  }
}

/** The handler calls a daemon's fixture handler printed since the daemon started. */
function calls(d: DaemonProcess, id?: string): HandlerCall[] {
  return d.output
    .split('\n')
    .filter((line) => line.startsWith('{"handler"'))
    .map((line) => JSON.parse(line) as HandlerCall)
    .filter((c) => id === undefined || c.id === id);
}

async function dump(dir: string): Promise<Dumped[]> {
  const result = await mqlog(['dump', dir, '--json']);
  assert.equal(result.code, 0, result.stderr);
  return jsonLines<Dumped>(result.stdout);
}

/** States of the inbox records of a message (several after a redrive), sorted. */
function inboxStates(records: Dumped[], id: string): string[] {
  return records.filter((r) => r.queue.startsWith('inbox/') && r.id === id).map((r) => r.state).sort();
}

/** Node directories (mqlog.json from makeNodes, with CONFIG) and a daemon object for each, killed after the test. */
async function setup(t: TestContext, names: string[]): Promise<{ nodes: Record<string, NodeSpec>; daemons: Record<string, DaemonProcess> }> {
  const nodes = await makeNodes(await tempDir(t), names, CONFIG);
  const list = startable(t, names.map((name) => nodes[name]!));
  return { nodes, daemons: Object.fromEntries(names.map((name, i) => [name, list[i]!])) };
}

async function startWith(d: DaemonProcess, handler: string): Promise<DaemonProcess> {
  await d.start(['--handler', join(FIXTURES, handler)]);
  return d;
}

test('a message the handler keeps refusing goes to the dead letters after maxDeliveries, and redrive brings it back for a handler that processes it', async (t) => {
  const { nodes: { b }, daemons } = await setup(t, ['b']);
  const [id] = await append(b!.dir, 'jobs', ['doomed']);

  const refusing = await startWith(daemons.b!, 'handler-false.mjs');
  // The dead letter is stored before the inbox records the message as dead (a crash in between can
  // duplicate a dead letter, never lose one): wait for both.
  const records = await waitFor(async () => {
    const all = await dump(b!.dir);
    return all.some((r) => r.queue === 'dead/jobs') && inboxStates(all, id!).includes('dead') ? all : undefined;
  }, { message: 'the message to reach dead/jobs and be marked dead in its inbox' });

  // Handed out exactly maxDeliveries times, each retry after the growing delay.
  const tries = calls(refusing, id);
  assert.deepEqual(tries.map((c) => c.deliveries), [1, 2, 3], refusing.output);
  assert.ok(tries[1]!.at - tries[0]!.at >= 20, `first retry after ${tries[1]!.at - tries[0]!.at} ms`);
  assert.ok(tries[2]!.at - tries[1]!.at >= 40, `second retry after ${tries[2]!.at - tries[1]!.at} ms`);

  const dead = records.filter((r) => r.queue === 'dead/jobs');
  assert.equal(dead.length, 1);
  assert.equal(dead[0]!.id, id);
  assert.equal(dead[0]!.state, 'dead');
  assert.equal(dead[0]!.body, 'doomed');
  assert.equal(dead[0]!.channel, 'jobs');
  assert.match(dead[0]!.headers?.[DEAD_REASON_HEADER] ?? '', /handler returned false/);
  assert.deepEqual(inboxStates(records, id!), ['dead']);

  const stat = jsonLines((await mqlog(['stat', '--data', b!.dir, '--json'])).stdout);
  const deadQueue = stat.find((s) => s.queue === 'dead/jobs');
  assert.ok(deadQueue, JSON.stringify(stat));
  assert.equal(deadQueue.kind, 'dead');
  assert.equal(deadQueue.channel, 'jobs');
  assert.equal(deadQueue.messages, 1);
  assert.equal(stat.find((s) => s.queue === 'inbox/jobs')?.pending, 0);
  assert.equal(calls(refusing, id).length, 3, 'not handed out again once dead');
  assert.equal(await refusing.stop(), 0);

  // Redrive: back in the inbox as a new delivery, done in the dead letters.
  const redrive = await mqlog(['redrive', '--data', b!.dir]);
  assert.equal(redrive.code, 0, redrive.stderr);
  assert.match(redrive.stdout, /jobs: 1 message\(s\) redriven/);
  const afterRedrive = await dump(b!.dir);
  assert.deepEqual(inboxStates(afterRedrive, id!), ['dead', 'pending']);
  const copy = afterRedrive.find((r) => r.queue === 'inbox/jobs' && r.id === id && r.state === 'pending');
  assert.equal(copy?.body, 'doomed');
  assert.equal(copy.headers?.[DEAD_REASON_HEADER], undefined, 'the redriven copy does not carry the dead reason');
  assert.deepEqual(afterRedrive.filter((r) => r.queue === 'dead/jobs').map((r) => r.state), ['acked']);
  const again = await mqlog(['redrive', '--data', b!.dir]);
  assert.equal(again.code, 0, again.stderr);
  assert.doesNotMatch(again.stdout, /jobs: [1-9]/, 'a redriven letter is not redriven twice');

  // A handler that processes it: acked, on its first delivery since the redrive.
  const processing = await startWith(daemons.b!, 'handler-true.mjs');
  await waitFor(async () => inboxStates(await dump(b!.dir), id!).join() === 'acked,dead', { message: 'the redriven message to be acked' });
  assert.deepEqual(calls(processing, id).map((c) => [c.deliveries, c.body]), [[1, 'doomed']]);
  assert.deepEqual((await dump(b!.dir)).filter((r) => r.queue === 'dead/jobs').map((r) => r.state), ['acked']);
});

test('a handler that returns true is called once per message and the daemon acks it, on every channel', async (t) => {
  const { nodes: { a, b }, daemons } = await setup(t, ['a', 'b']);
  const early = [...(await append(b!.dir, 'common', ['one', 'two'])), ...(await append(b!.dir, 'jobs', ['three']))];
  await daemons.a!.start();
  const handling = await startWith(daemons.b!, 'handler-true.mjs');

  // A message that arrives from a peer on a channel the daemon did not know at start is handled too.
  const sent = await mqlog(['send', '--data', a!.dir, '--to', 'b', '--channel', 'fresh', 'four']);
  assert.equal(sent.code, 0, sent.stderr);
  const ids = [...early, sent.stdout.trim()];

  const records = await waitFor(async () => {
    const all = await dump(b!.dir);
    return ids.every((id) => inboxStates(all, id).join() === 'acked') ? all : undefined;
  }, { message: 'all four messages to be acked' });
  assert.deepEqual(
    ids.map((id) => calls(handling, id).map((c) => [c.body, c.deliveries])),
    [[['one', 1]], [['two', 1]], [['three', 1]], [['four', 1]]],
  );
  assert.deepEqual(records.filter((r) => r.queue.startsWith('dead/')), [], 'no dead letters');
});

test('a handler that throws is retried until it succeeds, and one that always throws ends in the dead letters with the error as reason', async (t) => {
  const { nodes: { b }, daemons } = await setup(t, ['b']);
  const [flaky, hopeless] = await append(b!.dir, 'common', ['flaky', 'always fails']);
  const throwing = await startWith(daemons.b!, 'handler-throws.mjs');

  const records = await waitFor(async () => {
    const all = await dump(b!.dir);
    return inboxStates(all, flaky!).join() === 'acked' && inboxStates(all, hopeless!).join() === 'dead' ? all : undefined;
  }, { message: 'the flaky message acked and the hopeless one dead' });

  assert.deepEqual(calls(throwing, flaky).map((c) => [c.deliveries, c.threw]), [[1, true], [2, true], [3, false]]);
  assert.deepEqual(calls(throwing, hopeless).map((c) => [c.deliveries, c.threw]), [[1, true], [2, true], [3, true]]);
  const dead = records.filter((r) => r.queue === 'dead/common');
  assert.deepEqual(dead.map((r) => [r.id, r.body, r.state]), [[hopeless, 'always fails', 'dead']]);
  assert.match(dead[0]!.headers?.[DEAD_REASON_HEADER] ?? '', /handler threw: fixture failure on delivery 3/);
});

test('a handler that hangs past handlerTimeoutMs sees its signal fire, its late result is ignored, and the message is retried', async (t) => {
  // The visibility timeout is far shorter than the call: the lease is renewed while the handler runs.
  const nodes = await makeNodes(await tempDir(t), ['b'], { ...CONFIG, handlerTimeoutMs: 2500, visibilityTimeoutMs: 1000 });
  const [b] = startable(t, [nodes.b!]);
  const [id] = await append(nodes.b!.dir, 'common', ['slow']);
  await startWith(b!, 'handler-hangs.mjs');
  await waitFor(async () => inboxStates(await dump(nodes.b!.dir), id!).join() === 'acked', { message: 'the message to be acked on its retry' });
  await waitFor(() => calls(b!, id).some((c) => (c as unknown as { event: string }).event === 'late-return'), { message: 'the hung call to return late' });
  const events = calls(b!, id).map((c) => c as unknown as { event: string; deliveries: number; code?: string; at: number });
  const called = events.filter((e) => e.event === 'called');
  assert.deepEqual(called.map((e) => e.deliveries), [1, 2], 'called once on the first delivery (never handed to a second call while the first ran) and once on the retry');
  const aborted = events.find((e) => e.event === 'aborted');
  assert.equal(aborted?.code, 'ERR_TIMEOUT', "the first call's signal fired with ERR_TIMEOUT");
  assert.ok(aborted.at - called[0]!.at >= 2400, `the signal fired at the handler timeout (${aborted.at - called[0]!.at} ms after the call), not at the visibility timeout`);
  assert.match(b!.output, /handlerTimeoutMs \(2500 ms\)/, 'the daemon logged why the call failed');
  assert.deepEqual((await dump(nodes.b!.dir)).filter((r) => r.queue.startsWith('dead/')), [], 'nothing went to the dead letters');
});
