/**
 * Inbox sources: JetStream streams a node takes messages from (config `sources`). A JetStream message that
 * is an mqlog frame (header `Mqlog-Frame: 1`, published by another node's forwarder) is stored as it is;
 * anything else is wrapped into a message whose body is the data, for the channel of the config, the
 * `Mqlog-Channel` header, or the subject's last token. Either way its offset is the JetStream stream
 * sequence, which is how redeliveries are recognised.
 */
import { FrameType, decodeFrame, encodeFrame } from '../log/frame.js';
import { DEFAULT_CHANNEL, DEFAULT_PRIORITY, checkChannel, decodeChunk, decodeMeta, encodeMessagePayload } from '../queue/codec.js';
import { isId, newId } from '../util/ids.js';
import { HEADER_CHANNEL, HEADER_FRAME, HEADER_PRIORITY } from '../transport/nats.js';
import type { SourceConfig } from './config.js';

export function adoptNatsMessage(source: SourceConfig, nodeName: string, stream: string) {
  return (data: Uint8Array, subject: string, sequence: number, headers: ReadonlyMap<string, string>): Buffer => {
    const bytes = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
    if (headers.get(HEADER_FRAME) === '1') {
      const decoded = decodeFrame(bytes);
      if (decoded.ok && decoded.bytes === bytes.length && readable(decoded.frame.type, decoded.frame.payload)) {
        return encodeFrame(decoded.frame.type, sequence, decoded.frame.payload);
      }
      // Not a frame after all: kept as a body rather than blocking the stream.
    }
    const channel = pickChannel(source.channel ?? headers.get(HEADER_CHANNEL) ?? tokenChannel(subject));
    const priority = Number(headers.get(HEADER_PRIORITY) ?? DEFAULT_PRIORITY);
    const given = headers.get('Nats-Msg-Id');
    const ts = Date.now();
    const payload = encodeMessagePayload(
      {
        id: given !== undefined && isId(given) ? given : newId(ts),
        ts,
        channel,
        priority: Number.isInteger(priority) && priority >= 0 && priority <= 9 ? priority : DEFAULT_PRIORITY,
        to: [nodeName],
        from: `nats:${stream}`,
      },
      bytes,
    );
    return encodeFrame(FrameType.MESSAGE, sequence, payload);
  };
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

function tokenChannel(subject: string): string {
  const token = subject.split('.').at(-1) ?? '';
  try {
    return decodeURIComponent(token);
  } catch {
    return token;
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
