/**
 * Bodies too large for one JetStream message go to the destination's bucket, in the object store's own
 * layout (spec/transports.md §3.3), so that `@nats-io/obj` (or any object store client) reads them:
 * chunks on `$O.<bucket>.C.<nuid>`, then the object's info on `$O.<bucket>.M.<base64url(name)>` with a
 * subject roll-up. The object's name is the message id, its nuid a digest of (sender node, message id):
 * the same body always goes to the same place, so a sender that restarts goes on where it stopped.
 *
 * A body arrives as the forwarder reads it (chunk frames across several batches, maybe after a restart),
 * so this writer publishes it in pieces, each one only after the one before it is stored:
 *
 * - every piece is published with `Nats-Msg-Id: <nuid>:<byte position>` and
 *   `Nats-Expected-Last-Subject-Sequence` (the sequence of the piece before it, 0 for the first), so a
 *   piece is stored once and in order whatever is retried — within the duplicate window JetStream says
 *   "duplicate", after it JetStream refuses the piece (wrong last sequence) and the writer reads where the
 *   body stands (`Mqlog-Position` of the last piece on the subject) and goes on from there;
 * - pieces of one body from batches in flight together are chained; when one fails, the others of the
 *   same run fail too (retryable) rather than leave a gap, and the forwarder sends them again.
 *
 * A gap that retrying cannot fill (the chunks before it are not in the bucket, and the forwarder has
 * passed them) refuses the chunk and then the message for good (ERR_PEER_REJECTED), as does a body that
 * is larger than the bucket can ever hold.
 */
import { createHash } from 'node:crypto';
import { headers as natsHeaders, type NatsConnection } from '@nats-io/transport-node';
import { jetstream, jetstreamManager, type PubAck } from '@nats-io/jetstream';
import { MqlogError } from '../errors.js';
import { H } from './nats-headers.js';
import { jsErrorCode, JS_WRONG_LAST_SEQUENCE, natsError } from './nats-errors.js';
import { bucketStream } from './nats-stream.js';

/** The object store's digest: `SHA-256=` and the base64url (padded) digest. */
export function objectDigest(sha256Hex: string): string {
  return `SHA-256=${base64UrlPadded(Buffer.from(sha256Hex, 'hex'))}`;
}

function base64UrlPadded(bytes: Buffer): string {
  return bytes.toString('base64').replace(/\+/g, '-').replace(/\//g, '_');
}

/** Where the object of message `id` from node `node` goes in a bucket. */
export function objectNuid(node: string, id: string): string {
  return createHash('sha256').update(`${node}:${id}`).digest('base64url').slice(0, 22);
}

export function chunkSubject(bucket: string, nuid: string): string {
  return `$O.${bucket}.C.${nuid}`;
}

export function metaSubject(bucket: string, name: string): string {
  return `$O.${bucket}.M.${base64UrlPadded(Buffer.from(name, 'utf8'))}`;
}

/** What the writer knows of one body in the bucket. */
interface Transfer {
  readonly nuid: string;
  /** Position after the last byte stored; undefined until read from the bucket. */
  next: number | undefined;
  /** Sequence of the last piece on the chunk subject (0: none). */
  lastSeq: number;
  pieces: number;
  /** The last link of the chain of writes of this body, and how many are still running. */
  chain: Promise<void>;
  running: number;
  /** A write of this run failed: the ones queued behind it fail too. */
  failed: MqlogError | undefined;
}

export interface ObjectWriterOptions {
  readonly bucket: string;
  /** The sender's node id (part of each object's nuid). */
  readonly node: string;
  /** Where, as shown in errors. */
  readonly where: string;
  /** Bytes of body per piece (below the server's max_payload and the bucket's max_msg_size). */
  readonly pieceBytes: () => number;
  /** The bucket's max_bytes (-1: none): a body larger than that never fits. */
  readonly maxBytes: () => number;
  readonly timeoutMs: number;
  /** Makes sure the bucket exists (run before each write, in the write's turn). */
  readonly prepare: () => Promise<void>;
}

export class NatsObjectWriter {
  private readonly options: ObjectWriterOptions;
  private readonly transfers = new Map<string, Transfer>();

  constructor(options: ObjectWriterOptions) {
    this.options = options;
  }

  /**
   * Stores `data`, the bytes at `position` of message `id`'s body, after whatever was queued before
   * for that body. Bytes already in the bucket are skipped.
   * @throws ERR_PEER_REJECTED (no `frame`: the caller names it) when bytes before `position` are missing for good or the body outgrows the bucket; ERR_PEER_* to retry.
   */
  write(nc: NatsConnection, id: string, position: number, data: Buffer, size?: number): Promise<void> {
    return this.chained(id, async (transfer) => {
      if (size !== undefined) this.checkFits(id, size);
      const js = jetstream(nc, { timeout: this.options.timeoutMs });
      let resyncs = 0;
      let at = position;
      while (at < position + data.length) {
        if (transfer.next === undefined) await this.resync(nc, transfer);
        const next = transfer.next as number;
        if (next >= position + data.length) return; // stored before
        if (next > at) at = next;
        if (next < at) {
          throw new MqlogError('ERR_PEER_REJECTED', `${this.options.where}: the bucket holds ${next} bytes of the body of ${id}, the next piece starts at ${at}: its first bytes are gone (expired or purged?)`, { details: { url: this.options.where } });
        }
        const maxBytes = this.options.maxBytes();
        const piece = data.subarray(at - position, Math.min(data.length, at - position + this.options.pieceBytes()));
        if (maxBytes >= 0 && at + piece.length > maxBytes) {
          throw new MqlogError('ERR_PEER_REJECTED', `${this.options.where}: the body of ${id} is larger than bucket ${this.options.bucket} can hold (max_bytes ${maxBytes})`, { details: { url: this.options.where } });
        }
        const h = natsHeaders();
        h.set(H.msgId, `${transfer.nuid}:${at}`);
        h.set(H.position, String(at));
        let ack: PubAck;
        try {
          ack = await js.publish(chunkSubject(this.options.bucket, transfer.nuid), piece, { headers: h, expect: { lastSubjectSequence: transfer.lastSeq } });
        } catch (err) {
          if (jsErrorCode(err) === JS_WRONG_LAST_SEQUENCE && resyncs++ < 3) {
            // Stored before, out of the duplicate window: find out how far the body got.
            transfer.next = undefined;
            continue;
          }
          throw natsError(err, this.options.where, `cannot store a piece of the body of ${id}`);
        }
        transfer.lastSeq = ack.seq;
        transfer.next = at + piece.length;
        transfer.pieces++;
        at += piece.length;
      }
    });
  }

  /**
   * Publishes the object's info once the whole body is stored, and forgets the body.
   * @throws ERR_PEER_REJECTED when the bucket does not hold the whole body (chunks were refused).
   */
  finish(nc: NatsConnection, id: string, size: number, sha256Hex: string): Promise<void> {
    return this.chained(id, async (transfer) => {
      this.checkFits(id, size);
      if (transfer.next !== size) await this.resync(nc, transfer);
      if (transfer.next !== size) {
        throw new MqlogError('ERR_PEER_REJECTED', `${this.options.where}: bucket ${this.options.bucket} holds ${transfer.next} of the ${size} bytes of the body of ${id}`, { details: { url: this.options.where } });
      }
      const info = {
        name: id,
        description: '',
        options: { max_chunk_size: this.options.pieceBytes() },
        bucket: this.options.bucket,
        nuid: transfer.nuid,
        size,
        chunks: transfer.pieces,
        mtime: new Date().toISOString(),
        digest: objectDigest(sha256Hex),
        deleted: false,
      };
      const h = natsHeaders();
      h.set(H.msgId, `${transfer.nuid}:info`);
      h.set('Nats-Rollup', 'sub');
      try {
        await jetstream(nc, { timeout: this.options.timeoutMs }).publish(metaSubject(this.options.bucket, id), JSON.stringify(info), { headers: h });
      } catch (err) {
        throw natsError(err, this.options.where, `cannot store the object info of ${id}`);
      }
      this.transfers.delete(id);
    });
  }

  /** @throws ERR_PEER_REJECTED when a body is larger than the bucket can ever hold. */
  private checkFits(id: string, size: number): void {
    const maxBytes = this.options.maxBytes();
    if (maxBytes >= 0 && size > maxBytes) {
      throw new MqlogError('ERR_PEER_REJECTED', `${this.options.where}: the body of ${id} (${size} bytes) is larger than bucket ${this.options.bucket} can hold (max_bytes ${maxBytes})`, { details: { url: this.options.where } });
    }
  }

  /** Reads how far the body got from the last piece on its subject (and how many pieces there are). */
  private async resync(nc: NatsConnection, transfer: Transfer): Promise<void> {
    const jsm = await jetstreamManager(nc, { timeout: this.options.timeoutMs });
    const stream = bucketStream(this.options.bucket);
    const subject = chunkSubject(this.options.bucket, transfer.nuid);
    try {
      const last = await jsm.streams.getMessage(stream, { last_by_subj: subject });
      if (last === null) {
        transfer.next = 0;
        transfer.lastSeq = 0;
        transfer.pieces = 0;
        return;
      }
      const position = Number(last.header?.get(H.position) ?? Number.NaN);
      if (!Number.isSafeInteger(position)) throw new MqlogError('ERR_PEER_FAILED', `${this.options.where}: the last piece on ${subject} says no position`);
      const info = await jsm.streams.info(stream, { subjects_filter: subject });
      transfer.next = position + last.data.length;
      transfer.lastSeq = last.seq;
      transfer.pieces = info.state.subjects?.[subject] ?? transfer.pieces;
    } catch (err) {
      throw natsError(err, this.options.where, `cannot read how much of a body ${this.options.bucket} holds`);
    }
  }

  /** Runs `fn` after the writes queued before it for the same body; fails at once if one of those failed. */
  private chained(id: string, fn: (transfer: Transfer) => Promise<void>): Promise<void> {
    let transfer = this.transfers.get(id);
    if (transfer === undefined) {
      transfer = { nuid: objectNuid(this.options.node, id), next: undefined, lastSeq: 0, pieces: 0, chain: Promise.resolve(), running: 0, failed: undefined };
      this.transfers.set(id, transfer);
    }
    const t = transfer;
    // Nothing queued: a new run (the forwarder sends again only once everything in flight settled).
    if (t.running === 0) t.failed = undefined;
    t.running++;
    const run = t.chain.then(async () => {
      if (t.failed === undefined) await this.options.prepare().catch((err: unknown) => (t.failed = natsError(err, this.options.where, 'bucket')));
      if (t.failed !== undefined) throw new MqlogError('ERR_PEER_FAILED', `${this.options.where}: an earlier piece of the body of ${id} failed: ${t.failed.message}`, { details: { url: this.options.where } });
      try {
        await fn(t);
      } catch (err) {
        const error = err instanceof MqlogError ? err : natsError(err, this.options.where, 'object store');
        t.failed = error;
        t.next = undefined; // read again before the next write
        throw error;
      }
    });
    t.chain = run.then(
      () => void t.running--,
      () => void t.running--,
    );
    return run;
  }
}
