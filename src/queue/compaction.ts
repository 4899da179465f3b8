/**
 * Compaction: reclaims the disk space of messages that are done (spec/log-format.md §13). This module
 * decides what is done, from each queue's own state; the LogStore reclaims whole segments.
 *
 * Done means: in an inbox, acked, dead-lettered or expired; in the outbox, passed by the cursor of every
 * destination (sent, expired or refused) and, when it asked for a receipt, with its receipt settled; in
 * a channel's dead letters, redriven. A done message is removed once it is older than `retainDoneMs`.
 * The chunks of a streamed body go with their message; chunks whose message never came (the sender died
 * mid-body, or the body was refused) go after ORPHAN_CHUNK_MS.
 *
 * Compactors of one queue take turns (compact.lock); writers and readers never wait for them. A round
 * stops between segments when its signal fires.
 */
import { join } from 'node:path';
import { isMqlogError } from '../errors.js';
import { FrameType } from '../log/frame.js';
import { Lock } from '../log/lock.js';
import type { KeepFrame, LogStore, StoredFrame } from '../log/log-store.js';
import { readFrames } from '../log/stream-scan.js';
import { decodeChunk, decodeMeta, type MessageMeta } from './codec.js';
import { ConsumerJournal } from './consumer-journal.js';
import { listQueues, type QueueInfo } from './layout.js';
import { OutboxState } from './outbox-state.js';
import { ReceiptStore, isSettled } from './receipts.js';

export const COMPACT_LOCK = 'compact.lock';

/** A chunk whose message never came (the sender died mid-body, or the body was refused) is removed after this. */
export const ORPHAN_CHUNK_MS = 60 * 60_000;

export interface CompactionOptions {
  readonly store: LogStore;
  /** The node directory (for the queues' state files and receipts). */
  readonly dataDir: string;
  /** Done messages younger than this (by send time) are kept. Default 0. */
  readonly retainDoneMs?: number;
  /** Rewrite a sealed segment when its live bytes are below this share of it. Default 0.5. */
  readonly rewriteBelowShare?: number;
  readonly now?: number;
  readonly signal?: AbortSignal;
  /** Called after each segment, for progress lines. */
  readonly onSegment?: (queue: string, segment: string, action: 'kept' | 'deleted' | 'rewritten' | 'retired') => void;
}

export interface CompactionResult {
  readonly queue: string;
  /** Set when another live compactor was working on the queue. */
  readonly skipped?: boolean;
  readonly segmentsDeleted: number;
  readonly segmentsRewritten: number;
  readonly framesRemoved: number;
  readonly bytesReclaimed: number;
}

type IsDone = (stream: string, offset: number, meta: MessageMeta) => Promise<boolean> | boolean;

/** Compacts one queue. Returns what it reclaimed; a queue another compactor holds is skipped. */
export async function compactQueue(info: QueueInfo, options: CompactionOptions): Promise<CompactionResult> {
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
    const done = await donePredicate(info, options);
    if (done === undefined) return result;
    const { store } = options;
    const now = options.now ?? Date.now();
    const retainDoneMs = options.retainDoneMs ?? 0;
    const removable: IsDone = async (stream, offset, meta) => meta.ts + retainDoneMs <= now && (await done.isDone(stream, offset, meta));
    // Chunks of streamed bodies go with their message, never before it: a first pass removes messages
    // (and chunks whose message never came, after ORPHAN_CHUNK_MS); a second pass removes the chunks of
    // the bodies whose message the first pass removed.
    const before = await streamedOwners(store, info.queue, removable);
    const pass = async (chunkGone: (id: string, ts: number) => boolean): Promise<void> => {
      const keep: KeepFrame = async (frame) => {
        if (frame.type === FrameType.BODY_CHUNK) {
          const chunk = safeChunk(frame);
          return chunk === undefined || !chunkGone(chunk.id, chunk.ts);
        }
        if (frame.type !== FrameType.MESSAGE) return true;
        const meta = safeMeta(frame);
        // Keep what cannot be read; verify reports it.
        return meta === undefined || !(await removable(frame.stream, frame.offset, meta));
      };
      for (const stream of await store.streams(info.queue)) {
        if (options.signal?.aborted === true) break;
        const keepFrom = done.keepFrom(stream.name);
        const reclaimed = await store.compact(info.queue, stream.name, keep, {
          ...(options.rewriteBelowShare === undefined ? {} : { rewriteBelowShare: options.rewriteBelowShare }),
          ...(keepFrom === undefined ? {} : { keepFrom }),
          ...(options.signal === undefined ? {} : { signal: options.signal }),
          onSegment: (segment, action) => options.onSegment?.(info.queue, segment, action),
        });
        result.segmentsDeleted += reclaimed.segmentsDeleted;
        result.segmentsRewritten += reclaimed.segmentsRewritten;
        result.framesRemoved += reclaimed.framesRemoved;
        result.bytesReclaimed += reclaimed.bytesReclaimed;
      }
    };
    const orphan = (id: string, ts: number): boolean => !before.has(id) && ts + ORPHAN_CHUNK_MS <= now;
    await pass(orphan);
    if ([...before.values()].some((removed) => removed)) {
      const after = await streamedOwners(store, info.queue, removable);
      await pass((id, ts) => orphan(id, ts) || (before.get(id) === true && !after.has(id)));
    }
    return result;
  } finally {
    await lock.release();
  }
}

/** Whether a message of this queue is done, from its state files; undefined for queues never compacted. */
async function donePredicate(info: QueueInfo, options: CompactionOptions): Promise<{ isDone: IsDone; keepFrom: (stream: string) => number | undefined } | undefined> {
  if (info.kind === 'outbox') {
    const state = await OutboxState.load(info.dir);
    const receipts = new ReceiptStore(options.dataDir);
    return {
      isDone: async (stream, offset, meta) => {
        // Passed by every destination: nothing is left to do with it (an expiry not yet passed by the
        // forwarder still has its receipt to record).
        if (!meta.to.every((to) => state.cursor(to).offsetOf(stream) > offset)) return false;
        if (meta.receipt !== true) return true;
        const status = await receipts.status(meta.id).catch(() => undefined);
        return status === undefined || isSettled(status.state);
      },
      // At and after the furthest cursor, no destination passed anything: no need to read it.
      keepFrom: (stream) => state.highestOffset(stream),
    };
  }
  if (info.queue === 'outbox-dead') return undefined;
  const journal = await ConsumerJournal.open(info.dir);
  const state = journal.state;
  await journal.close();
  if (info.kind === 'dead') return { isDone: (stream, offset) => state.doneKind(stream, offset) === 'acked', keepFrom: () => undefined };
  return { isDone: (stream, offset) => state.isDone(stream, offset), keepFrom: () => undefined };
}

/** For every message with a streamed body in the queue: whether it is removable (its chunks with it). */
async function streamedOwners(store: LogStore, queue: string, removable: IsDone): Promise<Map<string, boolean>> {
  const owners = new Map<string, boolean>();
  for (const stream of await store.streams(queue)) {
    try {
      for await (const frame of readFrames(store, queue, stream.name, { skipTypes: new Set([FrameType.BODY_CHUNK]), maxFrames: 256, maxBytes: 8 * 1024 * 1024 })) {
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

export interface NodeCompaction {
  readonly queues: CompactionResult[];
  readonly receiptsPruned: number;
  readonly bytesReclaimed: number;
  readonly durationMs: number;
}

/** Compacts every queue of a node and prunes settled receipts older than `retainReceiptsMs`. */
export async function compactNode(options: CompactionOptions & { readonly retainReceiptsMs?: number }): Promise<NodeCompaction> {
  const started = performance.now();
  const queues: CompactionResult[] = [];
  for (const info of await listQueues(options.dataDir)) {
    if (options.signal?.aborted === true) break;
    queues.push(await compactQueue(info, options));
  }
  const receiptsPruned = options.retainReceiptsMs === undefined ? 0 : await new ReceiptStore(options.dataDir).prune((options.now ?? Date.now()) - options.retainReceiptsMs);
  return { queues, receiptsPruned, bytesReclaimed: queues.reduce((n, q) => n + q.bytesReclaimed, 0), durationMs: performance.now() - started };
}
