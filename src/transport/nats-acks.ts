/**
 * JetStream publish acks without a request per message (spec/transports.md §3.3): the messages of a
 * batch are plain publishes whose reply subject is `<inbox>.<batch>.<index>` under one subscription per
 * connection (`<inbox>.*.*`); JetStream answers each on its reply subject with its PubAck
 * (`{"stream":…,"seq":…,"duplicate":true}`) or an API error (`{"error":{"code":…,"err_code":…,
 * "description":…}}`), or the server answers 503 (no responders: no stream takes the subject). That is
 * what the client's `js.publish` does, less its request object, timer, promise and error objects per
 * message, which dominated a forwarding daemon's CPU.
 *
 * An answer is turned into the error the client would have thrown (JetStreamApiError, RequestError
 * caused by NoRespondersError, TimeoutError), so nats-errors.ts classifies it as before.
 *
 * Concurrency: callbacks run on the connection's reader; a batch settles once, when every message it
 * expects was answered or given up (`settle`), or when nothing progressed for a whole timeout with
 * publishes unanswered (those time out). `forget` drops a batch whose sender gave up (a dropped
 * connection, an abort): late answers for it are ignored.
 */
import { JetStreamApiError, JetStreamError, type ApiError } from '@nats-io/jetstream';
import { createInbox, errors, type Msg, type MsgHdrs, type NatsConnection, type Subscription } from '@nats-io/transport-node';

/** What became of one message of a batch: stored, a duplicate JetStream recognised, nothing to publish, or the error. */
export type AckOutcome = 'stored' | 'duplicate' | 'none' | { readonly error: unknown };

/** The acks of one connection. Made when the connection is; dies with it. */
export class NatsAcks {
  private readonly nc: NatsConnection;
  private readonly inbox: string;
  private readonly subscription: Subscription;
  private readonly batches = new Map<number, AckBatch>();
  private nextId = 0;

  constructor(nc: NatsConnection) {
    this.nc = nc;
    this.inbox = createInbox();
    this.subscription = nc.subscribe(`${this.inbox}.*.*`, { callback: (err, msg) => this.answer(err, msg) });
    void this.watch();
  }

  /** A batch of `size` messages, settling within `timeoutMs` of its last progress. */
  batch(size: number, timeoutMs: number): AckBatch {
    const id = this.nextId++;
    const batch = new AckBatch(this, id, `${this.inbox}.${id}.`, size, timeoutMs);
    if (size > 0) this.batches.set(id, batch);
    return batch;
  }

  /**
   * Publishes one message of `batch` (its `index`) with its reply subject; a publish the client refuses
   * at once (too large, connection closed) settles that message with the client's error.
   */
  publish(batch: AckBatch, index: number, subject: string, payload: Uint8Array, headers: MsgHdrs): void {
    try {
      this.nc.publish(subject, payload, { headers, reply: batch.replyPrefix + index });
      batch.issued(index);
    } catch (err) {
      batch.settle(index, { error: err });
    }
  }

  /** Late answers for this batch are ignored from now on. */
  forget(batch: AckBatch): void {
    this.batches.delete(batch.id);
  }

  private answer(err: Error | null, msg: Msg): void {
    if (err !== null) {
      // The subscription itself failed (a permission violation): nothing will be answered.
      for (const batch of [...this.batches.values()]) batch.failOutstanding(err);
      return;
    }
    const subject = msg.subject;
    const last = subject.lastIndexOf('.');
    const before = subject.lastIndexOf('.', last - 1);
    const batch = this.batches.get(Number(subject.slice(before + 1, last)));
    if (batch === undefined) return;
    batch.answered(Number(subject.slice(last + 1)), pubAckOutcome(msg, subject));
  }

  /** A publish the server refused (permission violation) fails what is unanswered: the server will not say which. */
  private async watch(): Promise<void> {
    for await (const status of this.nc.status()) {
      if (status.type === 'error' && status.error instanceof errors.PermissionViolationError && status.error.operation === 'publish') {
        for (const batch of [...this.batches.values()]) batch.failOutstanding(status.error);
      }
    }
  }

  /** @internal A batch settled: no more answers for it. */
  settled(batch: AckBatch): void {
    this.batches.delete(batch.id);
  }

  /** Unsubscribes (idempotent; the connection's close does it too). */
  close(): void {
    if (!this.subscription.isClosed()) this.subscription.unsubscribe();
  }
}

const decoder = new TextDecoder();

/** Whether an outcome's error is the server's "no responders" (no stream takes the subject). */
export function isNoResponders(error: unknown): boolean {
  return error instanceof errors.RequestError && error.isNoResponders();
}

/** What a reply on a message's reply subject says, as `js.publish` would read it. */
function pubAckOutcome(msg: Msg, subject: string): AckOutcome {
  const data = msg.data;
  if (data.length === 0) {
    // A status without a body: 503 is "no responders" (no stream takes the subject, or JetStream is away).
    const code = msg.headers?.code ?? 0;
    const cause = code === 503 ? new errors.NoRespondersError(subject) : new Error(`status ${code} ${msg.headers?.description ?? ''}`.trim());
    return { error: new errors.RequestError(cause.message, { cause }) };
  }
  let ack: { stream?: unknown; duplicate?: unknown; error?: ApiError };
  try {
    ack = JSON.parse(decoder.decode(data)) as typeof ack;
  } catch (err) {
    return { error: new JetStreamError('invalid ack response', { cause: err }) };
  }
  if (ack.error !== undefined) return { error: new JetStreamApiError(ack.error) };
  if (typeof ack.stream !== 'string' || ack.stream === '') return { error: new JetStreamError('invalid ack response') };
  return ack.duplicate === true ? 'duplicate' : 'stored';
}

/** The acks of one batch: outcomes by index, settling when every message has one. */
export class AckBatch {
  readonly id: number;
  /** Prefix of the reply subjects: `<inbox>.<id>.` (the index follows). */
  readonly replyPrefix: string;
  readonly outcomes: (AckOutcome | undefined)[];
  /** 1 for a message published and not answered yet. */
  private readonly waiting: Uint8Array;
  /** Settles when every message has an outcome. */
  readonly done: Promise<void>;
  private readonly acks: NatsAcks;
  private readonly timeoutMs: number;
  private remaining: number;
  /** Published and not answered yet. */
  private outstanding = 0;
  /** Issues and answers so far: the timer looks whether it moved. */
  private progress = 0;
  private progressAtCheck = -1;
  private timer: NodeJS.Timeout | undefined;
  private resolve: () => void = () => undefined;

  constructor(acks: NatsAcks, id: number, replyPrefix: string, size: number, timeoutMs: number) {
    this.acks = acks;
    this.id = id;
    this.replyPrefix = replyPrefix;
    this.timeoutMs = timeoutMs;
    this.outcomes = new Array<AckOutcome | undefined>(size);
    this.waiting = new Uint8Array(size);
    this.remaining = size;
    this.done = new Promise<void>((resolve) => (this.resolve = resolve));
    if (size === 0) this.finish();
  }

  /** Gives message `index` its outcome (when it is not published, or was answered). Once per message. */
  settle(index: number, outcome: AckOutcome): void {
    if (this.outcomes[index] !== undefined || this.remaining === 0) return;
    this.outcomes[index] = outcome;
    this.progress++;
    if (--this.remaining === 0) this.finish();
  }

  /** @internal A message was published: its answer is due within the timeout. */
  issued(index: number): void {
    if (this.outcomes[index] !== undefined || this.waiting[index] === 1) return;
    this.waiting[index] = 1;
    this.outstanding++;
    this.progress++;
    this.timer ??= setTimeout(() => this.check(), this.timeoutMs);
  }

  /** @internal An answer came for message `index`. */
  answered(index: number, outcome: AckOutcome): void {
    if (this.waiting[index] !== 1) return;
    this.waiting[index] = 0;
    this.outstanding--;
    this.settle(index, outcome);
  }

  /** @internal Every message published and not answered fails with `error`. */
  failOutstanding(error: unknown): void {
    if (this.outstanding === 0) return;
    this.outstanding = 0;
    for (let i = 0; i < this.waiting.length; i++) {
      if (this.waiting[i] !== 1) continue;
      this.waiting[i] = 0;
      this.settle(i, { error });
    }
  }

  /**
   * Each timeout: when nothing moved since the last check and publishes wait for answers, they time
   * out; a batch waiting for a large body to be stored (nothing outstanding) waits on.
   */
  private check(): void {
    this.timer = undefined;
    if (this.remaining === 0) return;
    if (this.progress === this.progressAtCheck && this.outstanding > 0) {
      this.failOutstanding(new errors.TimeoutError());
      return;
    }
    this.progressAtCheck = this.progress;
    this.timer = setTimeout(() => this.check(), this.timeoutMs);
  }

  private finish(): void {
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
    this.acks.settled(this);
    this.resolve();
  }
}
