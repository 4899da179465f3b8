/**
 * Exactly-once into the inboxes: the node's memory of what each sender already delivered
 * (spec/http-protocol.md §5). Owned by the Intake (intake.ts).
 *
 * A sender forwards each of its streams in offset order, per destination, and moves its cursor only
 * after the receiver's ok. Each batch says which range of its stream it covers: every frame of that
 * (sender node, destination, stream) in the range that is for this node is in the batch. Once a batch
 * is stored, its range is **covered**: a frame whose offset is covered was stored before. Covered ranges
 * of consecutive batches touch, so the table holds a few ranges per sender stream, whatever the traffic.
 * (A batch that does not say its range covers everything from offset 0 to its last frame: the rule of
 * senders that have one batch in flight.) For the time after a crash, the exact offsets found in the
 * inboxes beyond the last checkpoint are covered too: every inbox frame carries its origin, so those
 * are recovered by scanning only the inbox frames written since the checkpoint — never a whole inbox.
 *
 *   DIR/receiver/dedup.json   {"version": 2, "covered": {key: [[from, to)…]}, "transfers": {…},
 *                              "inbox": {"<queue>/<stream>": nextOffset}, "ids": {key: greatest id}}
 *
 * A sender whose offsets went back (a lost outbox, a restored backup) sends new messages at covered
 * offsets. Message ids are time-ordered (UUIDv7): a message at a covered offset whose id is above every
 * id stored from its key cannot have been stored before, so it is a **gap**, stored and reported, not a
 * duplicate (spec/http-protocol.md §5.1).
 *
 * Concurrency: batches never wait for a checkpoint. A frame's origin is recorded covered the moment the
 * frame is durable in the inbox, together with the inbox end, so a checkpoint taken between any two
 * events is consistent; the ranges a batch covers (the offsets not for this node) are added when it is
 * stored, and a batch cut short by a crash is sent again and covers them then.
 */
import { join } from 'node:path';
import { MqlogError } from '../errors.js';
import { FrameType } from '../log/frame.js';
import type { LogStore } from '../log/log-store.js';
import { readFrames } from '../log/stream-scan.js';
import { ensureDir, readFileIfExists, writeFileAtomic } from '../util/fs.js';
import { IntervalSet } from '../util/interval-set.js';
import { decodeChunk, decodeMeta, type BodyPart, type Origin } from './codec.js';
import type { QueueInfo } from './layout.js';

interface DedupFile {
  readonly version: 1 | 2;
  /** Version 2: covered offsets per key, as half-open ranges. */
  readonly covered?: Record<string, [number, number][]>;
  /** Version 1: everything up to this offset was stored. */
  readonly hwm?: Record<string, number>;
  /** Version 1: offsets stored beyond the high-water mark. */
  readonly extra?: Record<string, number[]>;
  /** Streamed bodies whose message has not arrived yet: where each chunk was stored, `[position, stream, offset]`. */
  readonly transfers?: Record<string, [number, string, number][]>;
  readonly inbox: Record<string, number>;
  /** Per key, the greatest message id stored from it (spec/http-protocol.md §5.1). */
  readonly ids?: Record<string, string>;
}

/** The key of one sender stream, as sent to this node under one destination name. */
export function dedupKey(node: string, destination: string, stream: string): string {
  return JSON.stringify([node, destination, stream]);
}

/** Identifies one streamed body in transit: sender node, destination as it named this node, message id. */
export function transferKey(node: string, destination: string, id: string): string {
  return JSON.stringify([node, destination, id]);
}

export class DedupTable {
  private readonly path: string;
  private readonly covered = new Map<string, IntervalSet>();
  private readonly inboxEnds = new Map<string, number>();
  /** Per key, the greatest message id stored from it. */
  private readonly lastIds = new Map<string, string>();
  /** Per transfer, where each chunk was stored, by its position in the body. */
  private readonly transfers = new Map<string, Map<number, { stream: string; offset: number }>>();
  private dirty = false;
  /** The checkpoint being written; the next one waits for it. */
  private writing: Promise<void> | undefined;

  private constructor(dataDir: string) {
    this.path = join(dataDir, 'receiver', 'dedup.json');
  }

  /**
   * Loads the checkpoint and recovers what was stored after it by scanning the given inboxes from there.
   * @throws ERR_CORRUPT_STATE for a damaged checkpoint.
   */
  static async open(dataDir: string, store: LogStore, inboxes: readonly QueueInfo[]): Promise<DedupTable> {
    const table = new DedupTable(dataDir);
    const raw = await readFileIfExists(table.path);
    if (raw !== undefined) {
      let file: DedupFile;
      try {
        file = JSON.parse(raw.toString('utf8')) as DedupFile;
      } catch (err) {
        throw new MqlogError('ERR_CORRUPT_STATE', `${table.path} is not valid JSON`, { details: { path: table.path }, cause: err });
      }
      if (file.version !== 1 && file.version !== 2) throw new MqlogError('ERR_CORRUPT_STATE', `${table.path} has an unknown version`, { details: { path: table.path } });
      for (const [k, pairs] of Object.entries(file.covered ?? {})) table.covered.set(k, IntervalSet.from(pairs));
      for (const [k, hwm] of Object.entries(file.hwm ?? {})) table.set(k).addRange(0, hwm + 1);
      for (const [k, offsets] of Object.entries(file.extra ?? {})) for (const o of offsets) table.set(k).add(o);
      // Version 1 kept no chunk positions: such transfers are sent again (their message is refused until then).
      if (file.version === 2) for (const [k, chunks] of Object.entries(file.transfers ?? {})) table.transfers.set(k, new Map(chunks.map(([position, stream, offset]) => [position, { stream, offset }])));
      for (const [k, v] of Object.entries(file.inbox)) table.inboxEnds.set(k, v);
      for (const [k, id] of Object.entries(file.ids ?? {})) if (typeof id === 'string') table.lastIds.set(k, id);
    }
    await table.recover(store, inboxes);
    await table.checkpoint();
    return table;
  }

  /** True when the frame was stored before. */
  seen(key: string, offset: number): boolean {
    return this.covered.get(key)?.has(offset) ?? false;
  }

  /**
   * True when a frame at an offset already covered is new all the same: the sender's offsets went back
   * (spec/http-protocol.md §5.1). A message is new when its id is above every id stored from the key; a
   * body chunk when its body's id is, and no chunk at its position of that body was stored.
   */
  isGap(key: string, id: string, chunk?: { readonly transfer: string; readonly position: number }): boolean {
    const last = this.lastIds.get(key);
    if (last === undefined || id <= last) return false;
    return chunk === undefined || this.transfers.get(chunk.transfer)?.has(chunk.position) !== true;
  }

  /** Records the id of a message stored (or a receipt applied) from `key`. */
  storedId(key: string, id: string): void {
    const last = this.lastIds.get(key);
    if (last !== undefined && id <= last) return;
    this.lastIds.set(key, id);
    this.dirty = true;
  }

  /** Records a stored batch's range: every frame of the key in [from, to) is stored. */
  cover(key: string, from: number, to: number): void {
    if (to <= from) return;
    this.set(key).addRange(from, to);
    this.dirty = true;
  }

  /** Records one frame stored (by a batch that failed part-way, or found by recovery). */
  stored(key: string, offset: number): void {
    this.set(key).add(offset);
    this.dirty = true;
  }

  /**
   * Records a frame stored in an inbox stream: how far the receiver wrote it, so recovery starts there,
   * and (when known) that its origin is stored, in the same step, so no checkpoint holds one without the other.
   */
  wrote(queue: string, stream: string, offset: number, origin?: { readonly key: string; readonly offset: number }): void {
    const k = `${queue}/${stream}`;
    if (offset + 1 > (this.inboxEnds.get(k) ?? 0)) this.inboxEnds.set(k, offset + 1);
    if (origin !== undefined) this.stored(origin.key, origin.offset);
  }

  /** Records where the chunk of a streamed body in transit that holds bytes from `position` was stored. */
  chunkStored(transfer: string, position: number, stream: string, offset: number): void {
    let chunks = this.transfers.get(transfer);
    if (chunks === undefined) {
      chunks = new Map();
      this.transfers.set(transfer, chunks);
    }
    chunks.set(position, { stream, offset });
    this.dirty = true;
  }

  /**
   * Where the chunks of a streamed body were stored so far, in the order of their positions in the body:
   * runs of chunks stored one after the other in one stream make one part (empty when none). Chunks that
   * came out of order (batches stored concurrently) start parts of their own, so a reader still reads
   * the body front to back.
   */
  transferParts(transfer: string): BodyPart[] {
    const chunks = [...(this.transfers.get(transfer) ?? [])].sort((a, b) => a[0] - b[0]);
    // A part is read as every chunk of the body between its first and last offset, in stream order: a
    // chunk extends the part only if it is the body's next chunk in that stream (none of the body's
    // chunks lies between), else a chunk stored earlier but later in the body would be read too soon.
    const nextInStream = new Map<string, number>();
    const byStream = new Map<string, number[]>();
    for (const [, { stream, offset }] of chunks) (byStream.get(stream) ?? byStream.set(stream, []).get(stream))?.push(offset);
    for (const [stream, offsets] of byStream) {
      offsets.sort((a, b) => a - b);
      for (let i = 0; i + 1 < offsets.length; i++) nextInStream.set(`${stream}@${offsets[i]}`, offsets[i + 1] as number);
    }
    const parts: BodyPart[] = [];
    for (const [, { stream, offset }] of chunks) {
      const last = parts.at(-1);
      if (last !== undefined && last.stream === stream && nextInStream.get(`${stream}@${last.last}`) === offset) parts[parts.length - 1] = { ...last, last: offset };
      else parts.push({ stream, first: offset, last: offset });
    }
    return parts;
  }

  finishTransfer(transfer: string): void {
    if (this.transfers.delete(transfer)) this.dirty = true;
  }

  /**
   * Writes the table (atomically) if it changed. The snapshot is taken at once, between two events of the
   * process, so batches go on while it is written: every inbox frame below the recorded inbox ends has its
   * origin in the snapshot (wrote() records both together), and what a batch in flight adds later is
   * found again by the next checkpoint or by recovery.
   */
  checkpoint(): Promise<void> {
    const previous = this.writing;
    const next = (async () => {
      await previous?.catch(() => undefined);
      if (!this.dirty && (await readFileIfExists(this.path)) !== undefined) return;
      const file: DedupFile = {
        version: 2,
        covered: Object.fromEntries([...this.covered].map(([k, set]) => [k, set.toPairs()])),
        transfers: Object.fromEntries([...this.transfers].map(([k, chunks]) => [k, [...chunks].map(([position, { stream, offset }]): [number, string, number] => [position, stream, offset])])),
        inbox: Object.fromEntries(this.inboxEnds),
        ids: Object.fromEntries(this.lastIds),
      };
      this.dirty = false;
      try {
        await ensureDir(join(this.path, '..'));
        await writeFileAtomic(this.path, JSON.stringify(file));
      } catch (err) {
        this.dirty = true;
        throw err;
      }
    })();
    this.writing = next;
    return next.finally(() => {
      if (this.writing === next) this.writing = undefined;
    });
  }

  private set(key: string): IntervalSet {
    let set = this.covered.get(key);
    if (set === undefined) {
      set = new IntervalSet();
      this.covered.set(key, set);
    }
    return set;
  }

  /** Scans inbox frames written after the checkpoint and learns their origins exactly. */
  private async recover(store: LogStore, inboxes: readonly QueueInfo[]): Promise<void> {
    for (const info of inboxes) {
      for (const stream of await store.streams(info.queue)) {
        const from = this.inboxEnds.get(`${info.queue}/${stream.name}`) ?? 0;
        for await (const frame of readFrames(store, info.queue, stream.name, { from: { offset: from }, maxFrames: 1024 })) {
          this.wrote(info.queue, stream.name, frame.offset);
          let origin: Origin | undefined;
          try {
            if (frame.type === FrameType.BODY_CHUNK) {
              const { meta } = decodeChunk(frame.payload);
              origin = meta.origin;
              if (origin !== undefined) this.chunkStored(transferKey(origin.node, origin.destination ?? '', meta.id), meta.position, stream.name, frame.offset);
            } else if (frame.type === FrameType.MESSAGE) {
              const { meta } = decodeMeta(frame.payload);
              origin = meta.origin;
              if (origin !== undefined) {
                this.finishTransfer(transferKey(origin.node, origin.destination ?? '', meta.id));
                this.storedId(dedupKey(origin.node, origin.destination ?? '', origin.stream), meta.id);
              }
            }
          } catch {
            continue; // verify reports it; it cannot be a duplicate of anything
          }
          if (origin !== undefined) this.stored(dedupKey(origin.node, origin.destination ?? '', origin.stream), origin.offset);
        }
      }
    }
  }
}
