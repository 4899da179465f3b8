/**
 * The single writer of one stream: durable appends with group commit, segment roll and preallocation
 * (spec/log-format.md §4). Every write begins with a SYNC frame stating the length fsync'd before it,
 * and a clean close ends the segment with one stating its whole length (§3.3): the boundary that lets a
 * reader tell a torn last write from damage to acknowledged data.
 *
 * Concurrency contract: one StreamWriter per stream across all processes (the writer-slot lock in
 * lock.ts guarantees it). Within the process, any number of callers may call append() at once; frames
 * queued while a flush runs form the next batch, so one fdatasync covers every frame written since the
 * previous one. append() resolves only after its frame is fdatasync'd, and after the directory entry of a
 * new segment is fsync'd.
 *
 * The writer also keeps the index of its open segment as it appends (open-segment-index.ts, spec
 * §16): written durably once the segment is sealed, and as checkpoints of the open segment, so that
 * reopening the stream after a crash, reading from an offset or counting its frames reads only what
 * came after the last checkpoint.
 */
import { writevSync } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { MqlogError, ioError, withDetails } from '../errors.js';
import { nextTurn } from '../util/backoff.js';
import { basename } from 'node:path';
import { FRAME_HEADER_BYTES, SYNC_PAYLOAD_BYTES, encodeFrameHeader, encodeSyncFrame, frameChecksum, payloadLength, type Payload } from './frame.js';
import { DEFAULT_ROLL_IDLE_MS, type AppendResult, type FrameToAppend, type TruncatedTail } from './log-store.js';
import { recoverStream } from './recovery.js';
import { OpenSegmentIndex } from './open-segment-index.js';
import { IndexBuilder } from './segment-index.js';
import type { SegmentIndexes } from './segment-index-file.js';
import { SegmentSet } from './segment-set.js';

export const DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024;
/** Small batches write into a zero-filled region, so that fdatasync needs no metadata update. */
const PREALLOCATE_BYTES = 1024 * 1024;
const PREALLOCATE_BELOW_BATCH_BYTES = 256 * 1024;
/** Runs up to this size are written on the caller's thread (see writeRun). */
const SYNC_WRITE_BYTES = 16 * 1024;
/** A flush writes at most this much before it fsyncs and lets callers go. */
const MAX_BATCH_BYTES = 8 * 1024 * 1024;
const ZEROS = Buffer.alloc(PREALLOCATE_BYTES);
const SYNC_FRAME_BYTES = FRAME_HEADER_BYTES + SYNC_PAYLOAD_BYTES;

export interface StreamWriterOptions {
  readonly segmentBytes?: number;
  /**
   * Seal the open segment once it holds frames and got no append for this long (0: never), as Kafka's
   * `segment.ms` does: an idle queue's data then sits in sealed segments, which compaction reclaims.
   */
  readonly rollIdleMs?: number;
  /** Called once per flush with its size and duration, for metrics. */
  readonly onFlush?: (frames: number, bytes: number, durationMs: number) => void;
  /** The store's indexes, where this process's readers find the open segment's index as it is now. */
  readonly indexes?: SegmentIndexes;
}


interface PendingAppend {
  readonly type: number;
  readonly payload: Payload;
  readonly bytes: number;
  readonly resolve: (result: AppendResult) => void;
  readonly reject: (err: unknown) => void;
}

/** A request to end the open segment, queued in order with the appends. */
interface PendingRoll {
  readonly roll: true;
  readonly resolve: () => void;
  readonly reject: (err: unknown) => void;
}

export class StreamWriter {
  readonly set: SegmentSet;
  readonly name: string;
  /** The torn tail recovery cut off when this writer opened the stream, if any. */
  readonly recoveredTruncation: TruncatedTail | undefined;
  private readonly segmentBytes: number;
  private readonly onFlush: StreamWriterOptions['onFlush'];
  private readonly rollIdleMs: number;
  private idleTimer: NodeJS.Timeout | undefined;
  private handle: FileHandle | undefined;
  private segmentBase: number;
  private dataEnd: number;
  private allocatedEnd: number;
  private offset: number;
  /** Frames were written since the last SYNC frame that states the whole segment. */
  private unmarked = false;
  /**
   * A SYNC frame stating `dataEnd` ends the data (written after the last run's fsync): the next run
   * needs no opening mark.
   */
  private markedEnd = false;
  private queue: (PendingAppend | PendingRoll)[] = [];
  private flushing: Promise<void> | undefined;
  private closing: Promise<void> | undefined;
  /** The index of the open segment: every frame written to it and fsync'd. */
  private readonly index: OpenSegmentIndex;

  private constructor(set: SegmentSet, recovered: { base: number; dataEnd: number; nextOffset: number; handle: FileHandle | undefined; truncated: TruncatedTail | undefined; index: IndexBuilder; checkpointed: number }, options: StreamWriterOptions) {
    this.set = set;
    this.name = basename(set.dir);
    this.segmentBytes = options.segmentBytes ?? DEFAULT_SEGMENT_BYTES;
    this.onFlush = options.onFlush;
    this.rollIdleMs = options.rollIdleMs ?? DEFAULT_ROLL_IDLE_MS;
    this.segmentBase = recovered.base;
    this.dataEnd = recovered.dataEnd;
    this.allocatedEnd = recovered.dataEnd;
    this.offset = recovered.nextOffset;
    this.handle = recovered.handle;
    this.recoveredTruncation = recovered.truncated;
    // What recovery had to read is not read again by the next one (a checkpoint at once); it fsync'd it.
    this.index = new OpenSegmentIndex(set, recovered.base, recovered.index, recovered.checkpointed, recovered.dataEnd, options.indexes);
  }

  /**
   * Recovers the stream in `dir` (creating it if needed) and returns its writer.
   * @throws ERR_CORRUPT_FRAME if the last segment is corrupt; ERR_IO / ERR_DISK_FULL on I/O failure.
   */
  static async open(dir: string, options: StreamWriterOptions = {}): Promise<StreamWriter> {
    const segmentBytes = options.segmentBytes ?? DEFAULT_SEGMENT_BYTES;
    if (!Number.isSafeInteger(segmentBytes) || segmentBytes < 1024) {
      throw new MqlogError('ERR_INVALID_ARG', `segmentBytes must be an integer >= 1024, got ${segmentBytes}`);
    }
    const rollIdleMs = options.rollIdleMs ?? DEFAULT_ROLL_IDLE_MS;
    if (!Number.isSafeInteger(rollIdleMs) || rollIdleMs < 0) {
      throw new MqlogError('ERR_INVALID_ARG', `rollIdleMs must be a non-negative integer, got ${rollIdleMs}`);
    }
    const set = new SegmentSet(dir);
    const recovered = await recoverStream(set);
    if (recovered.lastBaseOffset === undefined) {
      const handle = await set.create(0);
      return new StreamWriter(set, { base: 0, dataEnd: 0, nextOffset: 0, handle, truncated: undefined, index: new IndexBuilder(0), checkpointed: 0 }, options);
    }
    const handle = await set.openForWrite(recovered.lastBaseOffset);
    try {
      // What recovery kept may be a killed writer's last write, still only in the page cache: make it
      // durable before a SYNC frame of ours states it.
      await handle.datasync();
    } catch (err) {
      await handle.close();
      throw ioError(err, `cannot fsync ${set.pathOf(recovered.lastBaseOffset)}`);
    }
    const index = recovered.index ?? new IndexBuilder(recovered.lastBaseOffset);
    return new StreamWriter(
      set,
      { base: recovered.lastBaseOffset, dataEnd: recovered.dataEnd, nextOffset: recovered.nextOffset, handle, truncated: recovered.truncated, index, checkpointed: index.frames - recovered.framesRead },
      options,
    );
  }

  /** Zero-filled bytes past the end of data of the open segment (counted in its file size, not data). */
  get preallocatedBytes(): number {
    return Math.max(0, this.allocatedEnd - this.dataEnd);
  }

  /** Offset the next appended frame will get. */
  get nextOffset(): number {
    return this.offset + this.queue.length;
  }

  /**
   * Appends one frame; resolves once it is on disk (fdatasync).
   * @throws ERR_DISK_FULL when the device is full (the log stays readable and later appends may succeed),
   *   ERR_IO on other write failures, ERR_CLOSED after close().
   */
  append(type: number, payload: Payload): Promise<AppendResult> {
    if (this.closing !== undefined) return Promise.reject(new MqlogError('ERR_CLOSED', 'stream writer is closed'));
    return new Promise<AppendResult>((resolve, reject) => {
      this.queue.push({ type, payload, bytes: FRAME_HEADER_BYTES + payloadLength(payload), resolve, reject });
      this.flushing ??= this.flushLoop();
    });
  }

  /**
   * Appends frames in order, as one group commit where they fit; resolves with their results once all
   * are on disk. One promise for the group, whatever its size.
   * @throws as append(), with `details.stored`: how many of the first frames were stored before the failure.
   */
  appendMany(frames: readonly FrameToAppend[]): Promise<AppendResult[]> {
    if (this.closing !== undefined) return Promise.reject(new MqlogError('ERR_CLOSED', 'stream writer is closed'));
    if (frames.length === 0) return Promise.resolve([]);
    return new Promise<AppendResult[]>((resolve, reject) => {
      const results: AppendResult[] = new Array<AppendResult>(frames.length);
      let left = frames.length;
      let failed = false;
      frames.forEach(({ type, payload }, i) => {
        this.queue.push({
          type,
          payload,
          bytes: FRAME_HEADER_BYTES + payloadLength(payload),
          resolve: (result) => {
            results[i] = result;
            if (--left === 0 && !failed) resolve(results);
          },
          reject: (err) => {
            if (failed) return;
            failed = true;
            // The frames of a group before this one were stored (written in order: a failure fails every frame after it).
            reject(withDetails(err, { stored: i }));
          },
        });
      });
      this.flushing ??= this.flushLoop();
    });
  }

  /**
   * Seals the open segment (after every append queued before this call) and starts the next one, when
   * the open segment holds any frame: an idle segment can then be reclaimed without waiting to fill up.
   */
  roll(): Promise<void> {
    if (this.closing !== undefined) return Promise.reject(new MqlogError('ERR_CLOSED', 'stream writer is closed'));
    return new Promise<void>((resolve, reject) => {
      this.queue.push({ roll: true, resolve, reject });
      this.flushing ??= this.flushLoop();
    });
  }

  /**
   * Waits for queued appends, trims preallocated zeros, checkpoints the open segment's index and closes
   * the file. Idempotent.
   */
  close(): Promise<void> {
    this.closing ??= (async () => {
      clearTimeout(this.idleTimer);
      while (this.flushing !== undefined) await this.flushing;
      const handle = this.handle;
      this.handle = undefined;
      if (handle === undefined) {
        await this.index.close();
        return;
      }
      try {
        // A closing mark written after the last run's fsync is fsync'd now, as a clean close's mark is.
        let changed = this.allocatedEnd > this.dataEnd || this.markedEnd;
        if (this.unmarked && this.dataEnd + SYNC_FRAME_BYTES <= this.segmentBytes) {
          // Everything before this mark is fsync'd: a later reader can tell damage here from a torn write.
          // Best effort: without room for it (a full disk), the segment is as valid without it.
          try {
            await writeAll(handle, [encodeSyncFrame(this.offset, this.dataEnd)], this.dataEnd);
            this.dataEnd += SYNC_FRAME_BYTES;
            this.allocatedEnd = Math.max(this.allocatedEnd, this.dataEnd);
          } catch {
            this.allocatedEnd = Math.max(this.allocatedEnd, this.dataEnd + SYNC_FRAME_BYTES);
          }
          changed = true;
        }
        if (this.allocatedEnd > this.dataEnd) await handle.truncate(this.dataEnd);
        if (changed) await handle.datasync();
        // Everything in the segment is fsync'd now: the next writer, reader or count starts from here.
        await this.index.close(this.dataEnd, changed);
      } finally {
        await handle.close();
        await this.index.close();
      }
    })();
    return this.closing;
  }

  private async flushLoop(): Promise<void> {
    try {
      for (let first = true; this.queue.length > 0; first = false) {
        const head = this.queue[0];
        if (head !== undefined && 'roll' in head) {
          this.queue.shift();
          await this.sealAndStartNext(false).then(head.resolve, head.reject);
          continue;
        }
        // An idle writer writes at once: callers that append in the same tick are queued by then, after
        // the appends their calls go through. (After a batch, the turn below let its callers join.)
        if (first) await new Promise<void>((resolve) => process.nextTick(resolve));
        let bytes = 0;
        let count = 0;
        for (const pending of this.queue) {
          if ('roll' in pending || (count > 0 && bytes >= MAX_BATCH_BYTES)) break;
          bytes += pending.bytes;
          count++;
        }
        const batch = this.queue.splice(0, count) as PendingAppend[];
        await this.writeBatch(batch);
        // Nothing queued behind the batch: the mark that tells followers it is durable is written now, on
        // its own (a follower waiting for it hands the batch out at once, with no fdatasync of its own).
        // Appends queued meanwhile form the next run, which opens with the mark. (On close, close() writes it.)
        if (this.queue.length === 0 && this.unmarked && this.closing === undefined && this.handle !== undefined) this.markSynced(this.handle);
        // One turn of the event loop lets callers woken by the batch (through several promise hops) append again.
        await nextTurn();
      }
    } finally {
      this.flushing = undefined;
    }
  }

  /** Writes a batch in runs, one run per segment, each fsync'd before its callers resolve. */
  private async writeBatch(batch: PendingAppend[]): Promise<void> {
    let index = 0;
    while (index < batch.length) {
      const started = performance.now();
      let handle: FileHandle;
      try {
        handle = await this.handleFor(batch[index]?.bytes ?? 0);
      } catch (err) {
        failAll(batch.slice(index), err);
        this.failQueued(err);
        return;
      }
      // The run opens with a SYNC frame stating that everything before it is fsync'd (at the start of a
      // segment there is nothing to state, and after the previous run's closing mark nothing new). Then
      // frames while they fit in this segment (always at least one).
      const sync = this.dataEnd > 0 && !this.markedEnd ? encodeSyncFrame(this.offset, this.dataEnd) : undefined;
      const run: { pending: PendingAppend; header: Buffer; result: AppendResult }[] = [];
      let position = this.dataEnd + (sync?.length ?? 0);
      let offset = this.offset;
      while (index < batch.length) {
        const pending = batch[index] as PendingAppend;
        const bytes = pending.bytes;
        if (run.length > 0 && position + bytes + SYNC_FRAME_BYTES > this.segmentBytes) break;
        let header: Buffer;
        try {
          header = encodeFrameHeader(pending.type, offset, pending.payload);
        } catch (err) {
          pending.reject(err);
          index++;
          continue;
        }
        run.push({ pending, header, result: { stream: this.name, offset, segment: this.segmentBase, position, bytes } });
        position += bytes;
        offset++;
        index++;
      }
      if (run.length === 0) continue;
      const runBytes = position - this.dataEnd;
      try {
        const buffers: Uint8Array[] = sync === undefined ? [] : [sync];
        for (const r of run) {
          buffers.push(r.header);
          if (r.pending.payload instanceof Uint8Array) buffers.push(r.pending.payload);
          else buffers.push(...r.pending.payload);
        }
        await this.writeRun(handle, buffers, runBytes);
      } catch (err) {
        failAll(run.map((r) => r.pending), err);
        failAll(batch.slice(index), err);
        this.failQueued(err);
        return;
      }
      this.dataEnd = position;
      this.offset = offset;
      this.unmarked = true;
      this.markedEnd = false;
      // Fsync'd up to here (the mark written next is not, until the next run's fsync).
      this.index.added(
        run.map((r) => ({ type: r.pending.type, offset: r.result.offset, position: r.result.position, bytes: r.result.bytes, crc: frameChecksum(r.header) })),
        position,
      );
      this.onFlush?.(run.length, runBytes, performance.now() - started);
      // Their mark comes with the next run, or on its own once nothing follows (flushLoop).
      for (const r of run) r.pending.resolve(r.result);
    }
    this.armIdleRoll();
  }

  /**
   * After a run's fsync: a SYNC frame stating the new end of data, so that followers (in any process)
   * see that the run is durable without an fsync of their own (spec/log-format.md §3.3). It is the next
   * run's opening mark, written early; not fsync'd itself (the next run's fsync covers it). Best
   * effort: without it (no room, a full disk) the next run opens with the mark as before.
   */
  private markSynced(handle: FileHandle): void {
    // Room for it and for what the segment keeps for its closing mark after the next frame (handleFor).
    if (this.dataEnd + 2 * SYNC_FRAME_BYTES > this.segmentBytes) return;
    try {
      // On this thread: followers wait for this mark to hand out what the fdatasync made durable, and a
      // thread-pool round trip for 28 bytes was what they waited for on a busy machine.
      writeAllSync(handle.fd, [encodeSyncFrame(this.offset, this.dataEnd)], this.dataEnd);
    } catch {
      // Whatever part of it reached the file lies past the end of data: the next run writes over it.
      return;
    }
    this.dataEnd += SYNC_FRAME_BYTES;
    this.allocatedEnd = Math.max(this.allocatedEnd, this.dataEnd);
    this.markedEnd = true;
    this.unmarked = false;
  }

  /**
   * After a failed write: every append queued behind it fails too, so that what a writer acknowledges
   * is always a prefix of the calls made to it (a caller sending in order never sees a later message
   * stored and an earlier one refused; a full disk fails everything waiting, not one write in two).
   */
  private failQueued(err: unknown): void {
    for (const pending of this.queue.splice(0)) pending.reject(err);
  }

  /** (Re)starts the idle clock after a write: it rolls the segment when nothing follows in time. */
  private armIdleRoll(): void {
    if (this.rollIdleMs === 0 || this.closing !== undefined) return;
    if (this.idleTimer !== undefined) {
      this.idleTimer.refresh();
      return;
    }
    this.idleTimer = setTimeout(() => {
      this.idleTimer = undefined;
      // Busy after all: the write in progress arms the clock again.
      if (this.closing !== undefined || this.queue.length > 0 || this.flushing !== undefined) return;
      // A failed roll leaves the segment open and the writer as it was; the next append reports the disk.
      this.roll().catch(() => undefined);
    }, this.rollIdleMs);
    this.idleTimer.unref();
  }

  /**
   * Writes and fdatasyncs one run at dataEnd. On failure, cuts the file back to dataEnd so that no
   * partial frame stays behind, and reports the failure to the run's callers.
   */
  private async writeRun(handle: FileHandle, buffers: Uint8Array[], runBytes: number): Promise<void> {
    const start = this.dataEnd;
    const end = start + runBytes;
    // Zero-fill up to 1 MiB past the new end (never past the segment size) when the run outgrows the
    // zero-filled region: later small runs then overwrite in place and fdatasync skips the size update.
    const zeros = runBytes < PREALLOCATE_BELOW_BATCH_BYTES && end > this.allocatedEnd ? Math.max(0, Math.min(PREALLOCATE_BYTES, this.segmentBytes - end)) : 0;
    try {
      try {
        // A small run into the zero-filled region is a copy into the page cache: done on this thread, it
        // spares a lone append one thread-pool round trip before its fdatasync.
        if (zeros === 0 && runBytes <= SYNC_WRITE_BYTES) writeAllSync(handle.fd, buffers, start);
        else await writeAll(handle, zeros > 0 ? [...buffers, ZEROS.subarray(0, zeros)] : buffers, start);
        if (zeros > 0) this.allocatedEnd = end + zeros;
      } catch (err) {
        if (zeros === 0 || !isNoSpace(err)) throw err;
        // No room for preallocation: try the frames alone.
        await this.cutBack(handle, start);
        await writeAll(handle, buffers, start);
      }
      this.allocatedEnd = Math.max(this.allocatedEnd, end);
      await handle.datasync();
    } catch (err) {
      await this.cutBack(handle, start).catch(() => undefined);
      throw ioError(err, `cannot append to ${this.set.pathOf(this.segmentBase)}`, { path: this.set.pathOf(this.segmentBase), position: start });
    }
  }

  private async cutBack(handle: FileHandle, to: number): Promise<void> {
    await handle.truncate(to);
    this.allocatedEnd = to;
    await handle.datasync();
  }

  /**
   * The handle to append a frame of `bytes` to, rolling to a new segment first when the current one is
   * full: a segment keeps room for the write's opening sync mark and for a closing one.
   */
  private async handleFor(bytes: number): Promise<FileHandle> {
    const handle = this.handle;
    if (handle === undefined) throw new MqlogError('ERR_CLOSED', 'stream writer is closed');
    if (this.dataEnd === 0 || this.dataEnd + 2 * SYNC_FRAME_BYTES + bytes <= this.segmentBytes) return handle;
    return this.sealAndStartNext(true);
  }

  /** Seals the open segment and creates its successor, named by the next offset; returns the new handle. */
  private async sealAndStartNext(full: boolean): Promise<FileHandle> {
    const handle = this.handle;
    if (handle === undefined) throw new MqlogError('ERR_CLOSED', 'stream writer is closed');
    // Nothing but sync marks (or nothing) in it: no frame to seal, and the next name would be its own.
    if (this.dataEnd === 0 || this.segmentBase === this.offset) return handle;
    // Seal before creating the successor, so that every segment but the last ends exactly at its data.
    try {
      if (this.allocatedEnd > this.dataEnd) await handle.truncate(this.dataEnd);
      await handle.datasync();
    } catch (err) {
      throw ioError(err, `cannot seal ${this.set.pathOf(this.segmentBase)}${full ? '' : ' (roll)'}`);
    }
    const next = await this.set.create(this.offset);
    // The sealed segment's index, written durably in the background: until it is there, a reader that
    // needs it builds it by a scan.
    this.index.sealed(this.dataEnd, this.offset);
    this.handle = next;
    this.segmentBase = this.offset;
    this.dataEnd = 0;
    this.allocatedEnd = 0;
    // A sealed segment is fsync'd whole and needs no closing mark.
    this.unmarked = false;
    await handle.close();
    return next;
  }
}

/** writeAll on the caller's thread. */
function writeAllSync(fd: number, buffers: Uint8Array[], position: number): void {
  let pending = buffers;
  let at = position;
  while (pending.length > 0) {
    const written = writevSync(fd, pending, at);
    at += written;
    pending = dropBytes(pending, written);
  }
}

async function writeAll(handle: FileHandle, buffers: Uint8Array[], position: number): Promise<void> {
  let pending = buffers;
  let at = position;
  while (pending.length > 0) {
    const { bytesWritten } = await handle.writev(pending, at);
    at += bytesWritten;
    pending = dropBytes(pending, bytesWritten);
  }
}

function dropBytes(buffers: Uint8Array[], bytes: number): Uint8Array[] {
  let skip = bytes;
  const rest: Uint8Array[] = [];
  for (const buffer of buffers) {
    if (skip >= buffer.length) {
      skip -= buffer.length;
      continue;
    }
    rest.push(skip > 0 ? buffer.subarray(skip) : buffer);
    skip = 0;
  }
  return rest;
}

function isNoSpace(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  return code === 'ENOSPC' || code === 'EDQUOT';
}

function failAll(pendings: PendingAppend[], err: unknown): void {
  for (const pending of pendings) pending.reject(err);
}
