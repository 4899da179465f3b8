/**
 * The queue layer over both log stores: outbox, destination queues, inboxes with leases and acks, the
 * intake's exactly-once storage and compaction, run unchanged against FileLogStore and MemoryLogStore.
 * That they pass on both is the proof that queue/ uses nothing but the LogStore interface. Nodes are
 * opened through the node API (`openNode`), with the store handed in; queue objects are reached
 * through the node wherever it offers them.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import { openNode, type MqlogNode } from '../../src/daemon/node.ts';
import { MqlogError } from '../../src/errors.ts';
import { FileLogStore } from '../../src/log/file-log-store.ts';
import { FrameType, decodeFrame } from '../../src/log/frame.ts';
import type { LogStore } from '../../src/log/log-store.ts';
import { MemoryLogStore } from '../../src/log/memory-log-store.ts';
import { DEAD_REASON_HEADER, decodeMessage, type MessageMeta } from '../../src/queue/codec.ts';
import { compactNode } from '../../src/queue/compaction.ts';
import type { Delivery } from '../../src/queue/consumer.ts';
import type { DestinationQueue, OutgoingBatch } from '../../src/queue/destination-queue.ts';
import type { IncomingFrame, IncomingFrames, Intake, IntakeLimits } from '../../src/queue/intake.ts';
import type { QueueEvent } from '../../src/queue/queue-scan.ts';
import { newId } from '../../src/util/ids.ts';
import { defer, tempDir, waitFor } from '../helpers/index.ts';

interface StoreKind {
  readonly name: string;
  /** A fresh store for a node directory (MemoryLogStore ignores it). */
  readonly make: (dir: string) => LogStore;
  /** The store a node reopened on `dir` uses: a new FileLogStore reads the files; memory is the storage itself. */
  readonly reopen: (dir: string, previous: LogStore) => LogStore;
}

const STORES: readonly StoreKind[] = [
  { name: 'FileLogStore', make: (dir) => new FileLogStore(dir), reopen: (dir) => new FileLogStore(dir) },
  { name: 'MemoryLogStore', make: () => new MemoryLogStore(), reopen: (_dir, previous) => previous },
];

/** Never contacted: opening a node and sending never touch the network. */
const NOWHERE = 'http://127.0.0.1:9';
const PEERS = { a: { url: NOWHERE }, b: { url: NOWHERE }, c: { url: NOWHERE } };

const LIMITS: IntakeLimits = { maxBodyBytes: 1024 * 1024, maxStreamedBodyBytes: 64 * 1024 * 1024, maxFrameBytes: 2 * 1024 * 1024 };

/** Enough for any batch these tests take. */
const ALL_FRAMES = 10_000;
const ALL_BYTES = 256 * 1024 * 1024;
/** How long a lease (200 ms) or a nack delay (300 ms) may take to come due, generously. */
const WAIT_MS = 10_000;

interface OpenedNode {
  readonly node: MqlogNode;
  readonly store: LogStore;
  readonly dir: string;
}

type NodeConfig = Partial<Record<keyof MqlogNode['config'], unknown>>;

/**
 * A node on a fresh directory and store, closed after the test (node before store before directory:
 * defer runs in reverse order).
 */
async function openTestNode(t: TestContext, kind: StoreKind, config: NodeConfig): Promise<OpenedNode> {
  const dir = await tempDir(t);
  const store = kind.make(dir);
  defer(t, () => store.close());
  const node = await openNode({ data: dir, store, config });
  defer(t, () => node.close());
  assert.equal(node.store, store, 'the node keeps its logs in the store handed in');
  return { node, store, dir };
}

/** Opens another node object on `dir` over `store` (closed after the test, before the store). */
async function reopenNode(t: TestContext, dir: string, store: LogStore, config: NodeConfig): Promise<MqlogNode> {
  const node = await openNode({ data: dir, store, config });
  defer(t, () => node.close());
  return node;
}

/** Reopens the store as a restarted process would (the memory store stays the same object), then the node. */
async function reopenStoreAndNode(t: TestContext, kind: StoreKind, dir: string, store: LogStore, config: NodeConfig): Promise<MqlogNode> {
  const reopenedStore = kind.reopen(dir, store);
  if (reopenedStore !== store) defer(t, () => reopenedStore.close());
  return reopenNode(t, dir, reopenedStore, config);
}

async function destinationQueue(t: TestContext, node: MqlogNode, destination: string): Promise<DestinationQueue> {
  const queue = await node.outbox.destinationQueue(destination);
  defer(t, () => queue.close());
  return queue;
}

async function openIntake(t: TestContext, node: MqlogNode, limits: IntakeLimits = LIMITS): Promise<Intake> {
  const intake = await node.openIntake(limits);
  defer(t, () => intake.close());
  return intake;
}

/** A batch that must be there. */
async function takeBatch(queue: DestinationQueue, maxFrames = ALL_FRAMES, maxBytes = ALL_BYTES): Promise<OutgoingBatch> {
  const batch = await queue.take(maxFrames, maxBytes);
  assert.ok(batch !== undefined, `a batch for ${queue.destination}`);
  return batch;
}

/** What the forwarder hands a transport, and the receiver the intake. */
function incoming(sender: MqlogNode, batch: OutgoingBatch, destination = 'b'): IncomingFrames & { readonly frames: readonly IncomingFrame[] } {
  return {
    node: sender.nodeId,
    name: sender.config.name,
    destination,
    peer: undefined,
    frames: batch.items.map((i) => ({ stream: i.frame.stream, frame: i.frame.raw })),
    covers: batch.covers,
  };
}

interface Seen {
  readonly id: string;
  readonly state: string;
  readonly message: Extract<QueueEvent, { kind: 'message' }>['message'];
  readonly stream: string;
  readonly offset: number;
  readonly segment: number;
  readonly raw: Buffer;
}

/** Every message event of a queue scan; a torn or corrupt event fails the test (none is expected). */
async function scan(events: AsyncIterable<QueueEvent>): Promise<{ messages: Seen[]; otherFrames: number }> {
  const messages: Seen[] = [];
  let otherFrames = 0;
  for await (const event of events) {
    if (event.kind === 'message') {
      const { frame, message, state } = event;
      messages.push({ id: message.id, state, message, stream: frame.stream, offset: frame.offset, segment: frame.segment, raw: frame.raw });
    } else if (event.kind === 'frame') otherFrames++;
    else assert.fail(`unexpected ${event.kind} event in ${event.stream}`);
  }
  return { messages, otherFrames };
}

async function statesById(events: AsyncIterable<QueueEvent>): Promise<Map<string, string>> {
  return new Map((await scan(events)).messages.map((m) => [m.id, m.state]));
}

/** Hands out up to `limit` messages of a channel (nothing waits: an empty array when none is ready). */
async function tail(node: MqlogNode, channel: string, limit: number): Promise<Delivery[]> {
  const out: Delivery[] = [];
  for await (const delivery of node.tail({ channel, limit })) out.push(delivery);
  return out;
}

async function tailOne(node: MqlogNode, channel: string): Promise<Delivery | undefined> {
  const [delivery] = await tail(node, channel, 1);
  return delivery;
}

/** Inbox message fields as an intake would build them: a message a peer sent to this node. */
function inboxMeta(channel: string, priority: number, fields: Partial<MessageMeta> = {}): MessageMeta {
  const ts = Date.now();
  return { id: newId(ts), ts, channel, priority, to: ['me'], from: 'peer', ...fields };
}

async function bytesOf(source: AsyncIterable<Buffer> | Iterable<Buffer>): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const part of source) parts.push(part);
  return Buffer.concat(parts);
}

/** A body of `bytes` that is not one repeated byte (a misplaced chunk changes it). */
function patterned(bytes: number, seed: number): Buffer {
  const body = Buffer.alloc(bytes);
  for (let i = 0; i < bytes; i++) body[i] = (Math.imul(i >>> 2, 2654435761) + seed + i) >>> 24;
  return body;
}

/** `body` in pieces of `pieceBytes`, as a file stream would hand them out. */
async function* pieces(body: Buffer, pieceBytes: number): AsyncGenerator<Buffer> {
  for (let at = 0; at < body.length; at += pieceBytes) yield Buffer.from(body.subarray(at, at + pieceBytes));
}

function hasCode(code: string, check?: (err: MqlogError) => void): (err: unknown) => boolean {
  return (err) => {
    assert.ok(err instanceof MqlogError, `an MqlogError, got ${String(err)}`);
    assert.equal(err.code, code);
    check?.(err);
    return true;
  };
}

/** Every file name under `dir`, recursively. */
async function filesUnder(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) out.push(...(await filesUnder(path)));
    else out.push(path);
  }
  return out;
}

for (const kind of STORES) {
  const { name } = kind;

  // --- the outbox and one destination's view of it

  test(`${name}: take hands out a destination's messages most urgent first, as stored, passing over other destinations'`, async (t) => {
    const { node: a, dir, store } = await openTestNode(t, kind, { name: 'a', peers: PEERS });
    // A second sender on the same outbox (its own writer slot, so its own streams): equal priorities
    // across streams must still come out by id (time), not stream by stream.
    const other = await reopenNode(t, dir, store, { name: 'a', peers: PEERS });
    const low1 = await a.send('b', 'low 1', { channel: 'jobs', priority: 4 });
    const elsewhere = await a.send('c', 'for c', { channel: 'jobs', priority: 9 });
    const low2 = await other.send('b', 'low 2', { channel: 'jobs', priority: 4 });
    const high = await a.send('b', 'high', { channel: 'jobs', priority: 9 });
    const low3 = await a.send('b', 'low 3', { channel: 'jobs', priority: 4 });
    for (const id of [low1, elsewhere, low2, high, low3]) assert.match(id, /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);

    // A batch holds one priority: the urgent message is not held up by storing less urgent ones.
    const toB = await destinationQueue(t, a, 'b');
    const urgent = await takeBatch(toB);
    assert.deepEqual(
      urgent.items.map((i) => i.meta?.id),
      [high],
    );
    assert.equal(urgent.taken, 2, 'the priority-9 message for c was read (and passed) too');
    const batch = await takeBatch(toB);
    assert.deepEqual(
      batch.items.map((i) => i.meta?.id),
      [low1, low2, low3],
    );
    assert.equal(batch.taken, 3);
    assert.deepEqual(batch.expired, []);
    const items = [...urgent.items, ...batch.items];
    assert.deepEqual(
      items.map((i) => decodeMessage(i.frame.payload).body.toString()),
      ['high', 'low 1', 'low 2', 'low 3'],
    );

    // raw is the frame exactly as the outbox's log holds it (what the forwarder ships unchanged).
    const stored = new Map((await scan(a.outbox.messages())).messages.map((m) => [m.id, m]));
    for (const item of items) {
      const id = item.meta?.id ?? '';
      const frame = stored.get(id);
      assert.ok(frame !== undefined, `message ${id} is in the outbox`);
      assert.equal(item.frame.stream, frame.stream);
      assert.equal(item.frame.offset, frame.offset);
      assert.deepEqual(item.frame.raw, frame.raw);
      const decoded = decodeFrame(item.frame.raw);
      assert.ok(decoded.ok, 'raw is one whole, valid frame');
      assert.equal(decoded.bytes, item.frame.raw.length);
      assert.equal(decoded.frame.type, FrameType.MESSAGE);
      assert.equal(decoded.frame.offset, item.frame.offset);
    }
    assert.equal(stored.size, 5);
  });

  test(`${name}: a delivered batch moves the cursor once flushed, and the messages are then sent`, async (t) => {
    const { node: a } = await openTestNode(t, kind, { name: 'a', peers: PEERS });
    const ids = [await a.send('b', 'one', { priority: 3 }), await a.send('b', 'two', { priority: 3 })];
    assert.deepEqual([...(await statesById(a.outbox.messages())).values()], ['pending', 'pending']);

    const queue = await destinationQueue(t, a, 'b');
    const batch = await takeBatch(queue);
    queue.delivered(batch, true);
    // Not durable, hence not the answer, before the cursor is written.
    assert.deepEqual([...(await statesById(a.outbox.messages())).values()], ['pending', 'pending']);
    await queue.flush();
    const states = await statesById(a.outbox.messages());
    assert.deepEqual(
      ids.map((id) => states.get(id)),
      ['sent', 'sent'],
    );
    assert.ok((queue.status().lastSentAt ?? 0) > 0, 'the destination notes when it last got something');
    assert.equal(await queue.take(ALL_FRAMES, ALL_BYTES), undefined, 'nothing is handed out again');
    // A new view of the destination (a restarted forwarder) starts from the flushed cursor.
    assert.equal(await (await destinationQueue(t, await reopenNode(t, a.dataDir, a.store, { name: 'a', peers: PEERS }), 'b')).take(ALL_FRAMES, ALL_BYTES), undefined);
  });

  test(`${name}: a frame the peer refused is dead for good`, async (t) => {
    const { node: a } = await openTestNode(t, kind, { name: 'a', peers: PEERS });
    const refused = await a.send('b', 'refused');
    const kept = await a.send('b', 'kept');
    const queue = await destinationQueue(t, a, 'b');
    const batch = await takeBatch(queue);
    const item = batch.items.find((i) => i.meta?.id === refused);
    assert.ok(item !== undefined);
    queue.refused(item);
    await queue.flush();
    const states = await statesById(a.outbox.messages());
    assert.equal(states.get(refused), 'dead');
    assert.equal(states.get(kept), 'pending');
    // Once the cursor is rewound, the refused frame is passed over, never handed out again.
    await queue.rewind();
    const again = await takeBatch(queue);
    assert.deepEqual(
      again.items.map((i) => i.meta?.id),
      [kept],
    );
  });

  test(`${name}: a message past its time to live comes out of take as expired, not as an item`, async (t) => {
    const { node: a } = await openTestNode(t, kind, { name: 'a', peers: PEERS });
    const sentAt = Date.now();
    const shortLived = await a.send('b', 'short-lived', { ttlMs: 1 });
    const lasting = await a.send('b', 'lasting');
    await waitFor(() => Date.now() > sentAt + 5, { message: 'the time to live to pass' });

    const queue = await destinationQueue(t, a, 'b');
    const batch = await takeBatch(queue);
    assert.deepEqual(
      batch.items.map((i) => i.meta?.id),
      [lasting],
    );
    assert.deepEqual(
      batch.expired.map((e) => e.meta.id),
      [shortLived],
    );
    await queue.flush();
    assert.equal((await statesById(a.outbox.messages())).get(shortLived), 'expired');
    // Recorded in the cursor, not only derived from the clock: still expired when asked as of send time.
    const asOfSending = await statesById(a.outbox.messages({}, sentAt));
    assert.equal(asOfSending.get(shortLived), 'expired');
    assert.equal(asOfSending.get(lasting), 'pending');
  });

  test(`${name}: a multicast message is pending until every destination has it`, async (t) => {
    const { node: a } = await openTestNode(t, kind, { name: 'a', peers: PEERS });
    const id = await a.send(['b', 'c'], 'to both');
    const deliverTo = async (peer: string) => {
      const queue = await destinationQueue(t, a, peer);
      const batch = await takeBatch(queue);
      assert.deepEqual(
        batch.items.map((i) => i.meta?.id),
        [id],
      );
      queue.delivered(batch, true);
      await queue.flush();
    };
    await deliverTo('b');
    assert.equal((await statesById(a.outbox.messages())).get(id), 'pending');
    assert.equal((await a.outbox.stat()).backlog.get('c'), 1);
    assert.equal((await a.outbox.stat()).backlog.get('b') ?? 0, 0);

    await deliverTo('c');
    assert.equal((await statesById(a.outbox.messages())).get(id), 'sent');
  });

  test(`${name}: the backlog counts a streamed body as one message`, async (t) => {
    const { node: a } = await openTestNode(t, kind, { name: 'a', peers: PEERS });
    const body = patterned(3 * 1024 * 1024 + 12_345, 1);
    const streamed = await a.sendStream('b', pieces(body, 64 * 1024), { channel: 'files' });
    await a.send('b', 'small');
    await a.send('c', 'for c');

    const { queue, backlog } = await a.outbox.stat();
    assert.equal(backlog.get('b'), 2);
    assert.equal(backlog.get('c'), 1);
    assert.equal(queue.messages, 3);
    assert.equal(queue.pending, 3);
    const { messages, otherFrames } = await scan(a.outbox.messages());
    assert.equal(otherFrames, 4, 'the body is stored as 1 MiB chunk frames (3 MiB and a bit: 4)');
    const message = messages.find((m) => m.id === streamed)?.message;
    assert.ok(message?.streamed !== undefined, 'the message names its chunks');
    assert.equal(message.streamed.size, body.length);
    assert.equal(message.streamed.sha256, createHash('sha256').update(body).digest('hex'));
    assert.ok((await bytesOf(a.outbox.body(message))).equals(body), 'the body reads back as sent');
  });

  // --- an inbox and its consumers

  test(`${name}: tail hands out inbox messages most urgent first, and ack makes them acked`, async (t) => {
    const { node } = await openTestNode(t, kind, { name: 'me' });
    const inbox = await node.inbox('jobs');
    const low1 = inboxMeta('jobs', 4);
    const high = inboxMeta('jobs', 9);
    const low2 = inboxMeta('jobs', 4);
    await inbox.append(low1, Buffer.from('low 1'));
    await inbox.append(high, Buffer.from('high'));
    await inbox.append(low2, Buffer.from('low 2'));
    await (await node.inbox('other')).append(inboxMeta('other', 9), Buffer.from('another channel'));

    const deliveries = await tail(node, 'jobs', 10);
    assert.deepEqual(
      deliveries.map((d) => d.id),
      [high.id, low1.id, low2.id],
    );
    assert.deepEqual(
      deliveries.map((d) => d.body.toString()),
      ['high', 'low 1', 'low 2'],
    );
    assert.deepEqual(
      deliveries.map((d) => d.deliveries),
      [1, 1, 1],
    );
    assert.deepEqual(
      deliveries.map((d) => d.headers),
      [{}, {}, {}],
      'a message without headers has {} (as tail --json shows it)',
    );
    assert.deepEqual([...(await statesById(inbox.messages())).values()], ['pending', 'pending', 'pending']);
    for (const d of deliveries) await d.ack();
    const states = await statesById(inbox.messages());
    assert.deepEqual(
      [low1.id, high.id, low2.id].map((id) => states.get(id)),
      ['acked', 'acked', 'acked'],
    );
    assert.deepEqual(await tail(node, 'jobs', 10), [], 'acked messages are not handed out again');
    assert.equal((await inbox.stat()).pending, 0);
  });

  test(`${name}: a message held without renewal comes back after the visibility timeout`, async (t) => {
    const { node } = await openTestNode(t, kind, { name: 'me', visibilityTimeoutMs: 200, renewLeases: false });
    const inbox = await node.inbox('jobs');
    const meta = inboxMeta('jobs', 4);
    await inbox.append(meta, Buffer.from('work'));
    const leasedFrom = Date.now();
    const first = await tailOne(node, 'jobs');
    assert.equal(first?.id, meta.id);
    assert.ok(first.leaseUntil >= leasedFrom + 200 && first.leaseUntil <= Date.now() + 200, 'leased for the visibility timeout');
    const askedAt = Date.now();
    const meanwhile = await tailOne(node, 'jobs');
    assert.ok(meanwhile === undefined || askedAt >= first.leaseUntil, 'not handed out again while leased');

    const again = await waitFor(() => tailOne(node, 'jobs'), { timeoutMs: WAIT_MS, message: 'the message to come back' });
    assert.ok(Date.now() >= first.leaseUntil, 'not before the lease lapsed');
    assert.equal(again.id, meta.id);
    assert.equal(again.deliveries, 2);
    await again.ack();
    assert.equal((await statesById(inbox.messages())).get(meta.id), 'acked');
  });

  test(`${name}: an ack after the lease was handed out again is ERR_LEASE_EXPIRED, a second ack ERR_ALREADY_ACKED`, async (t) => {
    const { node } = await openTestNode(t, kind, { name: 'me', visibilityTimeoutMs: 200, renewLeases: false });
    const inbox = await node.inbox('jobs');
    const meta = inboxMeta('jobs', 4);
    await inbox.append(meta, Buffer.from('work'));
    const first = await tailOne(node, 'jobs');
    assert.ok(first !== undefined);
    const second = await waitFor(() => tailOne(node, 'jobs'), { timeoutMs: WAIT_MS, message: 'the message to be handed out again' });
    await assert.rejects(first.ack(), hasCode('ERR_LEASE_EXPIRED', (err) => assert.equal(err.details?.offset, first.offset)));
    await second.ack();
    await assert.rejects(second.ack(), hasCode('ERR_ALREADY_ACKED'));
    await assert.rejects(first.ack(), hasCode('ERR_ALREADY_ACKED'));
    assert.equal((await statesById(inbox.messages())).get(meta.id), 'acked');
  });

  test(`${name}: a held message's lease is renewed until it is acked, and extend(ms) sets it by hand`, async (t) => {
    const { node } = await openTestNode(t, kind, { name: 'me', visibilityTimeoutMs: 300 });
    const inbox = await node.inbox('jobs');
    const meta = inboxMeta('jobs', 4);
    await inbox.append(meta, Buffer.from('long work'));
    const held = await tailOne(node, 'jobs');
    assert.ok(held !== undefined);
    const firstUntil = held.leaseUntil;
    // Three timeouts later the lease still holds: renewed, and nobody else got the message.
    await waitFor(() => Date.now() > firstUntil + 600, { message: 'three timeouts to pass' });
    assert.ok(held.leaseUntil > Date.now(), `the lease was renewed (until ${held.leaseUntil}, now ${Date.now()})`);
    assert.equal(await tailOne(node, 'jobs'), undefined, 'not handed out again while renewed');
    await held.extend(60_000);
    assert.ok(held.leaseUntil >= Date.now() + 59_000, 'extend(ms) moved the lease');
    await assert.rejects(held.extend(0), hasCode('ERR_INVALID_ARG'));
    await held.ack();
    assert.equal((await statesById(inbox.messages())).get(meta.id), 'acked');
  });

  test(`${name}: a nacked message is ready again after its delay`, async (t) => {
    const { node } = await openTestNode(t, kind, { name: 'me' });
    const inbox = await node.inbox('jobs');
    const meta = inboxMeta('jobs', 4);
    await inbox.append(meta, Buffer.from('work'));

    const first = await tailOne(node, 'jobs');
    assert.ok(first !== undefined);
    await first.nack();
    const second = await tailOne(node, 'jobs');
    assert.equal(second?.id, meta.id, 'without a delay: ready at once (the 30 s lease no longer holds it)');
    assert.equal(second.deliveries, 2);

    const nackedAt = Date.now();
    await second.nack({ delayMs: 300 });
    const third = await waitFor(() => tailOne(node, 'jobs'), { timeoutMs: WAIT_MS, message: 'the delayed message to come back' });
    assert.ok(Date.now() >= nackedAt + 300, 'not before its delay');
    assert.equal(third.id, meta.id);
    assert.equal(third.deliveries, 3);
    await assert.rejects(second.ack(), hasCode('ERR_LEASE_EXPIRED'));
    await assert.rejects(first.nack({ delayMs: -1 }), hasCode('ERR_INVALID_ARG'));
    await third.ack();
  });

  test(`${name}: after maxDeliveries hand-outs a message goes to the channel's dead letters with the reason`, async (t) => {
    const { node } = await openTestNode(t, kind, { name: 'me', maxDeliveries: 2, renewLeases: false });
    const inbox = await node.inbox('jobs');
    const meta = inboxMeta('jobs', 6, { headers: { job: '42' } });
    const survivor = inboxMeta('jobs', 4);
    await inbox.append(meta, Buffer.from('poison'));
    await inbox.append(survivor, Buffer.from('fine'));

    for (const attempt of [1, 2]) {
      // The more urgent of the two: handed out first.
      const d = await tailOne(node, 'jobs');
      assert.equal(d?.id, meta.id);
      assert.equal(d.deliveries, attempt);
      await d.nack({ reason: `boom ${attempt}` });
    }
    const handed = await tail(node, 'jobs', 10);
    assert.deepEqual(
      handed.map((d) => d.id),
      [survivor.id],
      'the poison message is not handed out a third time',
    );
    assert.equal(handed[0]?.deliveries, 1);
    for (const d of handed) await d.ack();

    assert.equal((await statesById(inbox.messages())).get(meta.id), 'dead');
    const dead = await scan((await inbox.deadLetters()).messages());
    assert.deepEqual(
      dead.messages.map((m) => m.id),
      [meta.id],
    );
    const letter = dead.messages[0];
    assert.ok(letter !== undefined);
    assert.equal(letter.state, 'dead');
    assert.equal(letter.message.body.toString(), 'poison');
    assert.equal(letter.message.headers?.job, '42');
    const reason = letter.message.headers?.[DEAD_REASON_HEADER] ?? '';
    assert.match(reason, /handed out 2 times/);
    assert.match(reason, /boom 2/);
    const first = (await scan(inbox.messages())).messages.find((m) => m.id === meta.id);
    assert.deepEqual(letter.message.origin, { node: '', stream: first?.stream, offset: first?.offset }, 'the dead letter says where in the inbox it was');
  });

  test(`${name}: a streamed body appended as chunks reads back through bodyStream`, async (t) => {
    const { node } = await openTestNode(t, kind, { name: 'me' });
    const inbox = await node.inbox('files');
    const body = patterned(2 * 1024 * 1024 + 777, 2);
    const ts = Date.now();
    const id = newId(ts);
    const chunkBytes = 1024 * 1024;
    const parts: { stream: string; first: number; last: number }[] = [];
    for (let position = 0; position < body.length; position += chunkBytes) {
      const stored = await inbox.appendChunk({ id, position, ts, channel: 'files', priority: 5, to: ['me'] }, body.subarray(position, position + chunkBytes));
      const last = parts.at(-1);
      if (last !== undefined && last.stream === stored.stream) last.last = stored.offset;
      else parts.push({ stream: stored.stream, first: stored.offset, last: stored.offset });
    }
    assert.deepEqual(await tail(node, 'files', 10), [], 'chunks alone are no message');
    await inbox.append({ id, ts, channel: 'files', priority: 5, to: ['me'], from: 'peer', streamed: { size: body.length, sha256: createHash('sha256').update(body).digest('hex'), parts } }, Buffer.alloc(0));

    const delivered = await tail(node, 'files', 10);
    assert.deepEqual(
      delivered.map((d) => d.id),
      [id],
    );
    const delivery = delivered[0] as Delivery;
    assert.equal(delivery.body.length, 0);
    assert.equal(delivery.streamed?.size, body.length);
    assert.ok((await bytesOf(delivery.bodyStream())).equals(body), 'bodyStream yields the body as appended');
    await delivery.ack();
  });

  // --- the intake: exactly once into the inboxes

  test(`${name}: the intake stores a batch once, in the inbox of each message's channel, with its origin`, async (t) => {
    const { node: a } = await openTestNode(t, kind, { name: 'a', peers: PEERS });
    const { node: b } = await openTestNode(t, kind, { name: 'b', peers: PEERS });
    const job1 = await a.send('b', 'job 1', { channel: 'jobs' });
    const mail = await a.send('b', 'mail', { channel: 'mail' });
    const job2 = await a.send('b', 'job 2', { channel: 'jobs' });
    await a.send('c', 'not for b', { channel: 'jobs' });
    const batch = await takeBatch(await destinationQueue(t, a, 'b'));
    assert.equal(batch.items.length, 3);
    const intake = await openIntake(t, b);

    assert.deepEqual(await intake.accept(incoming(a, batch)), { stored: 3, duplicates: 0 });
    assert.deepEqual(await intake.accept(incoming(a, batch)), { stored: 0, duplicates: 3 });

    const where = new Map(batch.items.map((i) => [i.meta?.id, i.frame]));
    const jobs = await scan((await b.inbox('jobs')).messages());
    const mails = await scan((await b.inbox('mail')).messages());
    assert.deepEqual(
      jobs.messages.map((m) => m.id),
      [job1, job2],
    );
    assert.deepEqual(
      mails.messages.map((m) => m.id),
      [mail],
    );
    for (const m of [...jobs.messages, ...mails.messages]) {
      const sent = where.get(m.id);
      assert.ok(sent !== undefined);
      assert.equal(m.state, 'pending');
      assert.equal(m.message.from, 'a');
      assert.deepEqual(m.message.origin, { node: a.nodeId, stream: sent.stream, offset: sent.offset, destination: 'b' });
      assert.equal(m.message.body.toString(), decodeMessage(sent.payload).body.toString());
    }
    assert.deepEqual(
      (await tail(b, 'jobs', 10)).map((d) => d.body.toString()),
      ['job 1', 'job 2'],
    );
  });

  test(`${name}: a streamed body whose chunk batches were stored out of order is delivered in body order`, async (t) => {
    const { node: a } = await openTestNode(t, kind, { name: 'a', peers: PEERS });
    const { node: b } = await openTestNode(t, kind, { name: 'b', peers: PEERS });
    const body = patterned(6 * 1024 * 1024 - 777, 3);
    const id = await a.sendStream('b', pieces(body, 256 * 1024), { channel: 'files' });
    const queue = await destinationQueue(t, a, 'b');
    // Two chunks per batch, all taken before any is stored, as with several batches in flight.
    const batches: OutgoingBatch[] = [];
    for (let i = 0; i < 4; i++) batches.push(await takeBatch(queue, 2));
    assert.deepEqual(
      batches.map((batch) => batch.items.length),
      [2, 2, 2, 1],
    );
    assert.equal(batches[3]?.items[0]?.meta?.id, id, 'the message frame comes last');
    const intake = await openIntake(t, b);
    // The receiver stores the second pair of chunks after the third (requests overtook each other).
    for (const index of [0, 2, 1, 3]) {
      assert.deepEqual(await intake.accept(incoming(a, batches[index] as OutgoingBatch)), { stored: batches[index]?.items.length, duplicates: 0 });
    }
    const delivered = await tail(b, 'files', 1);
    assert.equal(delivered[0]?.id, id);
    assert.ok((await bytesOf((delivered[0]).bodyStream())).equals(body), 'the body reads back in its own order');
    await delivered[0]?.ack();
  });

  test(`${name}: two batches accepted concurrently are both stored, and a retry overlapping one stores nothing twice`, async (t) => {
    const { node: a } = await openTestNode(t, kind, { name: 'a', peers: PEERS });
    const { node: b } = await openTestNode(t, kind, { name: 'b', peers: PEERS });
    const ids = [await a.send('b', 'm1', { channel: 'jobs' }), await a.send('b', 'm2', { channel: 'jobs' }), await a.send('b', 'm3', { channel: 'jobs' })];
    const queue = await destinationQueue(t, a, 'b');
    // Several batches in flight, as the forwarder keeps them: taken before any is delivered.
    const first = await takeBatch(queue, 1);
    const second = await takeBatch(queue, 1);
    assert.deepEqual([...first.items, ...second.items].map((i) => i.meta?.id), ids.slice(0, 2));
    const intake = await openIntake(t, b);

    const results = await Promise.all([intake.accept(incoming(a, first)), intake.accept(incoming(a, second)), intake.accept(incoming(a, first))]);
    assert.deepEqual(results, [
      { stored: 1, duplicates: 0 },
      { stored: 1, duplicates: 0 },
      { stored: 0, duplicates: 1 },
    ]);
    const third = await takeBatch(queue, 1);
    const retried = await Promise.all([intake.accept(incoming(a, second)), intake.accept(incoming(a, third)), intake.accept(incoming(a, third))]);
    assert.deepEqual(retried, [
      { stored: 0, duplicates: 1 },
      { stored: 1, duplicates: 0 },
      { stored: 0, duplicates: 1 },
    ]);
    const stored = await scan((await b.inbox('jobs')).messages());
    assert.deepEqual(
      stored.messages.map((m) => m.id),
      ids,
    );
  });

  test(`${name}: a batch with a corrupt frame is refused whole with ERR_CORRUPT_FRAME naming the frame`, async (t) => {
    const { node: a } = await openTestNode(t, kind, { name: 'a', peers: PEERS });
    const { node: b } = await openTestNode(t, kind, { name: 'b', peers: PEERS });
    for (let i = 0; i < 3; i++) await a.send('b', `message ${i}`, { channel: 'jobs' });
    const batch = await takeBatch(await destinationQueue(t, a, 'b'));
    const good = incoming(a, batch);
    // A copy: the original raw is the outbox's (memory: its only copy).
    const damaged = Buffer.from(good.frames[1]?.frame ?? Buffer.alloc(0));
    damaged[damaged.length - 2] = (damaged[damaged.length - 2] as number) ^ 0x40;
    const intake = await openIntake(t, b);

    await assert.rejects(
      intake.accept({ ...good, frames: good.frames.map((f, i) => (i === 1 ? { ...f, frame: damaged } : f)) }),
      hasCode('ERR_CORRUPT_FRAME', (err) => assert.equal(err.details?.frame, 1)),
    );
    assert.deepEqual((await scan((await b.inbox('jobs')).messages())).messages, [], 'nothing of the batch was stored');
    assert.deepEqual(
      (await b.queues()).filter((q) => q.kind === 'inbox'),
      [],
    );
    // The refused batch left no trace in the duplicate table either: sent intact, all of it is new.
    assert.deepEqual(await intake.accept(good), { stored: 3, duplicates: 0 });
  });

  test(`${name}: a body over maxBodyBytes is refused with ERR_BODY_TOO_LARGE`, async (t) => {
    const { node: a } = await openTestNode(t, kind, { name: 'a', peers: PEERS });
    const { node: b } = await openTestNode(t, kind, { name: 'b', peers: PEERS });
    await a.send('b', Buffer.alloc(64, 1), { channel: 'jobs' });
    await a.send('b', Buffer.alloc(65, 1), { channel: 'jobs' });
    const batch = await takeBatch(await destinationQueue(t, a, 'b'));
    const intake = await openIntake(t, b, { ...LIMITS, maxBodyBytes: 64 });
    await assert.rejects(
      intake.accept(incoming(a, batch)),
      hasCode('ERR_BODY_TOO_LARGE', (err) => assert.equal(err.details?.frame, 1)),
    );
    assert.deepEqual((await scan((await b.inbox('jobs')).messages())).messages, []);
    assert.deepEqual(await intake.accept({ ...incoming(a, batch), frames: incoming(a, batch).frames.slice(0, 1), covers: undefined }), { stored: 1, duplicates: 0 }, 'a body at the limit is taken');
  });

  test(`${name}: a streamed body forwarded through the intake is checked, stored once and read back whole`, async (t) => {
    const { node: a } = await openTestNode(t, kind, { name: 'a', peers: PEERS });
    const { node: b } = await openTestNode(t, kind, { name: 'b', peers: PEERS });
    const body = patterned(2 * 1024 * 1024 + 4321, 3);
    const id = await a.sendStream('b', pieces(body, 100_000), { channel: 'files' });
    const batch = await takeBatch(await destinationQueue(t, a, 'b'));
    assert.equal(batch.items.length, 4, 'three chunks and the message');
    const intake = await openIntake(t, b);
    assert.deepEqual(await intake.accept(incoming(a, batch)), { stored: 4, duplicates: 0 });
    assert.deepEqual(await intake.accept(incoming(a, batch)), { stored: 0, duplicates: 4 });

    const delivered = await tail(b, 'files', 10);
    assert.deepEqual(
      delivered.map((d) => d.id),
      [id],
    );
    const delivery = delivered[0] as Delivery;
    assert.equal(delivery.from, 'a');
    assert.ok((await bytesOf(delivery.bodyStream())).equals(body));
    await delivery.ack();
  });

  test(`${name}: after the receiving node is closed and reopened, a batch it stored is still a duplicate`, async (t) => {
    const { node: a } = await openTestNode(t, kind, { name: 'a', peers: PEERS });
    const { node: b, dir, store } = await openTestNode(t, kind, { name: 'b', peers: PEERS });
    for (let i = 0; i < 3; i++) await a.send('b', `message ${i}`, { channel: 'jobs' });
    const batch = await takeBatch(await destinationQueue(t, a, 'b'));
    const intake = await b.openIntake(LIMITS);
    assert.deepEqual(await intake.accept(incoming(a, batch)), { stored: 3, duplicates: 0 });
    await intake.close();
    await b.close();

    const again = await reopenStoreAndNode(t, kind, dir, store, { name: 'b', peers: PEERS });
    const reopenedIntake = await openIntake(t, again);
    assert.deepEqual(await reopenedIntake.accept(incoming(a, batch)), { stored: 0, duplicates: 3 });
    assert.equal((await scan((await again.inbox('jobs')).messages())).messages.length, 3);
  });

  test(`${name}: a receiving node that stopped without a dedup checkpoint recognises the batch from its inbox`, async (t) => {
    const { node: a } = await openTestNode(t, kind, { name: 'a', peers: PEERS });
    const { node: b, dir, store } = await openTestNode(t, kind, { name: 'b', peers: PEERS });
    for (let i = 0; i < 3; i++) await a.send('b', `message ${i}`, { channel: i === 1 ? 'mail' : 'jobs' });
    const batch = await takeBatch(await destinationQueue(t, a, 'b'));
    // Never closed, as in a crash: the duplicate table on disk is the one written when it opened.
    const intake = await b.openIntake(LIMITS);
    assert.deepEqual(await intake.accept(incoming(a, batch)), { stored: 3, duplicates: 0 });
    await b.close();

    const again = await reopenStoreAndNode(t, kind, dir, store, { name: 'b', peers: PEERS });
    const reopenedIntake = await openIntake(t, again);
    assert.deepEqual(await reopenedIntake.accept(incoming(a, batch)), { stored: 0, duplicates: 3 });
    assert.equal((await scan((await again.inbox('jobs')).messages())).messages.length, 2);
    assert.equal((await scan((await again.inbox('mail')).messages())).messages.length, 1);
  });

  // --- compaction

  test(`${name}: compaction reclaims acked inbox messages and keeps unacked ones`, async (t) => {
    const { node, store, dir } = await openTestNode(t, kind, { name: 'me', segmentBytes: 4096 });
    const inbox = await node.inbox('jobs');
    const metas: MessageMeta[] = [];
    for (let i = 0; i < 40; i++) {
      const meta = inboxMeta('jobs', 4);
      metas.push(meta);
      await inbox.append(meta, Buffer.alloc(400, i));
    }
    const before = await store.usage(inbox.info.queue);
    // 40 frames of about 500 bytes: several segments only if the writer got the node's segmentBytes.
    assert.ok(before.segments >= 4, `segments of 4096 bytes (got ${before.segments} segments of ${before.bytes} bytes)`);

    const handed = await tail(node, 'jobs', 30);
    assert.equal(handed.length, 30);
    for (const d of handed) await d.ack();

    const result = await compactNode({ store, dataDir: dir });
    assert.ok(result.bytesReclaimed > 0, 'bytes reclaimed');
    const reclaimedHere = result.queues.find((q) => q.queue === inbox.info.queue);
    assert.ok((reclaimedHere?.framesRemoved ?? 0) > 0);
    const after = await store.usage(inbox.info.queue);
    assert.ok(after.bytes < before.bytes, `usage shrinks (${before.bytes} -> ${after.bytes})`);

    const left = (await scan(inbox.messages())).messages;
    const unacked = metas.slice(30).map((m) => m.id);
    assert.deepEqual(
      left.filter((m) => m.state !== 'acked').map((m) => m.id),
      unacked,
      'every unacked message stays',
    );
    assert.ok(left.length < 40, 'acked messages are gone');
    assert.ok(!left.some((m) => m.id === metas[0]?.id), 'the first acked message is gone');
    // The consumer goes on past the reclaimed segments.
    const rest = await tail(node, 'jobs', 40);
    assert.deepEqual(
      rest.map((d) => d.id),
      unacked,
    );
  });

  test(`${name}: compaction reclaims outbox messages every destination has and keeps pending ones`, async (t) => {
    const { node: a, store, dir } = await openTestNode(t, kind, { name: 'a', peers: PEERS, segmentBytes: 4096 });
    const delivered: string[] = [];
    for (let i = 0; i < 30; i++) delivered.push(await a.send('b', Buffer.alloc(400, i)));
    const pending: string[] = [];
    for (let i = 0; i < 10; i++) pending.push(await a.send(['b', 'c'], Buffer.alloc(400, i)));
    const before = await store.usage(a.outbox.info.queue);
    assert.ok(before.segments >= 4, `segments of 4096 bytes (got ${before.segments})`);
    const firstSegment = (await scan(a.outbox.messages())).messages.filter((m) => m.segment === 0).map((m) => m.id);
    assert.ok(firstSegment.length > 0 && firstSegment.every((id) => delivered.includes(id)));

    const toB = await destinationQueue(t, a, 'b');
    const batch = await takeBatch(toB);
    assert.equal(batch.items.length, 40);
    toB.delivered(batch, true);
    await toB.flush();

    const result = await compactNode({ store, dataDir: dir });
    assert.ok(result.bytesReclaimed > 0, 'bytes reclaimed');
    const after = await store.usage(a.outbox.info.queue);
    assert.ok(after.bytes < before.bytes, `usage shrinks (${before.bytes} -> ${after.bytes})`);
    const left = (await scan(a.outbox.messages())).messages;
    assert.deepEqual(
      left.filter((m) => m.state === 'pending').map((m) => m.id),
      pending,
      'messages c still waits for stay',
    );
    assert.ok(
      firstSegment.every((id) => !left.some((m) => m.id === id)),
      'messages sent to every destination are gone',
    );
    // What stays can still be forwarded.
    const forC = await takeBatch(await destinationQueue(t, a, 'c'));
    assert.deepEqual(
      forC.items.map((i) => i.meta?.id),
      pending,
    );
  });
}

test('MemoryLogStore: a node that sends, receives, consumes and compacts writes no segment file', async (t) => {
  const memory = STORES.find((s) => s.name === 'MemoryLogStore') as StoreKind;
  const { node: a, dir: aDir, store: aStore } = await openTestNode(t, memory, { name: 'a', peers: PEERS, segmentBytes: 4096 });
  const { node: b, dir: bDir, store: bStore } = await openTestNode(t, memory, { name: 'b', peers: PEERS, segmentBytes: 4096 });
  for (let i = 0; i < 20; i++) await a.send('b', Buffer.alloc(400, i), { channel: 'jobs' });
  await a.sendStream('b', pieces(patterned(1024 * 1024 + 10, 4), 65_536), { channel: 'jobs' });
  const queue = await destinationQueue(t, a, 'b');
  const batch = await takeBatch(queue);
  const intake = await openIntake(t, b);
  assert.deepEqual(await intake.accept(incoming(a, batch)), { stored: batch.items.length, duplicates: 0 });
  queue.delivered(batch, true);
  await queue.flush();
  for (const d of await tail(b, 'jobs', 100)) await d.ack();
  await compactNode({ store: aStore, dataDir: aDir });
  await compactNode({ store: bStore, dataDir: bDir });
  await intake.close();

  for (const dir of [aDir, bDir]) {
    const files = await filesUnder(dir);
    assert.ok(
      files.some((f) => f.endsWith('queue.json')),
      `the walk reaches the queue directories (found ${files.length} files)`,
    );
    assert.deepEqual(
      files.filter((f) => f.endsWith('.seg')),
      [],
    );
  }
});
