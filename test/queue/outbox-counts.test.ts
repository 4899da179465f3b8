/**
 * The outbox counter (src/queue/outbox-counts.ts) takes the frames a forwarder read instead of reading
 * them again (OutboxCounter.observe), and still counts every message once: frames seen in line are
 * counted without a read, frames seen out of line are ignored, and a gap before frames seen is read.
 */
import assert from 'node:assert/strict';
import { test, type TestContext } from 'node:test';
import { openNode, type MqlogNode } from '../../src/daemon/node.ts';
import type { LogStore, StoredFrame } from '../../src/log/log-store.ts';
import { MemoryLogStore } from '../../src/log/memory-log-store.ts';
import type { MessageAddress } from '../../src/queue/codec.ts';
import { OutboxCounter } from '../../src/queue/outbox-counts.ts';
import type { OutboxState } from '../../src/queue/outbox-state.ts';
import { defer, tempDir } from '../helpers/index.ts';

const PEERS = { b: { url: 'http://127.0.0.1:9' } };

interface Setup {
  readonly node: MqlogNode;
  readonly counter: OutboxCounter;
  /** Frames read by readers the counter opened. */
  readonly reads: { frames: number };
  readonly state: OutboxState;
  pending(): Promise<number>;
}

async function setUp(t: TestContext): Promise<Setup> {
  const reads = { frames: 0 };
  const store: LogStore = new MemoryLogStore();
  const node = await openNode({ data: await tempDir(t), store, config: { name: 'a', peers: PEERS } });
  defer(t, () => node.close());
  // Readers the counter opens count what they return (the forwarder's queue below uses the node's store as it is).
  const counting: LogStore = Object.create(store) as LogStore;
  counting.reader = (...args: Parameters<LogStore['reader']>) => {
    const reader = store.reader(...args);
    const read = reader.read.bind(reader);
    reader.read = async (limits) => {
      const result = await read(limits);
      reads.frames += result.frames.length;
      return result;
    };
    return reader;
  };
  const counter = new OutboxCounter(counting, node.outbox.info, { persist: false });
  defer(t, () => counter.close());
  const state = await node.outbox.state();
  return { node, counter, reads, state, pending: async () => (await counter.count(state)).destinations.get('b')?.pending ?? 0 };
}

async function send(node: MqlogNode, count: number): Promise<void> {
  for (let i = 0; i < count; i++) await node.send('b', `m${i}`);
}

/** Everything the destination's queue reads, as the forwarder would, handed to `seen` frame by frame. */
async function forward(node: MqlogNode, seen: (frame: StoredFrame, address: MessageAddress | undefined) => void): Promise<void> {
  const queue = await node.outbox.destinationQueue('b', { onRead: seen });
  try {
    while ((await queue.take(1000, 1 << 20)) !== undefined);
  } finally {
    await queue.close();
  }
}

test('frames a forwarder read in line are counted without reading them again; later ones wait for a read', async (t) => {
  const s = await setUp(t);
  await send(s.node, 1);
  await s.counter.refresh();
  assert.equal(await s.pending(), 1);
  await send(s.node, 10);
  s.reads.frames = 0;
  await forward(s.node, (frame, address) => s.counter.observe(frame, address));
  await s.counter.refresh(undefined, { read: false });
  assert.equal(await s.pending(), 11, 'the ten seen are counted');
  assert.equal(s.reads.frames, 0, 'without a read');
  await send(s.node, 5);
  await s.counter.refresh(undefined, { read: false });
  assert.equal(await s.pending(), 11, 'not seen, not read: not counted yet');
  await s.counter.refresh();
  assert.equal(await s.pending(), 16, 'a read counts them');
  assert.equal(s.reads.frames, 5);
});

test('frames seen out of line are ignored, and frames seen past a gap are read, each message counted once', async (t) => {
  const s = await setUp(t);
  await send(s.node, 1);
  await s.counter.refresh();
  await send(s.node, 10);
  const frames: [StoredFrame, MessageAddress | undefined][] = [];
  await forward(s.node, (frame, address) => frames.push([frame, address]));
  assert.equal(frames.length, 11);
  // Seen from the fourth new message on (the first three were not), with one repeated and one missing.
  for (const i of [4, 5, 5, 6, 8, 9]) s.counter.observe(...(frames[i] as [StoredFrame, MessageAddress | undefined]));
  s.reads.frames = 0;
  await s.counter.refresh(undefined, { read: false });
  assert.equal(await s.pending(), 11, 'every message once');
  // Offsets 1–3 were not seen: the follower reads on from where it stands, each frame once.
  assert.equal(s.reads.frames, 10);
  await s.counter.refresh();
  assert.equal(await s.pending(), 11);
});

test('a block a cursor is passing through is counted from the messages the follower kept, not read again', async (t) => {
  const s = await setUp(t);
  await send(s.node, 1);
  await s.counter.refresh();
  // More than two blocks of 512, all seen by the forwarder.
  await send(s.node, 1200);
  let stream: string | undefined;
  await forward(s.node, (frame, address) => {
    stream ??= frame.stream;
    s.counter.observe(frame, address);
  });
  await s.counter.refresh(undefined, { read: false });
  assert.equal(await s.pending(), 1201);
  s.reads.frames = 0;
  // The forwarder's peer stored the first 700: its cursor stands inside the second block.
  s.state.cursor('b').advance(stream as string, { offset: 700 });
  assert.equal(await s.pending(), 501);
  assert.equal(s.reads.frames, 0, 'the block the cursor cuts was read again');
});
