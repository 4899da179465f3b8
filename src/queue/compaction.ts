/**
 * Compaction: reclaims the disk space of messages that are done (spec/log-format.md §13).
 *
 * Done means: in an inbox, acked, dead-lettered or expired; in the outbox, past the cursor of every
 * destination (sent, expired or refused) and, when it asked for a receipt, with its receipt settled;
 * in a channel's dead letters, redriven. A done message is removed once it is older than `retainDoneMs`.
 *
 * Per stream, only sealed segments are touched (never the one a writer appends to): a segment with no
 * live frame is deleted; one whose live frames are less than `rewriteBelowShare` of its bytes is
 * rewritten — live frames copied as they are into a temp file, fsync'd, renamed over the segment, and the
 * directory fsync'd — so that either the old or the new file is in force after a crash, never both or
 * neither. The last segment of a stream whose writer is gone is retired the same way once all of it is
 * done: the slot is claimed, an empty successor created, and the old segment deleted.
 *
 * Offsets never change, so cursors, acks and position hints stay valid (hints are re-checked by offset).
 * Compactors of one queue take turns (compact.lock); writers and readers never wait for them.
 */
import { open, rename, rm, readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { isMqlogError, ioError } from '../errors.js';
import { FrameType, encodeFrame } from '../log/frame.js';
import { Lock } from '../log/lock.js';
import { FileLogStore } from '../log/log-store.js';
import { SegmentReader } from '../log/segment.js';
import { SegmentSet, type SegmentInfo } from '../log/segment-set.js';
import { StreamWriter } from '../log/stream-writer.js';
import { FILE_MODE, fsyncDir, isNotFound } from '../util/fs.js';
import { decodeChunk, decodeMeta, type MessageMeta } from './codec.js';
import { ConsumerJournal } from './consumer-journal.js';
import { readAllCursors } from './cursors.js';
import { listQueues, type QueueInfo } from './layout.js';
import { ReceiptStore, isSettled } from './receipts.js';

export const COMPACT_LOCK = 'compact.lock';

export interface CompactionOptions {
  /** The node directory (for the outbox's cursors and receipts). */
  readonly dataDir: string;
  /** Done messages younger than this (by send time) are kept. Default 0. */
  readonly retainDoneMs?: number;
  /** Rewrite a sealed segment when its live bytes are below this share of it. Default 0.5. */
  readonly rewriteBelowShare?: number;
  readonly segmentBytes?: number;
  readonly now?: number;
  /** Called after each segment, for progress lines. */
  readonly onSegment?: (queue: string, path: string, action: 'kept' | 'deleted' | 'rewritten' | 'retired') => void;
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

type IsDone = (stream: string, offset: number, meta: MessageMeta | undefined) => Promise<boolean> | boolean;
type ChunkRemovable = (id: string, ts: number) => Promise<boolean>;

/** A chunk whose message never came (the sender died mid-body, or the body was refused) is removed after this. */
export const ORPHAN_CHUNK_MS = 60 * 60_000;

/** For every message with a streamed body in the queue: whether it is removable (its chunks with it). */
async function streamedOwners(store: FileLogStore, removable: IsDone): Promise<Map<string, boolean>> {
  const owners = new Map<string, boolean>();
  for (const stream of await store.streams()) {
    const reader = store.reader(stream.name, { offset: 0 }, { skipTypes: new Set([FrameType.BODY_CHUNK]) });
    try {
      for (;;) {
        let read;
        try {
          read = await reader.read({ maxFrames: 256, maxBytes: 8 * 1024 * 1024 });
        } catch (err) {
          if (isMqlogError(err)) break; // corrupt: verify reports it
          throw err;
        }
        for (const frame of read.frames) {
          if (frame.type !== FrameType.MESSAGE) continue;
          let meta: MessageMeta;
          try {
            meta = decodeMeta(frame.payload).meta;
          } catch {
            continue;
          }
          if (meta.streamed !== undefined) owners.set(meta.id, await removable(stream.name, frame.offset, meta));
        }
        if (read.state !== 'more') break;
      }
    } finally {
      await reader.close();
    }
  }
  return owners;
}

/** Compacts one queue. Returns what it reclaimed; a queue another compactor holds is skipped. */
export async function compactQueue(info: QueueInfo, options: CompactionOptions): Promise<CompactionResult> {
  const result = { queue: info.queue, segmentsDeleted: 0, segmentsRewritten: 0, framesRemoved: 0, bytesReclaimed: 0 };
  // A compactor killed mid-way leaves its lock behind: wait that out rather than skip the queue. A live
  // compactor elsewhere means this round has nothing to add.
  let lock: Lock;
  try {
    lock = await Lock.acquire(join(info.dir, COMPACT_LOCK), { waitForDeadHolder: true });
  } catch (err) {
    if (isMqlogError(err, 'ERR_LOCKED')) return { ...result, skipped: true };
    throw err;
  }
  try {
    const isDone = await donePredicate(info, options);
    const untouched = await untouchedFrom(info, options);
    if (isDone === undefined) return result;
    const now = options.now ?? Date.now();
    const retainDoneMs = options.retainDoneMs ?? 0;
    const removable: IsDone = async (stream, offset, meta) => (meta === undefined || meta.ts + retainDoneMs <= now) && (await isDone(stream, offset, meta));
    const store = new FileLogStore(info.dir);
    // Chunks of streamed bodies go with their message; found once, on the first chunk met.
    let owners: Promise<Map<string, boolean>> | undefined;
    const chunkRemovable: ChunkRemovable = async (id, ts) => {
      owners ??= streamedOwners(store, removable);
      const owner = (await owners).get(id);
      return owner ?? ts + ORPHAN_CHUNK_MS <= now;
    };
    for (const stream of await store.streams()) {
      const set = new SegmentSet(join(info.dir, stream.name));
      await removeLeftovers(set.dir);
      const segments = await set.list();
      for (const [index, segment] of segments.entries()) {
        // Nothing at or past every destination's cursor can be done: no need to read it.
        if (segment.baseOffset >= untouched(stream.name)) continue;
        const sealed = index < segments.length - 1;
        const outcome = sealed
          ? await compactSegment(set, segment, stream.name, removable, chunkRemovable, options.rewriteBelowShare ?? 0.5)
          : await retireTail(info, set, segment, stream.name, stream.slot, removable, chunkRemovable, options);
        result.segmentsDeleted += outcome.action === 'deleted' || outcome.action === 'retired' ? 1 : 0;
        result.segmentsRewritten += outcome.action === 'rewritten' ? 1 : 0;
        result.framesRemoved += outcome.framesRemoved;
        result.bytesReclaimed += outcome.bytesReclaimed;
        options.onSegment?.(info.queue, segment.path, outcome.action);
      }
    }
    return result;
  } finally {
    await lock.release();
  }
}

/**
 * For the outbox, the offset per stream from which nothing can be done yet (the furthest destination
 * cursor): a message there has not been sent to any of its destinations. Other queues: no such bound.
 */
async function untouchedFrom(info: QueueInfo, options: CompactionOptions): Promise<(stream: string) => number> {
  if (info.kind !== 'outbox') return () => Number.POSITIVE_INFINITY;
  const cursors = await readAllCursors(options.dataDir);
  return (stream) => Math.max(0, ...cursors.map((c) => c.streams[stream]?.offset ?? 0));
}

/** Whether a message of this queue is done, from its state files; undefined for queues never compacted. */
async function donePredicate(info: QueueInfo, options: CompactionOptions): Promise<IsDone | undefined> {
  if (info.kind === 'outbox') {
    const cursors = new Map((await readAllCursors(options.dataDir)).map((c) => [c.destination, c.streams]));
    const receipts = new ReceiptStore(options.dataDir);
    return async (stream, offset, meta) => {
      if (meta === undefined) return false;
      if (!meta.to.every((to) => (cursors.get(to)?.[stream]?.offset ?? 0) > offset)) return false;
      if (meta.receipt !== true) return true;
      const status = await receipts.status(meta.id).catch(() => undefined);
      return status === undefined || isSettled(status.state);
    };
  }
  if (info.queue === 'outbox-dead') return undefined;
  const journal = await ConsumerJournal.open(info.dir);
  const state = journal.state;
  await journal.close();
  if (info.kind === 'dead') return (stream, offset) => state.doneKind(stream, offset) === 'acked';
  return (stream, offset) => state.isDone(stream, offset);
}

interface Outcome {
  readonly action: 'kept' | 'deleted' | 'rewritten' | 'retired';
  readonly framesRemoved: number;
  readonly bytesReclaimed: number;
}

const KEPT: Outcome = { action: 'kept', framesRemoved: 0, bytesReclaimed: 0 };

async function compactSegment(set: SegmentSet, segment: SegmentInfo, stream: string, removable: IsDone, chunkRemovable: ChunkRemovable, rewriteBelowShare: number): Promise<Outcome> {
  const survey = await surveySegment(segment.path, stream, removable, chunkRemovable);
  if (survey === undefined || survey.removed === 0) return KEPT;
  // The file's own size: it also holds the log's sync marks, which are no frames of a message.
  const fileBytes = await stat(segment.path).then((s) => s.size, () => survey.totalBytes);
  if (survey.liveFrames === 0) {
    await rm(segment.path, { force: true });
    await fsyncDir(set.dir);
    return { action: 'deleted', framesRemoved: survey.removed, bytesReclaimed: fileBytes };
  }
  if (survey.liveBytes >= survey.totalBytes * rewriteBelowShare) return KEPT;
  const tmp = `${segment.path}.${process.pid}.compact.tmp`;
  const handle = await open(tmp, 'w', FILE_MODE);
  let written = 0;
  try {
    const reader = await SegmentReader.open(segment.path);
    try {
      for (;;) {
        const step = await reader.next();
        if (step.kind !== 'frame') break;
        const { frame } = step;
        if (await isRemovable(frame.type, frame.offset, frame.payload, stream, removable, chunkRemovable)) continue;
        const bytes = encodeFrame(frame.type, frame.offset, frame.payload);
        await handle.write(bytes, 0, bytes.length, written);
        written += bytes.length;
      }
    } finally {
      await reader.close();
    }
    await handle.datasync();
  } catch (err) {
    await handle.close();
    await rm(tmp, { force: true });
    throw ioError(err, `cannot rewrite ${segment.path}`, { path: segment.path });
  }
  await handle.close();
  // The rename is the switch: before it the old segment is in force, after it the new one.
  await rename(tmp, segment.path);
  await fsyncDir(set.dir);
  return { action: 'rewritten', framesRemoved: survey.removed, bytesReclaimed: fileBytes - written };
}

/** Retires the last segment of a stream whose writer is gone, once every frame in it is done. */
async function retireTail(info: QueueInfo, set: SegmentSet, segment: SegmentInfo, stream: string, slot: number, removable: IsDone, chunkRemovable: ChunkRemovable, options: CompactionOptions): Promise<Outcome> {
  const size = await stat(segment.path).then((s) => s.size, () => 0);
  if (size === 0) return KEPT;
  const survey = await surveySegment(segment.path, stream, removable, chunkRemovable);
  if (survey === undefined || survey.liveFrames > 0 || survey.removed === 0 || survey.torn) return KEPT;
  const lock = await Lock.tryAcquire(join(info.dir, `w${slot}.lock`));
  if (lock === undefined) return KEPT; // a writer is appending here
  try {
    // Recover as the slot's writer would (cuts a torn tail), then start an empty successor.
    const writer = await StreamWriter.open(set.dir, { segmentBytes: options.segmentBytes ?? 64 * 1024 * 1024 });
    const next = writer.nextOffset;
    await writer.close();
    const again = await surveySegment(segment.path, stream, removable, chunkRemovable);
    if (again === undefined || again.liveFrames > 0) return KEPT;
    const handle = await set.create(next);
    await handle.close();
    await rm(segment.path, { force: true });
    await fsyncDir(set.dir);
    return { action: 'retired', framesRemoved: again.removed, bytesReclaimed: size };
  } catch (err) {
    if (isMqlogError(err)) return KEPT; // corrupt or busy: leave it for verify and the next round
    throw err;
  } finally {
    await lock.release();
  }
}

interface Survey {
  readonly liveFrames: number;
  readonly liveBytes: number;
  readonly removed: number;
  readonly totalBytes: number;
  readonly torn: boolean;
}

async function surveySegment(path: string, stream: string, removable: IsDone, chunkRemovable: ChunkRemovable): Promise<Survey | undefined> {
  let reader: SegmentReader;
  try {
    reader = await SegmentReader.open(path);
  } catch (err) {
    if (isMqlogError(err, 'ERR_NOT_FOUND')) return undefined;
    throw err;
  }
  let liveFrames = 0;
  let liveBytes = 0;
  let removed = 0;
  let totalBytes = 0;
  let torn: boolean;
  try {
    for (;;) {
      let step;
      try {
        step = await reader.next();
      } catch (err) {
        if (isMqlogError(err)) return undefined; // corrupt: verify reports it; compaction keeps it
        throw err;
      }
      if (step.kind !== 'frame') {
        torn = step.kind === 'torn';
        break;
      }
      totalBytes += step.frame.bytes;
      if (await isRemovable(step.frame.type, step.frame.offset, step.frame.payload, stream, removable, chunkRemovable)) removed++;
      else {
        liveFrames++;
        liveBytes += step.frame.bytes;
      }
    }
  } finally {
    await reader.close();
  }
  return { liveFrames, liveBytes, removed, totalBytes, torn };
}

async function isRemovable(type: number, offset: number, payload: Buffer, stream: string, removable: IsDone, chunkRemovable: ChunkRemovable): Promise<boolean> {
  if (type === FrameType.BODY_CHUNK) {
    try {
      const { meta } = decodeChunk(payload);
      return await chunkRemovable(meta.id, meta.ts);
    } catch {
      return false;
    }
  }
  if (type !== FrameType.MESSAGE) return false;
  let meta: MessageMeta;
  try {
    meta = decodeMeta(payload).meta;
  } catch {
    return false; // keep what cannot be read; verify reports it
  }
  return removable(stream, offset, meta);
}

/** Removes temp files a killed compactor left (`*.compact.tmp`). */
async function removeLeftovers(dir: string): Promise<void> {
  let names: string[];
  try {
    names = await readdir(dir);
  } catch (err) {
    if (isNotFound(err)) return;
    throw err;
  }
  for (const name of names) if (name.endsWith('.compact.tmp')) await rm(join(dir, name), { force: true });
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
  for (const info of await listQueues(options.dataDir)) queues.push(await compactQueue(info, options));
  const receiptsPruned = options.retainReceiptsMs === undefined ? 0 : await new ReceiptStore(options.dataDir).prune((options.now ?? Date.now()) - options.retainReceiptsMs);
  return { queues, receiptsPruned, bytesReclaimed: queues.reduce((n, q) => n + q.bytesReclaimed, 0), durationMs: performance.now() - started };
}
