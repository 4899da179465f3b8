/**
 * The LogStore of segment files (spec/log-format.md): each queue is a directory under the store's root,
 * each stream a directory of segments there. Durable (every append fsync'd), shared by any number of
 * processes: writers each claim a slot (`w<slot>.lock`), readers take no lock.
 *
 * This is the only module that turns a queue and a stream into a path. Appends by writers claimed from
 * one FileLogStore object wake that object's change feeds of the queue at once; other processes see them
 * through the file watch.
 */
import { readdirSync } from 'node:fs';
import { stat } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { MqlogError, abortError, ioError } from '../errors.js';
import { ensureDir, isNotFound, readFileIfExists } from '../util/fs.js';
import { BROKEN_SUFFIX, FailoverWriter } from './failover-writer.js';
import { Lock } from './lock.js';
import type {
  ChangeFeed,
  CompactOptions,
  DamagedRange,
  FrameHint,
  KeepFrame,
  LogReader,
  LogStore,
  LogWriter,
  QueueUsage,
  ReaderOptions,
  SegmentSummary,
  StoredFrame,
  StreamCompaction,
  StreamId,
  StreamPosition,
  StreamRepair,
  VerifyEvent,
  WriterOptions,
} from './log-store.js';
import { compactStream } from './segment-compactor.js';
import { parseSegmentFileName } from './segment.js';
import { summarize } from './segment-index.js';
import { SegmentIndexes } from './segment-index-file.js';
import { repairStream } from './segment-repair.js';
import { SegmentSet } from './segment-set.js';
import { verifyStream } from './segment-verifier.js';
import { SlotWriter } from './slot-writer.js';
import { compareStreams, parseStreamName } from './stream-id.js';
import { StreamReader, readFrameAt } from './stream-reader.js';
import { ChangeWatcher } from './watch.js';

const MAX_SLOTS = 100_000;
/** A queue is a relative path of safe components (the queue layer encodes names before they get here). */
const QUEUE_COMPONENT = /^[A-Za-z0-9_%~.-]{1,255}$/;

export interface FileLogStoreOptions {
  /** Segment size of the writers this store hands out, unless a writer asks otherwise. */
  readonly segmentBytes?: number;
  /** Idle time after which a writer seals its open segment (WriterOptions.rollIdleMs). */
  readonly rollIdleMs?: number;
  /**
   * Called for each damaged range one of this store's readers passes over (spec/log-format.md §3.4), in
   * addition to the reader's own `onDamaged`: for the owner's log and counters.
   */
  readonly onDamaged?: (queue: string, range: DamagedRange) => void;
}

export class FileLogStore implements LogStore {
  readonly root: string;
  private readonly options: FileLogStoreOptions;
  private readonly feeds = new Map<string, Set<ChangeWatcher>>();
  /** Segment indexes checked by this store (spec/log-format.md §16). */
  private readonly indexes = new SegmentIndexes();
  private closing: Promise<void> | undefined;

  constructor(root: string, options: FileLogStoreOptions = {}) {
    this.root = root;
    this.options = options;
  }

  get location(): string {
    return this.root;
  }

  /**
   * What a file-system path names in this layout: a segment file (its stream and base offset) or a
   * stream directory; undefined for any other path. For commands that take a path (dump, verify).
   */
  static locate(path: string): { readonly queueDir: string; readonly stream: string; readonly segment?: number } | undefined {
    const segment = parseSegmentFileName(basename(path));
    const streamDir = segment === undefined ? path : dirname(path);
    const stream = parseStreamName(basename(streamDir));
    if (stream === undefined) return undefined;
    return { queueDir: dirname(streamDir), stream: stream.name, ...(segment === undefined ? {} : { segment }) };
  }

  /** The directory of a queue's log. */
  dirOf(queue: string): string {
    const parts = queue.split('/');
    if (parts.length === 0 || !parts.every((p) => QUEUE_COMPONENT.test(p) && p !== '.' && p !== '..')) {
      throw new MqlogError('ERR_INVALID_ARG', `not a queue name: ${JSON.stringify(queue)}`);
    }
    return join(this.root, ...parts);
  }

  async streams(queue: string): Promise<StreamId[]> {
    const dir = this.dirOf(queue);
    let names: string[];
    try {
      // A queue's directory holds a few entries (a stream per priority and writer): listed on this
      // thread, which a consumer that looks before every claim would otherwise wait a thread-pool round
      // trip for.
      names = readdirSync(dir);
    } catch (err) {
      if (isNotFound(err)) return [];
      throw ioError(err, `cannot list ${dir}`, { path: dir });
    }
    const ids: StreamId[] = [];
    for (const name of names) {
      const id = parseStreamName(name);
      if (id !== undefined) ids.push(id);
    }
    return ids.sort(compareStreams);
  }

  reader(queue: string, stream: string, from?: StreamPosition, options: ReaderOptions = {}): LogReader {
    const own = this.options.onDamaged;
    const theirs = options.onDamaged;
    const onDamaged = own === undefined ? theirs : (range: DamagedRange): void => {
      own(queue, range);
      theirs?.(range);
    };
    return new StreamReader(this.streamDir(queue, stream), from, onDamaged === undefined ? options : { ...options, onDamaged }, this.indexes);
  }

  async frameAt(queue: string, stream: string, offset: number, hint?: FrameHint): Promise<StoredFrame | undefined> {
    return readFrameAt(this.streamDir(queue, stream), offset, hint, this.indexes);
  }

  /**
   * Each segment's summary from its index: a sealed segment without a usable index gets one by a scan
   * (written for the next caller); the last segment is described as far as its writer's last checkpoint.
   */
  async segments(queue: string, stream: string, options: { readonly signal?: AbortSignal } = {}): Promise<SegmentSummary[]> {
    const list = await new SegmentSet(this.streamDir(queue, stream)).list();
    if (options.signal?.aborted === true) throw abortError(options.signal);
    // Each index is a file of its own: looked at side by side.
    const found = await Promise.all(
      list.map((segment, i) => {
        const sealed = i < list.length - 1;
        return this.indexes.of(segment.path, segment.baseOffset, sealed, { rebuild: sealed, ...(options.signal === undefined ? {} : { signal: options.signal }) }).then((f) => f && summarize(stream, segment.baseOffset, sealed, f.bytes, f.index));
      }),
    );
    // Gone since the listing (compacted away): nothing to describe.
    return found.filter((s): s is SegmentSummary => s !== undefined);
  }

  /**
   * Claims the lowest free writer slot of a queue.
   * @throws ERR_LOCKED only if every slot up to a very large number is taken.
   */
  async claimWriter(queue: string, options: WriterOptions = {}): Promise<LogWriter> {
    const dir = this.dirOf(queue);
    const merged: WriterOptions = { ...this.options, ...options };
    const claimSlot = (): Promise<SlotWriter> => this.claimSlot(queue, dir, merged);
    return new FailoverWriter({ dir, claimSlot, sizeOnDisk: async () => (await this.usage(queue)).bytes }, merged, await claimSlot());
  }

  async compact(queue: string, stream: string, keep: KeepFrame, options: CompactOptions = {}): Promise<StreamCompaction> {
    const id = parseStreamName(stream);
    if (id === undefined) throw new MqlogError('ERR_INVALID_ARG', `not a stream name: ${stream}`);
    const dir = this.dirOf(queue);
    return compactStream(join(dir, stream), stream, join(dir, `w${id.slot}.lock`), keep, {
      ...options,
      indexes: this.indexes,
      ...(this.options.segmentBytes === undefined ? {} : { segmentBytes: this.options.segmentBytes }),
    });
  }

  async usage(queue: string): Promise<QueueUsage> {
    let bytes = 0;
    let segments = 0;
    for (const stream of await this.streams(queue)) {
      for (const segment of await new SegmentSet(this.streamDir(queue, stream.name)).list()) {
        segments++;
        bytes += await stat(segment.path).then((s) => s.size, () => 0);
      }
    }
    return { bytes, segments };
  }

  repair(queue: string, stream: string): Promise<StreamRepair> {
    return repairStream(this.streamDir(queue, stream));
  }

  async *verify(queue: string, only: { readonly stream?: string; readonly segment?: number } = {}): AsyncGenerator<VerifyEvent> {
    const streams = only.stream === undefined ? (await this.streams(queue)).map((s) => s.name) : [only.stream];
    for (const stream of streams) yield* verifyStream(this.streamDir(queue, stream), only.segment);
  }

  changes(queue: string): ChangeFeed {
    let feeds = this.feeds.get(queue);
    if (feeds === undefined) {
      feeds = new Set();
      this.feeds.set(queue, feeds);
    }
    const set = feeds;
    const feed: ChangeWatcher = new ChangeWatcher(this.dirOf(queue), {
      depth: 1,
      // A queue's own bookkeeping files and the segments' indexes say nothing new about its data.
      ignore: (path) => path.includes('/cursors') || path.includes('/summaries') || path.endsWith('dedup.json') || /\.idx(\.[^/]*\.tmp)?$/.test(path),
      onClose: () => set.delete(feed),
    });
    set.add(feed);
    return feed;
  }

  /** Closes every change feed handed out. Idempotent. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      for (const feeds of this.feeds.values()) for (const feed of [...feeds]) await feed.close();
    })();
    return this.closing;
  }

  private streamDir(queue: string, stream: string): string {
    if (parseStreamName(stream) === undefined) throw new MqlogError('ERR_INVALID_ARG', `not a stream name: ${stream}`);
    return join(this.dirOf(queue), stream);
  }

  /** Wakes this store's followers of `queue` (after an append of one of its writers). */
  private bump(queue: string): void {
    for (const feed of this.feeds.get(queue) ?? []) feed.bump();
  }

  /** Claims the lowest free slot that is not marked broken. */
  private async claimSlot(queue: string, dir: string, options: WriterOptions): Promise<SlotWriter> {
    await ensureDir(dir);
    for (let slot = 0; slot < MAX_SLOTS; slot++) {
      if ((await readFileIfExists(join(dir, `w${slot}${BROKEN_SUFFIX}`))) !== undefined) continue;
      const lock = await Lock.tryAcquire(join(dir, `w${slot}.lock`));
      if (lock !== undefined) return new SlotWriter(dir, slot, lock, { ...options, indexes: this.indexes }, () => this.bump(queue));
    }
    throw new MqlogError('ERR_LOCKED', `no free writer slot in ${dir}`);
  }
}

