/**
 * The summary files of one outbox (spec/log-format.md §17): one per segment of each stream, a cache
 * (message-blocks.ts holds their content). Read and checked here, written without fsync (a crash leaves
 * the old file, the new one, or one that does not parse and is ignored), removed with their segment.
 *
 *   DIR/outbox/summaries/<stream>/<20-digit base>.json
 *
 * Any process may write them at any time: writers of one file write what the same messages give.
 */
import { rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { frameChecksum } from '../log/frame.js';
import type { LogStore } from '../log/log-store.js';
import { ensureDir, readFileIfExists, readdirIfExists, writeCacheFile } from '../util/fs.js';
import type { QueueInfo } from './layout.js';
import { decodeSegmentMessages, encodeSegmentMessages, segmentTotal, type SegmentMessages } from './message-blocks.js';

export const SUMMARIES_DIR = 'summaries';

/** A temp file of a summary older than this was left by a killed process. */
const TMP_STALE_MS = 60_000;

export class OutboxSummaries {
  private readonly store: LogStore;
  private readonly info: QueueInfo;

  constructor(store: LogStore, info: QueueInfo) {
    this.store = store;
    this.info = info;
  }

  /** The summary file of a segment, if there is one that parses (not yet checked against the segment). */
  async load(stream: string, base: number): Promise<SegmentMessages | undefined> {
    const raw = await readFileIfExists(this.pathOf(stream, base)).catch(() => undefined);
    return raw === undefined ? undefined : decodeSegmentMessages(raw, stream, base);
  }

  /** Whether the last message a summary of an open segment names is still where it says (the segment was not replaced). */
  async checks(summary: SegmentMessages): Promise<boolean> {
    const last = summary.last;
    if (last === undefined) return segmentTotal(summary) === undefined;
    const frame = await this.store.frameAt(this.info.queue, summary.stream, last.offset, { segment: summary.base, position: last.position, offset: last.offset }).catch(() => undefined);
    return frame !== undefined && frame.segment === summary.base && frame.position === last.position && frameChecksum(frame.raw) === last.crc;
  }

  /** Writes a summary file; a cache, so failing (a read-only directory) changes nothing but speed. */
  async write(summary: SegmentMessages): Promise<void> {
    const path = this.pathOf(summary.stream, summary.base);
    try {
      await ensureDir(join(path, '..'));
      await writeCacheFile(path, encodeSegmentMessages(summary));
    } catch {
      // Not kept: the next caller reads those messages again.
    }
  }

  /**
   * Removes the summary files of segments that are gone (compacted away) and temp files left by killed
   * processes. A summary of a segment newer than every segment listed is left: it may have just come.
   */
  async prune(): Promise<void> {
    const root = join(this.info.dir, SUMMARIES_DIR);
    for (const stream of await readdirIfExists(root)) {
      const bases = new Set((await this.store.segments(this.info.queue, stream).catch(() => [])).map((s) => s.base));
      const newest = Math.max(-1, ...bases);
      for (const name of await readdirIfExists(join(root, stream))) {
        const path = join(root, stream, name);
        const base = /^(\d{20})\.json$/.exec(name)?.[1];
        if (base !== undefined) {
          if (!bases.has(Number(base)) && Number(base) < newest) await rm(path, { force: true });
        } else if (name.endsWith('.tmp') && (await stat(path).then((s) => Date.now() - s.mtimeMs, () => 0)) > TMP_STALE_MS) await rm(path, { force: true });
      }
    }
  }

  private pathOf(stream: string, base: number): string {
    return join(this.info.dir, SUMMARIES_DIR, stream, `${String(base).padStart(20, '0')}.json`);
  }
}
