/**
 * The LogWriter of one queue directory (spec/log-format.md §7, §14): appends through a claimed slot,
 * moves to another slot when a stream of its slot turns out to be corrupt at its end (recovery cannot
 * find where to append) — the slot is marked broken, `mqlog verify` shows where, and appends go on in a
 * fresh slot, so one damaged file never stops a node from sending — and enforces the queue's size limit.
 */
import { join } from 'node:path';
import { MqlogError, isMqlogError, withDetails } from '../errors.js';
import { writeFileAtomic } from '../util/fs.js';
import { FRAME_HEADER_BYTES, payloadLength, type Payload } from './frame.js';
import type { AppendResult, FrameToAppend, LogWriter, WriterOptions } from './log-store.js';
import type { SlotWriter } from './slot-writer.js';

/** Marker of a writer slot whose stream is corrupt where it must be appended to: later writers skip it. */
export const BROKEN_SUFFIX = '.broken';
const SIZE_REFRESH_MS = 1000;

export interface FailoverDeps {
  readonly dir: string;
  /** Claims the lowest free slot not marked broken. */
  readonly claimSlot: () => Promise<SlotWriter>;
  /** Bytes of every segment of the queue. */
  readonly sizeOnDisk: () => Promise<number>;
}

export class FailoverWriter implements LogWriter {
  private readonly deps: FailoverDeps;
  private readonly options: WriterOptions;
  private current: SlotWriter;
  private replacing: Promise<void> | undefined;
  /** Estimated size of the queue: last measure plus this writer's appends since. */
  private size: number | undefined;
  /** Bytes of appends admitted under the limit and not yet written. */
  private admitted = 0;
  private sizedAt = 0;
  private measuring: Promise<void> | undefined;

  constructor(deps: FailoverDeps, options: WriterOptions, first: SlotWriter) {
    this.deps = deps;
    this.options = options;
    this.current = first;
  }

  get slot(): number {
    return this.current.slot;
  }

  append(key: string, type: number, payload: Payload): Promise<AppendResult> {
    return this.underLimit([FRAME_HEADER_BYTES + payloadLength(payload)], key, (writer) => writer.append(key, type, payload));
  }

  appendMany(key: string, frames: readonly FrameToAppend[]): Promise<AppendResult[]> {
    const sizes = frames.map((frame) => FRAME_HEADER_BYTES + payloadLength(frame.payload));
    return this.underLimit(sizes, key, (writer, count) => writer.appendMany(key, count === frames.length ? frames : frames.slice(0, count)));
  }

  /**
   * Runs an append of frames of `sizes` bytes under the queue's size limit (when it has one): as many of
   * the first frames as fit are appended, and when not all did, it fails with ERR_QUEUE_FULL saying how
   * many were stored (`details.stored`) — a group larger than the limit still goes in, a part at a time.
   */
  private underLimit<T>(sizes: readonly number[], key: string, append: (writer: SlotWriter, count: number) => Promise<T>): Promise<T> {
    const maxBytes = this.options.maxBytes;
    if (maxBytes === undefined || maxBytes === null) return this.appendNow(key, (writer) => append(writer, sizes.length));
    const total = sizes.reduce((n, b) => n + b, 0);
    const admit = async (): Promise<T> => {
      // Measured size, plus this writer's appends since, plus those admitted but not yet written.
      const room = maxBytes - (this.size ?? 0) - this.admitted;
      let count = 0;
      let bytes = 0;
      while (count < sizes.length && bytes + (sizes[count] as number) <= room) bytes += sizes[count++] as number;
      if (count === 0) throw withDetails(queueFull(this.deps.dir, maxBytes), { stored: 0 });
      this.admitted += bytes;
      let result: T;
      try {
        result = await this.appendNow(key, (writer) => append(writer, count));
      } finally {
        this.admitted -= bytes;
        this.size = (this.size ?? 0) + bytes;
      }
      if (count < sizes.length) throw withDetails(queueFull(this.deps.dir, maxBytes), { stored: count });
      return result;
    };
    if (this.size === undefined || Date.now() - this.sizedAt > SIZE_REFRESH_MS || this.size + this.admitted + total > maxBytes) {
      // Near the limit (or not measured lately): measure before deciding.
      return this.measure().then(admit);
    }
    return admit();
  }

  roll(key: string): Promise<void> {
    return this.current.roll(key);
  }

  close(): Promise<void> {
    return this.current.close();
  }

  /** The queue's size on disk, not counting this writer's zero-filled preallocation. */
  private async measure(): Promise<void> {
    this.measuring ??= (async () => {
      const total = await this.deps.sizeOnDisk();
      // Appends in flight may or may not be in the files yet; they stay counted in `admitted` either way.
      this.size = Math.max(0, total - this.current.preallocatedBytes());
      this.sizedAt = Date.now();
    })().finally(() => (this.measuring = undefined));
    await this.measuring;
  }

  private appendNow<T>(key: string, append: (writer: SlotWriter) => Promise<T>): Promise<T> {
    const writer = this.current;
    // A stream that cannot be opened stores nothing: the whole append goes to the next slot.
    return append(writer).catch(async (err: unknown) => {
      if (!isMqlogError(err, 'ERR_CORRUPT_FRAME') || !writer.brokenKeys.has(key)) throw err;
      if (this.current === writer) {
        this.replacing ??= (async () => {
          await writeFileAtomic(join(this.deps.dir, `w${writer.slot}${BROKEN_SUFFIX}`), JSON.stringify({ key, reason: err.message, at: new Date().toISOString() }));
          await writer.close();
          this.options.onSlotBroken?.(writer.slot, err.message);
          this.current = await this.deps.claimSlot();
        })().finally(() => (this.replacing = undefined));
      }
      await this.replacing;
      return append(this.current);
    });
  }
}

function queueFull(dir: string, maxBytes: number): MqlogError {
  return new MqlogError('ERR_QUEUE_FULL', `${dir} reached its size limit of ${maxBytes} bytes (maxQueueBytes)`, { details: { path: dir, maxBytes } });
}
