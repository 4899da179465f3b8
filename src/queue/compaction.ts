/**
 * Compaction: reclaims the disk space of messages that are done (spec/log-format.md §13). This module
 * decides what is done, from each queue's own state; the LogStore reclaims whole segments.
 *
 * Done means: in an inbox, acked, dead-lettered or expired; in the outbox, passed by the cursor of every
 * destination (sent, expired or refused) and, when it asked for a receipt, with its receipt settled; in
 * a channel's dead letters, redriven. A done message is removed once it is older than `retainDoneMs`.
 * The chunks of a streamed body go with their message; chunks whose message never came (the sender died
 * mid-body, or the body was refused) go after `orphanChunkMs` (default ORPHAN_CHUNK_MS).
 *
 * A round does work in proportion to what changed since the last one: each segment is first judged from
 * its summary and the state (segment-verdict.ts) — dropped unread when all of it is removable, kept
 * unread when nothing is — and a segment a Compactor read in an earlier round is not read again while
 * the state it depends on is the same (and no time limit it found has passed). Only the others are read
 * frame by frame.
 *
 * Compactors of one queue take turns (compact.lock); writers and readers never wait for them. A round
 * stops at once when its signal fires (between segments, and inside one: a rewrite in progress is
 * abandoned), and resolves with what it did.
 */
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { isMqlogError } from '../errors.js';
import { FrameType } from '../log/frame.js';
import { Lock } from '../log/lock.js';
import type { KeepFrame, LogStore, SegmentDecision, SegmentSummary, StoredFrame } from '../log/log-store.js';
import { readFrames } from '../log/stream-scan.js';
import { decodeChunk, decodeMeta, type MessageMeta } from './codec.js';
import { ConsumerJournal } from './consumer-journal.js';
import { listQueues, type QueueInfo } from './layout.js';
import { OutboxCounter } from './outbox-counts.js';
import { OutboxSummaries } from './outbox-summaries.js';
import { OutboxState } from './outbox-state.js';
import { ReceiptStore, isSettled } from './receipts.js';
import { inboxVerdict, outboxVerdict, type SegmentVerdict } from './segment-verdict.js';

export const COMPACT_LOCK = 'compact.lock';

/** A chunk whose message never came (the sender died mid-body, or the body was refused) is removed after this. */
export const ORPHAN_CHUNK_MS = 60 * 60_000;

export interface CompactionOptions {
  readonly store: LogStore;
  /** The node directory (for the queues' state files and receipts). */
  readonly dataDir: string;
  /** Done messages younger than this (by send time) are kept. Default 0. */
  readonly retainDoneMs?: number;
  /** Chunks whose message never came are removed once this much older than their send time. Default ORPHAN_CHUNK_MS. */
  readonly orphanChunkMs?: number;
  /** Rewrite a sealed segment when its live bytes are below this share of it. Default 0.5. */
  readonly rewriteBelowShare?: number;
  readonly now?: number;
  readonly signal?: AbortSignal;
  /** Called after each segment, for progress lines. */
  readonly onSegment?: (queue: string, segment: string, action: 'kept' | 'deleted' | 'rewritten' | 'retired') => void;
  /**
   * The outbox's summaries, kept current by their owner (the daemon's backlog counter); by default the
   * Compactor keeps its own.
   */
  readonly outboxCounter?: OutboxCounter;
  /**
   * At most this share of the time spent on reading, rewriting and removing segments (default 1: no
   * pause): after each segment it worked on, the compactor pauses for as long as that took times
   * (1 / busyShare − 1), so that appends and reads on the same disk and cores keep most of them. The
   * daemon's background rounds use BACKGROUND_BUSY_SHARE.
   */
  readonly busyShare?: number;
}

/** The share of its time a daemon's background compaction works (CompactionOptions.busyShare). */
export const BACKGROUND_BUSY_SHARE = 0.25;
/** The longest timer there is (a longer one would fire at once). */
const MAX_PAUSE_MS = 2 ** 31 - 1;

export interface CompactionResult {
  readonly queue: string;
  /** Set when another live compactor was working on the queue. */
  readonly skipped?: boolean;
  readonly segmentsDeleted: number;
  readonly segmentsRewritten: number;
  readonly framesRemoved: number;
  readonly bytesReclaimed: number;
}

export interface NodeCompaction {
  readonly queues: CompactionResult[];
  readonly receiptsPruned: number;
  readonly bytesReclaimed: number;
  readonly durationMs: number;
}

type IsDone = (stream: string, offset: number, meta: MessageMeta) => Promise<boolean> | boolean;

/**
 * What a queue's state says of its segments and messages, for one round. `isDone` calls `later(at)`
 * when a message it finds not done may become done at `at` without the state changing (a receipt that
 * settles: now).
 */
interface QueueJudge {
  readonly isDone: IsDone;
  readonly keepFrom: (stream: string) => number | undefined;
  readonly verdict: (summary: SegmentSummary) => SegmentVerdict;
}

/** A segment read in an earlier round: not read again while its fingerprint is the same, until `recheckAt`. */
interface Memo {
  readonly fingerprint: string;
  readonly recheckAt: number;
}

/**
 * Compacts the queues of a node round after round. Keeps, between rounds, which segments it read and
 * what the state was then (a few strings per segment), and the outbox's summaries.
 */
export class Compactor {
  private readonly options: CompactionOptions & { readonly retainReceiptsMs?: number };
  private readonly memo = new Map<string, Memo>();
  /** The outbox counters this compactor made (one handed in is its owner's). */
  private readonly outboxCounters = new Map<string, OutboxCounter>();
  /** Pause owed for the work done (busyShare), taken before the next segment. */
  private pauseOwedMs = 0;

  constructor(options: CompactionOptions & { readonly retainReceiptsMs?: number }) {
    this.options = options;
  }

  /** One round over every queue of the node, then settled receipts older than `retainReceiptsMs`. */
  async round(signal = this.options.signal, now = this.options.now ?? Date.now()): Promise<NodeCompaction> {
    const started = performance.now();
    const queues: CompactionResult[] = [];
    for (const info of await listQueues(this.options.dataDir)) {
      if (signal?.aborted === true) break;
      queues.push(await this.compactQueue(info, signal, now));
    }
    const retainReceiptsMs = this.options.retainReceiptsMs;
    const receiptsPruned = retainReceiptsMs === undefined || signal?.aborted === true ? 0 : await new ReceiptStore(this.options.dataDir).prune(now - retainReceiptsMs);
    return { queues, receiptsPruned, bytesReclaimed: queues.reduce((n, q) => n + q.bytesReclaimed, 0), durationMs: performance.now() - started };
  }

  /** Adds the pause that `workMs` of work on a segment calls for (busyShare). */
  private owePause(workMs: number): void {
    const share = this.options.busyShare ?? 1;
    if (share < 1) this.pauseOwedMs += workMs * (1 / share - 1);
  }

  /** Takes the pause owed (cut short when the signal fires). */
  private async pause(signal: AbortSignal | undefined): Promise<void> {
    const ms = this.pauseOwedMs;
    if (ms < 1) return;
    this.pauseOwedMs = 0;
    await sleep(Math.min(ms, MAX_PAUSE_MS), undefined, signal === undefined ? {} : { signal }).catch(() => undefined);
  }

  /** Releases the outbox summaries' readers it opened. Idempotent. */
  async close(): Promise<void> {
    for (const counter of this.outboxCounters.values()) await counter.close();
    this.outboxCounters.clear();
  }

  /** Compacts one queue. Returns what it reclaimed; a queue another compactor holds is skipped. */
  async compactQueue(info: QueueInfo, signal: AbortSignal | undefined, now: number): Promise<CompactionResult> {
    const result = { queue: info.queue, segmentsDeleted: 0, segmentsRewritten: 0, framesRemoved: 0, bytesReclaimed: 0 };
    // A compactor killed mid-way leaves its lock behind: taken over at once (its holder is gone). A live
    // compactor elsewhere means this round has nothing to add.
    let lock: Lock;
    try {
      lock = await Lock.acquire(join(info.dir, COMPACT_LOCK), { waitForDeadHolder: true });
    } catch (err) {
      if (isMqlogError(err, 'ERR_LOCKED')) return { ...result, skipped: true };
      throw err;
    }
    try {
      // Per segment read this round: the earliest time something kept in it may become removable
      // without the state it was judged by changing (time passing; a receipt or another segment).
      let recheckAt = Number.POSITIVE_INFINITY;
      const later = (at: number): void => {
        recheckAt = Math.min(recheckAt, at);
      };
      const judge = await this.judge(info, now, signal, later);
      if (judge === undefined) return result;
      const { store } = this.options;
      const retainDoneMs = this.options.retainDoneMs ?? 0;
      const orphanMs = this.options.orphanChunkMs ?? ORPHAN_CHUNK_MS;
      const removable: IsDone = async (stream, offset, meta) => {
        if (!(await judge.isDone(stream, offset, meta))) return false;
        if (meta.ts + retainDoneMs <= now) return true;
        later(meta.ts + retainDoneMs);
        return false;
      };
      // Chunks of streamed bodies go with their message, never before it: a first pass removes messages
      // (and chunks whose message never came, after orphanMs); a second pass removes the chunks of
      // the bodies whose message the first pass removed. Which message owns a body is looked up only
      // once a chunk is met.
      let owners: Promise<Map<string, boolean>> | undefined;
      const ownersNow = (): Promise<Map<string, boolean>> => (owners ??= streamedOwners(store, info.queue, removable, signal));
      const pass = async (chunkGone: (id: string, ts: number) => Promise<boolean>, fresh = false): Promise<void> => {
        const keep: KeepFrame = async (frame) => {
          if (frame.type === FrameType.BODY_CHUNK) {
            const chunk = safeChunk(frame);
            if (chunk === undefined) return true;
            if (await chunkGone(chunk.id, chunk.ts)) return false;
            // Kept with its message (which may go in another segment: looked at again in this round, or
            // when the stream's state moves, which the segment's fingerprint covers) or as a young orphan.
            const owner = (await ownersNow()).get(chunk.id);
            if (owner === undefined) later(chunk.ts + orphanMs);
            else if (owner) later(now);
            return true;
          }
          if (frame.type !== FrameType.MESSAGE) return true;
          const meta = safeMeta(frame);
          // Keep what cannot be read; verify reports it.
          return meta === undefined || !(await removable(frame.stream, frame.offset, meta));
        };
        for (const stream of await store.streams(info.queue)) {
          if (signal?.aborted === true) break;
          const keepFrom = judge.keepFrom(stream.name);
          let reading: { key: string; fingerprint: string | undefined } | undefined;
          let segmentStarted = performance.now();
          const reclaimed = await store.compact(info.queue, stream.name, keep, {
            ...(this.options.rewriteBelowShare === undefined ? {} : { rewriteBelowShare: this.options.rewriteBelowShare }),
            ...(keepFrom === undefined ? {} : { keepFrom }),
            ...(signal === undefined ? {} : { signal }),
            decide: async (summary): Promise<SegmentDecision> => {
              await this.pause(signal);
              // Stopped during the pause: nothing more is done.
              if (signal?.aborted === true) return 'keep';
              segmentStarted = performance.now();
              const key = `${info.queue}\n${summary.stream}\n${summary.base}`;
              const { decision, fingerprint } = judge.verdict(summary);
              reading = undefined;
              if (decision !== 'read') return decision;
              const memo = this.memo.get(key);
              // Read before with the state as it is: it would decide the same (unless bodies just lost their message).
              if (!fresh && memo !== undefined && fingerprint !== undefined && memo.fingerprint === fingerprint && now < memo.recheckAt) return 'keep';
              reading = { key, fingerprint };
              recheckAt = Number.POSITIVE_INFINITY;
              return 'read';
            },
            onSegment: (segment, action) => {
              if (action !== 'kept' || reading !== undefined) this.owePause(performance.now() - segmentStarted);
              // Called right after the segment just decided on: remember what its reading found.
              if (reading !== undefined && signal?.aborted !== true) {
                if (action === 'deleted' || action === 'retired' || reading.fingerprint === undefined) this.memo.delete(reading.key);
                else this.memo.set(reading.key, { fingerprint: reading.fingerprint, recheckAt });
              }
              reading = undefined;
              this.options.onSegment?.(info.queue, segment, action);
            },
          });
          result.segmentsDeleted += reclaimed.segmentsDeleted;
          result.segmentsRewritten += reclaimed.segmentsRewritten;
          result.framesRemoved += reclaimed.framesRemoved;
          result.bytesReclaimed += reclaimed.bytesReclaimed;
        }
      };
      // An owner scan cut short by the signal knows too little to call any chunk an orphan.
      const orphan = async (id: string, ts: number): Promise<boolean> => ts + orphanMs <= now && !(await ownersNow()).has(id) && signal?.aborted !== true;
      await pass(orphan);
      const before = owners === undefined ? undefined : await owners;
      if (before !== undefined && [...before.values()].some((removed) => removed) && signal?.aborted !== true) {
        const after = await streamedOwners(store, info.queue, removable, signal);
        await pass(async (id, ts) => (await orphan(id, ts)) || (before.get(id) === true && !after.has(id)), true);
      }
      if (info.kind === 'outbox' && result.segmentsDeleted > 0 && signal?.aborted !== true) await new OutboxSummaries(store, info).prune();
      return result;
    } finally {
      await lock.release();
    }
  }

  /** Whether a message of this queue is done, from its state files; undefined for queues never compacted. */
  private async judge(info: QueueInfo, now: number, signal: AbortSignal | undefined, later: (at: number) => void): Promise<QueueJudge | undefined> {
    const retainDoneMs = this.options.retainDoneMs ?? 0;
    if (info.kind === 'outbox') {
      // The cursor files, not a forwarder's cursor in memory: only what is durably passed is done.
      const state = await OutboxState.load(info.dir);
      const receipts = new ReceiptStore(this.options.dataDir);
      const counter = this.options.outboxCounter ?? this.outboxCounterOf(info);
      await counter.refresh(signal);
      const messagesOf = (stream: string, base: number): ReturnType<OutboxCounter['segmentsOf']>[number] | undefined => counter.segmentsOf(stream).find((s) => s.base === base);
      return {
        isDone: async (stream, offset, meta) => {
          // Passed by every destination: nothing is left to do with it (an expiry not yet passed by the
          // forwarder still has its receipt to record).
          if (!meta.to.every((to) => state.cursor(to).offsetOf(stream) > offset)) return false;
          if (meta.receipt !== true) return true;
          const status = await receipts.status(meta.id).catch(() => undefined);
          if (status === undefined || isSettled(status.state)) return true;
          later(now); // the receipt settles with no cursor moving
          return false;
        },
        // At and after the furthest cursor, no destination passed anything: no need to read it.
        keepFrom: (stream) => state.highestOffset(stream),
        verdict: (summary) => outboxVerdict(summary, messagesOf(summary.stream, summary.base), state, retainDoneMs, now),
      };
    }
    if (info.queue === 'outbox-dead') return undefined;
    const journal = await ConsumerJournal.open(info.dir);
    const state = journal.state;
    await journal.close();
    const kind = info.kind === 'dead' ? 'dead' : 'inbox';
    return {
      isDone: kind === 'dead' ? (stream, offset) => state.doneKind(stream, offset) === 'acked' : (stream, offset) => state.isDone(stream, offset),
      keepFrom: () => undefined,
      verdict: (summary) => inboxVerdict(summary, state, kind, retainDoneMs),
    };
  }

  private outboxCounterOf(info: QueueInfo): OutboxCounter {
    let counter = this.outboxCounters.get(info.queue);
    if (counter === undefined) {
      counter = new OutboxCounter(this.options.store, info);
      this.outboxCounters.set(info.queue, counter);
    }
    return counter;
  }
}

/** One round over a node's queues (a Compactor used once: every segment that is not judged from its summary is read). */
export async function compactNode(options: CompactionOptions & { readonly retainReceiptsMs?: number }): Promise<NodeCompaction> {
  const compactor = new Compactor(options);
  try {
    return await compactor.round();
  } finally {
    await compactor.close();
  }
}

/** For every message with a streamed body in the queue: whether it is removable (its chunks with it). */
async function streamedOwners(store: LogStore, queue: string, removable: IsDone, signal: AbortSignal | undefined): Promise<Map<string, boolean>> {
  const owners = new Map<string, boolean>();
  for (const stream of await store.streams(queue)) {
    try {
      for await (const frame of readFrames(store, queue, stream.name, { skipTypes: new Set([FrameType.BODY_CHUNK]), maxFrames: 256, maxBytes: 8 * 1024 * 1024 })) {
        // Stopped: what is known so far (a chunk of an unknown owner is kept unless it is an old orphan).
        if (signal?.aborted === true) return owners;
        if (frame.type !== FrameType.MESSAGE) continue;
        const meta = safeMeta(frame);
        if (meta?.streamed !== undefined) owners.set(meta.id, await removable(stream.name, frame.offset, meta));
      }
    } catch (err) {
      if (!isMqlogError(err)) throw err; // corrupt: verify reports it; its chunks are kept
    }
  }
  return owners;
}

function safeMeta(frame: StoredFrame): MessageMeta | undefined {
  try {
    return decodeMeta(frame.payload).meta;
  } catch {
    return undefined;
  }
}

function safeChunk(frame: StoredFrame): { id: string; ts: number } | undefined {
  try {
    return decodeChunk(frame.payload).meta;
  } catch {
    return undefined;
  }
}
