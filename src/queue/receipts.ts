/**
 * "Job done" receipts on the sending node (spec/log-format.md §12): for each message sent with
 * `receipt: true`, its state per destination — queued → sent → processed, or dead / expired — and the
 * aggregate over all destinations (a multicast is processed only when every destination processed it).
 *
 *   DIR/receipts/<first 8 hex digits of the id>/<id>.json
 *
 * One small file per message: a lookup by id is one read, whatever the number of receipts, and old
 * receipts are pruned by whole directories (ids are time-ordered). Every write is durable (temp, fsync,
 * rename, dir fsync): a rename of a file whose data was never fsync'd can survive a power cut as an empty
 * file. Within a process, updates to one id are serialized; only the daemon updates after creation.
 */
import { readdir, rm } from 'node:fs/promises';
import { Packr } from 'msgpackr';
import { join } from 'node:path';
import { MqlogError, abortError } from '../errors.js';
import { ChangeWatcher } from '../log/watch.js';
import { ensureDir, isNotFound, readFileIfExists, writeFileAtomic } from '../util/fs.js';
import { isId } from '../util/ids.js';
import { KeyedSerial } from '../util/serial.js';

export type ReceiptState = 'queued' | 'sent' | 'processed' | 'dead' | 'expired';
export const RECEIPT_STATES: readonly ReceiptState[] = ['queued', 'sent', 'processed', 'dead', 'expired'];

export interface PeerReceipt {
  readonly state: ReceiptState;
  readonly at: number;
  readonly reason?: string;
}

export interface ReceiptStatus {
  readonly id: string;
  /** Aggregate over destinations. */
  readonly state: ReceiptState;
  readonly createdAt: number;
  readonly peers: Readonly<Record<string, PeerReceipt>>;
}

interface ReceiptFile {
  readonly version: 1;
  readonly id: string;
  readonly createdAt: number;
  readonly peers: Record<string, PeerReceipt>;
}

const RANK: Record<ReceiptState, number> = { queued: 0, sent: 1, dead: 2, expired: 2, processed: 3 };

/** The state of a multicast as a whole. */
export function aggregate(states: readonly ReceiptState[]): ReceiptState {
  if (states.length === 0) return 'queued';
  if (states.every((s) => s === 'processed')) return 'processed';
  if (states.includes('dead')) return 'dead';
  if (states.includes('expired')) return 'expired';
  if (states.every((s) => s === 'sent' || s === 'processed')) return 'sent';
  return 'queued';
}

/** True when `state` can no longer change except by a redrive (processed, dead, expired). */
export function isSettled(state: ReceiptState): boolean {
  return state === 'processed' || state === 'dead' || state === 'expired';
}

export class ReceiptStore {
  readonly dir: string;
  private readonly pending = new KeyedSerial();

  constructor(dataDir: string) {
    this.dir = join(dataDir, 'receipts');
  }

  pathOf(id: string): string {
    return join(this.dir, id.slice(0, 8), `${id}.json`);
  }

  /** Records a new message as queued for every destination, durably. */
  async create(id: string, destinations: readonly string[], now = Date.now()): Promise<void> {
    const file: ReceiptFile = { version: 1, id, createdAt: now, peers: Object.fromEntries(destinations.map((d) => [d, { state: 'queued', at: now }])) };
    await ensureDir(join(this.dir, id.slice(0, 8)));
    await writeFileAtomic(this.pathOf(id), JSON.stringify(file));
  }

  /**
   * Moves one destination's state forward (never back: a late `sent` after `processed` changes nothing).
   * Unknown ids (never asked for a receipt here, or pruned) are ignored. Returns whether it changed.
   */
  update(id: string, destination: string, state: ReceiptState, at = Date.now(), reason?: string): Promise<boolean> {
    return this.serialized(id, async () => {
      const file = await this.read(id);
      if (file === undefined) return false;
      const current = file.peers[destination];
      if (current !== undefined && RANK[state] <= RANK[current.state]) return false;
      if (current === undefined && !Object.hasOwn(file.peers, destination)) return false;
      const next: ReceiptFile = { ...file, peers: { ...file.peers, [destination]: { state, at, ...(reason === undefined ? {} : { reason: reason.slice(0, 1000) }) } } };
      await writeFileAtomic(this.pathOf(id), JSON.stringify(next));
      return true;
    });
  }

  /** The receipt of a message, or undefined when this node holds none for that id. */
  async status(id: string): Promise<ReceiptStatus | undefined> {
    if (!isId(id)) throw new MqlogError('ERR_INVALID_ARG', `${JSON.stringify(id)} is not a message id`);
    const file = await this.read(id);
    if (file === undefined) return undefined;
    return { id, state: aggregate(Object.values(file.peers).map((p) => p.state)), createdAt: file.createdAt, peers: file.peers };
  }

  /**
   * Waits until the receipt reaches `state` (or a settled state that makes it unreachable) and returns it.
   * @throws ERR_NOT_FOUND for an unknown id, ERR_ABORTED / ERR_TIMEOUT when the signal fires.
   */
  async waitFor(id: string, state: ReceiptState, options: { signal?: AbortSignal } = {}): Promise<ReceiptStatus> {
    // The watcher may fold a quick second rewrite of the file into the first event: look often anyway.
    const watcher = new ChangeWatcher(join(this.dir, id.slice(0, 8)), { depth: 0, fallbackMs: 50 });
    try {
      await watcher.whenReady();
      for (;;) {
        const seen = watcher.generation;
        const status = await this.status(id);
        if (status === undefined) throw new MqlogError('ERR_NOT_FOUND', `no receipt for ${id} on this node (sent without --receipt, or from another node)`, { details: { id } });
        if (status.state === state || RANK[status.state] >= RANK[state] || (isSettled(status.state) && status.state !== state)) return status;
        if (options.signal?.aborted === true) throw abortError(options.signal);
        await watcher.changedSince(seen, options.signal);
      }
    } finally {
      await watcher.close();
    }
  }

  /** Removes receipts created before `cutoff` whose state is settled; returns how many. */
  async prune(cutoff: number): Promise<number> {
    let removed = 0;
    let shards: string[];
    try {
      shards = await readdir(this.dir);
    } catch (err) {
      if (isNotFound(err)) return 0;
      throw err;
    }
    for (const shard of shards) {
      for (const name of await readdir(join(this.dir, shard)).catch(() => [] as string[])) {
        if (!name.endsWith('.json')) continue;
        const status = await this.status(name.slice(0, -5)).catch(() => undefined);
        if (status !== undefined && status.createdAt < cutoff && isSettled(status.state)) {
          await rm(this.pathOf(status.id), { force: true });
          removed++;
        }
      }
      await rm(join(this.dir, shard), { recursive: false }).catch(() => undefined);
    }
    return removed;
  }

  private async read(id: string): Promise<ReceiptFile | undefined> {
    const raw = await readFileIfExists(this.pathOf(id));
    if (raw === undefined) return undefined;
    try {
      return JSON.parse(raw.toString('utf8')) as ReceiptFile;
    } catch (err) {
      throw new MqlogError('ERR_CORRUPT_STATE', `${this.pathOf(id)} is not valid JSON`, { details: { path: this.pathOf(id) }, cause: err });
    }
  }

  private serialized<T>(id: string, fn: () => Promise<T>): Promise<T> {
    return this.pending.run(id, fn);
  }
}

/** What a receiving node reports back about a message that asked for a receipt (the body of a receipt message). */
export interface ReceiptReport {
  readonly id: string;
  /** The destination as the sender named it (from the message's origin). */
  readonly destination: string;
  readonly state: 'processed' | 'dead' | 'expired';
  readonly at: number;
  readonly reason?: string;
}

/** 64-bit integers are read as numbers (a BigInt past 2^53 fails the range check): any integer encoding of `at` is accepted. */
const reportPackr = new Packr({ useRecords: false, mapsAsObjects: true, int64AsType: 'number' });

/** The body of a receipt report (spec/log-format.md §12): `at` written as an int64, never as a float64. */
export function encodeReceiptReport(report: ReceiptReport): Buffer {
  return reportPackr.pack({ ...report, at: BigInt(report.at) });
}

/** @throws ERR_INVALID_MESSAGE for a body that is not a receipt report. */
export function decodeReceiptReport(body: Buffer): ReceiptReport {
  let raw: unknown;
  try {
    raw = reportPackr.unpack(body);
  } catch (err) {
    throw new MqlogError('ERR_INVALID_MESSAGE', 'receipt body is not valid msgpack', { cause: err });
  }
  const r = (raw ?? {}) as Record<string, unknown>;
  if (!isId(r.id) || typeof r.destination !== 'string' || (r.state !== 'processed' && r.state !== 'dead' && r.state !== 'expired') || !Number.isSafeInteger(r.at) || (r.at as number) < 0) {
    throw new MqlogError('ERR_INVALID_MESSAGE', 'receipt body lacks id, destination, state or time');
  }
  return { id: r.id, destination: r.destination, state: r.state, at: r.at as number, ...(typeof r.reason === 'string' ? { reason: r.reason } : {}) };
}
