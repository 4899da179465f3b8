/**
 * The `.idx` files beside the segments (spec/log-format.md §16): loading one and checking that it
 * still describes its segment, writing one (temp file, fsync, rename, dir fsync), rebuilding one by a
 * scan, removing one with its segment. An index is a cache, never the only copy of anything: a missing,
 * stale or damaged one is rebuilt from its segment, and failing to write one changes nothing but speed.
 *
 * SegmentIndexes keeps the sealed indexes it checked, by segment file identity (inode, size, mtime):
 * a rewritten segment is a new file, so a kept index is never used for frames it does not describe.
 *
 * Safe from any process at any time: writers of the same index write the same bytes, each through a
 * temp file of its own, and readers check what they load.
 */
import { closeSync, fstatSync, openSync, readFileSync, readSync } from 'node:fs';
import { open, rename, rm, stat } from 'node:fs/promises';
import { dirname } from 'node:path';
import { abortError, isMqlogError } from '../errors.js';
import { FILE_MODE, fsyncDir, isNotFound, tmpNameOf } from '../util/fs.js';
import { FRAME_HEADER_BYTES, decodeFrame, frameChecksum, parseFrameHeader } from './frame.js';
import { SegmentReader, SEGMENT_SUFFIX } from './segment.js';
import { INDEX_SUFFIX, IndexBuilder, SegmentIndex } from './segment-index.js';

/** `…/00000000000000000042.idx` for `…/00000000000000000042.seg`. */
export function indexPathOf(segmentPath: string): string {
  return `${segmentPath.endsWith(SEGMENT_SUFFIX) ? segmentPath.slice(0, -SEGMENT_SUFFIX.length) : segmentPath}${INDEX_SUFFIX}`;
}

export type IndexLoad =
  | { readonly index: SegmentIndex }
  | { readonly missing: true }
  /** There is a file, but it does not describe the segment as it is now. */
  | { readonly problem: string };

/**
 * Loads the index of the segment at `segmentPath` (open as `fd`, `size` bytes long now) and checks that
 * it describes it: a sealed index covers exactly `size` bytes, a partial one no more, and the last frame
 * it names is where it says, with its offset and CRC. Synchronous reads: an index file and one frame,
 * in the page cache when the segment is in use (a thread-pool round trip each would cost more than the
 * read; a listing of a large queue loads dozens).
 */
export function loadSegmentIndex(segmentPath: string, fd: number, size: number, base: number): IndexLoad {
  let bytes: Buffer;
  try {
    bytes = readFileSync(indexPathOf(segmentPath));
  } catch (err) {
    if (isNotFound(err)) return { missing: true };
    return { problem: `cannot be read: ${(err as Error).message}` };
  }
  const index = SegmentIndex.decode(bytes, base);
  if (typeof index === 'string') return { problem: `damaged: ${index}` };
  if (index.state === 'sealed' ? index.coveredBytes !== size : index.coveredBytes > size) {
    return { problem: `stale: built for ${index.coveredBytes} bytes of a segment of ${size}` };
  }
  const last = index.last;
  // Its last frame must be there whole, as it names it (header and payload: a CRC check): what it
  // describes is then the segment's, and reading may go on right after it.
  if (last !== undefined) {
    const header = Buffer.alloc(FRAME_HEADER_BYTES);
    const bytesRead = readSync(fd, header, 0, FRAME_HEADER_BYTES, last.position);
    const check = bytesRead === FRAME_HEADER_BYTES ? parseFrameHeader(header) : undefined;
    const frameBytes = check?.ok === true ? FRAME_HEADER_BYTES + check.header.payloadBytes : 0;
    if (check?.ok !== true || check.header.offset !== last.offset || check.header.crc !== last.crc || last.position + frameBytes > index.coveredBytes) {
      return { problem: `stale: the frame at byte ${last.position} is not offset ${last.offset} it names` };
    }
    const whole = Buffer.alloc(frameBytes);
    const got = readSync(fd, whole, 0, frameBytes, last.position);
    if (got !== frameBytes || !decodeFrame(whole).ok) return { problem: `stale: the frame at byte ${last.position} it names is damaged` };
  }
  return { index };
}

/**
 * How an index file is written: `cache`, not fsync'd (a crash may leave the old file, the new one or a
 * damaged one, which the next load tells apart); `data`, fsync'd before its rename, the caller fsyncs
 * the directory (after several renames at once); `durable`, fsync'd and its name made durable.
 */
export type IndexSync = 'cache' | 'data' | 'durable';

/** Writes the index of the segment at `segmentPath` through a temp file of its own, then a rename. */
export async function writeSegmentIndex(segmentPath: string, index: SegmentIndex, sync: IndexSync): Promise<void> {
  const path = indexPathOf(segmentPath);
  const tmp = tmpNameOf(path);
  try {
    const handle = await open(tmp, 'w', FILE_MODE);
    try {
      await handle.writeFile(index.encode());
      if (sync !== 'cache') await handle.datasync();
    } finally {
      await handle.close();
    }
    await rename(tmp, path);
    // fsync the dir: a new file's name is not durable until its parent is.
    if (sync === 'durable') await fsyncDir(dirname(path));
  } catch (err) {
    await rm(tmp, { force: true }).catch(() => undefined);
    throw err;
  }
}

/** Removes the index of a segment (with the segment, or because it is wrong); the caller fsyncs the directory. */
export async function removeSegmentIndex(segmentPath: string): Promise<void> {
  await rm(indexPathOf(segmentPath), { force: true });
}

/** What a scan of a segment found: the index of every frame read, and where and why the data ends. */
export interface SegmentScan {
  readonly builder: IndexBuilder;
  /** Byte position where the data ends (or where reading stopped at a torn tail). */
  readonly end: number;
  readonly torn: boolean;
}

/**
 * Reads the segment from where `from` stops (byte 0 without it), adding every frame to an index builder
 * that continues `from`.
 * @throws ERR_CORRUPT_FRAME / ERR_UNSUPPORTED_VERSION at damaged data; ERR_NOT_FOUND when the segment is
 *   gone; ERR_ABORTED when `signal` fires.
 */
export async function scanSegment(segmentPath: string, base: number, from?: SegmentIndex, signal?: AbortSignal): Promise<SegmentScan> {
  const builder = new IndexBuilder(base, from);
  const reader = await SegmentReader.open(segmentPath, { position: from?.coveredBytes ?? 0 });
  try {
    for (let n = 0; ; n++) {
      if ((n & 1023) === 0 && signal?.aborted === true) throw abortError(signal);
      const step = await reader.next();
      if (step.kind === 'frame') {
        const f = step.frame;
        builder.add({ type: f.type, offset: f.offset, position: f.position, bytes: f.bytes, crc: frameChecksum(f.raw) });
        continue;
      }
      if (step.kind === 'skipped') continue; // nothing is skipped here
      return { builder, end: step.position, torn: step.kind === 'torn' };
    }
  } finally {
    await reader.close();
  }
}

interface Known {
  readonly ino: number;
  readonly size: number;
  readonly mtimeMs: number;
  readonly index: SegmentIndex;
}

/** At most this many checked indexes are kept (a few MiB for the largest segments). */
const MAX_KNOWN = 4096;

/**
 * The sealed indexes of one store, checked once per segment file and kept while the file is unchanged;
 * and the indexes of the open segments this process writes, as their writers keep them (every frame
 * fsync'd so far), which stand in for the checkpoints on disk: a follower in the writer's process (a
 * daemon counting what it received) learns what was appended without reading it.
 */
export class SegmentIndexes {
  private readonly known = new Map<string, Known>();
  private readonly live = new Map<string, () => SegmentIndex>();

  /** The writer of the open segment at `segmentPath` is in this process: `index` describes what it fsync'd. */
  showLive(segmentPath: string, index: () => SegmentIndex): void {
    this.live.set(segmentPath, index);
  }

  /** The writer of that segment sealed or closed it (its index on disk says the rest). */
  hideLive(segmentPath: string, index: () => SegmentIndex): void {
    if (this.live.get(segmentPath) === index) this.live.delete(segmentPath);
  }

  /**
   * The index of a segment (a stream's last one: `sealed` false), checked against the file as it is now
   * (undefined when it has no usable one), and the segment's size; undefined when the segment is gone. With `rebuild`, a sealed segment whose
   * index is missing or bad gets a new one by a scan, written durably (best effort: a read-only
   * directory only costs the next caller the same scan); a damaged segment gets none.
   * @throws ERR_ABORTED when `signal` fires during a rebuild.
   */
  async of(segmentPath: string, base: number, sealed: boolean, options: { readonly rebuild?: boolean; readonly signal?: AbortSignal } = {}): Promise<{ readonly index: SegmentIndex | undefined; readonly bytes: number } | undefined> {
    const live = sealed ? undefined : this.live.get(segmentPath);
    if (live !== undefined) {
      try {
        return { index: live(), bytes: (await stat(segmentPath)).size };
      } catch (err) {
        if (isNotFound(err)) return undefined;
        throw err;
      }
    }
    // Synchronous, as the load: an open and a stat per segment, for every listing.
    let fd: number;
    try {
      fd = openSync(segmentPath, 'r');
    } catch (err) {
      if (isNotFound(err)) return undefined;
      throw err;
    }
    try {
      const file = fstatSync(fd);
      const known = this.known.get(segmentPath);
      if (known !== undefined && known.ino === file.ino && known.size === file.size && known.mtimeMs === file.mtimeMs) return { index: known.index, bytes: file.size };
      const loaded = loadSegmentIndex(segmentPath, fd, file.size, base);
      let index = 'index' in loaded ? loaded.index : undefined;
      if (sealed && options.rebuild === true && (index === undefined || index.state !== 'sealed')) index = await this.rebuild(segmentPath, base, index, file, options.signal);
      if (index?.state === 'sealed' && index.coveredBytes === file.size) this.remember(segmentPath, { ino: file.ino, size: file.size, mtimeMs: file.mtimeMs, index });
      return { index, bytes: file.size };
    } finally {
      closeSync(fd);
    }
  }

  /** Drops what is known of a segment (rewritten or deleted by this process). */
  forget(segmentPath: string): void {
    this.known.delete(segmentPath);
  }

  private remember(path: string, known: Known): void {
    this.known.delete(path);
    this.known.set(path, known);
    if (this.known.size > MAX_KNOWN) this.known.delete(this.known.keys().next().value as string);
  }

  /** Scans a sealed segment (from where a partial index stops) and writes its index; undefined when it is damaged. */
  private async rebuild(segmentPath: string, base: number, from: SegmentIndex | undefined, file: { readonly ino: number; readonly size: number }, signal: AbortSignal | undefined): Promise<SegmentIndex | undefined> {
    const size = file.size;
    let scan: SegmentScan;
    try {
      scan = await scanSegment(segmentPath, base, from, signal);
    } catch (err) {
      if (isMqlogError(err, 'ERR_ABORTED') || isMqlogError(err, 'ERR_TIMEOUT') || !isMqlogError(err)) throw err;
      return undefined; // damaged (or gone): verify reports it, readers meet it
    }
    // A sealed segment ends exactly after its data; anything else is damage (or a file that changed meanwhile).
    if (scan.torn || scan.end !== size) return undefined;
    const index = scan.builder.build('sealed', size);
    // Written only if the file is still the one scanned: a rewrite meanwhile has its own index.
    const now = await stat(segmentPath).catch(() => undefined);
    if (now?.size === size && now.ino === file.ino) await writeSegmentIndex(segmentPath, index, 'durable').catch(() => undefined);
    return index;
  }
}
