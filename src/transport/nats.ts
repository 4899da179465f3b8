/**
 * NATS JetStream as a transport (spec/transports.md §3): a destination `nats://HOST:PORT/<STREAM>` is
 * forwarded to by publishing every frame to the JetStream stream STREAM, subject `<STREAM>.<channel>`
 * (the channel encoded as one subject token), with the message id as `Nats-Msg-Id` so that JetStream's
 * duplicate window makes retries idempotent. A batch counts as delivered only when JetStream acked every
 * publish. The published data is the frame as on disk (CRC-checked, decodable by any mqlog node); headers
 * carry the channel, priority and id for consumers that are not mqlog.
 *
 * The other direction, a JetStream durable consumer feeding an inbox, is NatsSource.
 */
import { AckPolicy, DeliverPolicy, Events, connect, headers as natsHeaders, type JetStreamClient, type JetStreamManager, type NatsConnection } from 'nats';
import { MqlogError, abortError } from '../errors.js';
import type { BatchResult, BatchSink, OutgoingBatch, ReceivedFrame, Transport } from './transport.js';
import { backoffMs, sleep } from '../util/backoff.js';

export const HEADER_FRAME = 'Mqlog-Frame';
export const HEADER_CHANNEL = 'Mqlog-Channel';
export const HEADER_PRIORITY = 'Mqlog-Priority';

export interface NatsAddress {
  /** `host:port` of a NATS server. */
  readonly server: string;
  /** JetStream stream name. */
  readonly stream: string;
}

/** Parses `nats://HOST:PORT/STREAM`. @throws ERR_INVALID_ARG for anything else. */
export function parseNatsUrl(url: string): NatsAddress {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new MqlogError('ERR_INVALID_ARG', `${url} is not a nats:// URL`);
  }
  const stream = decodeURIComponent(parsed.pathname.replace(/^\//, ''));
  if (parsed.protocol !== 'nats:' || parsed.host === '' || !/^[A-Za-z0-9_-]{1,64}$/.test(stream)) {
    throw new MqlogError('ERR_INVALID_ARG', `${url} must be nats://HOST:PORT/STREAM (STREAM of letters, digits, _ and -)`);
  }
  return { server: parsed.host, stream };
}

/** A channel as one subject token: bytes outside [A-Za-z0-9_-] percent-encoded (so `.`, `*`, `>` are safe). */
export function channelToken(channel: string): string {
  let out = '';
  for (const byte of Buffer.from(channel, 'utf8')) {
    const ch = String.fromCharCode(byte);
    out += /^[A-Za-z0-9_-]$/.test(ch) ? ch : `%${byte.toString(16).toUpperCase().padStart(2, '0')}`;
  }
  return out;
}

/** A shared connection per server, reconnecting forever in the background. */
class Connection {
  private readonly server: string;
  private connecting: Promise<NatsConnection> | undefined;
  /** Callers waiting to hear that the connection dropped (publishes in flight will get no ack). */
  private readonly dropWaiters = new Set<() => void>();

  constructor(server: string) {
    this.server = server;
  }

  async get(): Promise<NatsConnection> {
    this.connecting ??= connect({ servers: this.server, reconnect: true, maxReconnectAttempts: -1, reconnectTimeWait: 250, timeout: 2000, name: 'mqlog' }).then(
      (nc) => {
        void this.watch(nc);
        return nc;
      },
      (err: unknown) => {
        this.connecting = undefined;
        throw new MqlogError('ERR_PEER_UNREACHABLE', `nats://${this.server}: ${(err as Error).message}`, { details: { url: `nats://${this.server}` }, cause: err });
      },
    );
    return this.connecting;
  }

  /** Resolves when the connection drops next. */
  dropped(): { promise: Promise<void>; cancel: () => void } {
    let wake = (): void => undefined;
    const promise = new Promise<void>((resolve) => {
      wake = resolve;
      this.dropWaiters.add(resolve);
    });
    return { promise, cancel: () => this.dropWaiters.delete(wake) };
  }

  private async watch(nc: NatsConnection): Promise<void> {
    for await (const status of nc.status()) {
      if (status.type !== Events.Disconnect) continue;
      for (const wake of this.dropWaiters) wake();
      this.dropWaiters.clear();
    }
  }

  async close(): Promise<void> {
    const connecting = this.connecting;
    this.connecting = undefined;
    const nc = await connecting?.catch(() => undefined);
    await nc?.close();
  }
}

/** Makes sure the stream exists, taking every subject under its name. */
async function ensureStream(jsm: JetStreamManager, stream: string): Promise<void> {
  try {
    await jsm.streams.info(stream);
  } catch {
    await jsm.streams.add({ name: stream, subjects: [`${stream}.>`], duplicate_window: 2 * 60 * 1_000_000_000 });
  }
}

export class NatsSender implements Transport {
  readonly url: string;
  private readonly address: NatsAddress;
  private readonly connection: Connection;
  private js: JetStreamClient | undefined;
  private streamReady = false;
  private readonly publishTimeoutMs: number;

  constructor(url: string, options: { publishTimeoutMs?: number } = {}) {
    this.url = url;
    this.address = parseNatsUrl(url);
    this.connection = new Connection(this.address.server);
    this.publishTimeoutMs = options.publishTimeoutMs ?? 10_000;
  }

  async send(batch: OutgoingBatch, signal?: AbortSignal): Promise<BatchResult> {
    // Everything a publish needs is checked before any goes out.
    const items = batch.frames.map((frame, index) => {
      const about = frame.about;
      if (about === undefined) throw new MqlogError('ERR_INVALID_ARG', `frame ${index} carries no id/channel for NATS`);
      const h = natsHeaders();
      h.set(HEADER_FRAME, '1');
      h.set(HEADER_CHANNEL, about.channel);
      h.set(HEADER_PRIORITY, String(about.priority));
      return {
        subject: `${this.address.stream}.${channelToken(about.channel)}`,
        data: Buffer.isBuffer(frame.frame) ? frame.frame : Buffer.concat(frame.frame),
        options: { msgID: about.position === undefined ? about.id : `${about.id}:${about.position}`, headers: h, timeout: this.publishTimeoutMs },
      };
    });
    const js = await this.client();
    // Publishes go out together; the batch is delivered only when every one of them was acked. A dropped
    // connection or an abort fails it at once: the publishes in flight will get no ack, and the retry is
    // safe (JetStream recognises the message ids).
    const dropped = this.connection.dropped();
    let aborted: (() => void) | undefined;
    const interrupted = new Promise<never>((_, reject) => {
      void dropped.promise.then(() => reject(new MqlogError('ERR_PEER_UNREACHABLE', `${this.url}: the connection dropped with publishes in flight`, { details: { url: this.url } })));
      if (signal !== undefined) {
        aborted = () => reject(abortError(signal));
        signal.addEventListener('abort', aborted, { once: true });
      }
    });
    interrupted.catch(() => undefined);
    const acks = Promise.allSettled(items.map((item) => js.publish(item.subject, item.data, item.options)));
    let results: PromiseSettledResult<Awaited<ReturnType<JetStreamClient['publish']>>>[];
    try {
      results = await Promise.race([acks, interrupted]);
    } finally {
      dropped.cancel();
      if (aborted !== undefined) signal?.removeEventListener('abort', aborted);
    }
    const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed !== undefined) {
      throw new MqlogError('ERR_PEER_UNREACHABLE', `${this.url}: publish not acknowledged: ${(failed.reason as Error).message}`, { details: { url: this.url }, cause: failed.reason });
    }
    let stored = 0;
    let duplicates = 0;
    for (const r of results) {
      if (r.status !== 'fulfilled') continue;
      if (r.value.duplicate) duplicates++;
      else stored++;
    }
    return { stored, duplicates };
  }

  async close(): Promise<void> {
    await this.connection.close();
  }

  private async client(): Promise<JetStreamClient> {
    const nc = await this.connection.get();
    if (!this.streamReady) {
      try {
        await ensureStream(await nc.jetstreamManager(), this.address.stream);
      } catch (err) {
        throw new MqlogError('ERR_PEER_UNREACHABLE', `${this.url}: cannot reach stream ${this.address.stream}: ${(err as Error).message}`, { cause: err });
      }
      this.streamReady = true;
    }
    this.js ??= nc.jetstream();
    return this.js;
  }
}

export interface NatsSourceOptions {
  /** `nats://HOST:PORT/STREAM` */
  readonly url: string;
  /** Name of the durable consumer (kept by JetStream across restarts). */
  readonly durable: string;
  /** Only messages on this subject (default: the whole stream). */
  readonly subject?: string;
  /** Channel for messages that are not mqlog frames (default: taken from the subject's last token). */
  readonly channel?: string;
  readonly sink: BatchSink;
  /**
   * Turns a JetStream message that is not an mqlog frame into one, given its stream sequence.
   * Provided by the daemon, which knows the message format.
   */
  readonly adopt: (data: Uint8Array, subject: string, sequence: number, headers: ReadonlyMap<string, string>) => Buffer;
  readonly onError?: (error: MqlogError) => void;
  /** A message the node refused for good (terminated in JetStream, not redelivered). */
  readonly onRefused?: (sequence: number, error: MqlogError) => void;
  readonly batchSize?: number;
}

/**
 * A JetStream durable consumer feeding this node's inbox: pulls messages, hands them to the sink as a
 * batch (which stores them durably, recognising redeliveries by their stream sequence), and acks them
 * in JetStream only after that. So an outage of either side loses nothing and duplicates nothing.
 */
export class NatsSource {
  private readonly options: NatsSourceOptions;
  private readonly address: NatsAddress;
  private readonly connection: Connection;
  private readonly stop = new AbortController();
  private running: Promise<void> | undefined;

  constructor(options: NatsSourceOptions) {
    this.options = options;
    this.address = parseNatsUrl(options.url);
    this.connection = new Connection(this.address.server);
  }

  start(): void {
    this.running ??= this.loop();
  }

  async close(): Promise<void> {
    this.stop.abort();
    await this.running;
    await this.connection.close();
  }

  private async loop(): Promise<void> {
    let failures = 0;
    while (!this.stop.signal.aborted) {
      try {
        await this.pull();
        failures = 0;
      } catch (err) {
        if (this.stop.signal.aborted) break;
        const error = err instanceof MqlogError ? err : new MqlogError('ERR_PEER_UNREACHABLE', `${this.options.url}: ${(err as Error).message}`, { cause: err });
        this.options.onError?.(error);
        await sleep(backoffMs(++failures, 100, 10_000), this.stop.signal);
      }
    }
  }

  private async pull(): Promise<void> {
    const nc = await this.connection.get();
    const jsm = await nc.jetstreamManager();
    await ensureStream(jsm, this.address.stream);
    try {
      await jsm.consumers.info(this.address.stream, this.options.durable);
    } catch {
      await jsm.consumers.add(this.address.stream, {
        durable_name: this.options.durable,
        ack_policy: AckPolicy.Explicit,
        deliver_policy: DeliverPolicy.All,
        ack_wait: 30 * 1_000_000_000,
        ...(this.options.subject === undefined ? {} : { filter_subject: this.options.subject }),
      });
    }
    const consumer = await nc.jetstream().consumers.get(this.address.stream, this.options.durable);
    while (!this.stop.signal.aborted) {
      const messages = await consumer.fetch({ max_messages: this.options.batchSize ?? 256, expires: 1000 });
      let pending: { frame: ReceivedFrame; ack: () => Promise<boolean>; term: () => void; sequence: number }[] = [];
      for await (const m of messages) {
        const hdrs = new Map<string, string>();
        for (const [k, v] of m.headers ?? []) hdrs.set(k, v[0] ?? '');
        const sequence = m.info.streamSequence;
        const frame = this.options.adopt(m.data, m.subject, sequence, hdrs);
        pending.push({ frame: { stream: 'js.w0', frame }, ack: () => m.ackAck(), term: () => m.term(), sequence });
      }
      if (pending.length === 0) continue;
      // Everything up to the ack floor was stored before it was acked (below): safe to forget exactly.
      const floor = (await consumer.info(true)).ack_floor.stream_seq;
      // Stored (fsync'd) first, acked in JetStream after: a crash in between only brings a redelivery.
      // A message this node refuses for good is terminated in JetStream (and logged), so that it does
      // not hold up the ones behind it; the rest of the batch is offered again.
      while (pending.length > 0) {
        try {
          await this.options.sink.accept({
            unordered: { floor },
            node: `nats://${this.address.server}/${this.address.stream}`,
            name: `nats:${this.address.stream}`,
            destination: this.options.durable,
            frames: pending.map((p) => p.frame),
            peer: undefined,
            remoteAddress: undefined,
          });
          break;
        } catch (err) {
          const index = err instanceof MqlogError ? err.details?.frame : undefined;
          if (!(err instanceof MqlogError) || err.retryable || typeof index !== 'number' || pending[index] === undefined) throw err;
          const refused = pending[index];
          refused.term();
          this.options.onRefused?.(refused.sequence, err);
          pending = pending.filter((_, i) => i !== index);
        }
      }
      await Promise.all(pending.map((p) => p.ack()));
    }
  }
}
