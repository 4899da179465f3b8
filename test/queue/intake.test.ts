/**
 * The intake takes a message handed over as fields and body (a JetStream source: spec/transports.md
 * §1.1, §3.7) as it takes a MESSAGE frame: the same checks, the same inbox copy, the same dedup.
 */
import assert from 'node:assert/strict';
import { test, type TestContext } from 'node:test';
import { openNode, type MqlogNode } from '../../src/daemon/node.ts';
import { MemoryLogStore } from '../../src/log/memory-log-store.ts';
import { MqlogError } from '../../src/errors.ts';
import { decodeStoredFrame, type MessageRecord } from '../../src/queue/codec.ts';
import type { IncomingFrames, IncomingMessage, IntakeLimits } from '../../src/queue/intake.ts';
import { defer, tempDir } from '../helpers/index.ts';

const NOWHERE = 'http://127.0.0.1:9';
const PEERS = { a: { url: NOWHERE }, b: { url: NOWHERE } };
const LIMITS: IntakeLimits = { maxBodyBytes: 64 * 1024, maxStreamedBodyBytes: 1024 * 1024, maxFrameBytes: 1024 * 1024, maxHeaders: 8 };

async function node(t: TestContext, name: string): Promise<MqlogNode> {
  const opened = await openNode({ data: await tempDir(t), config: { name, peers: PEERS } });
  defer(t, () => opened.close());
  return opened;
}

/** What `a` has for `b`, as frames and as the same messages handed over as fields and body. */
async function sent(t: TestContext, a: MqlogNode): Promise<{ frames: IncomingFrames; messages: IncomingFrames }> {
  await a.send('b', 'plain');
  await a.send('b', 'with fields', { channel: 'orders', headers: { k: 'v' }, receipt: true, ttlMs: 3_600_000 });
  const queue = await a.outbox.destinationQueue('b');
  defer(t, () => queue.close());
  const batch = await queue.take(100, 1024 * 1024);
  assert.ok(batch !== undefined);
  const common = { node: a.nodeId, name: 'a', destination: 'b', peer: undefined, replyTo: 'http://a.example:7000' };
  const messages = batch.items.map((i): IncomingMessage => {
    const frame = decodeStoredFrame(i.frame.raw);
    if (frame.type !== 'message') assert.fail(`frame at ${frame.offset} is not a message`);
    return { stream: i.frame.stream, message: { offset: frame.offset, fields: frame.meta, body: frame.body } };
  });
  return {
    frames: { ...common, frames: batch.items.map((i) => ({ stream: i.frame.stream, frame: i.frame.raw })), covers: batch.covers },
    messages: { ...common, frames: messages, covers: batch.covers },
  };
}

async function inboxes(b: MqlogNode): Promise<MessageRecord[]> {
  const out: MessageRecord[] = [];
  for (const channel of ['common', 'orders']) {
    for await (const event of (await b.inbox(channel)).messages()) if (event.kind === 'message') out.push(event.message);
  }
  return out.sort((x, y) => x.id.localeCompare(y.id));
}

test('a message handed over as fields and body is stored as the same inbox copy as its frame, and recognised when it comes again', async (t) => {
  const a = await node(t, 'a');
  const { frames, messages } = await sent(t, a);
  const byFrame = await node(t, 'b');
  const byMessage = await node(t, 'b');
  const intakeF = await byFrame.openIntake(LIMITS);
  defer(t, () => intakeF.close());
  const intakeM = await byMessage.openIntake(LIMITS);
  defer(t, () => intakeM.close());
  assert.deepEqual(await intakeF.accept(frames), { stored: 2, duplicates: 0 });
  assert.deepEqual(await intakeM.accept(messages), { stored: 2, duplicates: 0 });
  const expected = await inboxes(byFrame);
  assert.equal(expected.length, 2);
  assert.deepEqual(await inboxes(byMessage), expected, 'fields, from, origin, replyTo and body alike');
  assert.equal(expected[1]?.replyTo ?? expected[0]?.replyTo, 'http://a.example:7000');
  assert.deepEqual(await intakeM.accept(messages), { stored: 0, duplicates: 2 });
  assert.deepEqual(await intakeM.accept({ ...messages, covers: undefined, unordered: { floor: -1 } }), { stored: 0, duplicates: 2 }, 'also out of order (a redelivery)');
  assert.equal((await inboxes(byMessage)).length, 2);
});

test('a message handed over with a bad field is refused naming it (ERR_INVALID_MESSAGE, ERR_BODY_TOO_LARGE, ERR_HEADERS_TOO_LARGE); nothing of its batch is stored', async (t) => {
  const a = await node(t, 'a');
  const { messages } = await sent(t, a);
  const b = await node(t, 'b');
  const intake = await b.openIntake(LIMITS);
  defer(t, () => intake.close());
  const [good, second] = messages.frames as IncomingMessage[];
  assert.ok(good !== undefined && second !== undefined);
  const spoilt = (change: Partial<IncomingMessage['message']>): IncomingFrames => ({ ...messages, frames: [good, { ...second, message: { ...second.message, ...change } }] });
  const cases: [IncomingFrames, string][] = [
    [spoilt({ fields: { ...second.message.fields, id: 'not-a-uuid' } }), 'ERR_INVALID_MESSAGE'],
    [spoilt({ fields: { ...second.message.fields, priority: 12 } }), 'ERR_INVALID_MESSAGE'],
    [spoilt({ fields: { ...second.message.fields, to: [] } }), 'ERR_INVALID_MESSAGE'],
    [spoilt({ streamed: { size: 10, sha256: 'not hex' } }), 'ERR_INVALID_MESSAGE'],
    [spoilt({ body: Buffer.alloc(LIMITS.maxBodyBytes + 1) }), 'ERR_BODY_TOO_LARGE'],
    [spoilt({ fields: { ...second.message.fields, headers: Object.fromEntries(Array.from({ length: 9 }, (_, i) => [`h${i}`, 'v'])) } }), 'ERR_HEADERS_TOO_LARGE'],
  ];
  for (const [batch, code] of cases) {
    await assert.rejects(intake.accept(batch), (err: unknown) => err instanceof MqlogError && err.code === code && err.details?.frame === 1, code);
  }
  assert.deepEqual(await inboxes(b), [], 'nothing stored');
  assert.deepEqual(await intake.accept(messages), { stored: 2, duplicates: 0 });
});

test('a streamed body whose batches are taken out of order (a pipelined sender) is checked without reading it back', async (t) => {
  const a = await node(t, 'a');
  const body = Buffer.alloc(3 * 1024 * 1024 + 5, 0x61);
  body.write('the start', 0);
  body.write('the end', body.length - 7);
  const pieces = async function* (): AsyncGenerator<Buffer> {
    yield body.subarray(0, 1_000_000);
    yield body.subarray(1_000_000);
  };
  const id = await a.sendStream('b', pieces());
  const queue = await a.outbox.destinationQueue('b');
  defer(t, () => queue.close());
  // One frame a batch, as a sender with several batches in flight may have them taken.
  const batches: IncomingFrames[] = [];
  for (let batch = await queue.take(1, 8 * 1024 * 1024); batch !== undefined; batch = await queue.take(1, 8 * 1024 * 1024)) {
    batches.push({ node: a.nodeId, name: 'a', destination: 'b', peer: undefined, frames: batch.items.map((i) => ({ stream: i.frame.stream, frame: i.frame.raw })), covers: batch.covers });
  }
  assert.equal(batches.length, 5, 'four chunks and the message');
  const store = new MemoryLogStore();
  defer(t, () => store.close());
  let readers = 0;
  const reader = store.reader.bind(store);
  store.reader = (...args: Parameters<MemoryLogStore['reader']>) => {
    readers++;
    return reader(...args);
  };
  const b = await openNode({ data: await tempDir(t), store, config: { name: 'b', peers: PEERS } });
  defer(t, () => b.close());
  const intake = await b.openIntake({ ...LIMITS, maxStreamedBodyBytes: 16 * 1024 * 1024, maxFrameBytes: 2 * 1024 * 1024 });
  defer(t, () => intake.close());
  for (const i of [1, 0, 3, 2]) assert.deepEqual(await intake.accept(batches[i] as IncomingFrames), { stored: 1, duplicates: 0 }, `chunk ${i}`);
  readers = 0;
  assert.deepEqual(await intake.accept(batches[4] as IncomingFrames), { stored: 1, duplicates: 0 });
  assert.equal(readers, 0, 'the digest was kept as the chunks came, in whatever order');
  const [message] = await inboxes(b);
  assert.equal(message?.id, id);
  const chunks: Buffer[] = [];
  for await (const piece of (await b.inbox('common')).body(message)) chunks.push(Buffer.from(piece));
  assert.ok(Buffer.concat(chunks).equals(body));
});
