/**
 * An append-only log file bounded in size: when it passes `maxBytes`, it becomes `<path>.1` (the older
 * `.1` becomes `.2`, and so on up to `keep`), and a new file starts. Writes are queued in order.
 */
import { createWriteStream, type WriteStream } from 'node:fs';
import { rename, rm, stat } from 'node:fs/promises';
import { FILE_MODE } from './fs.js';

export class RotatingFile {
  readonly path: string;
  private readonly maxBytes: number;
  private readonly keep: number;
  private stream: WriteStream;
  private size = 0;
  private rotating: Promise<void> | undefined;
  private queued: Buffer[] = [];

  constructor(path: string, options: { maxBytes?: number; keep?: number } = {}) {
    this.path = path;
    this.maxBytes = options.maxBytes ?? 10 * 1024 * 1024;
    this.keep = options.keep ?? 3;
    this.stream = createWriteStream(path, { flags: 'a', mode: FILE_MODE });
    void stat(path).then((s) => (this.size += s.size), () => undefined);
  }

  write(chunk: Buffer | string): void {
    const bytes = typeof chunk === 'string' ? Buffer.from(chunk) : chunk;
    if (this.rotating !== undefined) {
      this.queued.push(bytes);
      return;
    }
    this.stream.write(bytes);
    this.size += bytes.length;
    if (this.size >= this.maxBytes) this.rotating = this.rotate();
  }

  async close(): Promise<void> {
    await this.rotating;
    await new Promise<void>((resolve) => this.stream.end(resolve));
  }

  private async rotate(): Promise<void> {
    await new Promise<void>((resolve) => this.stream.end(resolve));
    await rm(`${this.path}.${this.keep}`, { force: true });
    for (let i = this.keep - 1; i >= 1; i--) await rename(`${this.path}.${i}`, `${this.path}.${i + 1}`).catch(() => undefined);
    await rename(this.path, `${this.path}.1`).catch(() => undefined);
    this.stream = createWriteStream(this.path, { flags: 'a', mode: FILE_MODE });
    this.size = 0;
    this.rotating = undefined;
    const queued = this.queued;
    this.queued = [];
    for (const chunk of queued) this.write(chunk);
  }
}
