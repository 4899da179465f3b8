/**
 * Frames for transports that carry messages rather than frames (JetStream: spec/transports.md §3.2):
 * the forwarder hands a transport frames as stored; `unpackFrame` tells it their fields and body. The
 * other way, a JetStream source's messages, is source-codec.ts. Holds no format of its own.
 */
import { decodeStoredFrame } from '../queue/codec.js';
import type { FrameContents } from '../transport/frame-contents.js';
import type { WireFrame } from '../transport/transport.js';

/** A frame the forwarder read from the outbox (already checked when read), unpacked. */
export function unpackFrame(wire: WireFrame): FrameContents {
  const frame = decodeStoredFrame(Buffer.isBuffer(wire.frame) ? wire.frame : Buffer.concat(wire.frame));
  if (frame.type === 'message') {
    const { meta, offset, body } = frame;
    const fields = {
      id: meta.id,
      ts: meta.ts,
      channel: meta.channel,
      priority: meta.priority,
      from: meta.from,
      node: meta.node,
      expiresAt: meta.expiresAt,
      notBefore: meta.notBefore,
      headers: meta.headers,
      receipt: meta.receipt,
      replyTo: meta.replyTo,
      kind: meta.kind,
    };
    return { type: 'message', offset, fields, body, ...(meta.streamed === undefined ? {} : { streamed: { size: meta.streamed.size, sha256: meta.streamed.sha256 } }) };
  }
  if (frame.type === 'chunk') {
    const { meta, offset, data } = frame;
    return { type: 'chunk', offset, id: meta.id, channel: meta.channel, priority: meta.priority, position: meta.position, data };
  }
  return frame;
}
