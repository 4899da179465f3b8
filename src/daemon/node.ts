/**
 * The library's entry point for one node directory: configuration, identity, storage and the node's
 * queues, opened together. Applications use it to send and to consume; the daemon uses it too. This is
 * the composition root of storage: the one place that constructs a FileLogStore (unless the caller
 * hands in another LogStore, such as a MemoryLogStore); every queue object gets its log from here.
 *
 * Opening a node never starts network activity and never needs the daemon.
 */
import { resolve } from 'node:path';
import { MqlogError } from '../errors.js';
import { FileLogStore, type DamagedRange, type LogStore, type TruncatedTail } from '../log/index.js';
import { DEFAULT_CHANNEL, type MessageMeta } from '../queue/codec.js';
import type { ReceiptState, ReceiptStatus } from '../queue/receipts.js';
import type { Delivery, PeekedMessage } from '../queue/consumer.js';
import { Inbox, type ConsumeOptions } from '../queue/inbox.js';
import { Intake, type IntakeLimits, type IntakeOptions } from '../queue/intake.js';
import { listQueues, type QueueInfo } from '../queue/layout.js';
import { Outbox, type SendOptions } from '../queue/outbox.js';
import { loadNodeId, readNodeId } from '../queue/node-identity.js';
import { advertisedUrl, loadConfig, resolveDestination, type Config } from './config.js';

export interface NodeOptions {
  /** The node directory (created on first use). */
  readonly data: string;
  /**
   * Where the node's queues keep their logs. Default: segment files under `data` (FileLogStore). A
   * MemoryLogStore keeps them in this process's memory (the node's small state files stay on disk).
   */
  readonly store?: LogStore;
  /** Values that override `DIR/mqlog.json`. */
  readonly config?: Partial<Record<keyof Config, unknown>>;
  /** Told about problems that do not fail the call (a receipt that cannot be addressed). Default: process warnings. */
  readonly onWarning?: (message: string) => void;
  /** Called after every group commit of this node's writers (metrics). */
  readonly onFlush?: (frames: number, bytes: number, durationMs: number) => void;
  /** Called when opening a stream cut off a torn tail left by a killed writer. Default: a warning. */
  readonly onTruncated?: (stream: string, tail: TruncatedTail) => void;
  /**
   * Called when a reader of this node's file store passes over damaged bytes (spec/log-format.md §3.4)
   * and goes on after them. Default: a warning.
   */
  readonly onDamaged?: (queue: string, range: DamagedRange) => void;
}

export class MqlogNode {
  readonly dataDir: string;
  readonly config: Config;
  readonly nodeId: string;
  readonly store: LogStore;
  readonly outbox: Outbox;
  /** The store was made here (and is closed with the node), not handed in. */
  private readonly ownsStore: boolean;
  private readonly inboxes = new Map<string, Promise<Inbox>>();
  private readonly onWarning: (message: string) => void;
  private readonly writerHooks: Pick<NodeOptions, 'onFlush' | 'onTruncated'>;
  private closing: Promise<void> | undefined;

  private constructor(dataDir: string, config: Config, nodeId: string, store: LogStore, outbox: Outbox, options: NodeOptions) {
    const onWarning = options.onWarning;
    this.writerHooks = { ...(options.onFlush === undefined ? {} : { onFlush: options.onFlush }), onTruncated: options.onTruncated ?? ((stream, tail) => this.onWarning(truncationNote(stream, tail))) };
    this.dataDir = dataDir;
    this.config = config;
    this.nodeId = nodeId;
    this.store = store;
    this.ownsStore = options.store === undefined;
    this.outbox = outbox;
    this.onWarning = onWarning ?? ((message) => process.emitWarning(message, 'MqlogWarning'));
  }

  /** @throws ERR_CONFIG for a bad mqlog.json, ERR_IO when the directory cannot be used. */
  static async open(options: NodeOptions): Promise<MqlogNode> {
    const dataDir = resolve(options.data);
    const config = await loadConfig(dataDir, options.config);
    const warn = options.onWarning ?? ((message: string) => process.emitWarning(message, 'MqlogWarning'));
    const nodeId = await loadNodeId(dataDir);
    const store = options.store ?? new FileLogStore(dataDir, { rollIdleMs: config.segmentRollIdleMs, onDamaged: options.onDamaged ?? ((queue, range) => warn(damageNote(queue, range))) });
    const outbox = await Outbox.open({
      store,
      dataDir,
      nodeName: config.name,
      nodeId,
      replyTo: advertisedUrl(config),
      segmentBytes: effectiveSegmentBytes(config),
      resolveDestination: (to) => resolveDestination(config, to),
      maxBytes: config.maxQueueBytes,
      onTruncated: options.onTruncated ?? ((stream, tail) => warn(truncationNote(stream, tail))),
      onSlotBroken: (slot, reason) => warn(`outbox writer slot w${slot} is corrupt and was set aside (w${slot}.broken); sending goes on in another slot. ${reason} (see mqlog verify)`),
    });
    return new MqlogNode(dataDir, config, nodeId, store, outbox, options);
  }

  /**
   * Opens a node directory to look at, never to change: no identity or directory is created, and
   * nothing is sent. For `stat` and `dump`.
   * @throws ERR_CONFIG for a bad mqlog.json.
   */
  static async inspect(data: string): Promise<MqlogNode> {
    const dataDir = resolve(data);
    const config = await loadConfig(dataDir);
    const store = new FileLogStore(dataDir);
    const nodeId = (await readNodeId(dataDir)) ?? '';
    const outbox = await Outbox.open({ store, dataDir, nodeName: config.name, nodeId, resolveDestination: (to) => resolveDestination(config, to) });
    return new MqlogNode(dataDir, config, nodeId, store, outbox, { data: dataDir });
  }

  /** The queues this node holds (outbox, inboxes, dead letters), as found on disk. */
  queues(): Promise<QueueInfo[]> {
    return listQueues(this.dataDir);
  }

  /**
   * What arrives from peers: checks, duplicate detection and storage into this node's inboxes. Opened
   * once per daemon (it recovers its duplicate table from the inboxes).
   */
  openIntake(limits: IntakeLimits, hooks: Pick<IntakeOptions, 'onReceipt' | 'onBatch' | 'onStored' | 'onDedupGap'> = {}): Promise<Intake> {
    return Intake.open({ ...limits, ...hooks, dataDir: this.dataDir, store: this.store, inboxFor: (channel) => this.inbox(channel) });
  }

  /**
   * Appends a message to the local outbox and resolves with its id once it is fsync'd.
   * Works while the peer, the network and the daemon are down. See Outbox.send for the errors.
   */
  send(to: string | readonly string[], body: Uint8Array | string, options?: SendOptions): Promise<string> {
    if (this.closing !== undefined) return Promise.reject(new MqlogError('ERR_CLOSED', 'node is closed'));
    return this.outbox.send(to, body, options);
  }

  /**
   * Sends a body of any size read from a stream (a file, say), never holding it whole in memory; the
   * receiver checks its SHA-256 before the message becomes visible. See Outbox.sendStream.
   */
  sendStream(to: string | readonly string[], source: AsyncIterable<Uint8Array>, options?: SendOptions): Promise<string> {
    if (this.closing !== undefined) return Promise.reject(new MqlogError('ERR_CLOSED', 'node is closed'));
    return this.outbox.sendStream(to, source, options);
  }

  /** The inbox of a channel (opened once per node object). */
  inbox(channel: string = DEFAULT_CHANNEL): Promise<Inbox> {
    if (this.closing !== undefined) return Promise.reject(new MqlogError('ERR_CLOSED', 'node is closed'));
    let inbox = this.inboxes.get(channel);
    if (inbox === undefined) {
      inbox = Inbox.open({
        store: this.store,
        dataDir: this.dataDir,
        channel,
        segmentBytes: effectiveSegmentBytes(this.config),
        visibilityTimeoutMs: this.config.visibilityTimeoutMs,
        renewLeases: this.config.renewLeases,
        maxDeliveries: this.config.maxDeliveries,
        onSettled: (meta, outcome, reason) => this.reportReceipt(meta, outcome, reason),
        maxBytes: this.config.maxQueueBytes,
        ...this.writerHooks,
      });
      inbox.catch(() => this.inboxes.delete(channel));
      this.inboxes.set(channel, inbox);
    }
    return inbox;
  }

  /**
   * Tails a channel's inbox: ready messages, most urgent first, each leased to this consumer until it is
   * acked (`await message.ack()`) or its visibility timeout passes. Leaving the loop releases what was
   * leased but not yet handed out.
   */
  tail(options: ConsumeOptions & { channel?: string; peek: true }): AsyncGenerator<PeekedMessage>;
  tail(options?: ConsumeOptions & { channel?: string; peek?: false }): AsyncGenerator<Delivery>;
  /** With `peek: true`: lists the ready messages without leasing them or counting a delivery (see Inbox.peek). */
  async *tail(options: ConsumeOptions & { channel?: string; peek?: boolean } = {}): AsyncGenerator<Delivery | PeekedMessage> {
    const { channel, peek, ...rest } = options;
    const inbox = await this.inbox(channel ?? DEFAULT_CHANNEL);
    if (peek === true) yield* inbox.peek(rest.limit === undefined ? {} : { limit: rest.limit });
    else yield* inbox.consume(rest);
  }

  /**
   * The "job done" state of a message this node sent with `receipt: true`: `queued`, `sent`, `processed`,
   * `dead` or `expired` (for a multicast, the aggregate; `peers` has each destination's state).
   * Undefined when this node holds no receipt for the id.
   */
  status(id: string): Promise<ReceiptStatus | undefined> {
    return this.outbox.receipts.status(id);
  }

  /**
   * Resolves once the message reached `state`, or a settled state that makes it unreachable (check
   * `.state`). Use `AbortSignal.timeout(ms)` to bound the wait (rejects with ERR_TIMEOUT).
   * @throws ERR_NOT_FOUND for an id without receipt here.
   */
  waitFor(id: string, state: ReceiptState, options: { signal?: AbortSignal } = {}): Promise<ReceiptStatus> {
    return this.outbox.receipts.waitFor(id, state, options);
  }

  /**
   * Sends the outcome of a message that asked for a receipt back to its sender: to the configured peer
   * of that name, else to the address the message carried.
   */
  private async reportReceipt(meta: MessageMeta, outcome: 'processed' | 'dead' | 'expired', reason?: string): Promise<void> {
    const to = Object.hasOwn(this.config.peers, meta.from) ? meta.from : meta.replyTo;
    if (to === undefined) {
      this.onWarning(`cannot send the receipt of ${meta.id}: ${meta.from} is not a peer and the message carries no reply address`);
      return;
    }
    let destination: string;
    try {
      destination = resolveDestination(this.config, to);
    } catch {
      this.onWarning(`cannot send the receipt of ${meta.id}: ${to} is neither a peer nor a URL`);
      return;
    }
    await this.outbox.sendReceipt(destination, {
      id: meta.id,
      destination: meta.origin?.destination ?? this.config.name,
      state: outcome,
      at: Date.now(),
      ...(reason === undefined ? {} : { reason }),
    });
  }

  /** The canonical form of a destination; throws ERR_UNKNOWN_PEER for one that is neither a peer nor a URL. */
  resolveDestination(to: string): string {
    return resolveDestination(this.config, to);
  }

  /** Waits for pending sends and releases files and locks. Idempotent. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      await this.outbox.close();
      for (const inbox of this.inboxes.values()) await (await inbox.catch(() => undefined))?.close();
      if (this.ownsStore) await this.store.close();
    })();
    return this.closing;
  }
}

/** What a damaged range a reader passed over is reported as: never silently. */
export function damageNote(queue: string, range: DamagedRange): string {
  return `passed over ${range.bytes} damaged bytes of ${queue}/${range.stream} at byte ${range.position} of ${range.path} (${range.reason}); reading went on after them (see mqlog verify, mqlog repair)`;
}

/** What a cut-off torn tail is reported as: never silently. */
function truncationNote(stream: string, tail: TruncatedTail): string {
  const kept = tail.savedAs === undefined ? 'all zeros' : `kept in ${tail.savedAs}`;
  return `cut off a torn tail of ${stream} (a write that never completed its fsync: a killed writer or a power cut): ${tail.bytes} bytes at byte ${tail.position} of ${tail.path}, ${kept} (${tail.reason})`;
}

/**
 * The segment size writers use: `segmentBytes`, but at most a quarter of `maxQueueBytes`, so that a full
 * queue always has sealed segments that compaction can reclaim (the open one never is).
 */
export function effectiveSegmentBytes(config: Config): number {
  if (config.maxQueueBytes === null) return config.segmentBytes;
  return Math.max(64 * 1024, Math.min(config.segmentBytes, Math.floor(config.maxQueueBytes / 4)));
}

export function openNode(options: NodeOptions): Promise<MqlogNode> {
  return MqlogNode.open(options);
}

/**
 * A queue directory found by a path (dump and verify take any path), opened to look at: the queue
 * object that owns it, over a file store rooted where the queue's name begins.
 */
export async function inspectQueue(info: QueueInfo): Promise<Outbox | Inbox> {
  const root = queueRoot(info);
  const store = new FileLogStore(root);
  if (info.kind === 'outbox') return Outbox.open({ store, dataDir: root, info, nodeName: '', nodeId: '', resolveDestination: (to) => to });
  return Inbox.open({ store, dataDir: root, info, channel: info.channel ?? DEFAULT_CHANNEL, kind: info.kind === 'dead' ? 'dead' : 'inbox' });
}

/** The directory a queue's name is relative to (`DIR` for `DIR/inbox/jobs` named `inbox/jobs`). */
function queueRoot(info: QueueInfo): string {
  const dir = resolve(info.dir);
  const suffix = `/${info.queue}`;
  if (!dir.endsWith(suffix)) throw new MqlogError('ERR_INVALID_ARG', `queue ${info.queue} is not at the end of ${dir}`);
  return dir.slice(0, dir.length - suffix.length) || '/';
}
