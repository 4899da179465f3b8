/**
 * Exactly-once into the inbox: the receiver's memory of what each sender already delivered
 * (spec/http-protocol.md §5).
 *
 * A sender forwards each of its streams in offset order, per destination, and moves its cursor only
 * after the receiver's ok; so after an ok, every frame of that (sender node, destination, stream) up to
 * the highest offset of the batch is stored. The table keeps that high-water mark per key, plus, for
 * the time after a crash, the exact offsets found in the inboxes beyond the last checkpoint (a batch may
 * have been stored in part). Every inbox frame carries its origin, so those are recovered by scanning
 * only the inbox frames written since the checkpoint — never the whole inbox.
 *
 *   DIR/receiver/dedup.json   {"version":1, "hwm": {key: offset}, "extra": {key: [offsets]},
 *                              "inbox": {"<queue>/<stream>": nextOffset}}
 *
 * Concurrency: batches run under a shared lock, the checkpoint under an exclusive one, so a checkpoint
 * never sees half a batch.
 */
import { join } from 'node:path';
import { MqlogError } from '../errors.js';
import { FileLogStore } from '../log/log-store.js';
import { StreamReader } from '../log/stream-reader.js';
import { FrameType } from '../log/frame.js';
import { decodeChunk, decodeMeta, type BodyPart, type Origin } from '../queue/codec.js';
import { listQueues } from '../queue/layout.js';
import { ensureDir, readFileIfExists, writeFileAtomic } from '../util/fs.js';

interface DedupFile {
  readonly version: 1;
  readonly hwm: Record<string, number>;
  /** Streamed bodies whose message has not arrived yet: where their chunks were stored. */
  readonly transfers?: Record<string, BodyPart[]>;
  /** Offsets stored beyond the high-water mark (batches stored in part), kept until a retry completes. */
  readonly extra?: Record<string, number[]>;
  readonly inbox: Record<string, number>;
}

export function dedupKey(node: string, destination: string, stream: string): string {
  return JSON.stringify([node, destination, stream]);
}

export class DedupTable {
  private readonly path: string;
  private readonly dataDir: string;
  private readonly hwm = new Map<string, number>();
  /** Offsets stored beyond the high-water mark (found by recovery, or stored by a batch that failed). */
  private readonly extra = new Map<string, Set<number>>();
  private readonly inboxEnds = new Map<string, number>();
  private readonly transfers = new Map<string, BodyPart[]>();
  private dirty = false;
  private readers = 0;
  private writer: Promise<void> | undefined;
  private readonly waiting: (() => void)[] = [];

  private constructor(dataDir: string) {
    this.dataDir = dataDir;
    this.path = join(dataDir, 'receiver', 'dedup.json');
  }

  /** Loads the checkpoint and recovers what was stored after it by scanning the inboxes from there. */
  static async open(dataDir: string): Promise<DedupTable> {
    const table = new DedupTable(dataDir);
    const raw = await readFileIfExists(table.path);
    if (raw !== undefined) {
      let file: DedupFile;
      try {
        file = JSON.parse(raw.toString('utf8')) as DedupFile;
      } catch (err) {
        throw new MqlogError('ERR_CORRUPT_STATE', `${table.path} is not valid JSON`, { details: { path: table.path }, cause: err });
      }
      if (file.version !== 1) throw new MqlogError('ERR_CORRUPT_STATE', `${table.path} has an unknown version`, { details: { path: table.path } });
      for (const [k, v] of Object.entries(file.hwm)) table.hwm.set(k, v);
      for (const [k, v] of Object.entries(file.extra ?? {})) table.extra.set(k, new Set(v));
      for (const [k, v] of Object.entries(file.transfers ?? {})) table.transfers.set(k, v);
      for (const [k, v] of Object.entries(file.inbox)) table.inboxEnds.set(k, v);
    }
    await table.recover();
    await table.checkpoint();
    return table;
  }

  /** True when the frame was stored before. */
  seen(key: string, offset: number): boolean {
    return offset <= (this.hwm.get(key) ?? -1) || (this.extra.get(key)?.has(offset) ?? false);
  }

  /** Records frames stored by a batch that completed: the high-water mark moves to the batch's highest offset. */
  completed(key: string, offsets: readonly number[]): void {
    let max = this.hwm.get(key) ?? -1;
    for (const o of offsets) max = Math.max(max, o);
    this.hwm.set(key, max);
    const extra = this.extra.get(key);
    if (extra !== undefined) {
      for (const o of extra) if (o <= max) extra.delete(o);
      if (extra.size === 0) this.extra.delete(key);
    }
    this.dirty = true;
  }

  /** Records frames stored by a batch that failed part-way: exactly these, not the range. */
  stored(key: string, offset: number): void {
    let extra = this.extra.get(key);
    if (extra === undefined) {
      extra = new Set();
      this.extra.set(key, extra);
    }
    extra.add(offset);
    this.dirty = true;
  }

  /** Remembers how far the receiver wrote an inbox stream, so recovery starts there. */
  wrote(queue: string, stream: string, offset: number): void {
    const k = `${queue}/${stream}`;
    if (offset + 1 > (this.inboxEnds.get(k) ?? 0)) this.inboxEnds.set(k, offset + 1);
  }

  /** Records where a chunk of a streamed body in transit was stored. */
  chunkStored(transfer: string, stream: string, offset: number): void {
    const parts = this.transfers.get(transfer) ?? [];
    const last = parts.at(-1);
    if (last !== undefined && last.stream === stream && offset > last.last) parts[parts.length - 1] = { ...last, last: offset };
    else parts.push({ stream, first: offset, last: offset });
    this.transfers.set(transfer, parts);
    this.dirty = true;
  }

  /** Where the chunks of a streamed body were stored so far (empty when none). */
  transferParts(transfer: string): BodyPart[] {
    return this.transfers.get(transfer) ?? [];
  }

  finishTransfer(transfer: string): void {
    if (this.transfers.delete(transfer)) this.dirty = true;
  }

  /** Runs a batch; batches run concurrently with each other but never with a checkpoint. */
  async batch<T>(fn: () => Promise<T>): Promise<T> {
    while (this.writer !== undefined) await this.writer.catch(() => undefined);
    this.readers++;
    try {
      return await fn();
    } finally {
      this.readers--;
      if (this.readers === 0) for (const wake of this.waiting.splice(0)) wake();
    }
  }

  /** Writes the table (atomically) if it changed, between batches. */
  async checkpoint(): Promise<void> {
    if (this.writer !== undefined) return this.writer;
    this.writer = (async () => {
      while (this.readers > 0) await new Promise<void>((resolve) => this.waiting.push(resolve));
      if (!this.dirty && this.extra.size === 0 && (await readFileIfExists(this.path)) !== undefined) return;
      const extra = Object.fromEntries([...this.extra].map(([k, offsets]) => [k, [...offsets].sort((a, b) => a - b)]));
      const file: DedupFile = { version: 1, hwm: Object.fromEntries(this.hwm), extra, transfers: Object.fromEntries(this.transfers), inbox: Object.fromEntries(this.inboxEnds) };
      await ensureDir(join(this.dataDir, 'receiver'));
      await writeFileAtomic(this.path, JSON.stringify(file));
      this.dirty = false;
    })();
    try {
      await this.writer;
    } finally {
      this.writer = undefined;
    }
  }

  /** Scans inbox frames written after the checkpoint and learns their origins exactly. */
  private async recover(): Promise<void> {
    for (const info of await listQueues(this.dataDir)) {
      if (info.kind !== 'inbox') continue;
      for (const stream of await new FileLogStore(info.dir).streams()) {
        const k = `${info.queue}/${stream.name}`;
        const reader = new StreamReader(join(info.dir, stream.name), { offset: this.inboxEnds.get(k) ?? 0 });
        try {
          for (;;) {
            const read = await reader.read({ maxFrames: 1024 });
            for (const frame of read.frames) {
              this.wrote(info.queue, stream.name, frame.offset);
              let meta: { origin?: Origin | undefined; id: string };
              try {
                if (frame.type === FrameType.BODY_CHUNK) {
                  meta = decodeChunk(frame.payload).meta;
                  if (meta.origin !== undefined) this.chunkStored(JSON.stringify([meta.origin.node, meta.origin.destination ?? '', meta.id]), stream.name, frame.offset);
                } else if (frame.type === FrameType.MESSAGE) {
                  meta = decodeMeta(frame.payload).meta;
                  if (meta.origin !== undefined) this.finishTransfer(JSON.stringify([meta.origin.node, meta.origin.destination ?? '', meta.id]));
                } else continue;
              } catch {
                continue; // verify reports it; it cannot be a duplicate of anything
              }
              if (meta.origin === undefined) continue;
              const destination = meta.origin.destination ?? '';
              const key = dedupKey(meta.origin.node, destination, meta.origin.stream);
              if (!this.seen(key, meta.origin.offset)) this.stored(key, meta.origin.offset);
            }
            if (read.state !== 'more') break;
          }
        } finally {
          await reader.close();
        }
      }
    }
  }
}
