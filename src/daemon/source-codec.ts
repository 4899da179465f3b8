/**
 * A JetStream source hands the daemon what it read; `sourceCodec` makes the inbox frames of it, through
 * the queue layer's adoption (queue/adopted-message.ts). Loaded with the source (and the NATS client)
 * only when a source is configured. Holds no format of its own.
 */
import { adoptChunk, adoptFrame, adoptMessage } from '../queue/adopted-message.js';
import { H, tokenChannel } from '../transport/nats-headers.js';
import type { SourceCodec } from '../transport/nats-source.js';

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
