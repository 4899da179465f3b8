/**
 * "Job done" receipts, TTL and delay across real daemons on loopback: a message sent with --receipt is
 * `queued` on the sender until forwarded, `sent` once the peer stored it, and `processed` only once the
 * peer's application acked it, whichever daemons were down in between; a multicast is processed when
 * every destination processed it; a message whose TTL passed before it could be delivered is never
 * delivered and its receipt says `expired`; a delayed message is not handed out before its time.
 */
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import { openNode, type MqlogNode } from '../../src/daemon/node.js';
import type { Delivery } from '../../src/queue/consumer.js';
import { FIXTURES, defer, jsonLines, mqlog, tempDir, waitFor, type RunResult } from '../helpers/index.js';
import { allInbox, daemons as startable, makeNodes, type DaemonProcess, type NodeSpec } from '../helpers/daemon.js';

interface ReceiptJson {
  readonly id: string;
  readonly state: string;
  readonly peers: Record<string, { state: string; at: number }>;
}

/** Nodes named `names` (each the others' peer, with `extra` in mqlog.json) and a daemon object for each, killed after the test. */
async function setup(t: TestContext, names: string[], extra: Record<string, unknown> = {}): Promise<{ nodes: Record<string, NodeSpec>; daemons: Record<string, DaemonProcess> }> {
  const nodes = await makeNodes(await tempDir(t), names, extra);
  const list = startable(t, names.map((name) => nodes[name]!));
  return { nodes, daemons: Object.fromEntries(names.map((name, i) => [name, list[i]!])) };
}

/** `mqlog send` from a node; returns the message id. */
async function send(from: NodeSpec, args: string[]): Promise<string> {
  const result = await mqlog(['send', '--data', from.dir, ...args]);
  assert.equal(result.code, 0, result.stderr);
  const id = result.stdout.trim();
  assert.match(id, /^[0-9a-f-]{36}$/);
  return id;
}

/** `mqlog receipt` without waiting: the state it prints. */
async function receiptState(node: NodeSpec, id: string): Promise<string> {
  const result = await mqlog(['receipt', '--data', node.dir, id]);
  assert.equal(result.code, 0, result.stderr);
  return result.stdout.trim();
}

async function receiptJson(node: NodeSpec, id: string): Promise<ReceiptJson> {
  const result = await mqlog(['receipt', '--data', node.dir, id, '--json']);
  assert.equal(result.code, 0, result.stderr);
  const [status] = jsonLines<ReceiptJson>(result.stdout);
  assert.ok(status, result.stdout);
  return status;
}

function waitReceipt(node: NodeSpec, id: string, state: string, extra: string[] = []): Promise<RunResult> {
  return mqlog(['receipt', '--data', node.dir, id, '--wait', state, '--timeout', '60s', ...extra]);
}

/** Waits (receipt --wait) until the peer stored the message. */
async function waitSent(node: NodeSpec, id: string): Promise<void> {
  const result = await waitReceipt(node, id, 'sent');
  assert.equal(result.code, 0, result.stderr);
  assert.equal(result.stdout.trim(), 'sent');
}

/** `mqlog tail --ack --json` on a node: the ids it printed (and acked). */
async function tailAck(node: NodeSpec): Promise<string[]> {
  const result = await mqlog(['tail', '--data', node.dir, '--ack', '--json']);
  assert.equal(result.code, 0, result.stderr);
  return jsonLines(result.stdout).map((m) => m.id as string);
}

async function backlog(node: NodeSpec, peer: string): Promise<number | undefined> {
  const stat = jsonLines((await mqlog(['stat', '--data', node.dir, '--json'])).stdout);
  return stat.find((s) => s.peer === peer)?.backlog as number | undefined;
}

test('a receipt says sent until the receiving application acks the message, and receipt --wait processed returns only then', async (t) => {
  const { nodes: { a, b }, daemons } = await setup(t, ['a', 'b']);
  await Promise.all([daemons.a!.start(), daemons.b!.start()]);
  const id = await send(a!, ['--to', 'b', '--receipt', 'job']);
  await waitSent(a!, id);

  // Delivered but not acked: waiting for processed times out, still at sent.
  const early = await waitReceipt(a!, id, 'processed', ['--timeout', '1s']);
  assert.equal(early.code, 1, early.stderr);
  assert.equal(early.stdout.trim(), 'sent');

  let waiterDone = false;
  const waiter = waitReceipt(a!, id, 'processed').then((r) => {
    waiterDone = true;
    return r;
  });
  assert.equal(await receiptState(a!, id), 'sent');
  assert.equal((await allInbox(b!.dir)).find((r) => r.id === id)?.state, 'pending');
  assert.equal(waiterDone, false, 'receipt --wait processed returned before the ack');

  assert.deepEqual(await tailAck(b!), [id]);
  const result = await waiter;
  assert.equal(result.code, 0, result.stderr);
  assert.equal(result.stdout.trim(), 'processed');
  assert.equal(await receiptState(a!, id), 'processed');
});

test('a receipt reaches processed when the sender daemon was down at the moment the peer acked', async (t) => {
  const { nodes: { a, b }, daemons } = await setup(t, ['a', 'b']);
  await Promise.all([daemons.a!.start(), daemons.b!.start()]);
  const id = await send(a!, ['--to', 'b', '--receipt', 'job']);
  await waitSent(a!, id);
  assert.equal(await daemons.a!.stop(), 0);

  assert.deepEqual(await tailAck(b!), [id]);
  // The report waits in B's outbox until A is back.
  assert.equal(await backlog(b!, 'a'), 1);
  assert.equal(await receiptState(a!, id), 'sent');

  await daemons.a!.start();
  const result = await waitReceipt(a!, id, 'processed');
  assert.equal(result.code, 0, result.stderr);
  assert.equal(result.stdout.trim(), 'processed');
  await waitFor(async () => (await backlog(b!, 'a')) === 0, { message: "B's report to drain" });
});

test('a receipt goes from queued to sent to processed when the peer was down at send time', async (t) => {
  const { nodes: { a, b }, daemons } = await setup(t, ['a', 'b']);
  await daemons.a!.start();
  const id = await send(a!, ['--to', 'b', '--receipt', 'job']);
  assert.equal(await receiptState(a!, id), 'queued');
  // A tried and failed while B was down.
  await waitFor(async () => {
    const stat = jsonLines((await mqlog(['stat', '--data', a!.dir, '--json'])).stdout);
    return typeof stat.find((s) => s.peer === 'b')?.lastError === 'string';
  }, { message: 'A to fail to reach B' });
  assert.equal(await receiptState(a!, id), 'queued');

  await daemons.b!.start();
  const sent = await waitReceipt(a!, id, 'sent');
  assert.equal(sent.code, 0, sent.stderr);
  assert.equal(sent.stdout.trim(), 'sent');
  assert.deepEqual(await tailAck(b!), [id]);
  const processed = await waitReceipt(a!, id, 'processed');
  assert.equal(processed.code, 0, processed.stderr);
  assert.equal(processed.stdout.trim(), 'processed');
});

test('a multicast receipt is processed only once every destination acked, and --json shows each peer', async (t) => {
  const { nodes: { a, b, c }, daemons } = await setup(t, ['a', 'b', 'c']);
  await Promise.all([daemons.a!.start(), daemons.b!.start(), daemons.c!.start()]);
  const id = await send(a!, ['--to', 'b', '--to', 'c', '--receipt', 'fan out']);
  const sent = await waitReceipt(a!, id, 'sent');
  assert.equal(sent.code, 0, sent.stderr);

  assert.deepEqual(await tailAck(b!), [id]);
  const afterB = await waitFor(async () => {
    const status = await receiptJson(a!, id);
    return status.peers.b?.state === 'processed' ? status : undefined;
  }, { message: "B's report to reach A" });
  assert.equal(afterB.state, 'sent', 'not processed while C has not acked');
  assert.equal(afterB.peers.c?.state, 'sent');
  assert.deepEqual(Object.keys(afterB.peers).sort(), ['b', 'c']);
  assert.equal(await receiptState(a!, id), 'sent');

  assert.deepEqual(await tailAck(c!), [id]);
  const result = await waitReceipt(a!, id, 'processed', ['--json']);
  assert.equal(result.code, 0, result.stderr);
  const [final] = jsonLines<ReceiptJson>(result.stdout);
  assert.equal(final?.state, 'processed');
  assert.equal(final.peers.b?.state, 'processed');
  assert.equal(final.peers.c?.state, 'processed');
});

test('a message whose TTL passed while its peer was down is never delivered, and its receipt says expired', async (t) => {
  const { nodes: { a, b }, daemons } = await setup(t, ['a', 'b']);
  await daemons.a!.start();
  const id = await send(a!, ['--to', 'b', '--ttl', '1s', '--receipt', 'short-lived']);
  const stored = jsonLines((await mqlog(['dump', a!.dir, '--json'])).stdout).find((r) => r.id === id);
  assert.ok(stored, 'in A\'s outbox');
  const ts = stored.ts as number;
  assert.equal(stored.expiresAt, ts + 1000);

  // The peer starts 3 s after the send, 2 s after the message expired.
  await waitFor(() => Date.now() >= ts + 3000, { intervalMs: 50, message: '3 s to pass since the send' });
  await daemons.b!.start();
  const marker = await send(a!, ['--to', 'b', 'marker']);
  // Backlog 0: A's forwarder is past both messages, and B stored the marker.
  await waitFor(async () => (await backlog(a!, 'b')) === 0, { message: "A's backlog to drain" });

  const expired = await waitReceipt(a!, id, 'expired');
  assert.equal(expired.code, 0, expired.stderr);
  assert.equal(expired.stdout.trim(), 'expired');
  assert.deepEqual(await tailAck(b!), [marker], 'only the marker is tailed');
  assert.deepEqual((await allInbox(b!.dir)).filter((r) => r.id === id && r.state !== 'expired'), [], 'never delivered');
});

test('a message sent with --delay 2s is not handed out before 2 s have passed since sending, and is after', async (t) => {
  const { nodes: { a, b }, daemons } = await setup(t, ['a', 'b']);
  await Promise.all([daemons.a!.start(), daemons.b!.start()]);
  // A consumer of B's inbox in this process: it can look often, and tells when it saw a message waiting.
  const consumerNode: MqlogNode = await openNode({ data: b!.dir });
  defer(t, () => consumerNode.close());
  const consumer = await (await consumerNode.inbox()).consumer();
  const takeOne = async (): Promise<Delivery | undefined> => {
    for await (const delivery of consumerNode.tail({ limit: 1, prefetch: 1 })) return delivery;
    return undefined;
  };

  const id = await send(a!, ['--to', 'b', '--delay', '2s', 'later']);
  let sawItWaiting = false;
  const got = await waitFor(async () => {
    const delivery = await takeOne();
    if (delivery === undefined) {
      if (consumer.nextDueAt() !== undefined) sawItWaiting = true;
      return undefined;
    }
    return { delivery, at: Date.now() };
  }, { intervalMs: 50, message: 'the delayed message to be handed out' });
  assert.equal(got.delivery.id, id);
  assert.equal(got.delivery.notBefore, got.delivery.ts + 2000);
  assert.ok(got.at >= got.delivery.ts + 2000, `handed out ${got.at - got.delivery.ts} ms after sending`);
  assert.ok(sawItWaiting, 'the message reached B and waited there before its time');
  await got.delivery.ack();
  assert.equal((await allInbox(b!.dir)).find((r) => r.id === id)?.state, 'acked');
});

test('a message whose TTL passes in the peer\'s inbox before anyone takes it is never tailed, and its receipt says expired', async (t) => {
  const { nodes: { a, b }, daemons } = await setup(t, ['a', 'b']);
  await Promise.all([daemons.a!.start(), daemons.b!.start()]);
  const id = await send(a!, ['--to', 'b', '--ttl', '3s', '--receipt', 'stale soon']);
  await waitSent(a!, id);
  const [stored] = (await allInbox(b!.dir)).filter((r) => r.id === id);
  assert.equal(stored?.state, 'pending');
  const expiresAt = stored.expiresAt as number;
  assert.equal(expiresAt, (stored.ts as number) + 3000);

  await waitFor(() => Date.now() > expiresAt, { intervalMs: 50, message: 'the TTL to pass' });
  assert.deepEqual(await tailAck(b!), [], 'an expired message is not handed out');
  assert.equal((await allInbox(b!.dir)).find((r) => r.id === id)?.state, 'expired');
  const expired = await waitReceipt(a!, id, 'expired');
  assert.equal(expired.code, 0, expired.stderr);
  assert.equal(expired.stdout.trim(), 'expired');
});

test('a message that went dead at its peer reports dead to its sender, and processed once redriven and handled', async (t) => {
  const { nodes: { a, b }, daemons } = await setup(t, ['a', 'b'], { maxDeliveries: 2, handlerRetryDelayMs: 20 });
  // A knows B as "worker": a node's name for a peer is its own business.
  await writeFile(join(a!.dir, 'mqlog.json'), JSON.stringify({ name: 'a', listen: `127.0.0.1:${a!.port}`, peers: { worker: { url: b!.url } } }));
  await daemons.a!.start();
  await daemons.b!.start(['--handler', join(FIXTURES, 'handler-false.mjs')]);

  const id = await send(a!, ['--to', 'worker', '--receipt', 'doomed']);
  const dead = await waitReceipt(a!, id, 'dead', ['--json']);
  assert.equal(dead.code, 0, dead.stderr);
  const [deadStatus] = jsonLines<ReceiptJson>(dead.stdout);
  assert.equal(deadStatus?.state, 'dead');
  assert.deepEqual(Object.keys(deadStatus.peers), ['worker']);

  assert.equal(await daemons.b!.stop(), 0);
  const redrive = await mqlog(['redrive', '--data', b!.dir]);
  assert.equal(redrive.code, 0, redrive.stderr);
  assert.match(redrive.stdout, /common: 1 message\(s\) redriven/);
  await daemons.b!.start(['--handler', join(FIXTURES, 'handler-true.mjs')]);
  await waitFor(async () => (await allInbox(b!.dir)).filter((r) => r.id === id).map((r) => r.state).sort().join() === 'acked,dead', { message: 'the redriven message to be handled' });
  // The ack put B's report in B's outbox before it was recorded; once B's backlog to A is empty, A has
  // applied the report (durably, before accepting the batch).
  await waitFor(async () => (await backlog(b!, 'a')) === 0, { message: "B's reports to reach A" });
  const status = await receiptJson(a!, id);
  assert.equal(status.state, 'processed', `the redriven message was processed, but A's receipt says ${JSON.stringify(status)}`);
  assert.equal(status.peers.worker?.state, 'processed');
});

test('a receipt finds its way back to a sender whose address was given only as a --listen flag, from a receiver that does not know it as a peer', async (t) => {
  const nodes = await makeNodes(await tempDir(t), ['a', 'b']);
  const [na, nb] = [nodes.a!, nodes.b!];
  // A's mqlog.json has no listen (the default, 127.0.0.1:7420, is not where it runs); B knows no peer.
  await writeFile(join(na.dir, 'mqlog.json'), JSON.stringify({ name: 'a', peers: { b: { url: nb.url } } }));
  await writeFile(join(nb.dir, 'mqlog.json'), JSON.stringify({ name: 'b', listen: `127.0.0.1:${nb.port}` }));
  const [da, db] = startable(t, [na, nb]);
  await da!.start(['--listen', `127.0.0.1:${na.port}`]);
  await db!.start();
  // Sent by another process than the daemon: it knows only the config.
  const id = await send(na, ['--to', 'b', '--receipt', 'job']);
  await waitSent(na, id);
  assert.deepEqual(await tailAck(nb), [id]);
  const result = await waitReceipt(na, id, 'processed');
  assert.equal(result.code, 0, `${result.stdout}${result.stderr}\nB: ${db!.output.slice(-1500)}`);
  assert.equal(result.stdout.trim(), 'processed');
});
