/**
 * One claimed writer slot of a queue directory (spec/log-format.md §7): the only appender of the streams
 * `<key>.w<slot>`, one StreamWriter per key, opened (and recovered) on first use. Holding the slot's lock
 * is what makes every stream single-writer across processes, so no append takes a cross-process lock.
 *
 * Appends to one key keep the order of the calls, also while its stream is still being opened.
 */
import { join } from 'node:path';
import { MqlogError, isMqlogError } from '../errors.js';
import type { Payload } from './frame.js';
import type { Lock } from './lock.js';
import type { AppendResult, FrameToAppend, WriterOptions } from './log-store.js';
import { STREAM_KEY, streamName } from './stream-id.js';
import { StreamWriter, type StreamWriterOptions } from './stream-writer.js';

export class SlotWriter {
  readonly slot: number;
  /** Keys whose stream could not be opened because it is corrupt at its end. */
  readonly brokenKeys = new Set<string>();
  private readonly dir: string;
  private readonly lock: Lock;
  private readonly options: WriterOptions & Pick<StreamWriterOptions, 'indexes'>;
  private readonly onAppended: () => void;
  private readonly writers = new Map<string, Promise<StreamWriter>>();
  /** Writers already open, used synchronously so that appends keep the order of the calls. */
  private readonly open = new Map<string, StreamWriter>();
  private readonly waiting = new Map<string, number>();
  private closing: Promise<void> | undefined;

  /** `onAppended` runs after every durable append (in-process followers wake without the file watch). */
  constructor(dir: string, slot: number, lock: Lock, options: WriterOptions & Pick<StreamWriterOptions, 'indexes'>, onAppended: () => void) {
    this.dir = dir;
    this.slot = slot;
    this.lock = lock;
    this.options = options;
    this.onAppended = onAppended;
  }

  append(key: string, type: number, payload: Payload): Promise<AppendResult> {
    return this.through(key, (writer) => writer.append(type, payload));
  }

  appendMany(key: string, frames: readonly FrameToAppend[]): Promise<AppendResult[]> {
    return this.through(key, (writer) => writer.appendMany(frames));
  }

  /** Runs an append on the stream of `key`, in the order of the calls, and wakes followers once it is durable. */
  private through<T>(key: string, append: (writer: StreamWriter) => Promise<T>): Promise<T> {
    if (this.closing !== undefined) return Promise.reject(new MqlogError('ERR_CLOSED', 'log writer is closed'));
    if (this.lock.compromised) {
      return Promise.reject(new MqlogError('ERR_LOCKED', `lost the lock of writer slot ${this.slot}: another process may have taken it over`));
    }
    const open = this.open.get(key);
    if (open !== undefined && (this.waiting.get(key) ?? 0) === 0) return this.appended(append(open));
    // Until every append queued behind the stream's opening has gone through, new ones queue behind too.
    this.waiting.set(key, (this.waiting.get(key) ?? 0) + 1);
    const done = (): void => void this.waiting.set(key, (this.waiting.get(key) ?? 1) - 1);
    return this.writerFor(key).then(
      (writer) => {
        done();
        return this.appended(append(writer));
      },
      (err: unknown) => {
        done();
        throw err;
      },
    );
  }

  /** Seals the open segment of `key`'s stream if it holds frames (see StreamWriter.roll). */
  async roll(key: string): Promise<void> {
    const writer = this.open.get(key);
    if (writer !== undefined) await writer.roll();
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

  private appended<T>(append: Promise<T>): Promise<T> {
    return append.then((result) => {
      this.onAppended();
      return result;
    });
  }

  private writerFor(key: string): Promise<StreamWriter> {
    let writer = this.writers.get(key);
    if (writer === undefined) {
      if (!STREAM_KEY.test(key)) return Promise.reject(new MqlogError('ERR_INVALID_ARG', `stream key must match ${STREAM_KEY}, got ${key}`));
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
      writer.catch(() => this.writers.delete(key));
      this.writers.set(key, writer);
    }
    return writer;
  }
}
