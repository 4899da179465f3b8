/**
 * The library's entry point for one node directory: configuration, identity and the node's queues,
 * opened together. Applications use it to send and to consume; the daemon uses it too.
 *
 * Opening a node never starts network activity and never needs the daemon.
 */
import { resolve } from 'node:path';
import { MqlogError } from '../errors.js';
import type { TruncatedTail } from '../log/recovery.js';
import { DEFAULT_CHANNEL, type MessageMeta } from '../queue/codec.js';
import type { ReceiptState, ReceiptStatus } from '../queue/receipts.js';
import type { Delivery } from '../queue/consumer.js';
import { Inbox, type ConsumeOptions } from '../queue/inbox.js';
import { Outbox, type SendOptions } from '../queue/outbox.js';
import { loadNodeId } from '../queue/node-identity.js';
import { advertisedUrl, loadConfig, resolveDestination, type Config } from './config.js';

export interface NodeOptions {
  /** The node directory (created on first use). */
  readonly data: string;
  /** Values that override `DIR/mqlog.json`. */
  readonly config?: Partial<Record<keyof Config, unknown>>;
  /** Told about problems that do not fail the call (a receipt that cannot be addressed). Default: process warnings. */
  readonly onWarning?: (message: string) => void;
  /** Called after every group commit of this node's writers (metrics). */
  readonly onFlush?: (frames: number, bytes: number, durationMs: number) => void;
  /** Called when opening a stream cut off a torn tail left by a killed writer. Default: a warning. */
  readonly onTruncated?: (stream: string, tail: TruncatedTail) => void;
}

export class MqlogNode {
  readonly dataDir: string;
  readonly config: Config;
  readonly nodeId: string;
  readonly outbox: Outbox;
  private readonly inboxes = new Map<string, Promise<Inbox>>();
  private readonly onWarning: (message: string) => void;
  private readonly writerHooks: Pick<NodeOptions, 'onFlush' | 'onTruncated'>;
  private closing: Promise<void> | undefined;

  private constructor(dataDir: string, config: Config, nodeId: string, outbox: Outbox, options: NodeOptions) {
    const onWarning = options.onWarning;
    this.writerHooks = { ...(options.onFlush === undefined ? {} : { onFlush: options.onFlush }), onTruncated: options.onTruncated ?? ((stream, tail) => this.onWarning(truncationNote(stream, tail))) };
    this.dataDir = dataDir;
    this.config = config;
    this.nodeId = nodeId;
    this.outbox = outbox;
    this.onWarning = onWarning ?? ((message) => process.emitWarning(message, 'MqlogWarning'));
  }

  /** @throws ERR_CONFIG for a bad mqlog.json, ERR_IO when the directory cannot be used. */
  static async open(options: NodeOptions): Promise<MqlogNode> {
    const dataDir = resolve(options.data);
    const config = await loadConfig(dataDir, options.config);
    const warn = options.onWarning ?? ((message: string) => process.emitWarning(message, 'MqlogWarning'));
    const nodeId = await loadNodeId(dataDir);
    const outbox = await Outbox.open({
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
    return new MqlogNode(dataDir, config, nodeId, outbox, options);
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
        dataDir: this.dataDir,
        channel,
        segmentBytes: effectiveSegmentBytes(this.config),
        visibilityTimeoutMs: this.config.visibilityTimeoutMs,
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
  async *tail(options: ConsumeOptions & { channel?: string } = {}): AsyncGenerator<Delivery> {
    const { channel, ...rest } = options;
    const inbox = await this.inbox(channel ?? DEFAULT_CHANNEL);
    yield* inbox.consume(rest);
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
    })();
    return this.closing;
  }
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
