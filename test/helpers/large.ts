/**
 * Helpers for the large-payload tests: random files written in pieces (never whole in memory), SHA-256
 * of files and streams, free disk space, the bytes a queue holds on disk, and the peak RSS (VmHWM) of
 * child processes read from /proc.
 */
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, readFileSync } from 'node:fs';
import { open, readdir, stat, statfs } from 'node:fs/promises';
import { join } from 'node:path';

export const MiB = 1024 * 1024;
export const GiB = 1024 * MiB;

const PIECE_BYTES = 8 * MiB;

/**
 * Writes `size` random bytes to a new file at `path`, `PIECE_BYTES` at a time, and returns their SHA-256.
 * The next piece is generated (in the thread pool) while the current one is hashed and written.
 */
export async function writeRandomFile(path: string, size: number): Promise<string> {
  const hash = createHash('sha256');
  const handle = await open(path, 'wx', 0o600);
  // crypto.randomBytes with a callback: generated in the thread pool while this thread hashes and writes.
  const fill = (bytes: number): Promise<Buffer> => new Promise((resolve, reject) => randomBytes(bytes, (err, buf) => (err === null ? resolve(buf) : reject(err))));
  try {
    let written = 0;
    let next = size > 0 ? fill(Math.min(PIECE_BYTES, size)) : undefined;
    while (next !== undefined) {
      const piece = await next;
      const after = written + piece.length;
      next = after < size ? fill(Math.min(PIECE_BYTES, size - after)) : undefined;
      hash.update(piece);
      let done = 0;
      while (done < piece.length) done += (await handle.write(piece, done, piece.length - done, written + done)).bytesWritten;
      written = after;
    }
  } finally {
    await handle.close();
  }
  return hash.digest('hex');
}

/** SHA-256 (hex) and size of whatever an async iterable of buffers yields. */
export async function sha256Of(source: AsyncIterable<Uint8Array>): Promise<{ sha256: string; size: number }> {
  const hash = createHash('sha256');
  let size = 0;
  for await (const piece of source) {
    hash.update(piece);
    size += piece.length;
  }
  return { sha256: hash.digest('hex'), size };
}

export function sha256File(path: string): Promise<{ sha256: string; size: number }> {
  return sha256Of(createReadStream(path, { highWaterMark: 4 * MiB }));
}

/** Bytes an unprivileged process may still write on the file system holding `path`. */
export async function freeBytes(path: string): Promise<number> {
  const stats = await statfs(path);
  return stats.bavail * stats.bsize;
}

/** Sum of the sizes of every segment file (`*.seg`) under `dir`, 0 when it does not exist. */
export async function segmentBytes(dir: string): Promise<number> {
  let entries: string[];
  try {
    entries = await readdir(dir, { recursive: true });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return 0;
    throw err;
  }
  let total = 0;
  for (const entry of entries) {
    if (!entry.endsWith('.seg')) continue;
    try {
      total += (await stat(join(dir, entry))).size;
    } catch (err) {
      // compaction may remove a segment between readdir and stat
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
  }
  return total;
}

/** VmHWM (peak resident set size) of a live process, in bytes; undefined once it is gone. */
export function readVmHWM(pid: number): number | undefined {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/status`, 'utf8');
  } catch {
    return undefined;
  }
  const match = /^VmHWM:\s+(\d+)\s+kB$/m.exec(text);
  return match === null ? undefined : Number(match[1]) * 1024;
}

/**
 * Follows the peak RSS of processes: polls /proc/PID/status every `intervalMs` and keeps, per process,
 * the last VmHWM read (the high-water mark only grows, so the last reading before the process exits
 * is its peak, give or take what it grew in its last interval). Call `sample()` right before stopping a
 * process to read it once more.
 */
export class PeakRss {
  private readonly peaks = new Map<string, { pid: number; bytes: number }[]>();
  private readonly timer: NodeJS.Timeout;

  constructor(intervalMs = 50) {
    this.timer = setInterval(() => this.sample(), intervalMs);
  }

  /** Starts following process `pid` under `label` (a restarted process adds a second entry to the label). */
  watch(label: string, pid: number | undefined): void {
    if (pid === undefined) throw new Error(`${label} has no pid (did it start?)`);
    const list = this.peaks.get(label) ?? [];
    list.push({ pid, bytes: readVmHWM(pid) ?? 0 });
    this.peaks.set(label, list);
  }

  sample(): void {
    for (const list of this.peaks.values()) {
      for (const entry of list) {
        const bytes = readVmHWM(entry.pid);
        if (bytes !== undefined && bytes > entry.bytes) entry.bytes = bytes;
      }
    }
  }

  /** Highest peak per label (over every process the label had). */
  results(): Map<string, number> {
    return new Map([...this.peaks].map(([label, list]) => [label, Math.max(0, ...list.map((e) => e.bytes))]));
  }

  stop(): void {
    clearInterval(this.timer);
  }
}
