/**
 * Small durable-file helpers shared by every layer that writes to disk.
 * Each helper states what is durable when its promise resolves.
 */
import { renameSync, rmSync, writeFileSync } from 'node:fs';
import { mkdir, open, readdir, rename, rm, readFile, writeFile } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { dirname } from 'node:path';
import { ioError } from '../errors.js';

/** Mode for every directory mqlog creates: the owner only. */
export const DIR_MODE = 0o700;
/** Mode for every file mqlog creates: the owner only. */
export const FILE_MODE = 0o600;

/**
 * fsyncs a directory, so that entries created, renamed or removed in it are durable.
 * A new file's name is not durable until its parent directory is fsync'd.
 */
export async function fsyncDir(path: string): Promise<void> {
  const handle = await open(path, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/**
 * Creates a directory (and parents) with mode 0700 and makes every newly created entry durable by
 * fsyncing the parent of each directory it created.
 */
export async function ensureDir(path: string): Promise<void> {
  const first = await mkdir(path, { recursive: true, mode: DIR_MODE });
  if (first === undefined) return;
  // fsync from the deepest new directory up to the parent of the first one created.
  let dir = path;
  for (;;) {
    const parent = dirname(dir);
    await fsyncDir(parent);
    if (dir === first || parent === dir) break;
    dir = parent;
  }
}

/**
 * Replaces `path` atomically: write a temp file beside it (`path.<pid>.<random>.tmp`), fsync it, rename over `path`, fsync the directory.
 * When the promise resolves, a crash leaves the new content; before, the old one (or none).
 */
export async function writeFileAtomic(path: string, data: string | Uint8Array): Promise<void> {
  const tmp = tmpNameOf(path);
  try {
    const handle = await open(tmp, 'w', FILE_MODE);
    try {
      await handle.writeFile(data);
      await handle.datasync();
    } finally {
      await handle.close();
    }
    await rename(tmp, path);
    await fsyncDir(dirname(path));
  } catch (err) {
    await rm(tmp, { force: true }).catch(() => undefined);
    throw ioError(err, `cannot write ${path}`, { path });
  }
}

/**
 * Replaces `path` through a temp file and a rename, without fsync: for cache files that are checked
 * when read. A crash may leave the old content, the new one, or an empty or cut file, never a mix.
 */
export async function writeCacheFile(path: string, data: string | Uint8Array): Promise<void> {
  const tmp = tmpNameOf(path);
  try {
    await writeFile(tmp, data, { mode: FILE_MODE });
    await rename(tmp, path);
  } catch (err) {
    await rm(tmp, { force: true }).catch(() => undefined);
    throw ioError(err, `cannot write ${path}`, { path });
  }
}

/**
 * writeCacheFile with synchronous calls, for a small file written while the event loop is busy (each
 * await of the asynchronous one would wait for a turn of a loop that works in long steps).
 */
export function writeCacheFileSync(path: string, data: string | Uint8Array): void {
  const tmp = tmpNameOf(path);
  try {
    writeFileSync(tmp, data, { mode: FILE_MODE });
    renameSync(tmp, path);
  } catch (err) {
    rmSync(tmp, { force: true });
    throw ioError(err, `cannot write ${path}`, { path });
  }
}

/** A temp file's name beside `path`, of its own per call: two processes replacing one file never share one. */
export function tmpNameOf(path: string): string {
  return `${path}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`;
}

/** Reads a file, or returns undefined when it does not exist. */
export async function readFileIfExists(path: string): Promise<Buffer | undefined> {
  try {
    return await readFile(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw ioError(err, `cannot read ${path}`, { path });
  }
}

/** The names in a directory, sorted; empty when the directory does not exist. */
export async function readdirIfExists(path: string): Promise<string[]> {
  try {
    return (await readdir(path)).sort();
  } catch (err) {
    if (isNotFound(err)) return [];
    throw ioError(err, `cannot list ${path}`, { path });
  }
}

/** True for a Node.js "no such file or directory" error. */
export function isNotFound(err: unknown): boolean {
  return (err as NodeJS.ErrnoException | undefined)?.code === 'ENOENT';
}
