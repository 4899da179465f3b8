/**
 * A segment set: the directory of one stream's segment files, named by base offset
 * (spec/log-format.md §3). It lists segments and creates new ones durably; reading and writing live in
 * stream-reader.ts and stream-writer.ts.
 *
 * Listing is safe at any time, from any process: segments only appear (roll) or disappear (compaction),
 * and a reader that finds its segment gone re-lists and seeks by offset.
 */
import { open, readdir, stat, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { ioError, MqlogError } from '../errors.js';
import { FILE_MODE, ensureDir, fsyncDir, isNotFound } from '../util/fs.js';
import { SEGMENT_SUFFIX, parseSegmentFileName, segmentFileName } from './segment.js';

export interface SegmentInfo {
  readonly baseOffset: number;
  readonly path: string;
}

export class SegmentSet {
  readonly dir: string;

  constructor(dir: string) {
    this.dir = dir;
  }

  pathOf(baseOffset: number): string {
    return join(this.dir, segmentFileName(baseOffset));
  }

  /**
   * The segment named `baseOffset`, when that file exists now; undefined otherwise. One stat instead of
   * a listing, for a reader that knows the name to expect (a successor is usually named by the offset
   * after its predecessor's last frame).
   */
  async find(baseOffset: number): Promise<SegmentInfo | undefined> {
    const path = this.pathOf(baseOffset);
    try {
      await stat(path);
      return { baseOffset, path };
    } catch (err) {
      if (isNotFound(err)) return undefined;
      throw ioError(err, `cannot look at ${path}`, { path });
    }
  }

  /** Segments in base-offset order; empty when the directory does not exist (yet). */
  async list(): Promise<SegmentInfo[]> {
    let names: string[];
    try {
      names = await readdir(this.dir);
    } catch (err) {
      if (isNotFound(err)) return [];
      throw ioError(err, `cannot list segments in ${this.dir}`, { path: this.dir });
    }
    const segments: SegmentInfo[] = [];
    // Thousands of names in a large stream: a plain concatenation (the directory is joined once).
    const prefix = join(this.dir, '/');
    for (const name of names) {
      if (!name.endsWith(SEGMENT_SUFFIX)) continue;
      const baseOffset = parseSegmentFileName(name);
      if (baseOffset !== undefined) segments.push({ baseOffset, path: prefix + name });
    }
    return segments.sort((a, b) => a.baseOffset - b.baseOffset);
  }

  /**
   * Creates the segment for `baseOffset` and makes its name durable (fsync of the directory).
   * Fails with ERR_IO if the file already exists: a base offset is never reused.
   */
  async create(baseOffset: number): Promise<FileHandle> {
    await ensureDir(this.dir);
    const path = this.pathOf(baseOffset);
    let handle: FileHandle;
    try {
      handle = await open(path, 'wx+', FILE_MODE);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'EEXIST') {
        throw new MqlogError('ERR_IO', `segment ${path} already exists`, { details: { path }, cause: err });
      }
      throw ioError(err, `cannot create segment ${path}`, { path });
    }
    try {
      // fsync the dir: a new file's name is not durable until its parent is.
      await fsyncDir(this.dir);
    } catch (err) {
      await handle.close();
      throw ioError(err, `cannot fsync ${this.dir}`, { path: this.dir });
    }
    return handle;
  }

  /** Opens an existing segment for appending at explicit positions. */
  async openForWrite(baseOffset: number): Promise<FileHandle> {
    const path = this.pathOf(baseOffset);
    try {
      return await open(path, 'r+');
    } catch (err) {
      throw ioError(err, `cannot open segment ${path}`, { path });
    }
  }
}
