/**
 * One segment file: naming, and a sequential frame reader (spec/log-format.md §3).
 *
 * A segment holds frames back to back from byte 0. The last segment of a stream may end in a zero-filled
 * preallocated region; a zero byte where a frame should start means "no more data". Writers begin every
 * write with a SYNC frame stating how much of the file was fsync'd before it (§3.3), which draws the
 * durability boundary the reader needs: where data stops being readable (a zero byte followed by data,
 * an incomplete or invalid frame), it is a torn tail — bytes of a write that never completed its fsync,
 * which cannot hold anything acknowledged — unless a later SYNC frame states that the damaged bytes were
 * fsync'd, which makes it corruption of synced data (thrown).
 *
 * SYNC frames are the log's own bookkeeping: the reader consumes them and never returns them.
 *
 * A SegmentReader belongs to one caller at a time. It reads through the page cache and may run while a
 * writer appends to the same file in another process.
 */
import { fstatSync, readSync } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { MqlogError, ioError } from '../errors.js';
import type { FrameBufferPool } from './frame-buffers.js';
import type { StoredFrame } from './log-store.js';
import { FRAME_HEADER_BYTES, FRAME_MAGIC, FrameType, MAX_FRAME_PAYLOAD_BYTES, SYNC_PAYLOAD_BYTES, decodeFrame, decodeSyncPayload, parseFrameHeader, type Frame, type FrameHeader } from './frame.js';

export const SEGMENT_SUFFIX = '.seg';
const SEGMENT_NAME = /^(\d{20})\.seg$/;

/** `00000000000000000042.seg` for base offset 42. */
export function segmentFileName(baseOffset: number): string {
  return `${String(baseOffset).padStart(20, '0')}${SEGMENT_SUFFIX}`;
}

/** The base offset a segment file name encodes, or undefined for any other name. */
export function parseSegmentFileName(name: string): number | undefined {
  const match = SEGMENT_NAME.exec(name);
  if (match === null) return undefined;
  const base = Number(match[1]);
  return Number.isSafeInteger(base) ? base : undefined;
}

/** A frame as read from a segment, with where it lies. */
export interface SegmentFrame extends Frame {
  /** Byte position of the frame's first byte in its segment file. */
  readonly position: number;
  /** Header plus payload bytes. */
  readonly bytes: number;
  /** Header and payload as stored; `payload` is a view into it. */
  readonly raw: Buffer;
}

/** A segment's frame as a frame of `stream`, found in the segment with base offset `segment`. */
export function storedFrame(stream: string, segment: number, frame: SegmentFrame): StoredFrame {
  return { stream, type: frame.type, offset: frame.offset, payload: frame.payload, raw: frame.raw, bytes: frame.bytes, segment, position: frame.position };
}

export type ReadStep =
  | { readonly kind: 'frame'; readonly frame: SegmentFrame }
  /**
   * No more frames: end of file, or the start of a zero-filled tail. `zeroTail`: zeros follow (reserved
   * by the writer ahead of its data), so the segment is still open: sealing cuts them off first.
   */
  | { readonly kind: 'end'; readonly position: number; readonly zeroTail?: boolean }
  /**
   * Data stops being readable here and no later SYNC frame covers it: the bytes from here to the end of
   * the file are a write that never completed its fsync (a crash), or one still in progress.
   */
  | { readonly kind: 'torn'; readonly position: number; readonly reason: string; readonly tornBytes: number }
  /** A frame of a type the caller asked to skip: passed over by its header, its payload neither read nor checked. */
  | { readonly kind: 'skipped'; readonly type: number; readonly offset: number; readonly position: number; readonly bytes: number };

export interface SegmentReaderOptions {
  /** Frame types to pass over without reading their payload (their CRC is then not checked). */
  readonly skipTypes?: ReadonlySet<number>;
  /** Where to start reading; must be a frame boundary. */
  readonly position?: number;
  readonly bufferBytes?: number;
  readonly maxPayloadBytes?: number;
  /**
   * Hand out frames as views into the reader's read blocks instead of copies: a block is never written
   * again once a frame was handed out from it (the next read goes to a new block). For callers that
   * let go of frames soon (a forwarder, a counter): a frame kept long keeps its whole block in memory.
   */
  readonly lend?: boolean;
  /** Blocks are read with synchronous reads (see ReaderOptions.syncReads in log-store.ts). */
  readonly syncReads?: boolean;
  /** Where a frame larger than the read block gets its buffer (default: a new one each time). */
  readonly largeFrames?: FrameBufferPool;
}

const DEFAULT_BUFFER_BYTES = 256 * 1024;
/** The least a follower reads at the end of an open segment's data (see SegmentReader.tailAt). */
const MIN_TAIL_READ_BYTES = 16 * 1024;
/** Pause before re-reading a spot that looked corrupt (a concurrent write finishes well within it). */
const RECHECK_DELAY_MS = 20;
const ZERO_SCAN_BYTES = 64 * 1024;
/** A reader looks for a sync mark past its position this many bytes at a time... */
const LOOK_AHEAD_BYTES = 64 * 1024;
/** ...and this far at most before it fsyncs a segment itself (a large write's mark comes after it). */
const LOOK_AHEAD_MAX_BYTES = 2 * 1024 * 1024;
const ZEROS = Buffer.alloc(ZERO_SCAN_BYTES);
/** A SYNC frame that was read (internal: next() reads on). */
const SYNC_STEP = { kind: 'sync' } as const;

export class SegmentReader {
  readonly path: string;
  private readonly handle: FileHandle;
  private readonly maxPayloadBytes: number;
  private readonly skipTypes: ReadonlySet<number> | undefined;
  private buffer: Buffer;
  /** The reader's read block; `buffer` is another one only while a large frame is read. */
  private block: Buffer;
  private readonly blockBytes: number;
  private readonly lend: boolean;
  private readonly syncReads: boolean;
  private readonly largeFrames: FrameBufferPool | undefined;
  /** A frame handed out is a view into `block` (lending): the block must not be written again. */
  private blockLent = false;
  /** File position of buffer[0]. */
  private bufferStart: number;
  private bufferLength = 0;
  private position: number;
  /** The largest synced length a SYNC frame read so far stated. */
  private synced = 0;
  /**
   * Bytes [from, size) were found to be zeros while the file was `size` long. A writer only ever writes
   * at the end of its data, contiguously: while the size is unchanged, a zero byte at a later end of
   * data means the writer has not written past it, so the zeros after it need not be read again (a
   * follower looks at the end of an open segment on every read, and 1 MiB of zeros may be reserved there).
   */
  private zerosChecked: { readonly from: number; readonly size: number } | undefined;
  /**
   * Where the data of an open segment ended (zeros reserved after it) when last looked at. A follower
   * reads on from there each time it is woken: that read asks for about as much as was appended lately
   * (`tailReadBytes`), not for a whole block, most of which would be the reserved zeros.
   */
  private tailAt: number | undefined;
  private tailReadBytes = MIN_TAIL_READ_BYTES;
  /** Set when the last read of the buffer came back short: the file ended there at that moment. */
  private bufferReachesEof = false;
  private closed = false;

  private constructor(path: string, handle: FileHandle, options: SegmentReaderOptions) {
    this.path = path;
    this.handle = handle;
    this.maxPayloadBytes = options.maxPayloadBytes ?? MAX_FRAME_PAYLOAD_BYTES;
    this.skipTypes = options.skipTypes;
    this.blockBytes = options.bufferBytes ?? DEFAULT_BUFFER_BYTES;
    this.block = Buffer.allocUnsafe(this.blockBytes);
    this.buffer = this.block;
    this.lend = options.lend === true;
    this.syncReads = options.syncReads === true;
    this.largeFrames = options.largeFrames;
    this.position = options.position ?? 0;
    this.bufferStart = this.position;
  }

  /** Opens a segment for reading. Throws ERR_NOT_FOUND when the file is gone (compacted away). */
  static async open(path: string, options: SegmentReaderOptions = {}): Promise<SegmentReader> {
    try {
      return new SegmentReader(path, await open(path, 'r'), options);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
        throw new MqlogError('ERR_NOT_FOUND', `segment ${path} does not exist`, { details: { path }, cause: err });
      }
      throw ioError(err, `cannot open segment ${path}`, { path });
    }
  }

  /** Moves the reader to `position`: the next read starts there, from the file. */
  seek(position: number): void {
    this.buffer = this.freshBlock();
    this.position = position;
    this.bufferStart = position;
    this.bufferLength = 0;
    this.bufferReachesEof = false;
  }

  /**
   * Moves the reader back to `position`, the start of a frame it returned: read again from the buffer
   * when it still holds it (a frame's bytes never change once written), else from the file.
   */
  rewind(position: number): void {
    if (position >= this.bufferStart && position <= this.position) this.position = position;
    else this.seek(position);
  }

  /** Byte position of the next frame to read. */
  get nextPosition(): number {
    return this.position;
  }

  /** The largest length of the file that a SYNC frame read so far states was fsync'd. */
  get syncedBytes(): number {
    return this.synced;
  }

  /**
   * Reads the next frame. The returned payload is a copy the caller may keep.
   * @throws ERR_CORRUPT_FRAME (details: path, position, reason) when an invalid frame has data after it.
   */
  async next(): Promise<ReadStep> {
    if (this.closed) throw new MqlogError('ERR_CLOSED', 'segment reader is closed');
    for (;;) {
      let step: ReadStep | typeof SYNC_STEP;
      try {
        step = this.bufferedStep() ?? (await this.step());
      } catch (err) {
        if (!(err instanceof MqlogError) || err.details?.position !== this.position) throw err;
        // A writer in another process may have been writing right here while we looked: the buffer held
        // its zeros from an earlier read, or half its frame. Read the spot again from the file at once,
        // and once more after a pause (a concurrent write finishes well within it) before calling it
        // corruption.
        step = await this.recheck(err);
      }
      if (step.kind !== 'sync') return step;
    }
  }

  /**
   * The next frame (or skipped frame) when it lies wholly in what was read already and nothing about it
   * needs the file (zeros, damage, a frame cut by the buffer's end); undefined otherwise, and next()
   * then reads on. No promise per frame: a reader walking a buffered block stays on the same turn.
   */
  nextBuffered(): ReadStep | undefined {
    if (this.closed) return undefined;
    for (;;) {
      const step = this.bufferedStep();
      if (step === undefined || step.kind !== 'sync') return step;
    }
  }

  private async recheck(err: MqlogError): Promise<ReadStep | typeof SYNC_STEP> {
    this.seek(this.position);
    try {
      return await this.step();
    } catch (again) {
      if (!(again instanceof MqlogError) || again.details?.position !== err.details?.position) throw again;
    }
    await new Promise((resolve) => setTimeout(resolve, RECHECK_DELAY_MS));
    this.seek(this.position);
    return this.step();
  }

  /** Reads the next frame; `reread`: the buffer was just filled from the file at the reader's position. */
  private async step(reread = false): Promise<ReadStep | typeof SYNC_STEP> {
    const at = this.position;
    const available = await this.fill(FRAME_HEADER_BYTES);
    if (available === 0) return this.atEnd({ kind: 'end', position: at });
    const local = at - this.bufferStart;
    if (this.buffer[local] === 0) {
      // Read to the end of the file just now and nothing but zeros after `at`: the end, without more I/O.
      if (this.bufferReachesEof && isZero(this.buffer.subarray(local, this.bufferLength))) return this.atEnd({ kind: 'end', position: at, zeroTail: true });
      const fileSize = (await this.stat()).size;
      if (this.zerosChecked !== undefined && at >= this.zerosChecked.from && this.zerosChecked.size === fileSize) return this.atEnd({ kind: 'end', position: at, zeroTail: true });
      if (await this.zerosFrom(at, fileSize)) {
        this.zerosChecked = { from: at, size: fileSize };
        return this.atEnd({ kind: 'end', position: at, zeroTail: true });
      }
      if (!reread) {
        // The zero may be from an earlier read of the preallocation that a writer has filled in since.
        this.seek(at);
        return this.step(true);
      }
      return this.damaged(at, 'non-zero data after a zero byte where a frame should start', 'ERR_CORRUPT_FRAME', fileSize);
    }
    if (this.skipTypes !== undefined && available >= FRAME_HEADER_BYTES) {
      const skipped = await this.skip(at, local);
      if (skipped !== undefined) return skipped;
    }
    let decoded = decodeFrame(this.buffer, local, this.maxPayloadBytes, this.bufferLength);
    if (!decoded.ok && decoded.incomplete && decoded.needed > available) {
      await this.fill(decoded.needed);
      decoded = decodeFrame(this.buffer, at - this.bufferStart, this.maxPayloadBytes, this.bufferLength);
    }
    if (decoded.ok) return this.taken(at, decoded);
    const reason = decoded.incomplete ? 'incomplete frame at end of file' : decoded.reason;
    return this.damaged(at, reason, decoded.incomplete ? 'ERR_CORRUPT_FRAME' : decoded.code, (await this.stat()).size);
  }

  /** The frame just decoded at `at`: the reader moves past it (a SYNC frame is taken in and not returned). */
  private taken(at: number, decoded: { readonly frame: Frame; readonly bytes: number }): ReadStep | typeof SYNC_STEP {
    this.position = at + decoded.bytes;
    const { frame } = decoded;
    if (frame.type === FrameType.SYNC) {
      const stated = decodeSyncPayload(frame.payload);
      // A mark can only speak of bytes before it; anything else is not a mark this reader trusts.
      if (stated !== undefined && stated <= at) this.synced = Math.max(this.synced, stated);
      this.releaseOwnBuffer();
      return SYNC_STEP;
    }
    // A frame larger than the read block was read into a buffer of its own: handed out as it is (no
    // copy). Smaller frames are lent from the block, or copied out of it, header and payload together.
    const from = at - this.bufferStart;
    let raw = this.buffer.subarray(from, from + decoded.bytes);
    // The payload decoded is a view of the same bytes: kept unless they are copied.
    let payload = frame.payload;
    if (this.buffer === this.block) {
      if (this.lend) this.blockLent = true;
      else {
        raw = Buffer.from(raw);
        payload = raw.subarray(FRAME_HEADER_BYTES);
      }
    }
    this.releaseOwnBuffer();
    return { kind: 'frame', frame: { type: frame.type, offset: frame.offset, payload, raw, position: at, bytes: decoded.bytes } };
  }

  /** step() for a frame wholly in the buffer that needs nothing else (see nextBuffered); undefined for any other case. */
  private bufferedStep(): ReadStep | typeof SYNC_STEP | undefined {
    const at = this.position;
    const local = at - this.bufferStart;
    if (local < 0 || this.bufferLength - local < FRAME_HEADER_BYTES || this.buffer[local] === 0) return undefined;
    const skipped = this.skipTypes === undefined ? undefined : this.skipBuffered(at, local);
    if (skipped !== undefined) return skipped;
    const decoded = decodeFrame(this.buffer, local, this.maxPayloadBytes, this.bufferLength);
    return decoded.ok ? this.taken(at, decoded) : undefined;
  }

  /**
   * Data stops being readable at `at` (spec/log-format.md §3.2): corruption of synced data if a SYNC
   * frame stated that bytes past `at` were fsync'd, else a torn tail from `at` to the end of the file.
   */
  private async damaged(at: number, reason: string, code: MqlogError['code'], fileSize: number): Promise<ReadStep> {
    if (this.synced > at) throw corrupt(this.path, at, `${reason} (inside data a sync mark says was fsync'd)`, code);
    const mark = await findSyncMark(this.handle, at + 1, fileSize, at);
    if (mark !== undefined) throw corrupt(this.path, at, `${reason} (the sync mark at byte ${mark} says the data here was fsync'd)`, code);
    return this.atEnd({ kind: 'torn', position: at, reason, tornBytes: fileSize - at });
  }

  /** After a frame larger than the read block was handed out in a buffer of its own: back to the block. */
  private releaseOwnBuffer(): void {
    if (this.buffer === this.block) return;
    this.buffer = this.freshBlock();
    this.bufferStart = this.position;
    this.bufferLength = 0;
  }

  /**
   * Whether a sync mark says the bytes up to `end` were fsync'd: one read before, or one among the whole
   * frames that follow the reader's position now (looked at without moving the reader, by their headers,
   * up to LOOK_AHEAD_MAX_BYTES). A writer puts its mark right after the frames of its fsync, so a reader
   * that stopped at a limit inside a large write finds it here instead of fsyncing the segment itself;
   * the mark found is kept, so the reads that follow inside the same write need no look at all.
   */
  async markCovers(end: number): Promise<boolean> {
    if (this.synced >= end) return true;
    // What the read block already holds past the position first (the mark was often read with the frames).
    const local = this.position - this.bufferStart;
    let at = this.position;
    if (local >= 0 && local < this.bufferLength) {
      const looked = this.marksIn(this.buffer.subarray(local, this.bufferLength), this.position);
      if (this.synced >= end) return true;
      if (looked.doubtful) return false;
      at = looked.next;
    }
    let ahead: Buffer | undefined;
    while (at - this.position < LOOK_AHEAD_MAX_BYTES) {
      ahead ??= Buffer.allocUnsafe(LOOK_AHEAD_BYTES);
      const { bytesRead } = await this.readAt(ahead, 0, ahead.length, at);
      const looked = this.marksIn(ahead.subarray(0, bytesRead), at);
      if (this.synced >= end) return true;
      // Damage, the end of the data, or a frame larger than a look: a mark past it is not looked for.
      if (looked.doubtful || looked.next === at) return false;
      at = looked.next;
    }
    return false;
  }

  /**
   * Takes in what the sync marks among the whole frames of `bytes` (read from file position `base`)
   * state. `next`: the file position of the first frame not wholly in `bytes`; `doubtful`: the look
   * stopped at something that is not a frame (zeros, damage) rather than at the end of `bytes`.
   */
  private marksIn(bytes: Buffer, base: number): { next: number; doubtful: boolean } {
    let at = 0;
    while (at + FRAME_HEADER_BYTES <= bytes.length) {
      const check = parseFrameHeader(bytes, at, this.maxPayloadBytes);
      if (!check.ok) return { next: base + at, doubtful: true };
      const size = FRAME_HEADER_BYTES + check.header.payloadBytes;
      if (at + size > bytes.length) break;
      if (check.header.type === FrameType.SYNC) {
        const decoded = decodeFrame(bytes, at, this.maxPayloadBytes);
        if (!decoded.ok) return { next: base + at, doubtful: true };
        const stated = decodeSyncPayload(decoded.frame.payload);
        if (stated !== undefined && stated <= base + at) this.synced = Math.max(this.synced, stated);
      }
      at += size;
    }
    return { next: base + at, doubtful: false };
  }

  /** fdatasyncs the segment: every frame read from it so far is durable when this resolves. */
  async sync(): Promise<void> {
    try {
      await this.handle.datasync();
    } catch (err) {
      throw ioError(err, `cannot fsync segment ${this.path}`, { path: this.path });
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.handle.close();
  }

  /**
   * Passes over a frame of a skipped type by its header alone, when the whole frame is in the file.
   * Anything doubtful (a bad header, a frame not yet complete) is left to the normal path.
   */
  private async skip(at: number, local: number): Promise<ReadStep | undefined> {
    const header = this.skippedHeader(local);
    if (header === undefined) return undefined;
    const end = at + FRAME_HEADER_BYTES + header.payloadBytes;
    const inBuffer = end <= this.bufferStart + this.bufferLength;
    if (!inBuffer && end > (await this.stat()).size) return undefined;
    return this.passOver(at, header, inBuffer);
  }

  /** skip() for a frame wholly in the buffer: no look at the file. */
  private skipBuffered(at: number, local: number): ReadStep | undefined {
    const header = this.skippedHeader(local);
    if (header === undefined || local + FRAME_HEADER_BYTES + header.payloadBytes > this.bufferLength) return undefined;
    return this.passOver(at, header, true);
  }

  /**
   * The header at `local` of the buffer when it is a sound one of a type passed over, else undefined.
   * The type byte is looked at first: the header of any other frame is checked once, where it is decoded.
   */
  private skippedHeader(local: number): FrameHeader | undefined {
    // SYNC frames are never passed over: the reader needs what they state.
    const type = this.buffer[local + 2] as number;
    if (type === FrameType.SYNC || this.skipTypes?.has(type) !== true) return undefined;
    const check = parseFrameHeader(this.buffer, local, this.maxPayloadBytes);
    return check.ok ? check.header : undefined;
  }

  /** Moves past the frame of `header` at `at` (its end beyond the buffer when not `inBuffer`). */
  private passOver(at: number, header: FrameHeader, inBuffer: boolean): ReadStep {
    const bytes = FRAME_HEADER_BYTES + header.payloadBytes;
    this.position = at + bytes;
    if (!inBuffer) {
      this.buffer = this.freshBlock();
      this.bufferStart = this.position;
      this.bufferLength = 0;
    }
    return { kind: 'skipped', type: header.type, offset: header.offset, position: at, bytes };
  }

  /** Forgets buffered bytes past the end of data: a writer may fill them in before the next call. */
  private atEnd<T extends ReadStep | undefined>(step: T): T {
    this.bufferLength = Math.max(0, this.position - this.bufferStart);
    this.tailAt = step?.kind === 'end' && step.zeroTail === true ? step.position : undefined;
    return step;
  }

  /** The read block, or a new one when frames lent from it may still be in use. */
  private freshBlock(): Buffer {
    if (this.blockLent) {
      this.block = Buffer.allocUnsafe(this.blockBytes);
      this.blockLent = false;
    }
    return this.block;
  }

  /** Makes at least `wanted` bytes from `position` available in the buffer if the file has them; returns how many are. */
  private async fill(wanted: number): Promise<number> {
    let local = this.position - this.bufferStart;
    if (local < 0 || local > this.bufferLength) {
      this.buffer = this.freshBlock();
      this.bufferStart = this.position;
      this.bufferLength = 0;
      local = 0;
    }
    if (this.bufferLength - local >= wanted) return this.bufferLength - local;
    // Read on behind what is buffered when there is room (bytes before `position` are never written
    // again: lent frames lie there); else move the unread part to the front of the block (a new block
    // if frames were lent from it), or of a buffer of its own for a frame larger than the block.
    if (!(this.lend && local + wanted <= this.buffer.length)) {
      const unread = this.bufferLength - local;
      const target = wanted > this.blockBytes ? (this.largeFrames?.take(wanted) ?? Buffer.allocUnsafe(wanted)) : this.freshBlock();
      this.buffer.copy(target, 0, local, this.bufferLength);
      this.buffer = target;
      this.bufferStart = this.position;
      this.bufferLength = unread;
      local = 0;
    }
    this.bufferReachesEof = false;
    while (this.bufferLength - local < wanted) {
      const at = this.bufferStart + this.bufferLength;
      const tail = at === this.tailAt;
      const room = this.buffer.length - this.bufferLength;
      const asked = tail ? Math.min(room, Math.max(wanted - (this.bufferLength - local), this.tailReadBytes)) : room;
      const { bytesRead } = await this.readAt(this.buffer, this.bufferLength, asked, at);
      this.bufferLength += bytesRead;
      if (tail) {
        this.tailAt = undefined;
        // Data up to the end of what was read: more was appended than asked for; ask for more next time.
        const full = bytesRead === asked && this.buffer[this.bufferLength - 1] !== 0;
        this.tailReadBytes = full ? Math.min(this.blockBytes, 2 * this.tailReadBytes) : Math.max(MIN_TAIL_READ_BYTES, this.tailReadBytes / 2);
      }
      if (bytesRead < asked) {
        this.bufferReachesEof = true;
        break;
      }
    }
    return this.bufferLength - local;
  }

  /** True when every byte in [from, to) is zero (or the range is empty). */
  private async zerosFrom(from: number, to: number): Promise<boolean> {
    const scratch = Buffer.allocUnsafe(Math.min(ZERO_SCAN_BYTES, Math.max(0, to - from)));
    for (let at = from; at < to; ) {
      const { bytesRead } = await this.readAt(scratch, 0, Math.min(scratch.length, to - at), at);
      if (bytesRead === 0) return true;
      if (!scratch.subarray(0, bytesRead).equals(ZEROS.subarray(0, bytesRead))) return false;
      at += bytesRead;
    }
    return true;
  }

  private async readAt(buffer: Buffer, offset: number, length: number, position: number): Promise<{ bytesRead: number }> {
    try {
      if (this.syncReads) return { bytesRead: readSync(this.handle.fd, buffer, offset, length, position) };
      return await this.handle.read(buffer, offset, length, position);
    } catch (err) {
      throw ioError(err, `cannot read segment ${this.path}`, { path: this.path, position });
    }
  }

  private async stat(): Promise<{ size: number }> {
    try {
      if (this.syncReads) return fstatSync(this.handle.fd);
      return await this.handle.stat();
    } catch (err) {
      throw ioError(err, `cannot stat segment ${this.path}`, { path: this.path });
    }
  }
}

/**
 * The position of the first whole, valid frame (magic, sane header, CRC) in [from, to) of a file, or
 * undefined. Used to tell corruption from a torn tail, and to resynchronise after corruption.
 */
export async function findNextFrame(handle: FileHandle, from: number, to: number, maxPayloadBytes = MAX_FRAME_PAYLOAD_BYTES): Promise<number | undefined> {
  const window = Buffer.allocUnsafe(Math.min(1024 * 1024, Math.max(FRAME_HEADER_BYTES, to - from)));
  for (let start = from; start < to; ) {
    const { bytesRead } = await handle.read(window, 0, Math.min(window.length, to - start), start);
    if (bytesRead === 0) return undefined;
    const view = window.subarray(0, bytesRead);
    for (let i = 0; i < bytesRead; i++) {
      if (view[i] !== FRAME_MAGIC) continue;
      let candidate = decodeFrame(view, i, maxPayloadBytes);
      if (!candidate.ok && candidate.incomplete && start + i + candidate.needed <= to && candidate.needed > bytesRead - i) {
        const whole = Buffer.allocUnsafe(candidate.needed);
        const { bytesRead: got } = await handle.read(whole, 0, whole.length, start + i);
        candidate = decodeFrame(whole.subarray(0, got), 0, maxPayloadBytes);
      }
      if (candidate.ok) return start + i;
    }
    if (start + bytesRead >= to) return undefined;
    start += Math.max(1, bytesRead - FRAME_HEADER_BYTES);
  }
  return undefined;
}

/**
 * The position of the first valid SYNC frame in [from, to) of a file that states a synced length above
 * `above`, or undefined. Its existence proves that the bytes up to that length were fsync'd.
 */
export async function findSyncMark(handle: FileHandle, from: number, to: number, above: number): Promise<number | undefined> {
  const frameBytes = FRAME_HEADER_BYTES + SYNC_PAYLOAD_BYTES;
  const window = Buffer.allocUnsafe(Math.min(1024 * 1024, Math.max(frameBytes, to - from)));
  for (let start = from; start < to; ) {
    const { bytesRead } = await handle.read(window, 0, Math.min(window.length, to - start), start);
    if (bytesRead === 0) return undefined;
    const view = window.subarray(0, bytesRead);
    for (let i = view.indexOf(FRAME_MAGIC); i !== -1 && i + frameBytes <= bytesRead; i = view.indexOf(FRAME_MAGIC, i + 1)) {
      if (view[i + 2] !== FrameType.SYNC || view.readUInt32LE(i + 4) !== SYNC_PAYLOAD_BYTES) continue;
      const decoded = decodeFrame(view, i, SYNC_PAYLOAD_BYTES);
      if (!decoded.ok || decoded.frame.type !== FrameType.SYNC) continue;
      const stated = decodeSyncPayload(decoded.frame.payload);
      if (stated !== undefined && stated > above && stated <= start + i) return start + i;
    }
    if (start + bytesRead >= to) return undefined;
    start += Math.max(1, bytesRead - frameBytes + 1);
  }
  return undefined;
}

export function corrupt(path: string, position: number, reason: string, code: MqlogError['code'] = 'ERR_CORRUPT_FRAME'): MqlogError {
  const errorCode = code === 'ERR_UNSUPPORTED_VERSION' ? code : 'ERR_CORRUPT_FRAME';
  return new MqlogError(errorCode, `${path} at byte ${position}: ${reason}`, { details: { path, position, reason } });
}

/** True when every byte of `bytes` is zero. */
function isZero(bytes: Buffer): boolean {
  for (let at = 0; at < bytes.length; at += ZEROS.length) {
    const part = bytes.subarray(at, at + ZEROS.length);
    if (!part.equals(ZEROS.subarray(0, part.length))) return false;
  }
  return true;
}
