/**
 * The library's entry point for one node directory: configuration, identity and the node's queues,
 * opened together. Applications use it to send and to consume; the daemon uses it too.
 *
 * Opening a node never starts network activity and never needs the daemon.
 */
import { resolve } from 'node:path';
import { MqlogError } from '../errors.js';
import { Outbox, type SendOptions } from '../queue/outbox.js';
import { loadNodeId } from '../queue/node-identity.js';
import { advertisedUrl, loadConfig, resolveDestination, type Config } from './config.js';

export interface NodeOptions {
  /** The node directory (created on first use). */
  readonly data: string;
  /** Values that override `DIR/mqlog.json`. */
  readonly config?: Partial<Record<keyof Config, unknown>>;
}

export class MqlogNode {
  readonly dataDir: string;
  readonly config: Config;
  readonly nodeId: string;
  readonly outbox: Outbox;
  private closing: Promise<void> | undefined;

  private constructor(dataDir: string, config: Config, nodeId: string, outbox: Outbox) {
    this.dataDir = dataDir;
    this.config = config;
    this.nodeId = nodeId;
    this.outbox = outbox;
  }

  /** @throws ERR_CONFIG for a bad mqlog.json, ERR_IO when the directory cannot be used. */
  static async open(options: NodeOptions): Promise<MqlogNode> {
    const dataDir = resolve(options.data);
    const config = await loadConfig(dataDir, options.config);
    const nodeId = await loadNodeId(dataDir);
    const outbox = await Outbox.open({
      dataDir,
      nodeName: config.name,
      nodeId,
      replyTo: advertisedUrl(config),
      segmentBytes: config.segmentBytes,
      resolveDestination: (to) => resolveDestination(config, to),
    });
    return new MqlogNode(dataDir, config, nodeId, outbox);
  }

  /**
   * Appends a message to the local outbox and resolves with its id once it is fsync'd.
   * Works while the peer, the network and the daemon are down. See Outbox.send for the errors.
   */
  send(to: string | readonly string[], body: Uint8Array | string, options?: SendOptions): Promise<string> {
    if (this.closing !== undefined) return Promise.reject(new MqlogError('ERR_CLOSED', 'node is closed'));
    return this.outbox.send(to, body, options);
  }

  /** The canonical form of a destination; throws ERR_UNKNOWN_PEER for one that is neither a peer nor a URL. */
  resolveDestination(to: string): string {
    return resolveDestination(this.config, to);
  }

  /** Waits for pending sends and releases files and locks. Idempotent. */
  close(): Promise<void> {
    this.closing ??= this.outbox.close();
    return this.closing;
  }
}

export function openNode(options: NodeOptions): Promise<MqlogNode> {
  return MqlogNode.open(options);
}
