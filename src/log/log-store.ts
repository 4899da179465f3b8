/**
 * The storage interface the queue layer uses, and its file implementation (spec/log-format.md §1, §7).
 *
 * A store is a directory of streams. A stream is a single-writer log named `<key>.w<slot>`: the key is
 * chosen by the caller (the queue layer uses one key per priority), the slot by the writer. Several
 * processes append to one store at once without ever sharing a stream: each claims a writer slot (a
 * lock, `w<slot>.lock`) and appends only to the streams of its slot. So no append takes a cross-process
 * lock, and a crashed writer can only leave a torn tail in its own streams, cut off by whoever claims
 * the slot next.
 */
import { readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { MqlogError, ioError, isMqlogError } from '../errors.js';
import { ensureDir, isNotFound, readFileIfExists, writeFileAtomic } from '../util/fs.js';
import { Lock } from './lock.js';
import type { TruncatedTail } from './recovery.js';
import { StreamReader, type StreamPosition } from './stream-reader.js';
import { StreamWriter, type AppendResult, type StreamWriterOptions } from './stream-writer.js';
import { FRAME_HEADER_BYTES, payloadLength, type Payload } from './frame.js';
import { SegmentSet } from './segment-set.js';

export interface StreamId {
  /** Directory name, `<key>.w<slot>`. */
  readonly name: string;
  readonly key: string;
  readonly slot: number;
}

export type StoreAppendResult = AppendResult;

/** A claimed writer slot: the only appender of its streams while it is open. */
export interface LogWriter {
  readonly slot: number;
  /** Durable append: resolves after fdatasync. See StreamWriter.append for the errors. */
  append(key: string, type: number, payload: Payload): Promise<StoreAppendResult>;
  close(): Promise<void>;
}

/** What the queue layer needs from storage; a second implementation only has to provide this. */
export interface LogStore {
  readonly dir: string;
  streams(): Promise<StreamId[]>;
  /** `skipTypes`: frame types passed over without reading their payload. */
  reader(stream: string, from?: StreamPosition, options?: { skipTypes?: ReadonlySet<number> }): StreamReader;
  claimWriter(options?: WriterOptions): Promise<LogWriter>;
}

export interface WriterOptions extends StreamWriterOptions {
  /** Called when opening a stream cut off a torn tail left by a crashed writer. */
  readonly onTruncated?: (stream: string, tail: TruncatedTail) => void;
  /** Called when a slot was given up because one of its streams is corrupt at its end. */
  readonly onSlotBroken?: (slot: number, reason: string) => void;
  /**
   * Size limit of the whole store (all streams, all writers): an append that would pass it fails at once
   * with ERR_QUEUE_FULL. Other processes' appends and removals are seen within a second.
   */
  readonly maxBytes?: number | null;
}

const KEY = /^[a-z0-9]{1,16}$/;
const STREAM = /^([a-z0-9]{1,16})\.w(\d{1,6})$/;
const MAX_SLOTS = 100_000;

export function streamName(key: string, slot: number): string {
  return `${key}.w${slot}`;
}

export function parseStreamName(name: string): StreamId | undefined {
  const match = STREAM.exec(name);
  if (match === null) return undefined;
  return { name, key: match[1] as string, slot: Number(match[2]) };
}

export class FileLogStore implements LogStore {
  readonly dir: string;

  constructor(dir: string) {
    this.dir = dir;
  }

  async streams(): Promise<StreamId[]> {
    let names: string[];
    try {
      names = await readdir(this.dir);
    } catch (err) {
      if (isNotFound(err)) return [];
      throw ioError(err, `cannot list ${this.dir}`, { path: this.dir });
    }
    const ids: StreamId[] = [];
    for (const name of names) {
      const id = parseStreamName(name);
      if (id !== undefined) ids.push(id);
    }
    return ids.sort((a, b) => (a.key === b.key ? a.slot - b.slot : a.key < b.key ? -1 : 1));
  }

  reader(stream: string, from?: StreamPosition, options: { skipTypes?: ReadonlySet<number> } = {}): StreamReader {
    if (parseStreamName(stream) === undefined) throw new MqlogError('ERR_INVALID_ARG', `not a stream name: ${stream}`);
    return new StreamReader(join(this.dir, stream), from, options);
  }

  /**
   * Claims the lowest free writer slot.
   * @throws ERR_LOCKED only if every slot up to a very large number is taken.
   */
  async claimWriter(options: WriterOptions = {}): Promise<LogWriter> {
    return new FailoverWriter(this, options, await this.claimSlot(options));
  }

  /** Bytes of every segment file of every stream. */
  async sizeOnDisk(): Promise<number> {
    let total = 0;
    for (const stream of await this.streams()) {
      for (const segment of await new SegmentSet(join(this.dir, stream.name)).list()) {
        total += await stat(segment.path).then((s) => s.size, () => 0);
      }
    }
    return total;
  }

  /** Claims the lowest free slot that is not marked broken. */
  async claimSlot(options: WriterOptions): Promise<SlotWriter> {
    await ensureDir(this.dir);
    for (let slot = 0; slot < MAX_SLOTS; slot++) {
      if ((await readFileIfExists(join(this.dir, `w${slot}${BROKEN_SUFFIX}`))) !== undefined) continue;
      const lock = await Lock.tryAcquire(join(this.dir, `w${slot}.lock`));
      if (lock !== undefined) return new SlotWriter(this.dir, slot, lock, options);
    }
    throw new MqlogError('ERR_LOCKED', `no free writer slot in ${this.dir}`);
  }
}

/** Marker of a writer slot whose stream is corrupt where it must be appended to: later writers skip it. */
export const BROKEN_SUFFIX = '.broken';

/**
 * A writer that moves to another slot when a stream of its slot turns out to be corrupt at its end
 * (recovery cannot find where to append): the slot is marked broken — `mqlog verify` shows where — and
 * appends go on in a fresh slot, so one damaged file never stops a node from sending.
 */
class FailoverWriter implements LogWriter {
  private readonly store: FileLogStore;
  private readonly options: WriterOptions;
  private current: SlotWriter;
  private replacing: Promise<void> | undefined;
  /** Estimated size of the store: last measure plus this writer's appends since. */
  private size: number | undefined;
  /** Bytes of appends admitted under the limit and not yet written. */
  private admitted = 0;
  private sizedAt = 0;
  private measuring: Promise<void> | undefined;

  constructor(store: FileLogStore, options: WriterOptions, first: SlotWriter) {
    this.store = store;
    this.options = options;
    this.current = first;
  }

  get slot(): number {
    return this.current.slot;
  }

  append(key: string, type: number, payload: Payload): Promise<StoreAppendResult> {
    const maxBytes = this.options.maxBytes;
    if (maxBytes === undefined || maxBytes === null) return this.appendNow(key, type, payload);
    const bytes = FRAME_HEADER_BYTES + payloadLength(payload);
    const admit = (): Promise<StoreAppendResult> => {
      // Measured size, plus this writer's appends since, plus those admitted but not yet written.
      if ((this.size ?? 0) + this.admitted + bytes > maxBytes) return Promise.reject(queueFull(this.store.dir, maxBytes));
      this.admitted += bytes;
      return this.appendNow(key, type, payload).finally(() => {
        this.admitted -= bytes;
        this.size = (this.size ?? 0) + bytes;
      });
    };
    if (this.size === undefined || Date.now() - this.sizedAt > SIZE_REFRESH_MS || this.size + this.admitted + bytes > maxBytes) {
      // Near the limit (or not measured lately): measure before deciding.
      return this.measure().then(admit);
    }
    return admit();
  }

  /** The store's size on disk, not counting this writer's zero-filled preallocation. */
  private async measure(): Promise<void> {
    this.measuring ??= (async () => {
      const total = await this.store.sizeOnDisk();
      // Appends in flight may or may not be in the files yet; they stay counted in `admitted` either way.
      this.size = Math.max(0, total - this.current.preallocatedBytes());
      this.sizedAt = Date.now();
    })().finally(() => (this.measuring = undefined));
    await this.measuring;
  }

  private appendNow(key: string, type: number, payload: Payload): Promise<StoreAppendResult> {
    const writer = this.current;
    return writer.append(key, type, payload).catch(async (err: unknown) => {
      if (!isMqlogError(err, 'ERR_CORRUPT_FRAME') || !writer.brokenKeys.has(key)) throw err;
      if (this.current === writer) {
        this.replacing ??= (async () => {
          await writeFileAtomic(join(this.store.dir, `w${writer.slot}${BROKEN_SUFFIX}`), JSON.stringify({ key, reason: err.message, at: new Date().toISOString() }));
          await writer.close();
          this.options.onSlotBroken?.(writer.slot, err.message);
          this.current = await this.store.claimSlot(this.options);
        })().finally(() => (this.replacing = undefined));
      }
      await this.replacing;
      return this.current.append(key, type, payload);
    });
  }

  close(): Promise<void> {
    return this.current.close();
  }
}

function queueFull(dir: string, maxBytes: number): MqlogError {
  return new MqlogError('ERR_QUEUE_FULL', `${dir} reached its size limit of ${maxBytes} bytes (maxQueueBytes)`, { details: { path: dir, maxBytes } });
}

const SIZE_REFRESH_MS = 1000;

class SlotWriter implements LogWriter {
  readonly slot: number;
  /** Keys whose stream could not be opened because it is corrupt at its end. */
  readonly brokenKeys = new Set<string>();
  private readonly dir: string;
  private readonly lock: Lock;
  private readonly options: WriterOptions;
  private readonly writers = new Map<string, Promise<StreamWriter>>();
  /** Writers already open, used synchronously so that appends keep the order of the calls. */
  private readonly open = new Map<string, StreamWriter>();
  private readonly waiting = new Map<string, number>();
  private closing: Promise<void> | undefined;

  constructor(dir: string, slot: number, lock: Lock, options: WriterOptions) {
    this.dir = dir;
    this.slot = slot;
    this.lock = lock;
    this.options = options;
  }

  append(key: string, type: number, payload: Payload): Promise<StoreAppendResult> {
    if (this.closing !== undefined) return Promise.reject(new MqlogError('ERR_CLOSED', 'log writer is closed'));
    if (this.lock.compromised) {
      return Promise.reject(new MqlogError('ERR_LOCKED', `lost the lock of writer slot ${this.slot}: another process may have taken it over`));
    }
    const open = this.open.get(key);
    if (open !== undefined && (this.waiting.get(key) ?? 0) === 0) return open.append(type, payload);
    // Until every append queued behind the stream's opening has gone through, new ones queue behind too.
    this.waiting.set(key, (this.waiting.get(key) ?? 0) + 1);
    const done = (): void => void this.waiting.set(key, (this.waiting.get(key) ?? 1) - 1);
    return this.writerFor(key).then(
      (writer) => {
        done();
        return writer.append(type, payload);
      },
      (err: unknown) => {
        done();
        throw err;
      },
    );
  }

  /** Zero-filled bytes past the data of this slot's open segments. */
  preallocatedBytes(): number {
    let n = 0;
    for (const writer of this.open.values()) n += writer.preallocatedBytes;
    return n;
  }

  close(): Promise<void> {
    this.closing ??= (async () => {
      try {
        const opened = await Promise.allSettled(this.writers.values());
        for (const w of opened) if (w.status === 'fulfilled') await w.value.close();
      } finally {
        await this.lock.release();
      }
    })();
    return this.closing;
  }

  private writerFor(key: string): Promise<StreamWriter> {
    let writer = this.writers.get(key);
    if (writer === undefined) {
      if (!KEY.test(key)) return Promise.reject(new MqlogError('ERR_INVALID_ARG', `stream key must match ${KEY}, got ${key}`));
      const name = streamName(key, this.slot);
      writer = StreamWriter.open(join(this.dir, name), this.options).then(
        (w) => {
          if (w.recoveredTruncation !== undefined) this.options.onTruncated?.(name, w.recoveredTruncation);
          this.open.set(key, w);
          return w;
        },
        (err: unknown) => {
          if (isMqlogError(err, 'ERR_CORRUPT_FRAME')) this.brokenKeys.add(key);
          throw err;
        },
      );
      // A failed open is not cached: the next append tries again.
      writer.catch(() => this.writers.delete(key)); // a failed open is retried by the next append
      this.writers.set(key, writer);
    }
    return writer;
  }
}
