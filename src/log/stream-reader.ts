/**
 * Sequential reading of one stream across its segments (spec/log-format.md §6).
 *
 * A StreamReader pulls what is on disk now and remembers where it stopped, so a follower calls read()
 * again after a change notification. It keeps one segment open, buffers at most one read block plus
 * one frame, and never loads a whole segment: memory stays flat for any stream size.
 *
 * Safe against a concurrent writer (in any process) and against compaction: a segment that disappears
 * is re-found by offset, and a position hint is trusted only after the frame it names is re-read.
 * Opening at an offset inside a segment seeks with the segment's index (spec/log-format.md §16) and
 * re-checks the frame it lands on, so a stale index costs a scan, never a wrong frame.
 *
 * Damaged data never stops it (spec/log-format.md §3.4): at a corrupt frame, or a torn end of a sealed
 * segment, it resynchronises at the next valid frame (whole header, CRC) of the segment, or at the next
 * segment, and reports the range passed over in its read's `damaged` list and to `onDamaged`.
 */
import { closeSync, fstatSync, openSync, readSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { basename } from 'node:path';
import { MqlogError, isMqlogError } from '../errors.js';
import type { DamagedRange, FrameHint, LogReader, ReadLimits, ReaderOptions, SkimmedFrame, StoredFrame, StreamPosition, StreamRead, StreamSkim, TornTail } from './log-store.js';
import { FRAME_HEADER_BYTES, FrameType, parseFrameHeader } from './frame.js';
import { SegmentReader, findNextFrame, storedFrame, type ReadStep, type SegmentReaderOptions } from './segment.js';
import type { SegmentIndexes } from './segment-index-file.js';
import { FrameBufferPool } from './frame-buffers.js';
import { SegmentSet, type SegmentInfo } from './segment-set.js';

/** How long frames may stay without a sync mark before a durable reader fsyncs them itself. */
const UNMARKED_SYNC_AFTER_MS = 20;
/** Bytes one synchronous skim reads at most. */
const SKIM_READ_BYTES = 256 * 1024;

export class StreamReader implements LogReader {
  readonly stream: string;
  readonly set: SegmentSet;
  private next: number;
  private hint: StreamPosition['hint'];
  private reader: SegmentReader | undefined;
  private segment: number | undefined;
  /** The open segment's file, for skims read synchronously. */
  private skimFd: { readonly path: string; readonly fd: number } | undefined;
  private closed = false;
  /** Corruption met after some frames were already collected: thrown by the next read(). */
  private deferredError: Error | undefined;
  /** What the segment reader passes over by header: the caller's skipTypes, and every type while skimming. */
  private skip: SkipSet | undefined;
  private readonly lend: boolean;
  private readonly syncReads: boolean;
  private readonly durable: boolean;
  private readonly bufferBytes: number | undefined;
  /** Buffers of frames larger than a read block, given back by release(). */
  private readonly largeFrames = new FrameBufferPool();
  private readonly indexes: SegmentIndexes | undefined;
  private readonly onDamaged: ((range: DamagedRange) => void) | undefined;
  /** Damaged ranges passed over since the last read() returned. */
  private damaged: DamagedRange[] = [];
  /** Where the last frame returned ends (its segment and byte), until a sync made it durable. */
  private returnedEnd: { segment: number; end: number } | undefined;
  /** The first frame a durable read gave back as not yet covered by a sync mark, and since when. */
  private uncovered: { segment: number; position: number; since: number } | undefined;

  /** Reads the stream in directory `dir` from `from`; `indexes` finds places inside segments without a scan. */
  constructor(dir: string, from: StreamPosition = { offset: 0 }, options: ReaderOptions = {}, indexes?: SegmentIndexes) {
    this.set = new SegmentSet(dir);
    this.stream = basename(dir);
    this.next = from.offset;
    this.hint = from.hint;
    this.skip = options.skipTypes === undefined ? undefined : new SkipSet(options.skipTypes);
    this.lend = options.lend === true;
    this.syncReads = options.syncReads === true;
    this.durable = options.durable === true;
    this.bufferBytes = options.bufferBytes;
    this.indexes = indexes;
    this.onDamaged = options.onDamaged;
  }

  /** The position after the last frame returned. */
  get position(): StreamPosition {
    return { offset: this.next, hint: this.hint };
  }

  /**
   * Reads the frames available now, from the current position, up to the limits. Damaged data is passed
   * over (resynchronised after) and listed in the result's `damaged`.
   */
  async read(limits: ReadLimits = {}): Promise<StreamRead> {
    const before = this.position;
    const read = await this.readAvailable(limits);
    const damaged = this.damaged;
    this.damaged = [];
    const result = !this.durable || read.frames.length === 0 ? read : await this.durablePart(read, before);
    return damaged.length === 0 ? result : { ...result, damaged };
  }

  /**
   * Passes over damaged bytes of the open segment that start at `position` (spec/log-format.md §3.4):
   * the reader goes on at the next valid frame of the segment, or at its end when there is none. The
   * range is reported, never skipped silently.
   */
  private async resync(reader: SegmentReader, position: number, reason: string): Promise<void> {
    const { next, size } = await nextValidFrame(reader.path, position + 1);
    const end = next ?? Math.max(size, position);
    const range: DamagedRange = {
      stream: this.stream,
      segment: this.segment ?? 0,
      path: reader.path,
      position,
      bytes: end - position,
      reason: `${reason}${next === undefined ? '; no valid frame after it' : `; ${next - position} bytes unreadable up to the next valid frame at ${next}`}`,
    };
    this.damaged.push(range);
    this.onDamaged?.(range);
    reader.seek(end);
  }

  /**
   * Makes every frame returned so far durable: nothing to do when a sync mark (or the seal of its
   * segment) already says so, else an fdatasync of the segment it is in.
   */
  async sync(): Promise<void> {
    if (this.returnedEnd === undefined || this.covered(this.returnedEnd.segment, this.returnedEnd.end)) return;
    if (this.returnedEnd.segment !== this.segment || !(await this.reader?.markCovers(this.returnedEnd.end))) await this.reader?.sync();
    this.returnedEnd = undefined;
  }

  /**
   * A frame is known to be durable when its segment was sealed (it has a successor: this reader left it)
   * or a sync mark read after it states a synced length that covers it (spec/log-format.md §3.3).
   */
  private covered(segment: number, end: number): boolean {
    return segment !== this.segment || end <= (this.reader?.syncedBytes ?? 0);
  }

  /**
   * The frames of a durable read that are known to be durable. Frames a writer has written but not yet
   * fsync'd (no sync mark covers them yet) are given back — read again next time, once the writer's mark
   * after its fsync is there (its write wakes followers) — unless they stay uncovered for
   * UNMARKED_SYNC_AFTER_MS (a writer killed between its fsync and its mark, or one that writes no marks)
   * or none of the read is covered while more was left to read (a run longer than the read): then one
   * fdatasync of our own makes them durable.
   */
  private async durablePart(read: StreamRead, before: StreamPosition): Promise<StreamRead> {
    const frames = read.frames;
    let covered = 0;
    while (covered < frames.length && this.covered((frames[covered] as StoredFrame).segment, (frames[covered] as StoredFrame).position + (frames[covered] as StoredFrame).bytes)) covered++;
    if (covered === frames.length) {
      this.uncovered = undefined;
      return read;
    }
    const first = frames[covered] as StoredFrame;
    const now = performance.now();
    const waited = this.uncovered !== undefined && this.uncovered.segment === first.segment && this.uncovered.position === first.position ? now - this.uncovered.since : 0;
    if (waited >= UNMARKED_SYNC_AFTER_MS || (covered === 0 && read.state === 'more')) {
      this.returnedEnd = { segment: first.segment, end: (frames[frames.length - 1] as StoredFrame).position + (frames[frames.length - 1] as StoredFrame).bytes };
      await this.sync();
      this.uncovered = undefined;
      return read;
    }
    if (waited === 0) this.uncovered = { segment: first.segment, position: first.position, since: now };
    // Give the uncovered frames back: the next read starts at the first of them.
    const last = covered > 0 ? (frames[covered - 1] as StoredFrame) : undefined;
    this.next = first.offset;
    this.hint = last === undefined ? before.hint : { segment: last.segment, position: last.position, offset: last.offset };
    this.reader?.rewind(first.position);
    // What is returned is covered.
    this.returnedEnd = undefined;
    return { frames: frames.slice(0, covered), state: read.state === 'more' && covered > 0 ? 'more' : 'end' };
  }

  /**
   * Passes over the frames available now by their headers alone, up to the limits (see LogReader.skim).
   * @throws ERR_CORRUPT_FRAME as read() does.
   */
  async skim(limits: ReadLimits = {}): Promise<StreamSkim> {
    if (this.skip === undefined) {
      // The open segment reader was made without a skip set: the next one gets it (the hint finds the place).
      this.skip = new SkipSet(new Set());
      await this.sync();
      await this.drop();
    }
    // The plain case in one synchronous read: whole frames in the open segment, read just now.
    const fast = this.skimSync(limits);
    if (fast !== undefined && fast.done) return { frames: fast.frames, state: 'more' };
    this.skip.all = true;
    try {
      const walked = await this.walk(fast === undefined ? limits : { ...limits, maxFrames: (limits.maxFrames ?? Number.POSITIVE_INFINITY) - fast.frames.length }, true);
      // Damaged ranges passed over while skimming went to onDamaged; a skim lists none.
      this.damaged = [];
      const frames = fast === undefined ? walked.skimmed : [...fast.frames, ...walked.skimmed];
      return { frames, state: walked.state, ...(walked.torn === undefined ? {} : { torn: walked.torn }) };
    } finally {
      this.skip.all = false;
    }
  }

  /**
   * Skims the open segment from where its reader stands with one synchronous read, as long as what it
   * finds is plain: whole frames with sane headers (SYNC frames are passed over). `done` when `maxFrames`
   * were found; otherwise the async walk goes on from where this stopped (the end of the data, a segment
   * boundary, a doubtful spot, `maxBytes`) and judges it. Undefined when there is no open segment reader.
   */
  private skimSync(limits: ReadLimits): { frames: SkimmedFrame[]; done: boolean } | undefined {
    const reader = this.reader;
    const segment = this.segment;
    if (reader === undefined || segment === undefined || this.deferredError !== undefined) return undefined;
    const maxFrames = limits.maxFrames ?? Number.POSITIVE_INFINITY;
    const maxBytes = limits.maxBytes ?? Number.POSITIVE_INFINITY;
    const chunk = this.bufferBytes ?? SKIM_READ_BYTES;
    const frames: SkimmedFrame[] = [];
    let position = reader.nextPosition;
    let total = 0;
    // Chunk by chunk, as long as each ends in the middle of a whole frame of the data.
    for (let more = true; more && frames.length < maxFrames && total < maxBytes; ) {
      let bytes: Buffer;
      try {
        if (this.skimFd === undefined || this.skimFd.path !== reader.path) {
          this.closeSkimFd();
          this.skimFd = { path: reader.path, fd: openSync(reader.path, 'r') };
        }
        const length = Math.min(fstatSync(this.skimFd.fd).size - position, chunk);
        if (length <= FRAME_HEADER_BYTES) break;
        bytes = Buffer.allocUnsafe(length);
        bytes = bytes.subarray(0, readSync(this.skimFd.fd, bytes, 0, length, position));
      } catch {
        break;
      }
      let at = 0;
      more = false;
      while (frames.length < maxFrames && total < maxBytes) {
        if (at + FRAME_HEADER_BYTES > bytes.length) {
          more = bytes.length === chunk;
          break;
        }
        const check = parseFrameHeader(bytes, at);
        if (!check.ok) break;
        const size = FRAME_HEADER_BYTES + check.header.payloadBytes;
        // A frame not wholly read: the next chunk, or (at the end of the data) the async walk judges it.
        if (at + size > bytes.length) {
          more = bytes.length === chunk && size <= chunk;
          break;
        }
        const framePosition = position + at;
        at += size;
        if (check.header.type === FrameType.SYNC) continue;
        const offset = check.header.offset;
        if (offset < this.next) continue;
        frames.push({ type: check.header.type, offset, segment, position: framePosition, bytes: size });
        total += size;
        this.next = offset + 1;
        this.hint = { segment, position: framePosition, offset };
      }
      position += at;
    }
    reader.seek(position);
    return { frames, done: frames.length >= maxFrames || total >= maxBytes };
  }

  /** Where the frame with `offset` that starts at `position` of the file ends, if its header says so. */
  private frameEndSync(path: string, position: number, offset: number): number | undefined {
    try {
      if (this.skimFd === undefined || this.skimFd.path !== path) {
        this.closeSkimFd();
        this.skimFd = { path, fd: openSync(path, 'r') };
      }
      const header = Buffer.allocUnsafe(FRAME_HEADER_BYTES);
      if (readSync(this.skimFd.fd, header, 0, FRAME_HEADER_BYTES, position) < FRAME_HEADER_BYTES) return undefined;
      const check = parseFrameHeader(header);
      return check.ok && check.header.offset === offset ? position + FRAME_HEADER_BYTES + check.header.payloadBytes : undefined;
    } catch {
      return undefined;
    }
  }

  private closeSkimFd(): void {
    if (this.skimFd !== undefined) closeSync(this.skimFd.fd);
    this.skimFd = undefined;
  }

  /** Moves the reader to `to`; the open segment is kept when the hint lies in it and checks out. */
  async seek(to: StreamPosition): Promise<void> {
    if (this.closed) throw new MqlogError('ERR_CLOSED', 'stream reader is closed');
    this.next = to.offset;
    this.hint = to.hint;
    this.deferredError = undefined;
    const hint = to.hint;
    const reader = this.reader;
    if (reader !== undefined && hint !== undefined && hint.segment === this.segment && hint.offset < to.offset) {
      // The hinted frame's header, read synchronously where the hint says it is: the reader then stands
      // right after it.
      const after = this.frameEndSync(reader.path, hint.position, hint.offset);
      if (after !== undefined) {
        reader.seek(after);
        return;
      }
      reader.seek(hint.position);
      try {
        const step = await reader.next();
        if ((step.kind === 'frame' && step.frame.offset === hint.offset) || (step.kind === 'skipped' && step.offset === hint.offset)) return;
      } catch (err) {
        if (!isMqlogError(err, 'ERR_CORRUPT_FRAME') && !isMqlogError(err, 'ERR_UNSUPPORTED_VERSION') && !isMqlogError(err, 'ERR_NOT_FOUND')) throw err;
      }
    }
    // Another segment, no hint, or a hint that no longer checks out: the next read finds the place anew
    // (what was returned from the segment left is made durable first, as sync() would).
    await this.sync();
    await this.drop();
  }

  private async readAvailable(limits: ReadLimits): Promise<StreamRead> {
    const walked = await this.walk(limits, false);
    return { frames: walked.frames, state: walked.state, ...(walked.torn === undefined ? {} : { torn: walked.torn }) };
  }

  /** Reads (or, `skimming`, passes over) the frames available now, up to the limits. */
  private async walk(limits: ReadLimits, skimming: boolean): Promise<{ frames: StoredFrame[]; skimmed: SkimmedFrame[]; state: StreamRead['state']; torn?: TornTail }> {
    if (this.closed) throw new MqlogError('ERR_CLOSED', 'stream reader is closed');
    if (this.deferredError !== undefined) {
      const error = this.deferredError;
      this.deferredError = undefined;
      throw error;
    }
    const maxFrames = limits.maxFrames ?? Number.POSITIVE_INFINITY;
    const maxBytes = limits.maxBytes ?? Number.POSITIVE_INFINITY;
    const frames: StoredFrame[] = [];
    const skimmed: SkimmedFrame[] = [];
    let bytes = 0;
    let recheckedEnd = false;
    while (frames.length + skimmed.length < maxFrames && bytes < maxBytes) {
      const reader = this.reader ?? (await this.openReader());
      if (reader === undefined) return { frames, skimmed, state: 'end' };
      let step;
      try {
        step = reader.nextBuffered() ?? (await reader.next());
      } catch (err) {
        if (isMqlogError(err, 'ERR_NOT_FOUND')) {
          await this.drop();
          continue;
        }
        if (isMqlogError(err, 'ERR_CORRUPT_FRAME') || isMqlogError(err, 'ERR_UNSUPPORTED_VERSION')) {
          const at = Number(err.details?.position ?? reader.nextPosition);
          await this.resync(reader, at, typeof err.details?.reason === 'string' ? err.details.reason : err.message);
          continue;
        }
        // Hand out what came before the failure first; the position stays right before it.
        if (frames.length + skimmed.length > 0 && err instanceof Error) {
          this.deferredError = err;
          return { frames, skimmed, state: 'more' };
        }
        throw err;
      }
      if (step.kind === 'skipped' && skimming) {
        recheckedEnd = false;
        if (step.offset < this.next) continue;
        const segment = this.segment ?? 0;
        skimmed.push({ type: step.type, offset: step.offset, segment, position: step.position, bytes: step.bytes });
        bytes += step.bytes;
        this.next = step.offset + 1;
        this.hint = { segment, position: step.position, offset: step.offset };
        continue;
      }
      if (step.kind === 'skipped') {
        recheckedEnd = false;
        if (step.offset >= this.next) this.next = step.offset + 1;
        continue;
      }
      if (step.kind === 'frame') {
        recheckedEnd = false;
        if (step.frame.offset < this.next) continue;
        const frame = storedFrame(this.stream, this.segment ?? 0, step.frame);
        // A frame the segment reader would not pass over by its header (it read it whole): listed all the same.
        if (skimming) skimmed.push({ type: frame.type, offset: frame.offset, segment: frame.segment, position: frame.position, bytes: frame.bytes });
        else {
          frames.push(frame);
          // The furthest frame returned from its segment (a reader moved back by seek returns earlier ones).
          const end = frame.position + frame.bytes;
          if (this.returnedEnd === undefined || this.returnedEnd.segment !== frame.segment || this.returnedEnd.end < end) this.returnedEnd = { segment: frame.segment, end };
        }
        bytes += frame.bytes;
        this.next = frame.offset + 1;
        this.hint = { segment: frame.segment, position: frame.position, offset: frame.offset };
        continue;
      }
      // Zeros reserved after the data: the writer is still appending here (it cuts them off before it
      // seals the segment and starts the next), so there is no successor to look for.
      if (step.kind === 'end' && step.zeroTail === true) return { frames, skimmed, state: 'end' };
      const successor = await this.successorOf(this.segment ?? 0);
      if (successor === undefined) {
        if (step.kind === 'torn') {
          return { frames, skimmed, state: 'torn', torn: { path: reader.path, position: step.position, bytes: step.tornBytes, reason: step.reason } };
        }
        return { frames, skimmed, state: 'end' };
      }
      // A successor exists, so this segment was sealed before it was created: read its end once more
      // to catch frames written between our last read and the seal.
      if (!recheckedEnd) {
        recheckedEnd = true;
        continue;
      }
      if (step.kind === 'torn') {
        await this.resync(reader, step.position, `${step.reason} in a sealed segment`);
        continue;
      }
      await this.drop();
      this.next = Math.max(this.next, successor.baseOffset);
    }
    return { frames, skimmed, state: 'more' };
  }

  release(frames: Iterable<StoredFrame>): void {
    for (const frame of frames) this.largeFrames.give(frame.raw);
  }

  async close(): Promise<void> {
    this.closed = true;
    this.closeSkimFd();
    await this.drop();
  }

  private async drop(): Promise<void> {
    const reader = this.reader;
    this.reader = undefined;
    this.segment = undefined;
    await reader?.close();
  }

  private async successorOf(base: number): Promise<SegmentInfo | undefined> {
    // A segment is named by the offset after its predecessor's last frame, unless compaction removed
    // segments between them: look for that name first, list only when it is not there.
    if (this.next > base) {
      const named = await this.set.find(this.next);
      if (named !== undefined) return named;
    }
    return (await this.set.list()).find((s) => s.baseOffset > base);
  }

  /** Opens the segment that holds `next`, at the hinted position when the hint checks out. */
  private async openReader(): Promise<SegmentReader | undefined> {
    // A segment named by the offset wanted is where it lies (segments of a large stream are many: no listing).
    const named = await this.set.find(this.next);
    if (named !== undefined) {
      try {
        const reader = await this.openAt(named, false);
        this.reader = reader;
        this.segment = named.baseOffset;
        return reader;
      } catch (err) {
        if (!isMqlogError(err, 'ERR_NOT_FOUND')) throw err;
      }
    }
    for (let attempt = 0; attempt < 10; attempt++) {
      const segments = await this.set.list();
      if (segments.length === 0) return undefined;
      let chosen = segments[0] as SegmentInfo;
      for (const s of segments) if (s.baseOffset <= this.next) chosen = s;
      try {
        const reader = await this.openAt(chosen, chosen !== segments.at(-1));
        this.reader = reader;
        this.segment = chosen.baseOffset;
        return reader;
      } catch (err) {
        if (!isMqlogError(err, 'ERR_NOT_FOUND')) throw err;
      }
    }
    throw new MqlogError('ERR_IO', `segments of ${this.set.dir} keep disappearing while opening`, { details: { path: this.set.dir } });
  }

  /**
   * Opens `segment` at the frame that holds `next` or the nearest place before it: right after the hinted
   * frame when the hint checks out, else at the index entry at or below `next` when the frame there
   * checks out, else at byte 0. `sealed`: a successor exists (a missing index is then rebuilt).
   */
  private async openAt(segment: SegmentInfo, sealed: boolean): Promise<SegmentReader> {
    const options = this.segmentOptions();
    const hint = this.hint;
    if (hint !== undefined && hint.segment === segment.baseOffset && hint.offset < this.next) {
      const reader = await openChecked(segment.path, hint.position, hint.offset, options);
      // Right after the hinted frame, which was consumed before `next`.
      if (reader !== undefined) return reader;
      // The segment was rewritten since the hint was taken: look it up instead.
    }
    if (this.indexes !== undefined && this.next > segment.baseOffset) {
      const entry = (await this.indexes.of(segment.path, segment.baseOffset, sealed, { rebuild: sealed }))?.index?.seek(this.next);
      if (entry !== undefined && entry.position > 0) {
        const reader = await openChecked(segment.path, entry.position, entry.offset, options);
        if (reader !== undefined) {
          // The entry's frame may be the one wanted: read it again.
          reader.seek(entry.position);
          return reader;
        }
      }
    }
    return SegmentReader.open(segment.path, options);
  }

  private segmentOptions(): SegmentReaderOptions {
    return { ...(this.skip === undefined ? {} : { skipTypes: this.skip }), ...(this.bufferBytes === undefined ? {} : { bufferBytes: this.bufferBytes }), lend: this.lend, syncReads: this.syncReads, largeFrames: this.largeFrames };
  }
}

/**
 * The frame types a segment reader passes over by their header: the reader's own skipTypes, or, while
 * it skims, every type (SYNC frames excepted: the segment reader never passes over those).
 */
class SkipSet extends Set<number> {
  all = false;

  constructor(types: ReadonlySet<number>) {
    super(types);
  }

  override has(type: number): boolean {
    return this.all || super.has(type);
  }
}

/**
 * A reader of the segment at `path` that has just read the frame at `position`, found to have exactly
 * `offset`; undefined (the reader closed) when the frame there is another one or none.
 */
async function openChecked(path: string, position: number, offset: number, options: SegmentReaderOptions): Promise<SegmentReader | undefined> {
  const reader = await SegmentReader.open(path, { position, ...options });
  let step: ReadStep | undefined;
  try {
    step = await reader.next();
  } catch (err) {
    if (!isMqlogError(err, 'ERR_CORRUPT_FRAME') && !isMqlogError(err, 'ERR_UNSUPPORTED_VERSION')) {
      await reader.close();
      throw err;
    }
  }
  if ((step?.kind === 'frame' && step.frame.offset === offset) || (step?.kind === 'skipped' && step.offset === offset)) return reader;
  await reader.close();
  return undefined;
}

/**
 * Reads the one frame with `offset` from a stream, at the hinted place when the hint checks out,
 * else by scanning its segment. Undefined when the stream no longer holds that offset.
 */
export async function readFrameAt(dir: string, offset: number, hint?: FrameHint, indexes?: SegmentIndexes): Promise<StoredFrame | undefined> {
  const stream = basename(dir);
  if (hint !== undefined) {
    try {
      const reader = await SegmentReader.open(new SegmentSet(dir).pathOf(hint.segment), { position: hint.position });
      try {
        const step = await reader.next();
        if (step.kind === 'frame' && step.frame.offset === offset) return storedFrame(stream, hint.segment, step.frame);
      } finally {
        await reader.close();
      }
    } catch (err) {
      if (!isMqlogError(err)) throw err;
      // Gone or rewritten: fall back to a scan.
    }
  }
  const reader = new StreamReader(dir, { offset }, {}, indexes);
  try {
    const read = await reader.read({ maxFrames: 1 });
    const frame = read.frames[0];
    return frame?.offset === offset ? frame : undefined;
  } finally {
    await reader.close();
  }
}

/** The position of the first valid frame at or after `from` in the file at `path` (if any), and its size. */
export async function nextValidFrame(path: string, from: number): Promise<{ next: number | undefined; size: number }> {
  const handle = await open(path, 'r');
  try {
    const size = (await handle.stat()).size;
    return { next: await findNextFrame(handle, from, size), size };
  } finally {
    await handle.close();
  }
}
