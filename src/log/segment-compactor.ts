/**
 * Compaction of one stream's segment files (spec/log-format.md §13): the caller says which frames to
 * keep; this module reclaims the space of the others, in whole segments.
 *
 * Only sealed segments are touched while a writer may append (never the one it appends to): a segment
 * with no kept frame is deleted; one whose kept frames are less than `rewriteBelowShare` of its bytes is
 * rewritten — kept frames copied as they are into a temp file, fsync'd, renamed over the segment, the
 * directory fsync'd — so that either the old or the new file is in force after a crash, never both or
 * neither. The last segment of a stream whose writer is gone is retired the same way once nothing in it
 * is kept: the slot is claimed, the stream recovered as a writer would, an empty successor created, and
 * the old segment deleted.
 *
 * Offsets never change, so cursors, acks and position hints stay valid (hints are re-checked by offset).
 * Compactors of one queue take turns (the caller holds `compact.lock`); writers and readers never wait.
 */
import { open, readdir, rename, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { ioError, isMqlogError } from '../errors.js';
import { FILE_MODE, fsyncDir, isNotFound } from '../util/fs.js';
import { frameChecksum } from './frame.js';
import { Lock } from './lock.js';
import type { CompactOptions, KeepFrame, SegmentDecision, StreamCompaction } from './log-store.js';
import { SegmentReader, parseSegmentFileName, storedFrame } from './segment.js';
import { INDEX_SUFFIX, IndexBuilder, summarize, type SegmentIndex } from './segment-index.js';
import { indexPathOf, removeSegmentIndex, type SegmentIndexes } from './segment-index-file.js';
import { SegmentSet, type SegmentInfo } from './segment-set.js';
import { StreamWriter } from './stream-writer.js';

type Action = 'kept' | 'deleted' | 'rewritten' | 'retired';

interface Outcome {
  readonly action: Action;
  readonly framesRemoved: number;
  readonly bytesReclaimed: number;
}

const KEPT: Outcome = { action: 'kept', framesRemoved: 0, bytesReclaimed: 0 };
/** Thrown inside a rewrite when the signal fires: the rewrite is abandoned. */
const ABANDONED = new Error('compaction stopped');

/**
 * Compacts the stream in `dir`, whose writer slot lock is `slotLock`. `segmentBytes` is what a writer
 * of the stream would use (a retired tail's stream is recovered with it); `indexes` give the segments'
 * summaries that `decide` is asked about.
 */
export async function compactStream(
  dir: string,
  stream: string,
  slotLock: string,
  keep: KeepFrame,
  options: CompactOptions & { readonly segmentBytes?: number; readonly indexes?: SegmentIndexes } = {},
): Promise<StreamCompaction> {
  const set = new SegmentSet(dir);
  const result = { segmentsDeleted: 0, segmentsRewritten: 0, framesRemoved: 0, bytesReclaimed: 0 };
  await removeLeftovers(dir);
  try {
    await compactSegments(set, stream, slotLock, keep, options, result);
  } finally {
    // One fsync of the directory for every removal and rename of the round: until it, a crash may
    // bring a removed segment back or leave the old one of a rewrite in force, both whole and done.
    if (result.segmentsDeleted + result.segmentsRewritten > 0) await fsyncDir(dir);
  }
  return result;
}

async function compactSegments(
  set: SegmentSet,
  stream: string,
  slotLock: string,
  keep: KeepFrame,
  options: CompactOptions & { readonly segmentBytes?: number; readonly indexes?: SegmentIndexes },
  result: { segmentsDeleted: number; segmentsRewritten: number; framesRemoved: number; bytesReclaimed: number },
): Promise<void> {
  const segments = await set.list();
  const signal = options.signal;
  for (const [index, segment] of segments.entries()) {
    if (signal?.aborted === true) break;
    // Nothing at or past `keepFrom` can go: no need to read it.
    if (options.keepFrom !== undefined && segment.baseOffset >= options.keepFrom) continue;
    const sealed = index < segments.length - 1;
    const decided = await decide(stream, segment, sealed, options);
    if (decided === undefined) continue; // gone meanwhile
    let outcome: Outcome;
    if (decided.decision === 'keep') outcome = KEPT;
    else if (decided.decision === 'drop' && sealed) outcome = await dropSegment(set, segment, decided.frames);
    else outcome = sealed ? await compactSegment(set, segment, stream, keep, options.rewriteBelowShare ?? 0.5, signal) : await retireTail(set, segment, stream, slotLock, keep, options.segmentBytes, signal);
    result.segmentsDeleted += outcome.action === 'deleted' || outcome.action === 'retired' ? 1 : 0;
    result.segmentsRewritten += outcome.action === 'rewritten' ? 1 : 0;
    result.framesRemoved += outcome.framesRemoved;
    result.bytesReclaimed += outcome.bytesReclaimed;
    options.onSegment?.(segment.path, outcome.action);
  }
}

/**
 * What the caller decides from the segment's summary (its index) before anything is read, and how
 * many frames the summary says it holds; undefined when the segment is gone.
 */
async function decide(stream: string, segment: SegmentInfo, sealed: boolean, options: CompactOptions & { readonly indexes?: SegmentIndexes }): Promise<{ decision: SegmentDecision; frames: number } | undefined> {
  if (options.decide === undefined) return { decision: 'read', frames: 0 };
  const indexes = options.indexes;
  const found = indexes === undefined ? undefined : await indexes.of(segment.path, segment.baseOffset, sealed, { rebuild: sealed, ...(options.signal === undefined ? {} : { signal: options.signal }) }).catch(() => undefined);
  const size = found?.bytes ?? (await stat(segment.path).then((s) => s.size, () => undefined));
  if (size === undefined) return undefined;
  const summary = summarize(stream, segment.baseOffset, sealed, size, found?.index);
  // Only what a summary describes whole may be dropped unread.
  const decision = await options.decide(summary);
  return { decision: decision === 'drop' && !summary.complete ? 'read' : decision, frames: summary.frames };
}

/** Deletes a sealed segment unread (the caller knows every frame of it goes), and its index. */
async function dropSegment(set: SegmentSet, segment: SegmentInfo, frames: number): Promise<Outcome> {
  const size = await stat(segment.path).then((s) => s.size, () => undefined);
  if (size === undefined) return KEPT; // removed meanwhile
  await rm(segment.path, { force: true });
  await removeSegmentIndex(segment.path);
  return { action: 'deleted', framesRemoved: frames, bytesReclaimed: size };
}

async function compactSegment(set: SegmentSet, segment: SegmentInfo, stream: string, keep: KeepFrame, rewriteBelowShare: number, signal: AbortSignal | undefined): Promise<Outcome> {
  const survey = await surveySegment(segment, stream, keep, signal);
  if (survey === undefined || survey.removed === 0) return KEPT;
  // The file's own size: it also holds the log's sync marks, which no caller keeps or drops.
  const fileBytes = await stat(segment.path).then((s) => s.size, () => survey.totalBytes);
  if (survey.keptFrames === 0) {
    await rm(segment.path, { force: true });
    await removeSegmentIndex(segment.path);
    return { action: 'deleted', framesRemoved: survey.removed, bytesReclaimed: fileBytes };
  }
  if (survey.keptBytes >= survey.totalBytes * rewriteBelowShare) return KEPT;
  const tmp = `${segment.path}.${process.pid}.compact.tmp`;
  const handle = await open(tmp, 'w', FILE_MODE);
  let written = 0;
  const index = new IndexBuilder(segment.baseOffset);
  try {
    const reader = await SegmentReader.open(segment.path);
    try {
      for (;;) {
        // A shutdown does not wait for the rewrite: the temp file goes, the segment stays as it was.
        if (signal?.aborted === true) throw ABANDONED;
        const step = await reader.next();
        if (step.kind !== 'frame') break;
        const frame = step.frame;
        if (!(await keep(storedFrame(stream, segment.baseOffset, frame)))) continue;
        // Copied as stored: the same bytes, the same CRC, the same offset.
        await handle.write(frame.raw, 0, frame.raw.length, written);
        index.add({ type: frame.type, offset: frame.offset, position: written, bytes: frame.bytes, crc: frameChecksum(frame.raw) });
        written += frame.raw.length;
      }
    } finally {
      await reader.close();
    }
    await handle.datasync();
  } catch (err) {
    await handle.close();
    await rm(tmp, { force: true });
    if (err === ABANDONED) return KEPT;
    throw ioError(err, `cannot rewrite ${segment.path}`, { path: segment.path });
  }
  await handle.close();
  // The new segment's index, fsync'd before either rename (a cache: failing to write it costs a scan).
  const indexTmp = await writeIndexBeside(tmp, index.build('sealed', written));
  // The rename is the switch: before it the old segment is in force, after it the new one. The old
  // index goes first, so that no crash leaves it beside the new segment (it would be found stale anyway).
  await removeSegmentIndex(segment.path);
  await rename(tmp, segment.path);
  if (indexTmp !== undefined) await rename(indexTmp, indexPathOf(segment.path)).catch(() => rm(indexTmp, { force: true }));
  return { action: 'rewritten', framesRemoved: survey.removed, bytesReclaimed: fileBytes - written };
}

/** Writes `index` fsync'd into a temp file beside `tmp` (to be renamed with the segment); undefined when it cannot. */
async function writeIndexBeside(tmp: string, index: SegmentIndex): Promise<string | undefined> {
  const path = `${tmp}${INDEX_SUFFIX}`;
  try {
    const handle = await open(path, 'w', FILE_MODE);
    try {
      await handle.writeFile(index.encode());
      await handle.datasync();
    } finally {
      await handle.close();
    }
    return path;
  } catch {
    await rm(path, { force: true }).catch(() => undefined);
    return undefined;
  }
}

/**
 * Retires the last segment of a stream whose writer is gone, once no frame in it is kept. A segment a
 * writer holds is not even read.
 */
async function retireTail(set: SegmentSet, segment: SegmentInfo, stream: string, slotLock: string, keep: KeepFrame, segmentBytes: number | undefined, signal: AbortSignal | undefined): Promise<Outcome> {
  const size = await stat(segment.path).then((s) => s.size, () => 0);
  if (size === 0) return KEPT;
  // A writer is appending here: not worth reading. (Looked at without holding the slot meanwhile, so
  // that a writer starting during the survey still gets it, and then keeps the segment from retiring.)
  const probe = await Lock.tryAcquire(slotLock);
  if (probe === undefined) return KEPT;
  await probe.release();
  const survey = await surveySegment(segment, stream, keep, signal);
  if (survey === undefined || survey.keptFrames > 0 || survey.removed === 0 || survey.torn) return KEPT;
  const lock = await Lock.tryAcquire(slotLock);
  if (lock === undefined) return KEPT; // a writer is appending here
  try {
    // Recover as the slot's writer would (cuts a torn tail), then start an empty successor.
    const writer = await StreamWriter.open(set.dir, segmentBytes === undefined ? {} : { segmentBytes });
    const next = writer.nextOffset;
    await writer.close();
    const again = await surveySegment(segment, stream, keep, signal);
    if (again === undefined || again.keptFrames > 0) return KEPT;
    const handle = await set.create(next);
    await handle.close();
    await rm(segment.path, { force: true });
    await removeSegmentIndex(segment.path);
    await fsyncDir(set.dir);
    return { action: 'retired', framesRemoved: again.removed, bytesReclaimed: size };
  } catch (err) {
    if (isMqlogError(err)) return KEPT; // corrupt or busy: leave it for verify and the next round
    throw err;
  } finally {
    await lock.release();
  }
}

interface Survey {
  readonly keptFrames: number;
  readonly keptBytes: number;
  readonly removed: number;
  readonly totalBytes: number;
  readonly torn: boolean;
}

/** What `keep` says of each frame of a segment; undefined when it is gone, damaged, or the signal fired. */
async function surveySegment(segment: SegmentInfo, stream: string, keep: KeepFrame, signal: AbortSignal | undefined): Promise<Survey | undefined> {
  let reader: SegmentReader;
  try {
    reader = await SegmentReader.open(segment.path);
  } catch (err) {
    if (isMqlogError(err, 'ERR_NOT_FOUND')) return undefined;
    throw err;
  }
  let keptFrames = 0;
  let keptBytes = 0;
  let removed = 0;
  let totalBytes = 0;
  let torn: boolean;
  try {
    for (;;) {
      if (signal?.aborted === true) return undefined;
      let step;
      try {
        step = await reader.next();
      } catch (err) {
        if (isMqlogError(err)) return undefined; // corrupt: verify reports it; compaction keeps it
        throw err;
      }
      if (step.kind !== 'frame') {
        torn = step.kind === 'torn';
        break;
      }
      totalBytes += step.frame.bytes;
      if (await keep(storedFrame(stream, segment.baseOffset, step.frame))) {
        keptFrames++;
        keptBytes += step.frame.bytes;
      } else removed++;
    }
  } finally {
    await reader.close();
  }
  return { keptFrames, keptBytes, removed, totalBytes, torn };
}

/** An index temp file older than this was left by a killed writer (a live one renames it within moments). */
const INDEX_TMP_STALE_MS = 60_000;

/**
 * Removes what killed processes left: a compactor's temp files (`*.compact.tmp`), index temp files, and
 * indexes whose segment is gone (a crash between removing a segment and its index).
 */
async function removeLeftovers(dir: string): Promise<void> {
  let names: string[];
  try {
    names = await readdir(dir);
  } catch (err) {
    if (isNotFound(err)) return;
    throw err;
  }
  const segments = new Set(names.filter((name) => parseSegmentFileName(name) !== undefined).map((name) => indexPathOf(join(dir, name))));
  for (const name of names) {
    const path = join(dir, name);
    if (name.endsWith('.compact.tmp') || name.endsWith(`.compact.tmp${INDEX_SUFFIX}`)) await rm(path, { force: true });
    else if (name.endsWith(INDEX_SUFFIX) && !segments.has(path)) await rm(path, { force: true });
    else if (name.includes(`${INDEX_SUFFIX}.`) && name.endsWith('.tmp')) {
      const age = await stat(path).then((s) => Date.now() - s.mtimeMs, () => 0);
      if (age > INDEX_TMP_STALE_MS) await rm(path, { force: true });
    }
  }
}
