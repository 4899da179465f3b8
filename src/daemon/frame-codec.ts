/**
 * Frames to and from transports that carry messages rather than frames (JetStream: spec/transports.md
 * §3.2). The forwarder hands a transport frames as stored; `unpackFrame` tells it their fields and body.
 * A JetStream source hands the daemon what it read; `sourceCodec` makes the inbox frames of it, through
 * the queue layer's adoption (queue/adopted-message.ts). Holds no format of its own.
 */
import { adoptChunk, adoptFrame, adoptMessage } from '../queue/adopted-message.js';
import { decodeStoredFrame } from '../queue/codec.js';
import type { FrameContents } from '../transport/frame-contents.js';
import { H, tokenChannel } from '../transport/nats-headers.js';
import type { SourceCodec } from '../transport/nats-source.js';
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

/**
 * How a JetStream source's messages become inbox frames of this node (`nodeName`): a plain message
 * is wrapped (channel: the source's `channel`, else `Mqlog-Channel`, else the subject's last token;
 * its other headers kept), an mqlog message keeps its fields.
 */
export function sourceCodec(nodeName: string, stream: string, channel: string | undefined): SourceCodec {
  const from = `nats:${stream}`;
  const to = [nodeName];
  return {
    adopt: (data, subject, sequence, headers) =>
      adoptMessage({
        data,
        sequence,
        isFrame: headers.get(H.frame) === '1',
        channel: channel ?? headers.get(H.channel) ?? tokenChannel(subject),
        priority: headers.get(H.priority),
        id: headers.get(H.msgId),
        to: nodeName,
        from,
        headers: Object.fromEntries([...headers].filter(([key]) => !/^(nats|mqlog)-/i.test(key))),
      }),
    frame: (data) => adoptFrame(data),
    // Checked by the intake, which makes the one frame it stores of them. Copied field by field: a
    // spread makes an object that is slow to read, and this runs for every message.
    message: (offset, f, body, streamed) => ({
      offset,
      fields: { id: f.id, ts: f.ts, channel: f.channel, priority: f.priority, from, to, node: f.node, expiresAt: f.expiresAt, notBefore: f.notBefore, headers: f.headers, receipt: f.receipt, replyTo: f.replyTo, kind: f.kind },
      body,
      streamed,
    }),
    chunk: (offset, of, position, data) => adoptChunk(offset, { id: of.id, ts: of.ts, channel: of.channel, priority: of.priority, position, to: [nodeName] }, data),
  };
}
