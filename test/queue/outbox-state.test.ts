/**
 * Model-based property test of the outbox state machine (spec/log-format.md §10, src/queue/outbox-state.ts):
 * random runs of sends (1..3 destinations, priorities 0..9, no TTL / a TTL already passed / a TTL an hour
 * away, at most one streamed body of 2.5 MiB), forwarder steps (take a batch and deliver it, take one and
 * refuse one of its messages, take one and rewind), cursor flushes, reloads of the state files,
 * compactions and restarts (a new node on the same directory and store; unflushed cursor changes are
 * lost, as in a crash). A small model says, per message and destination, pending / sent / dead / expired
 * and whether the cursor passed it, twice: as the running node holds it (live) and as the cursor files
 * on disk say (durable). After every step every reader must agree with the model:
 *
 * - `OutboxState.stateFor` / `stateOf` of the node's own state (live) and of `OutboxState.load` (durable),
 *   now and two hours later (a TTL that passes turns pending into expired, never sent into expired);
 * - `outbox.messages()` (what dump shows) and `outbox.stat()` (its per-destination backlog, a streamed
 *   body counted once), which read the files;
 * - each batch a destination takes: it hands out exactly the messages pending for it in the range it
 *   passes, and reports exactly the expired ones there not reported before;
 * - after a flush or reload, the cursor files round-trip (load → toFile equals what the node holds);
 * - after compaction, only messages passed by every destination's (durable) cursor may be gone, and a
 *   streamed body still there still reads back whole;
 * - `outbox.stat()` counts from the outbox summaries: its per-destination pending, sent, dead and expired
 *   counts equal those of a scan of every stored message with `OutboxState.stateFor`;
 * - the daemon's live backlog counter (`OutboxBacklog`, started as the daemon starts it, counting from
 *   the summaries and the state the forwarders keep) equals the model's pending count per destination
 *   (separate tests).
 *
 * Tests about one thing (a disagreement found once: a streamed body compacted away under its message,
 * the backlog after a restart or with expiries) check only what they are about (`focused`), so that a
 * regression is found and shrunk fast.
 *
 * Runs: 40 with MemoryLogStore, 10 with FileLogStore (MQLOG_FUZZ_RUNS scales them as in test/fuzz,
 * MQLOG_FUZZ_SEED changes the seed; a failure prints the seed, the path and the shrunk list of steps, and
 * MQLOG_FUZZ_SEED=<seed> MQLOG_FUZZ_PATH=<path> replays it).
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import fc from 'fast-check';
import { openNode, type MqlogNode } from '../../src/daemon/node.ts';
import { FileLogStore } from '../../src/log/file-log-store.ts';
import type { LogStore } from '../../src/log/log-store.ts';
import { MemoryLogStore } from '../../src/log/memory-log-store.ts';
import type { MessageMeta, MessageRecord } from '../../src/queue/codec.ts';
import { compactNode } from '../../src/queue/compaction.ts';
import type { DestinationQueue, OutgoingBatch } from '../../src/queue/destination-queue.ts';
import { OutboxBacklog } from '../../src/queue/outbox-backlog.ts';
import { OutboxState, type DeliveryState } from '../../src/queue/outbox-state.ts';
import { defer, tempDir } from '../helpers/index.ts';
import { fuzzRuns, fuzzSeed } from '../helpers/security.ts';

/** Three URL destinations (a destination URL stands for its origin, so they differ by port). */
const DESTS = ['http://127.0.0.1:9', 'http://127.0.0.1:19', 'http://127.0.0.1:29'] as const;
type Dest = (typeof DESTS)[number];

/** `passed`: sent with ttlMs 0, so expired from the start; `future`: an hour to live (expired `LATER_MS` from now). */
type Ttl = 'none' | 'passed' | 'future';
const TTL_MS: Record<Ttl, number | undefined> = { none: undefined, passed: 0, future: 3_600_000 };
/** How far ahead "later" is: past every `future` TTL. */
const LATER_MS = 2 * 3_600_000;

const STREAMED_BYTES = 2.5 * 1024 * 1024;
const MAX_BATCH_BYTES = 64 * 1024 * 1024;

type Op =
  | { readonly op: 'send'; readonly to: readonly Dest[]; readonly priority: number; readonly ttl: Ttl; readonly bodyBytes: number }
  | { readonly op: 'sendStream'; readonly to: readonly Dest[]; readonly priority: number; readonly ttl: Ttl }
  | { readonly op: 'deliver'; readonly dest: Dest; readonly maxFrames: number; readonly flush: boolean }
  /** The rest of the batch is then delivered, or (the send of the rest failed) the destination rewinds. */
  | { readonly op: 'refuse'; readonly dest: Dest; readonly maxFrames: number; readonly pick: number; readonly then: 'deliver' | 'rewind'; readonly flush: boolean }
  | { readonly op: 'rewind'; readonly dest: Dest; readonly maxFrames: number }
  | { readonly op: 'flush'; readonly dest: Dest }
  | { readonly op: 'reload' }
  | { readonly op: 'compact' }
  | { readonly op: 'restart' };

interface Scenario {
  readonly store: 'memory' | 'file';
  /** Also check the daemon's live backlog counter after every step. */
  readonly backlog: boolean;
  readonly ttls: readonly Ttl[];
  readonly restarts: boolean;
  readonly streamed: boolean;
  /** Every run starts with the streamed body. */
  readonly streamFirst?: boolean;
  /**
   * After compaction, a streamed body whose message is still stored must read back whole, also when the
   * message is done (spec §15: chunks are removed together with their message). Without it, only bodies
   * of messages still needed (not passed by every cursor file) are checked.
   */
  readonly bodyOfDoneMessages?: boolean;
  /**
   * Check only what the test is about (the messages stored, compaction, the backlog counter), not every
   * state reader after every step: the tests of one disagreement find and shrink it faster.
   */
  readonly focused?: boolean;
}

function opsArb(s: Scenario): fc.Arbitrary<Op[]> {
  const dest = fc.constantFrom(...DESTS);
  const to = fc.subarray([...DESTS], { minLength: 1 });
  // Mostly one priority, so that its stream fills segments (1 KiB) that compaction can reclaim.
  const priority = fc.oneof({ weight: 3, arbitrary: fc.constant(4) }, { weight: 1, arbitrary: fc.integer({ min: 0, max: 9 }) });
  const ttl = fc.constantFrom(...s.ttls);
  const maxFrames = fc.integer({ min: 1, max: 8 });
  const op: fc.Arbitrary<Op> = fc.oneof(
    { weight: 5, arbitrary: fc.record({ op: fc.constant('send' as const), to, priority, ttl, bodyBytes: fc.integer({ min: 0, max: 600 }) }) },
    { weight: s.streamed ? 1 : 0, arbitrary: fc.record({ op: fc.constant('sendStream' as const), to, priority, ttl }) },
    { weight: 6, arbitrary: fc.record({ op: fc.constant('deliver' as const), dest, maxFrames, flush: fc.boolean() }) },
    { weight: 2, arbitrary: fc.record({ op: fc.constant('refuse' as const), dest, maxFrames, pick: fc.nat(7), then: fc.constantFrom('deliver' as const, 'rewind' as const), flush: fc.boolean() }) },
    { weight: 1, arbitrary: fc.record({ op: fc.constant('rewind' as const), dest, maxFrames }) },
    { weight: 2, arbitrary: fc.record({ op: fc.constant('flush' as const), dest }) },
    { weight: 1, arbitrary: fc.constant({ op: 'reload' as const }) },
    { weight: 2, arbitrary: fc.constant({ op: 'compact' as const }) },
    { weight: s.restarts ? 1 : 0, arbitrary: fc.constant({ op: 'restart' as const }) },
  );
  // At most one streamed body per run (2.5 MiB each would make the file runs slow).
  const first = fc.record({ op: fc.constant('sendStream' as const), to, priority, ttl: fc.constantFrom(...s.ttls.filter((t) => t !== 'passed')) });
  return fc
    .tuple(s.streamFirst === true ? first.map((o): Op[] => [o]) : fc.constant<Op[]>([]), fc.array(op, { minLength: s.streamFirst === true ? 0 : 1, maxLength: 40, size: 'max' }))
    .map(([lead, ops]) => [...lead, ...ops].filter((o, i, all) => o.op !== 'sendStream' || all.findIndex((p) => p.op === 'sendStream') === i));
}

/** One message and destination as the model sees it. */
interface Cell {
  state: DeliveryState;
  /** The destination's cursor is past it. */
  passed: boolean;
  /** Its expiry is in the destination's `expired` list (the forwarder came to it). */
  recorded?: boolean;
}
type Cells = Map<string, Cell>;

interface ModelMessage {
  readonly id: string;
  readonly to: readonly Dest[];
  readonly ttl: Ttl;
  readonly streamed?: { readonly size: number; readonly sha256: string };
  /** Where it is stored and its fields, from the first scan after it was sent (kept once compacted away). */
  at?: { readonly stream: string; readonly offset: number; readonly meta: MessageMeta };
  gone: boolean;
}

function aggregate(states: readonly DeliveryState[]): DeliveryState {
  if (states.includes('pending')) return 'pending';
  if (states.includes('dead')) return 'dead';
  if (states.includes('expired')) return 'expired';
  return 'sent';
}

function cloneCells(cells: Cells): Cells {
  return new Map([...cells].map(([id, c]) => [id, { ...c }]));
}

/** A cursor as its file holds it; undefined for none (or one that holds nothing, which is never written). */
function cursorFile(state: OutboxState, destination: string): unknown {
  if (!state.destinations().includes(destination)) return undefined;
  const file = state.cursor(destination).toFile();
  const empty = Object.keys(file.streams).length === 0 && file.lastSentAt === null && file.lastError === null && file.lastErrorAt === null;
  return empty ? undefined : file;
}

/** The one streamed body (made once: a pattern that no chunk boundary can hide a shift in). */
const STREAMED_BODY = Buffer.from(Array.from({ length: STREAMED_BYTES }, (_, i) => (i * 31 + (i >> 20)) & 255));

async function* streamedBody(): AsyncGenerator<Buffer> {
  const piece = 256 * 1024;
  for (let at = 0; at < STREAMED_BODY.length; at += piece) yield STREAMED_BODY.subarray(at, at + piece);
}

async function digest(source: AsyncIterable<Uint8Array> | Iterable<Uint8Array>): Promise<{ size: number; sha256: string }> {
  const hash = createHash('sha256');
  let size = 0;
  for await (const b of source) {
    hash.update(b);
    size += b.length;
  }
  return { size, sha256: hash.digest('hex') };
}

/** What the runs of a property did, to show (in the test's diagnostics) that each kind of step had effect. */
class Coverage {
  readonly counts = new Map<string, number>();
  add(what: string, n = 1): void {
    if (n > 0) this.counts.set(what, (this.counts.get(what) ?? 0) + n);
  }
  toString(): string {
    return [...this.counts].map(([k, v]) => `${k} ${v}`).join(', ');
  }
}

const STREAMED_DIGEST = digest([STREAMED_BODY]);

/** The system under test (a node, its forwarders' queues, the daemon's backlog counter) beside the model. */
class Run {
  private readonly dir: string;
  private readonly store: LogStore;
  private readonly scenario: Scenario;
  private readonly coverage: Coverage;
  private node!: MqlogNode;
  private live!: OutboxState;
  private backlog: OutboxBacklog | undefined;
  private readonly queues = new Map<Dest, DestinationQueue>();
  private readonly messages: ModelMessage[] = [];
  /** Per destination: the model of the state the node holds, and of what its cursor file says. */
  private readonly liveCells = new Map<Dest, Cells>(DESTS.map((d) => [d, new Map()]));
  private readonly durableCells = new Map<Dest, Cells>(DESTS.map((d) => [d, new Map()]));
  /** The node's cursor may differ from its file (changed since the last flush). */
  private readonly unflushed = new Set<Dest>();
  private step = 'open';

  private constructor(dir: string, store: LogStore, scenario: Scenario, coverage: Coverage) {
    this.dir = dir;
    this.store = store;
    this.scenario = scenario;
    this.coverage = coverage;
  }

  static async open(dir: string, scenario: Scenario, coverage: Coverage): Promise<Run> {
    const store = scenario.store === 'memory' ? new MemoryLogStore() : new FileLogStore(dir);
    const run = new Run(dir, store, scenario, coverage);
    await run.openNode();
    return run;
  }

  /** As the daemon starts: node, state, then the backlog's first count, before any forwarder. */
  private async openNode(): Promise<void> {
    this.node = await openNode({ data: this.dir, store: this.store, config: { name: 'a', segmentBytes: 1024 } });
    this.live = await this.node.outbox.state();
    if (this.scenario.backlog) {
      // As the daemon does: every destination messages may name, those without a cursor file too.
      const recorded = await this.node.outbox.destinations();
      this.backlog = new OutboxBacklog(this.node.store, this.node.outbox.info, this.live, () => recorded);
      await this.backlog.start();
    }
  }

  private async closeNode(): Promise<void> {
    for (const q of this.queues.values()) await q.close();
    this.queues.clear();
    await this.backlog?.close();
    this.backlog = undefined;
    await this.node.close();
  }

  async close(): Promise<void> {
    await this.closeNode();
    await this.store.close();
  }

  private async queueOf(d: Dest): Promise<DestinationQueue> {
    let q = this.queues.get(d);
    if (q === undefined) {
      // As the daemon wires them: the backlog counter takes what the forwarders read (OutboxCounter.observe).
      q = await this.node.outbox.destinationQueue(d, { onRead: (frame, address) => this.backlog?.counter.observe(frame, address) });
      this.queues.set(d, q);
    }
    return q;
  }

  async apply(op: Op, index: number): Promise<void> {
    this.step = `step ${index} ${JSON.stringify(op)}`;
    switch (op.op) {
      case 'send':
      case 'sendStream':
        return this.send(op);
      case 'deliver':
      case 'refuse':
      case 'rewind':
        return this.forward(op);
      case 'flush':
        return this.flush(op.dest);
      case 'reload':
        return this.reload();
      case 'compact':
        return this.compact();
      case 'restart':
        return this.restart();
    }
  }

  private async send(op: Extract<Op, { op: 'send' | 'sendStream' }>): Promise<void> {
    const ttlMs = TTL_MS[op.ttl];
    const options = { priority: op.priority, ...(ttlMs === undefined ? {} : { ttlMs }) };
    let id: string;
    let streamed: ModelMessage['streamed'];
    if (op.op === 'send') {
      id = await this.node.send(op.to, 'x'.repeat(op.bodyBytes), options);
    } else {
      streamed = await STREAMED_DIGEST;
      id = await this.node.sendStream(op.to, streamedBody(), options);
    }
    this.coverage.add(op.op === 'send' ? `sent(ttl ${op.ttl})` : 'streamed');
    this.messages.push({ id, to: op.to, ttl: op.ttl, gone: false, ...(streamed === undefined ? {} : { streamed }) });
    const state: DeliveryState = op.ttl === 'passed' ? 'expired' : 'pending';
    for (const d of op.to) {
      this.cellsOf(this.liveCells, d).set(id, { state, passed: false });
      this.cellsOf(this.durableCells, d).set(id, { state, passed: false });
    }
  }

  /** One forwarder step for a destination: take a batch, then deliver it, refuse one message of it, or rewind. */
  private async forward(op: Extract<Op, { op: 'deliver' | 'refuse' | 'rewind' }>): Promise<void> {
    const d = op.dest;
    const q = await this.queueOf(d);
    const cells = this.cellsOf(this.liveCells, d);
    const batch = await q.take(op.maxFrames, MAX_BATCH_BYTES);
    if (batch === undefined) {
      const waiting = this.messages.filter((m) => m.to.includes(d) && cells.get(m.id)?.passed === false).map((m) => m.id);
      assert.deepEqual(waiting, [], `${this.step}: take found nothing, but the model has messages not yet passed for ${d}`);
      return;
    }
    this.unflushed.add(d);
    const inRange = this.checkBatch(d, batch, op.maxFrames);
    for (const m of inRange) if (m.ttl === 'passed') (cells.get(m.id) as Cell).recorded = true;
    this.coverage.add('expiries found', batch.expired.length);
    if (op.op === 'rewind') {
      await q.rewind();
      this.coverage.add('rewound', inRange.length);
      return;
    }
    const messageItems = batch.items.filter((item) => item.meta !== undefined);
    const refused = op.op === 'refuse' && messageItems.length > 0 ? messageItems[op.pick % messageItems.length] : undefined;
    if (refused !== undefined) {
      q.refused(refused);
      this.coverage.add('refused');
      (cells.get(refused.meta?.id ?? '') as Cell).state = 'dead';
    }
    if (op.op === 'refuse' && op.then === 'rewind') {
      // The dead mark stays; nothing is passed, so the rest is read again.
      await q.rewind();
      this.coverage.add('rewound after a refusal');
      if (op.flush) await this.flush(d);
      return;
    }
    const sent = batch.items.filter((item) => item !== refused);
    q.delivered(batch, sent.length > 0);
    this.coverage.add('delivered', sent.filter((item) => item.meta !== undefined).length);
    this.coverage.add('chunks delivered', sent.filter((item) => item.meta === undefined).length);
    for (const m of inRange) {
      const cell = cells.get(m.id) as Cell;
      cell.passed = true;
      if (cell.state === 'pending') cell.state = 'sent';
    }
    // As the forwarder does after a delivered batch, now and then (a crash before it loses the step).
    if (op.flush) await this.flush(d);
  }

  /**
   * A batch passes, per stream, exactly a range from the cursor: every message for the destination in it
   * is handed out if pending and reported if expired (a dead one is passed over in silence); nothing else
   * is handed out. Returns those messages.
   */
  private checkBatch(d: Dest, batch: OutgoingBatch, maxFrames: number): ModelMessage[] {
    const cells = this.cellsOf(this.liveCells, d);
    assert.ok(batch.taken >= batch.items.length && batch.taken <= maxFrames, `${this.step}: a batch reads at most maxFrames frames, those handed out among them`);
    const inRange: ModelMessage[] = [];
    for (const [stream, { from, through }] of batch.streams) {
      assert.equal(from, this.live.cursor(d).offsetOf(stream), `${this.step}: a batch of ${d} starts at its cursor in ${stream} (every earlier batch was settled)`);
      assert.ok(through.offset > from, `${this.step}: a batch passes at least one frame of ${stream}`);
      for (const m of this.messages) {
        if (m.at === undefined || m.at.stream !== stream || !m.to.includes(d)) continue;
        if (m.at.offset < from || m.at.offset >= through.offset) continue;
        const cell = cells.get(m.id) as Cell;
        assert.equal(cell.passed, false, `${this.step}: model: ${m.id} in the range of a batch of ${d} was not passed yet`);
        assert.notEqual(cell.state, 'sent', `${this.step}: model: ${m.id} in the range of a batch of ${d} is not sent`);
        inRange.push(m);
      }
    }
    const handedOut = batch.items.flatMap((item) => (item.meta === undefined ? [] : [`${item.meta.id}@${item.frame.stream}:${item.frame.offset}`])).sort();
    const expected = inRange.filter((m) => cells.get(m.id)?.state === 'pending').map((m) => `${m.id}@${m.at?.stream}:${m.at?.offset}`).sort();
    assert.deepEqual(handedOut, expected, `${this.step}: a batch of ${d} hands out exactly the pending messages of the range it passes`);
    const expired = batch.expired.map((e) => `${e.meta.id}@${e.stream}:${e.offset}`).sort();
    // Reported once: when the forwarder first records the expiry, not again when it reads the frame again.
    const newlyExpired = inRange.filter((m) => m.ttl === 'passed' && cells.get(m.id)?.recorded !== true);
    assert.deepEqual(expired, newlyExpired.map((m) => `${m.id}@${m.at?.stream}:${m.at?.offset}`).sort(), `${this.step}: a batch of ${d} reports exactly the expired messages of the range it passes that were not recorded yet`);
    for (const item of batch.items) assert.ok(item.meta !== undefined || this.messages.some((m) => m.streamed !== undefined && m.id === item.about.id), `${this.step}: a chunk handed out belongs to the streamed body`);
    return inRange;
  }

  private async flush(d: Dest): Promise<void> {
    this.coverage.add('flushes of changed cursors', this.unflushed.has(d) ? 1 : 0);
    await (await this.queueOf(d)).flush();
    this.durableCells.set(d, cloneCells(this.cellsOf(this.liveCells, d)));
    this.unflushed.delete(d);
    const loaded = await OutboxState.load(this.node.outbox.info.dir);
    assert.deepEqual(cursorFile(loaded, d), cursorFile(this.live, d), `${this.step}: the cursor file of ${d} loads back as the node holds it`);
  }

  private async reload(): Promise<void> {
    const loaded = await OutboxState.load(this.node.outbox.info.dir);
    for (const d of DESTS) {
      if (this.unflushed.has(d)) continue;
      assert.deepEqual(cursorFile(loaded, d), cursorFile(this.live, d), `${this.step}: the cursor file of ${d}, flushed, loads back as the node holds it`);
    }
  }

  private async compact(): Promise<void> {
    await compactNode({ store: this.store, dataDir: this.dir });
    const present = await this.scan();
    for (const m of this.messages) {
      if (m.gone || present.has(m.id)) continue;
      const notPassed = m.to.filter((d) => this.durableCells.get(d)?.get(m.id)?.passed !== true);
      assert.deepEqual(notPassed, [], `${this.step}: compaction removed ${m.id}, which the cursor files of ${notPassed.join(', ')} have not passed`);
      m.gone = true;
      this.coverage.add('compacted away');
    }
    for (const m of this.messages) {
      if (m.streamed === undefined || m.gone) continue;
      const done = m.to.every((d) => this.durableCells.get(d)?.get(m.id)?.passed === true);
      if (done && this.scenario.bodyOfDoneMessages !== true) continue;
      const record = present.get(m.id)?.record;
      assert.ok(record !== undefined);
      const body = await digest(this.node.outbox.body(record)).catch((err: unknown) => err);
      assert.deepEqual(body, m.streamed, `${this.step}: the streamed body of ${m.id} (${done ? 'done' : 'still needed'}) still reads back whole after compaction`);
      this.coverage.add('streamed body read back');
    }
  }

  /** A crash and a new start on the same directory and store: the node's unflushed cursor changes are lost. */
  private async restart(): Promise<void> {
    this.coverage.add('restarts');
    this.coverage.add('unflushed changes lost', this.unflushed.size);
    await this.closeNode();
    await this.openNode();
    for (const d of DESTS) this.liveCells.set(d, cloneCells(this.cellsOf(this.durableCells, d)));
    this.unflushed.clear();
  }

  private cellsOf(cells: Map<Dest, Cells>, d: Dest): Cells {
    return cells.get(d) as Cells;
  }

  private async scan(): Promise<Map<string, { stream: string; offset: number; state: string; record: MessageRecord }>> {
    const present = new Map<string, { stream: string; offset: number; state: string; record: MessageRecord }>();
    for await (const event of this.node.outbox.messages()) {
      assert.ok(event.kind === 'message' || event.kind === 'frame', `${this.step}: the outbox reads cleanly (${event.kind})`);
      if (event.kind !== 'message') continue;
      assert.ok(!present.has(event.message.id), `${this.step}: ${event.message.id} is stored once`);
      present.set(event.message.id, { stream: event.frame.stream, offset: event.frame.offset, state: event.state, record: event.message });
    }
    return present;
  }

  /** The model's state of a message for a destination now, or `LATER_MS` from now. */
  private modelState(cells: Map<Dest, Cells>, m: ModelMessage, d: Dest, later: boolean): DeliveryState {
    const state = (this.cellsOf(cells, d).get(m.id) as Cell).state;
    return later && state === 'pending' && m.ttl === 'future' ? 'expired' : state;
  }

  private pendingCounts(cells: Map<Dest, Cells>, later: boolean): Map<string, number> {
    const counts = new Map<string, number>();
    for (const m of this.messages) {
      for (const d of m.to) if (this.modelState(cells, m, d, later) === 'pending') counts.set(d, (counts.get(d) ?? 0) + 1);
    }
    return counts;
  }

  /** Every reader against the model. */
  async check(): Promise<void> {
    const where = this.step;
    const present = await this.scan();
    assert.deepEqual([...present.keys()].sort(), this.messages.filter((m) => !m.gone).map((m) => m.id).sort(), `${where}: the outbox holds every message sent and not compacted away`);
    for (const m of this.messages) {
      const found = present.get(m.id);
      if (found === undefined) continue;
      if (m.at === undefined) m.at = { stream: found.stream, offset: found.offset, meta: found.record };
      assert.deepEqual([found.stream, found.offset], [m.at.stream, m.at.offset], `${where}: ${m.id} keeps its stream and offset`);
      this.coverage.add(`seen ${found.state}`);
      assert.equal(found.state, aggregate(m.to.map((d) => this.modelState(this.durableCells, m, d, false))), `${where}: messages() gives ${m.id} its state over ${m.to.join(', ')}`);
    }

    const loaded = await OutboxState.load(this.node.outbox.info.dir);
    const now = Date.now();
    for (const later of this.scenario.focused === true ? [] : [false, true]) {
      const at = later ? now + LATER_MS : now;
      const when = later ? 'two hours later' : 'now';
      for (const [state, cells, whose] of [
        [this.live, this.liveCells, 'the node'],
        [loaded, this.durableCells, 'the cursor files'],
      ] as const) {
        for (const m of this.messages) {
          const { stream, offset, meta } = m.at as NonNullable<ModelMessage['at']>;
          for (const d of m.to) {
            assert.equal(state.stateFor(d, stream, offset, meta, at), this.modelState(cells, m, d, later), `${where}: ${whose} give ${m.id} (ttl ${m.ttl}) for ${d} this state ${when}`);
          }
          assert.equal(state.stateOf(stream, offset, meta, at), aggregate(m.to.map((d) => this.modelState(cells, m, d, later))), `${where}: ${whose} give ${m.id} this state over ${m.to.join(', ')} ${when}`);
        }
      }
      const stat = await this.node.outbox.stat(at);
      assert.deepEqual(stat.backlog, this.pendingCounts(this.durableCells, later), `${where}: stat's backlog per destination ${when}`);
      assert.deepEqual(new Map([...stat.destinations].filter(([, c]) => c.pending + c.sent + c.dead + c.expired > 0)), scannedCounts(present, loaded, at), `${where}: stat's counts per destination and state equal a scan's ${when}`);
      assert.equal(stat.queue.messages, present.size, `${where}: stat counts every stored message once ${when}`);
      const pendingMessages = this.messages.filter((m) => !m.gone && aggregate(m.to.map((d) => this.modelState(this.durableCells, m, d, later))) === 'pending').length;
      assert.equal(stat.queue.pending, pendingMessages, `${where}: stat's pending messages ${when}`);
    }
    for (const m of this.messages) {
      if (m.gone) assert.ok(m.to.every((d) => this.modelState(this.durableCells, m, d, false) !== 'pending'), `${where}: model: nothing pending was compacted away`);
    }

    if (this.backlog !== undefined) {
      await this.settleBacklog();
      const counts = this.pendingCounts(this.liveCells, false);
      const got = new Map(DESTS.map((d) => [d, this.backlog?.of(d) ?? 0]));
      assert.deepEqual(got, new Map(DESTS.map((d) => [d, counts.get(d) ?? 0])), `${where}: the daemon's backlog per destination equals the messages pending for it`);
    }
  }

  /** Lets the backlog counter read everything appended (as the daemon does before it answers /metrics). */
  private async settleBacklog(): Promise<void> {
    const backlog = this.backlog as OutboxBacklog;
    // First a refresh that only takes what the forwarders read (as the daemon's counts between reads).
    await backlog.counter.refresh(undefined, { read: false });
    await backlog.caughtUp();
  }
}

/** Per destination, how many stored messages are in each state: what a read of every message finds. */
function scannedCounts(present: ReadonlyMap<string, { stream: string; offset: number; record: MessageRecord }>, state: OutboxState, now: number): Map<string, Record<DeliveryState, number>> {
  const counts = new Map<string, Record<DeliveryState, number>>();
  for (const { stream, offset, record } of present.values()) {
    for (const d of new Set(record.to)) {
      const c = counts.get(d) ?? { pending: 0, sent: 0, dead: 0, expired: 0 };
      c[state.stateFor(d, stream, offset, record, now)]++;
      counts.set(d, c);
    }
  }
  return counts;
}

/**
 * Runs the property. `timeLimitMs` bounds it, shrinking included; a property cut short passes with fewer
 * runs, which the diagnostic shows.
 */
async function runScenario(t: TestContext, scenario: Scenario, runs: number, fixedSeed: number, timeLimitMs?: number): Promise<void> {
  const root = await tempDir(t, 'mqlog-outbox-state-');
  const open = new Set<Run>();
  defer(t, async () => {
    for (const run of open) await run.close();
  });
  const seed = fuzzSeed(t, fixedSeed);
  const coverage = new Coverage();
  let count = 0;
  await fc.assert(
    fc.asyncProperty(opsArb(scenario), async (ops) => {
      const dir = await mkdtemp(join(root, 'run-'));
      const run = await Run.open(dir, scenario, coverage);
      open.add(run);
      try {
        await run.check();
        for (const [i, op] of ops.entries()) {
          await run.apply(op, i);
          await run.check();
        }
      } finally {
        open.delete(run);
        await run.close();
        await rm(dir, { recursive: true, force: true });
      }
      count++;
    }),
    // MQLOG_FUZZ_PATH replays one failing case (with its seed): the `path` fast-check printed.
    {
      numRuns: runs,
      seed,
      ...(process.env.MQLOG_FUZZ_PATH === undefined ? {} : { path: process.env.MQLOG_FUZZ_PATH }),
      ...(timeLimitMs === undefined ? {} : { interruptAfterTimeLimit: timeLimitMs }),
      includeErrorInReport: true,
    },
  );
  t.diagnostic(`${count} passing runs; ${coverage.toString()}`);
}

const ALL_TTLS: readonly Ttl[] = ['none', 'passed', 'future'];
const LIVE_TTLS: readonly Ttl[] = ['none', 'future'];

test('every reader of the outbox state agrees with the model through sends, forwarding, flushes, compaction and restarts (memory store)', async (t) => {
  await runScenario(t, { store: 'memory', backlog: false, ttls: ALL_TTLS, restarts: true, streamed: true }, fuzzRuns(40), 0x0b0c5);
});

test('every reader of the outbox state agrees with the model through sends, forwarding, flushes, compaction and restarts (file store)', async (t) => {
  await runScenario(t, { store: 'file', backlog: false, ttls: ALL_TTLS, restarts: true, streamed: true }, fuzzRuns(10), 0x0b0c6);
});

test('compaction keeps the body of a streamed message for as long as the message itself is stored', async (t) => {
  await runScenario(t, { store: 'memory', backlog: false, ttls: ALL_TTLS, restarts: true, streamed: true, streamFirst: true, focused: true, bodyOfDoneMessages: true }, fuzzRuns(40), 0x0b0ca);
});

test('the daemon backlog counter equals the messages pending per destination through sends, deliveries, refusals, rewinds and compaction', async (t) => {
  await runScenario(t, { store: 'memory', backlog: true, ttls: LIVE_TTLS, restarts: false, streamed: true }, fuzzRuns(40), 0x0b0c7);
});

test('the daemon backlog counter equals the messages pending per destination after a restart', async (t) => {
  await runScenario(t, { store: 'memory', backlog: true, ttls: LIVE_TTLS, restarts: true, streamed: false, focused: true }, fuzzRuns(40), 0x0b0c8);
});

test('the daemon backlog counter equals the messages pending per destination when messages expire', async (t) => {
  await runScenario(t, { store: 'memory', backlog: true, ttls: ALL_TTLS, restarts: true, streamed: false, focused: true }, fuzzRuns(40), 0x0b0c9);
});

test('the daemon backlog counter takes an expired message off once, however often the forwarder reads it', async (t) => {
  await runScenario(t, { store: 'memory', backlog: true, ttls: ALL_TTLS, restarts: true, streamed: false, focused: true }, fuzzRuns(40), 1);
});
