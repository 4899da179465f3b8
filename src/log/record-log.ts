/**
 * A record log: one append-only file of RECORD frames (spec/log-format.md §2, §11), for state journals
 * that several processes append to in turn under a lock of their own (the consumer journal).
 *
 * It follows the log's torn-tail rule (§3.2, §3.3): every write after the first begins with a SYNC frame
 * stating how much of the file is known to be fsync'd, and whatever a crash or a power cut left unreadable
 * past that is a torn tail, which a caller holding the writers' lock sets aside in a `.torn` file and
 * clears. Appends overwrite zeros reserved ahead of the data, so that small records — acks, which free
 * space — still fit on a full disk.
 *
 * Concurrency contract: `append` and a catch-up that cuts a torn tail only under the caller's lock; plain
 * catch-ups (readers that only look) at any time. One caller at a time per object.
 */
import { closeSync, fstatSync, openSync, readSync, writeSync, writevSync } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { dirname } from 'node:path';
import { ioError, isMqlogError } from '../errors.js';
import { FILE_MODE, fsyncDir } from '../util/fs.js';
import { FrameType, decodeFrame, decodeSyncPayload, encodeFrame, encodeSyncFrame } from './frame.js';
import type { TruncatedTail } from './log-store.js';
import { setAsideTorn } from './recovery.js';
import { SegmentReader } from './segment.js';

/** Zeros written ahead of the data (see append). */
const RESERVE_BYTES = 64 * 1024;
/** A catch-up reads at most this much at once without leaving the event loop (beyond: the async reader). */
const SYNC_READ_BYTES = 4 * 1024 * 1024;

export class RecordLog {
  readonly path: string;
  /** End of the records read or written so far. */
  private end = 0;
  /** Sequence number (frame offset) of the next record. */
  private sequence = 0;
  /** Length of the file known to be fsync'd (by this process, or stated by a SYNC frame). */
  private syncedEnd = 0;
  private handle: FileHandle | undefined;
  /** Kept open between catch-ups: a transaction's look at the end of the file is then one read. */
  private reader: SegmentReader | undefined;
  private reservedEnd = 0;
  /** For catch-ups that read the tail in one synchronous read (see catchUpSync). */
  private syncFd: number | undefined;

  constructor(path: string) {
    this.path = path;
  }

  /** Bytes of records so far (the journal's length, for deciding when to fold it into a checkpoint). */
  get bytes(): number {
    return this.end;
  }

  /**
   * Reads the records others appended since the last look, handing each payload to `apply` in order.
   * Stops before a torn tail; with `cutTorn` (the caller holds the lock: only a killed holder can have
   * left it), sets the tail aside, zeros it and returns what was cut.
   * @throws ERR_CORRUPT_FRAME when the file is damaged inside data a SYNC frame shows was fsync'd.
   */
  async catchUp(apply: (payload: Buffer) => void, cutTorn: boolean): Promise<TruncatedTail | undefined> {
    // Always read at the end: the file's size and mtime cannot tell (a write into the reserved zeros
    // keeps the size, and mtime ticks coarsely), and a holder that missed a record would overwrite it.
    // The plain case (whole frames, then zeros to the end of the file) in one synchronous read: a lock
    // holder spends no event-loop turn on it. Anything else goes to the segment reader below.
    if (this.catchUpSync(apply)) return undefined;
    let reader = this.reader;
    if (reader === undefined) {
      try {
        reader = await SegmentReader.open(this.path, { position: this.end });
      } catch (err) {
        if (isMqlogError(err, 'ERR_NOT_FOUND')) return undefined;
        throw err;
      }
      this.reader = reader;
    } else if (reader.nextPosition !== this.end) {
      reader.seek(this.end);
    }
    for (;;) {
      const step = await reader.next();
      this.syncedEnd = Math.max(this.syncedEnd, reader.syncedBytes);
      if (step.kind === 'frame') {
        if (step.frame.type === FrameType.RECORD) apply(step.frame.payload);
        this.end = step.frame.position + step.frame.bytes;
        this.sequence = step.frame.offset + 1;
        continue;
      }
      if (step.kind !== 'torn' || !cutTorn) return undefined;
      await this.closeReader();
      await this.handle?.close();
      this.handle = undefined;
      const savedAs = await setAsideTorn(this.path, step.position);
      // Zero the torn bytes rather than truncating: the reserve after them stays usable.
      const handle = await open(this.path, 'r+');
      try {
        await handle.write(Buffer.alloc(step.tornBytes), 0, step.tornBytes, step.position);
        await handle.datasync();
      } finally {
        await handle.close();
      }
      this.syncedEnd = step.position;
      return { path: this.path, position: step.position, bytes: step.tornBytes, reason: step.reason, savedAs };
    }
  }

  /**
   * Appends records with one write, after catching up. With `durable`, fdatasyncs before resolving. The
   * write itself is synchronous (a few hundred bytes into the page cache: no event-loop turn for it);
   * the fdatasync is not.
   * @throws ERR_DISK_FULL, ERR_IO (nothing of the failed write stays behind).
   */
  async append(payloads: readonly Buffer[], durable: boolean): Promise<void> {
    const handle = await this.openForAppend();
    const frames = payloads.map((payload, i) => encodeFrame(FrameType.RECORD, this.sequence + i, payload));
    // The write opens with what is known to be fsync'd before it (nothing to state at the very start).
    if (this.end > 0) frames.unshift(encodeSyncFrame(this.sequence, Math.min(this.syncedEnd, this.end)));
    const bytes = frames.reduce((n, f) => n + f.length, 0);
    const end = this.end + bytes;
    try {
      const reserve = end > this.reservedEnd ? RESERVE_BYTES : 0;
      try {
        writevSync(handle.fd, reserve > 0 ? [...frames, Buffer.alloc(reserve)] : frames, this.end);
        this.reservedEnd = Math.max(this.reservedEnd, end + reserve);
      } catch (err) {
        if (reserve === 0 || (err as NodeJS.ErrnoException).code !== 'ENOSPC') throw err;
        await handle.truncate(Math.max(this.end, this.reservedEnd));
        writevSync(handle.fd, frames, this.end);
        this.reservedEnd = Math.max(this.reservedEnd, end);
      }
      if (durable) {
        await handle.datasync();
        this.syncedEnd = end;
      }
    } catch (err) {
      // Zero what may have been written, so that no partial record stays behind.
      try {
        writeSync(handle.fd, Buffer.alloc(bytes), 0, bytes, this.end);
      } catch {
        // reported below
      }
      throw ioError(err, `cannot append to ${this.path}`, { path: this.path });
    }
    this.end = end;
    this.sequence += payloads.length;
  }

  /**
   * fdatasyncs what this object appended without `durable` (another process's fdatasync of the file
   * would do as well; this one knows only its own).
   */
  async sync(): Promise<void> {
    const handle = this.handle;
    if (handle === undefined || this.syncedEnd >= this.end) return;
    const end = this.end;
    try {
      await handle.datasync();
    } catch (err) {
      throw ioError(err, `cannot fsync ${this.path}`, { path: this.path });
    }
    this.syncedEnd = Math.max(this.syncedEnd, end);
  }

  async close(): Promise<void> {
    if (this.syncFd !== undefined) closeSync(this.syncFd);
    this.syncFd = undefined;
    await this.closeReader();
    const handle = this.handle;
    this.handle = undefined;
    await handle?.close();
  }

  /**
   * Reads what lies past the records read so far in one synchronous read, and applies it when it is
   * plain: whole frames with matching CRCs, then nothing or zeros to the end of the file. False (having
   * applied the whole frames before it) at anything else — a torn or damaged spot, more than
   * SYNC_READ_BYTES — which the segment reader then judges (§3.2).
   */
  private catchUpSync(apply: (payload: Buffer) => void): boolean {
    if (this.syncFd === undefined) {
      try {
        this.syncFd = openSync(this.path, 'r');
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENOENT') return this.end === 0;
        return false;
      }
    }
    const size = fstatSync(this.syncFd).size;
    const length = size - this.end;
    if (length <= 0) return length === 0;
    if (length > SYNC_READ_BYTES) return false;
    const bytes = Buffer.allocUnsafe(length);
    const read = readSync(this.syncFd, bytes, 0, length, this.end);
    const data = bytes.subarray(0, read);
    const base = this.end;
    let at = 0;
    while (at < data.length) {
      if (data[at] === 0) return isZero(data.subarray(at));
      const decoded = decodeFrame(data, at);
      if (!decoded.ok) return false;
      const { frame } = decoded;
      if (frame.type === FrameType.SYNC) {
        // A mark can only speak of bytes before it.
        const stated = decodeSyncPayload(frame.payload);
        if (stated !== undefined && stated <= base + at) this.syncedEnd = Math.max(this.syncedEnd, stated);
      } else {
        if (frame.type === FrameType.RECORD) apply(frame.payload);
        this.sequence = frame.offset + 1;
      }
      at += decoded.bytes;
      this.end = base + at;
    }
    return true;
  }

  private async closeReader(): Promise<void> {
    const reader = this.reader;
    this.reader = undefined;
    await reader?.close();
  }

  private async openForAppend(): Promise<FileHandle> {
    if (this.handle !== undefined) return this.handle;
    try {
      await (await open(this.path, 'a', FILE_MODE)).close();
      this.handle = await open(this.path, 'r+');
    } catch (err) {
      throw ioError(err, `cannot open ${this.path}`, { path: this.path });
    }
    this.reservedEnd = (await this.handle.stat()).size;
    // fsync the dir: a new file's name is not durable until its parent is.
    if (this.end === 0) await fsyncDir(dirname(this.path));
    return this.handle;
  }
}

const ZEROS = Buffer.alloc(64 * 1024);

/** True when every byte is zero. */
function isZero(bytes: Buffer): boolean {
  for (let at = 0; at < bytes.length; at += ZEROS.length) {
    const part = bytes.subarray(at, at + ZEROS.length);
    if (!part.equals(ZEROS.subarray(0, part.length))) return false;
  }
  return true;
}
