/**
 * An append-only log file bounded in size: when it passes `maxBytes`, it becomes `<path>.1` (the older
 * `.1` becomes `.2`, and so on up to `keep`), and a new file starts. Writes are queued in order.
 *
 * A log file must never take its process down: a write error (the directory removed, a full disk) is
 * caught, and the file is opened again — its directory made again if it is gone — for the next write.
 * A file removed while open (`rm -r logs` under a running node) is noticed within a second and opened
 * again, so the logs reappear where an operator looks for them. (The maintained rotating streams do not
 * do this: they emulate fs.createWriteStream, whose file stays deleted.)
 */
import { createWriteStream, type WriteStream } from 'node:fs';
import { mkdir, rename, rm, stat } from 'node:fs/promises';
import { dirname } from 'node:path';
import { DIR_MODE, FILE_MODE } from './fs.js';

/** How often a write looks whether the file is still there. */
const EXISTS_CHECK_MS = 1000;
/** A file that keeps failing is opened again at most this often. */
const REOPEN_EVERY_MS = 1000;
/** Lines waiting for the file beyond this are dropped (a log must not grow the process without bound). */
const MAX_QUEUED_BYTES = 4 * 1024 * 1024;

export class RotatingFile {
  readonly path: string;
  private readonly maxBytes: number;
  private readonly keep: number;
  private stream: WriteStream;
  private size = 0;
  /** Rotation or reopening in progress: writes wait in `queued`. */
  private switching: Promise<void> | undefined;
  private queued: Buffer[] = [];
  private queuedBytes = 0;
  private checkedAt = Date.now();
  private switchedAt = 0;
  private closed = false;

  constructor(path: string, options: { maxBytes?: number; keep?: number } = {}) {
    this.path = path;
    this.maxBytes = options.maxBytes ?? 10 * 1024 * 1024;
    this.keep = options.keep ?? 3;
    this.stream = this.open();
    void stat(path).then((s) => (this.size += s.size), () => undefined);
  }

  write(chunk: Buffer | string): void {
    if (this.closed) return;
    const bytes = typeof chunk === 'string' ? Buffer.from(chunk) : chunk;
    if (this.switching !== undefined) {
      if (this.queuedBytes + bytes.length <= MAX_QUEUED_BYTES) {
        this.queued.push(bytes);
        this.queuedBytes += bytes.length;
      }
      return;
    }
    this.stream.write(bytes);
    this.size += bytes.length;
    if (this.size >= this.maxBytes) this.switchTo(() => this.rotate());
    else if (Date.now() - this.checkedAt >= EXISTS_CHECK_MS) {
      this.checkedAt = Date.now();
      void stat(this.path).then(
        () => undefined,
        () => this.switchTo(async () => undefined),
      );
    }
  }

  async close(): Promise<void> {
    await this.switching;
    this.closed = true;
    await new Promise<void>((resolve) => this.stream.end(resolve));
  }

  /** A write stream that reports its errors here (never as an uncaught 'error' event). */
  private open(): WriteStream {
    const stream = createWriteStream(this.path, { flags: 'a', mode: FILE_MODE });
    stream.on('error', () => {
      if (this.stream === stream) this.switchTo(async () => undefined);
    });
    return stream;
  }

  /** Ends the current file, runs `between` (a rotation), and opens the file again, making its directory if needed. */
  private switchTo(between: () => Promise<void>): void {
    if (this.switching !== undefined || this.closed) return;
    this.switching = (async () => {
      const old = this.stream;
      await new Promise<void>((resolve) => {
        if (old.destroyed || old.writableFinished) resolve();
        else old.end(resolve);
        old.once('error', () => resolve());
      });
      await between().catch(() => undefined);
      const wait = this.switchedAt + REOPEN_EVERY_MS - Date.now();
      if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
      this.switchedAt = Date.now();
      await mkdir(dirname(this.path), { recursive: true, mode: DIR_MODE }).catch(() => undefined);
      this.stream = this.open();
      this.size = await stat(this.path).then((s) => s.size, () => 0);
      this.checkedAt = Date.now();
    })().finally(() => {
      this.switching = undefined;
      const queued = this.queued;
      this.queued = [];
      this.queuedBytes = 0;
      for (const chunk of queued) this.write(chunk);
    });
  }

  private async rotate(): Promise<void> {
    await rm(`${this.path}.${this.keep}`, { force: true });
    for (let i = this.keep - 1; i >= 1; i--) await rename(`${this.path}.${i}`, `${this.path}.${i + 1}`).catch(() => undefined);
    await rename(this.path, `${this.path}.1`).catch(() => undefined);
  }
}
