/**
 * What a frame holds, for transports that carry messages rather than frames (JetStream publishes the
 * body as the payload and the fields as headers: spec/transports.md §3.2). The daemon, which knows the
 * frame format, unpacks frames into these and packs them back (the transport layer never decodes one).
 */

/** A message's fields, as the sender stored them (spec/log-format.md §8.1). */
export interface MessageFields {
  readonly id: string;
  /** Milliseconds since the epoch when it was sent. */
  readonly ts: number;
  readonly channel: string;
  /** 0..9, higher is more urgent. */
  readonly priority: number;
  /** Name of the sending node. */
  readonly from: string;
  /** Id of the sending node. */
  readonly node?: string | undefined;
  readonly expiresAt?: number | undefined;
  readonly notBefore?: number | undefined;
  readonly headers?: Readonly<Record<string, string>> | undefined;
  readonly receipt?: boolean | undefined;
  readonly replyTo?: string | undefined;
  readonly kind?: 'receipt' | undefined;
}

/** A frame unpacked: a message (with its inline body, or the size and digest of its streamed body), or a chunk of a streamed body. */
export type FrameContents =
  | {
      readonly type: 'message';
      /** The frame's offset in its stream. */
      readonly offset: number;
      readonly fields: MessageFields;
      /** The inline body (empty for a streamed one). */
      readonly body: Buffer;
      /** Set when the body travels in chunks before the message: its size and lower-case hex SHA-256. */
      readonly streamed?: { readonly size: number; readonly sha256: string } | undefined;
    }
  | {
      readonly type: 'chunk';
      readonly offset: number;
      /** The id of the message whose body it is part of. */
      readonly id: string;
      readonly channel: string;
      readonly priority: number;
      /** Byte position of `data` in the body. */
      readonly position: number;
      readonly data: Buffer;
    }
  | { readonly type: 'other'; readonly offset: number };
