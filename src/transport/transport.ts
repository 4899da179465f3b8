/**
 * The transport interface: how batches of frames leave a node and arrive at another
 * (spec/transports.md). HTTP is the default implementation; any other (a broker, a file drop) only has
 * to provide these two sides. A transport never looks inside frames and never touches the disk: the
 * sender hands it bytes read from the outbox, the receiving side hands bytes to a BatchSink that
 * validates and stores them.
 */
import type { MessageFields } from './frame-contents.js';

/**
 * One frame as it travels: the name of the sender's stream it comes from, and its bytes as on disk —
 * whole, or in parts (header, payload) to spare a copy. A received frame is always one Buffer.
 */
export interface WireFrame {
  readonly stream: string;
  readonly frame: Buffer | readonly Buffer[];
  /**
   * What a transport that routes by message may need without decoding the frame (the sender fills it
   * in): the message id — or id and byte position for a chunk of a streamed body — and its channel.
   */
  readonly about?: { readonly id: string; readonly channel: string; readonly priority: number; readonly position?: number };
}

export interface ReceivedFrame extends WireFrame {
  readonly frame: Buffer;
  /**
   * For sources that do not deliver in order (`IncomingBatch.unordered`): every frame of the sender
   * stream for this destination in `[coversFrom, offset)` is not one the sender will deliver (refused,
   * expired, or sent another way), so once this frame is stored that whole range counts as stored.
   */
  readonly coversFrom?: number | undefined;
}

/**
 * A message a source received as its fields and body rather than as a frame (a JetStream message
 * published with format `headers`): the sink checks the fields as it checks a frame's and makes the
 * one frame it stores, so no frame is built here to be decoded and checked there again.
 */
export interface ReceivedMessage {
  /** The sender stream it is keyed under, as for a frame. */
  readonly stream: string;
  readonly message: {
    /** Its offset in that stream. */
    readonly offset: number;
    readonly fields: MessageFields & { readonly to: readonly string[] };
    /** The inline body (empty for a streamed one). */
    readonly body: Uint8Array;
    /** Set when the body came before as chunk frames: its size and lower-case hex SHA-256. */
    readonly streamed?: { readonly size: number; readonly sha256: string } | undefined;
  };
  /** As for a frame (ReceivedFrame.coversFrom). */
  readonly coversFrom?: number | undefined;
}

export interface OutgoingBatch {
  /** Permanent id of the sending node (for duplicate detection). */
  readonly node: string;
  /** Name of the sending node. */
  readonly name: string;
  /** The destination as the sender names it (a peer name or URL): part of the duplicate-detection key. */
  readonly destination: string;
  readonly frames: readonly WireFrame[];
  /**
   * Per sender stream, the offsets `[from, to)` the batch covers: every frame of the stream for this
   * destination in that range is in the batch (spec/http-protocol.md §5). Optional: without it, a batch
   * covers everything up to its last frame of each stream.
   */
  readonly covers?: Readonly<Record<string, readonly [number, number]>> | undefined;
  /**
   * Where the sending node takes receipts (its daemon's address as it listens or advertises it): the
   * receiver sends the receipts of this batch's messages there when the sender is not a configured peer.
   */
  readonly replyTo?: string | undefined;
}

export interface IncomingBatch extends Omit<OutgoingBatch, 'frames'> {
  /** Frames, or (from a source that receives messages rather than frames) messages. */
  readonly frames: readonly (ReceivedFrame | ReceivedMessage)[];
  /**
   * Set by sources that do not deliver each stream in order (a broker redelivering): duplicates are then
   * recognised by exact offset, and `floor` says up to which offset everything was delivered before.
   */
  readonly unordered?: { readonly floor: number } | undefined;
  /** The peer name the transport authenticated, if it authenticates; else undefined. */
  readonly peer: string | undefined;
  /** Network address of the sender, for logs and the loopback-only rule. */
  readonly remoteAddress: string | undefined;
}

/** The answer to a batch: how many frames were stored now, how many had been stored before. */
export interface BatchResult {
  readonly stored: number;
  readonly duplicates: number;
}

/**
 * The sending side, one per peer. `send` resolves only once the peer answered that every frame of the
 * batch is durable in its inbox (stored now or before).
 *
 * It rejects with an MqlogError:
 * - ERR_PEER_UNREACHABLE (retryable): no answer (refused, reset, timeout);
 * - ERR_PEER_FAILED (retryable): the peer answered with a retryable failure (5xx, 507, 503, 429);
 * - ERR_PEER_REJECTED: the peer refused the batch for good; `details.frame` is the index of the
 *   offending frame when the peer named one, `details.code` the peer's error code.
 */
export interface Transport {
  send(batch: OutgoingBatch, signal?: AbortSignal): Promise<BatchResult>;
  close(): Promise<void>;
}

/** The receiving side's storage: validates every frame, stores them durably, then answers. */
export interface BatchSink {
  /**
   * Stores a batch. Resolves only after everything is fsync'd. Rejects with an MqlogError (whose
   * httpStatus the transport answers with) and stores nothing when any frame is invalid;
   * `details.frame` names the first invalid frame.
   */
  accept(batch: IncomingBatch): Promise<BatchResult>;
}
