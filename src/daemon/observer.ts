/**
 * What the daemon knows about its queues for metrics and the status page, kept up to date by following
 * the files rather than rescanning them:
 *
 * - outbox: a follower reads each new outbox frame once (counting appends per channel and adding it to the
 *   backlog of each destination); forwarder events take messages off the backlog. At start the backlog is
 *   counted once from the destination cursors.
 * - inboxes: per channel, the consumer journal is re-read every few seconds (counting acks, dead letters
 *   and expiries made by any process) and each stream's end offset is followed; pending = offsets written
 *   minus offsets done.
 *
 * Memory: one reader and a few numbers per stream and destination.
 */
import { join } from 'node:path';
import { FrameType } from '../log/frame.js';
import { FileLogStore } from '../log/log-store.js';
import { StreamReader } from '../log/stream-reader.js';
import { decodeMeta } from '../queue/codec.js';
import { ConsumerJournal } from '../queue/consumer-journal.js';
import { readAllCursors } from '../queue/cursors.js';
import { deadInfo, inboxInfo, listQueues, outboxInfo, type QueueInfo } from '../queue/layout.js';
import { deadLetteredKeys } from '../queue/outbox-dead.js';
import type { Metrics } from './metrics.js';

const READ = { maxFrames: 1024, maxBytes: 8 * 1024 * 1024 };
const CHUNKS: ReadonlySet<number> = new Set([FrameType.BODY_CHUNK]);
const ALL_TYPES: ReadonlySet<number> = new Set(Array.from({ length: 255 }, (_, i) => i + 1));

export interface ChannelStatus {
  readonly channel: string;
  readonly pending: number;
  readonly dead: number;
  readonly received: number;
  readonly acked: number;
}

interface Followed {
  readonly reader: StreamReader;
}

export class OutboxObserver {
  private readonly dataDir: string;
  private readonly metrics: Metrics;
  private readonly store: FileLogStore;
  private readonly streams = new Map<string, Followed>();
  private readonly backlog = new Map<string, number>();
  private reading: Promise<void> | undefined;
  private again = false;

  constructor(dataDir: string, metrics: Metrics) {
    this.dataDir = dataDir;
    this.metrics = metrics;
    this.store = new FileLogStore(outboxInfo(dataDir).dir);
  }

  /** Counts the backlog of every destination from its cursor to the end of the outbox. */
  async start(): Promise<void> {
    const cursors = await readAllCursors(this.dataDir);
    const dead = await deadLetteredKeys(this.dataDir);
    for (const { name } of await this.store.streams()) {
      const positions = cursors.map((c) => c.streams[name]?.offset ?? 0);
      const from = positions.length === 0 ? 0 : Math.min(...positions);
      const reader = this.store.reader(name, { offset: from }, { skipTypes: CHUNKS });
      this.streams.set(name, { reader });
      for (;;) {
        const read = await reader.read(READ);
        for (const frame of read.frames) {
          if (frame.type !== FrameType.MESSAGE || dead.has(`${name}@${frame.offset}`)) continue;
          const meta = safeMeta(frame.payload);
          if (meta === undefined) continue;
          for (const to of meta.to) {
            const cursor = cursors.find((c) => c.destination === to)?.streams[name]?.offset ?? 0;
            if (frame.offset >= cursor) this.add(to, 1);
          }
        }
        if (read.state !== 'more') break;
      }
    }
  }

  /** Reads frames appended since the last look (call on outbox changes). */
  poke(): void {
    if (this.reading !== undefined) {
      this.again = true;
      return;
    }
    this.reading = this.readNew()
      .catch(() => undefined)
      .finally(() => {
        this.reading = undefined;
        if (this.again) {
          this.again = false;
          this.poke();
        }
      });
  }

  /** The forwarder of `peer` got rid of `count` messages (sent, expired or dead-lettered). */
  done(peer: string, count: number): void {
    this.add(peer, -count);
  }

  backlogOf(peer: string): number {
    return Math.max(0, this.backlog.get(peer) ?? 0);
  }

  async close(): Promise<void> {
    await this.reading;
    for (const { reader } of this.streams.values()) await reader.close();
  }

  private add(peer: string, delta: number): void {
    const value = (this.backlog.get(peer) ?? 0) + delta;
    this.backlog.set(peer, value);
    this.metrics.backlog.set({ peer }, Math.max(0, value));
  }

  private async readNew(): Promise<void> {
    for (const { name } of await this.store.streams()) {
      let followed = this.streams.get(name);
      if (followed === undefined) {
        followed = { reader: this.store.reader(name, { offset: 0 }, { skipTypes: CHUNKS }) };
        this.streams.set(name, followed);
      }
      for (;;) {
        const read = await followed.reader.read(READ);
        for (const frame of read.frames) {
          if (frame.type !== FrameType.MESSAGE) continue;
          const meta = safeMeta(frame.payload);
          if (meta === undefined) continue;
          // Receipts count in the backlog (the forwarder sends them like any message), not as appends.
          if (meta.kind === undefined) this.metrics.appended.inc({ channel: meta.channel });
          for (const to of meta.to) this.add(to, 1);
        }
        if (read.state !== 'more') break;
      }
    }
  }
}

interface ChannelWatch {
  readonly info: QueueInfo;
  readonly journal: ConsumerJournal;
  readonly ends: Map<string, StreamReader>;
  readonly dead: QueueInfo;
  deadJournal: ConsumerJournal | undefined;
  readonly deadEnds: Map<string, StreamReader>;
  readonly counts: { on: boolean; acked: number };
}

export class InboxObserver {
  private readonly dataDir: string;
  private readonly metrics: Metrics;
  private readonly channels = new Map<string, ChannelWatch>();
  private readonly receivedBy = new Map<string, number>();
  private refreshing: Promise<void> | undefined;
  private refreshedOnce = false;

  constructor(dataDir: string, metrics: Metrics) {
    this.dataDir = dataDir;
    this.metrics = metrics;
  }

  /** Called by the receiver when messages were stored. */
  received(channel: string, count: number): void {
    this.metrics.received.inc({ channel }, count);
    this.receivedBy.set(channel, (this.receivedBy.get(channel) ?? 0) + count);
  }

  /** Re-reads the state of every inbox (at most one refresh at a time). */
  refresh(): Promise<void> {
    this.refreshing ??= this.refreshAll().finally(() => (this.refreshing = undefined));
    return this.refreshing;
  }

  status(): ChannelStatus[] {
    return [...this.channels.values()].map((w) => ({
      channel: w.info.channel ?? '',
      pending: this.pendingOf(w),
      dead: this.deadOf(w),
      received: this.receivedBy.get(w.info.channel ?? '') ?? 0,
      acked: w.counts.acked,
    }));
  }

  async close(): Promise<void> {
    await this.refreshing;
    for (const w of this.channels.values()) {
      await w.journal.close();
      await w.deadJournal?.close();
      for (const r of [...w.ends.values(), ...w.deadEnds.values()]) await r.close();
    }
  }

  private async refreshAll(): Promise<void> {
    for (const info of await listQueues(this.dataDir)) {
      if (info.kind !== 'inbox' || info.channel === null || this.channels.has(info.channel)) continue;
      const channel = info.channel;
      // Records already in the journal of a queue that existed when the daemon started happened before
      // it: not counted. A queue that appeared later is counted from its first record.
      const counts = { on: this.refreshedOnce, acked: 0 };
      const journal = await ConsumerJournal.open(info.dir, {
        onApplied: (record) => {
          if (!counts.on) return;
          if (record.k === 'A') {
            counts.acked++;
            this.metrics.acked.inc({ channel });
          } else if (record.k === 'D') this.metrics.dead.inc({ channel, peer: '' });
          else if (record.k === 'X') this.metrics.expired.inc({ channel, peer: '' });
        },
      });
      counts.on = true;
      const watch: ChannelWatch = {
        info: inboxInfo(this.dataDir, channel),
        journal,
        counts,
        ends: new Map(),
        dead: deadInfo(this.dataDir, channel),
        deadJournal: undefined,
        deadEnds: new Map(),
      };
      this.channels.set(channel, watch);
    }
    this.refreshedOnce = true;
    for (const watch of this.channels.values()) {
      await watch.journal.refresh();
      await followEnds(watch.info.dir, watch.ends);
      watch.deadJournal ??= await ConsumerJournal.open(watch.dead.dir);
      await watch.deadJournal.refresh();
      await followEnds(watch.dead.dir, watch.deadEnds);
      const channel = watch.info.channel ?? '';
      this.metrics.pending.set({ channel }, this.pendingOf(watch));
      this.metrics.deadLetters.set({ channel }, this.deadOf(watch));
    }
  }

  private pendingOf(watch: ChannelWatch): number {
    return countNotDone(watch.ends, watch.journal);
  }

  private deadOf(watch: ChannelWatch): number {
    return watch.deadJournal === undefined ? 0 : countNotDone(watch.deadEnds, watch.deadJournal);
  }
}

/** Follows every stream of a queue to its end (reading only frames not read before). */
async function followEnds(dir: string, ends: Map<string, StreamReader>): Promise<void> {
  const store = new FileLogStore(dir);
  for (const { name } of await store.streams()) {
    let reader = ends.get(name);
    if (reader === undefined) {
      // Only the end offset matters: every frame is passed over by its header.
      reader = new StreamReader(join(dir, name), { offset: 0 }, { skipTypes: ALL_TYPES });
      ends.set(name, reader);
    }
    for (;;) {
      const read = await reader.read(READ);
      if (read.state !== 'more') break;
    }
  }
}

function countNotDone(ends: Map<string, StreamReader>, journal: ConsumerJournal): number {
  let n = 0;
  for (const [stream, reader] of ends) {
    const end = reader.position.offset;
    n += end - journal.state.doneCount(stream, 0, end);
  }
  return Math.max(0, n);
}

function safeMeta(payload: Buffer): ReturnType<typeof decodeMeta>['meta'] | undefined {
  try {
    return decodeMeta(payload).meta;
  } catch {
    return undefined;
  }
}
