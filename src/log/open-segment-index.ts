/**
 * The index of a writer's open segment (spec/log-format.md §16.2), kept as its frames become durable:
 * written as a checkpoint (not fsync'd: a cache) at most CHECKPOINT_MS after an append, at once after
 * CHECKPOINT_BYTES, and when the writer closes; written durably once the segment is sealed. A
 * checkpoint describes only what was fsync'd: a sync mark written after a run is not, until the next
 * run's fsync, and recovery must read it again.
 *
 * Index files are written in the background, one at a time and in order (a later one replaces an
 * earlier one), never in an append's way. Owned by one StreamWriter.
 */
import { IndexBuilder, type IndexedFrame, type SegmentIndex } from './segment-index.js';
import { writeSegmentIndex, type SegmentIndexes } from './segment-index-file.js';
import type { SegmentSet } from './segment-set.js';

/**
 * The open segment's index is written at most this long after an append, and once this many bytes were
 * appended since it was last written: a reopening after a crash reads at most about that much.
 */
export const CHECKPOINT_MS = 1000;
const CHECKPOINT_BYTES = 16 * 1024 * 1024;

export class OpenSegmentIndex {
  private readonly set: SegmentSet;
  private base: number;
  private builder: IndexBuilder;
  /** Frames the last index written describes, and where the data then ended. */
  private checkpointed: number;
  private checkpointedBytes: number;
  /** Where the fsync'd part of the open segment ends: a checkpoint describes nothing past it. */
  private syncedEnd: number;
  private timer: NodeJS.Timeout | undefined;
  private writes: Promise<void> = Promise.resolve();
  private closed = false;
  /** Where this process's readers of the store find the index as it is now (none outside a store). */
  private readonly indexes: SegmentIndexes | undefined;
  private readonly current = (): SegmentIndex => this.builder.build('partial', this.syncedEnd);

  /**
   * The index of segment `base`: `builder` holds its frames up to `syncedEnd` (fsync'd), of which the
   * index on disk describes `checkpointed` (what recovery did not have to read). Takes a checkpoint at
   * once when recovery read frames.
   */
  constructor(set: SegmentSet, base: number, builder: IndexBuilder, checkpointed: number, syncedEnd: number, indexes?: SegmentIndexes) {
    this.set = set;
    this.indexes = indexes;
    this.base = base;
    this.builder = builder;
    this.checkpointed = checkpointed;
    this.checkpointedBytes = syncedEnd;
    this.syncedEnd = syncedEnd;
    if (builder.frames > checkpointed) this.write('partial', syncedEnd);
    indexes?.showLive(set.pathOf(base), this.current);
  }

  /** A run's frames were fsync'd; the data is durable up to `syncedEnd`. Arms the checkpoint. */
  added(frames: readonly IndexedFrame[], syncedEnd: number): void {
    for (const frame of frames) this.builder.add(frame);
    this.syncedEnd = syncedEnd;
    if (this.closed) return;
    if (syncedEnd - this.checkpointedBytes >= CHECKPOINT_BYTES) {
      clearTimeout(this.timer);
      this.timer = undefined;
      this.write('partial', syncedEnd);
      return;
    }
    if (this.timer !== undefined) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      if (!this.closed && this.builder.frames > this.checkpointed) this.write('partial', this.syncedEnd);
    }, CHECKPOINT_MS);
    this.timer.unref();
  }

  /** The segment was sealed at `dataEnd` (truncated and fsync'd) and the next one is `nextBase`. */
  sealed(dataEnd: number, nextBase: number): void {
    this.write('sealed', dataEnd);
    this.indexes?.hideLive(this.set.pathOf(this.base), this.current);
    this.base = nextBase;
    this.builder = new IndexBuilder(nextBase);
    this.checkpointed = 0;
    this.checkpointedBytes = 0;
    this.syncedEnd = 0;
    if (!this.closed) this.indexes?.showLive(this.set.pathOf(nextBase), this.current);
  }

  /**
   * The writer closed its segment, fsync'd up to `dataEnd` (`changed`: its end changed since the last
   * checkpoint): the last checkpoint, then every write done. Idempotent.
   */
  async close(dataEnd?: number, changed = false): Promise<void> {
    if (!this.closed) {
      this.closed = true;
      this.indexes?.hideLive(this.set.pathOf(this.base), this.current);
      clearTimeout(this.timer);
      if (dataEnd !== undefined && (changed || this.builder.frames > this.checkpointed)) this.write('partial', dataEnd);
    }
    await this.writes;
  }

  /** Writes the index as it is now, describing the first `covered` bytes, after the writes queued before. */
  private write(state: 'partial' | 'sealed', covered: number): void {
    const index = this.builder.build(state, covered);
    this.checkpointed = index.frames;
    this.checkpointedBytes = covered;
    const path = this.set.pathOf(this.base);
    // A cache: a failed write costs the next reader a scan, never data.
    this.writes = this.writes.then(() => writeSegmentIndex(path, index, state === 'sealed' ? 'durable' : 'cache')).catch(() => undefined);
  }
}
