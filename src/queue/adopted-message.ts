/**
 * Messages that come from outside mqlog's own logs (a JetStream stream taken as an inbox source): each
 * becomes one frame of the inbox, with the source's sequence number as its offset, which is how
 * redeliveries are recognised. A message that is an mqlog frame (published by another node's forwarder)
 * is stored as it is; anything else is wrapped into a message whose body is the data.
 */
import { FrameType, decodeFrame, encodeFrame } from '../log/frame.js';
import { isId, newId } from '../util/ids.js';
import { DEFAULT_CHANNEL, DEFAULT_PRIORITY, MAX_HEADERS, MAX_HEADER_KEY_BYTES, MAX_HEADER_VALUE_BYTES, checkChannel, decodeChunk, decodeMeta, encodeChunk, encodeMessagePayload, type ChunkMeta } from './codec.js';

export interface ForeignMessage {
  readonly data: Uint8Array;
  /** The source's sequence number: the frame's offset. */
  readonly sequence: number;
  /** The sender says the data is an mqlog frame. */
  readonly isFrame: boolean;
  /** The channel to store a wrapped message in (invalid names fall back to the default channel). */
  readonly channel: string;
  /** The priority asked for, as text (anything else than 0-9 falls back to the default). */
  readonly priority: string | undefined;
  /** The message id the source gave, when it is one. */
  readonly id: string | undefined;
  /** This node's name (a wrapped message's destination). */
  readonly to: string;
  /** Where it came from, as the `from` of a wrapped message. */
  readonly from: string;
  /** Headers to keep on a wrapped message (those beyond the format's limits are left out). */
  readonly headers?: Readonly<Record<string, string>> | undefined;
}

/** The frame to store for a message from a source. */
export function adoptMessage(m: ForeignMessage): Buffer {
  const bytes = Buffer.from(m.data.buffer, m.data.byteOffset, m.data.byteLength);
  if (m.isFrame) {
    const decoded = decodeFrame(bytes);
    if (decoded.ok && decoded.bytes === bytes.length && readable(decoded.frame.type, decoded.frame.payload)) {
      return encodeFrame(decoded.frame.type, m.sequence, decoded.frame.payload);
    }
    // Not a frame after all: kept as a body rather than blocking the stream.
  }
  const priority = Number(m.priority ?? DEFAULT_PRIORITY);
  const ts = Date.now();
  const payload = encodeMessagePayload(
    {
      id: m.id !== undefined && isId(m.id) ? m.id : newId(ts),
      ts,
      channel: pickChannel(m.channel),
      priority: Number.isInteger(priority) && priority >= 0 && priority <= 9 ? priority : DEFAULT_PRIORITY,
      to: [m.to],
      from: m.from,
      ...(m.headers === undefined ? {} : { headers: keepable(m.headers) }),
    },
    bytes,
  );
  return encodeFrame(FrameType.MESSAGE, m.sequence, payload);
}

function keepable(headers: Readonly<Record<string, string>>): Record<string, string> {
  const out: Record<string, string> = {};
  let count = 0;
  for (const [key, value] of Object.entries(headers)) {
    if (count === MAX_HEADERS) break;
    const keyBytes = Buffer.byteLength(key);
    if (keyBytes === 0 || keyBytes > MAX_HEADER_KEY_BYTES || Buffer.byteLength(value) > MAX_HEADER_VALUE_BYTES) continue;
    out[key] = value;
    count++;
  }
  return out;
}

function readable(type: number, payload: Buffer): boolean {
  try {
    if (type === FrameType.MESSAGE) decodeMeta(payload);
    else if (type === FrameType.BODY_CHUNK) decodeChunk(payload);
    else return false;
    return true;
  } catch {
    return false;
  }
}

function pickChannel(channel: string): string {
  try {
    checkChannel(channel);
    return channel;
  } catch {
    return DEFAULT_CHANNEL;
  }
}

/** A frame published as it is by another node (JetStream format `frame`): the frame and its offset, if it is a sound one. */
export function adoptFrame(data: Uint8Array): { frame: Buffer; offset: number } | undefined {
  const bytes = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  const decoded = decodeFrame(bytes);
  if (!decoded.ok || decoded.bytes !== bytes.length || !readable(decoded.frame.type, decoded.frame.payload)) return undefined;
  return { frame: Buffer.from(bytes), offset: decoded.frame.offset };
}

/**
 * A piece of the streamed body of a message another node published with its fields apart from its body
 * (JetStream format `headers`), as a BODY_CHUNK frame at `offset`.
 */
export function adoptChunk(offset: number, meta: Omit<ChunkMeta, 'origin'>, data: Uint8Array): Buffer {
  return encodeFrame(FrameType.BODY_CHUNK, offset, Buffer.concat(encodeChunk(meta, data)));
}
