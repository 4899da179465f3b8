/**
 * A consumer's own ack journal, `<queue>/consumer/c-<id>.log` (spec/log-format.md §11.2): the acks of
 * the claims it holds, appended by that one consumer without any lock, group-committed (one write and
 * one fdatasync for every ack that arrived meanwhile), and read by others only to take a lapsed claim
 * over or to show the state (dump, stat). It follows the torn-tail rule of RecordLog.
 *
 * Concurrency contract: one writer (the consumer that made the id), any number of readers that never
 * write it. The file is removed (after a `K` record) only once no claim in force names it.
 */
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { MqlogError, isMqlogError } from '../errors.js';
import { RecordLog, type TruncatedTail } from '../log/index.js';
import { decodeRecord, encodeRecord, type StateRecord } from './consumer-records.js';

/** Past this size a consumer starts a new ack journal for its new claims. */
export const ACK_JOURNAL_ROLL_BYTES = 256 * 1024;

const NAME = /^c-([0-9a-f]{16})\.log$/;

/** A new ack journal id: 16 hex digits. */
export function newAckJournalId(): string {
  return randomBytes(8).toString('hex');
}

export function ackJournalPath(consumerDir: string, id: string): string {
  return join(consumerDir, `c-${id}.log`);
}

/** The id an ack journal's file name holds, or undefined for any other name. */
export function parseAckJournalName(name: string): string | undefined {
  return NAME.exec(name)?.[1];
}

/** An ack of members [from, to) of claim `token` of `stream`. */
export interface JournalAck {
  readonly token: string;
  readonly stream: string;
  readonly from: number;
  readonly to: number;
}

/** The owner's side: appends acks, durably. */
export class AckJournal {
  readonly id: string;
  private readonly log: RecordLog;

  constructor(consumerDir: string, id: string) {
    this.id = id;
    this.log = new RecordLog(ackJournalPath(consumerDir, id));
  }

  /** Bytes written so far. */
  get bytes(): number {
    return this.log.bytes;
  }

  /**
   * Appends the acks with one write and fdatasyncs before resolving (the first append also fsyncs the
   * directory: the new file's name is durable too).
   * @throws ERR_DISK_FULL, ERR_IO.
   */
  async append(acks: readonly JournalAck[]): Promise<void> {
    const records: StateRecord[] = acks.map((a) => ({ k: 'A', s: a.stream, o: a.from, t: a.token, ...(a.to === a.from + 1 ? {} : { e: a.to }) }));
    await this.log.append(records.map(encodeRecord), true);
  }

  close(): Promise<void> {
    return this.log.close();
  }
}

/**
 * Another consumer's ack journal, read from where the last look stopped (never written, never cut).
 * A torn tail is where reading stops.
 */
export class AckJournalReader {
  readonly path: string;
  private log: RecordLog;

  constructor(consumerDir: string, id: string) {
    this.path = ackJournalPath(consumerDir, id);
    this.log = new RecordLog(this.path);
  }

  /**
   * Hands each ack appended since the last look to `onAck`.
   * @throws ERR_CORRUPT_STATE when the file is damaged inside data a SYNC frame shows was fsync'd.
   */
  async catchUp(onAck: (ack: JournalAck) => void): Promise<void> {
    try {
      await this.log.catchUp((payload) => {
        const record = decodeRecord(payload);
        if (record.k === 'A') onAck({ token: record.t, stream: record.s, from: record.o, to: record.e ?? record.o + 1 });
      }, false);
    } catch (err) {
      if (isMqlogError(err) && err.code !== 'ERR_CORRUPT_STATE') {
        throw new MqlogError('ERR_CORRUPT_STATE', `ack journal ${this.path} is corrupt: ${err.message}`, { details: { path: this.path }, cause: err });
      }
      throw err;
    }
  }

  /** Reads again from the start at the next look. */
  async rewind(): Promise<void> {
    await this.log.close();
    this.log = new RecordLog(this.path);
  }

  /**
   * Sets a torn tail aside (a `.torn` file beside it) before the file is removed, and says what was cut.
   * Only for a journal no claim names any more: nobody relies on its end.
   */
  async setAsideTorn(): Promise<TruncatedTail | undefined> {
    try {
      return await this.log.catchUp(() => undefined, true);
    } catch (err) {
      if (isMqlogError(err)) return undefined; // removed all the same; verify reports damage where it matters
      throw err;
    }
  }

  close(): Promise<void> {
    return this.log.close();
  }
}
