/**
 * Inbox sources: JetStream streams a node takes messages from (config `sources`). This module reads
 * what the NATS headers say about a message (`Mqlog-Frame: 1` for a frame published by another node's
 * forwarder, `Mqlog-Channel`, `Mqlog-Priority`, `Nats-Msg-Id`) and hands it to the queue layer's
 * adoption (queue/adopted-message.ts), which makes the inbox frame.
 */
import { adoptMessage } from '../queue/adopted-message.js';
import { HEADER_CHANNEL, HEADER_FRAME, HEADER_PRIORITY } from '../transport/nats.js';
import type { SourceConfig } from './config.js';

export function adoptNatsMessage(source: SourceConfig, nodeName: string, stream: string) {
  return (data: Uint8Array, subject: string, sequence: number, headers: ReadonlyMap<string, string>): Buffer =>
    adoptMessage({
      data,
      sequence,
      isFrame: headers.get(HEADER_FRAME) === '1',
      channel: source.channel ?? headers.get(HEADER_CHANNEL) ?? tokenChannel(subject),
      priority: headers.get(HEADER_PRIORITY),
      id: headers.get('Nats-Msg-Id'),
      to: nodeName,
      from: `nats:${stream}`,
    });
}

function tokenChannel(subject: string): string {
  const token = subject.split('.').at(-1) ?? '';
  try {
    return decodeURIComponent(token);
  } catch {
    return token;
  }
}
