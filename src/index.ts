/**
 * mqlog's application API: open a node directory, send (durable locally, never blocked by the network),
 * tail and ack an inbox, follow receipts; the storage interface and its two stores. Loads no server
 * code: the daemon and the transports are in `mqlog/daemon`.
 */
export { MqlogError, ERRORS, isMqlogError, type ErrorCode, type ErrorSpec } from './errors.js';
export { openNode, MqlogNode, type NodeOptions } from './daemon/node.js';
export { loadConfig, type Config, type PeerConfig } from './daemon/config.js';
export { Outbox, type OutboxOptions, type SendOptions } from './queue/outbox.js';
export { Inbox, type InboxOptions, type ConsumeOptions } from './queue/inbox.js';
export type { Delivery, PeekedMessage } from './queue/consumer.js';
export type { MessageMeta, MessageRecord, Origin, StreamedBody, BodyPart } from './queue/codec.js';
export type { MessageState, DeliveryState } from './queue/outbox-state.js';
export type { ReceiptState, ReceiptStatus, PeerReceipt } from './queue/receipts.js';
export { FileLogStore, MemoryLogStore } from './log/index.js';
export type * from './log/log-store.js';
export type { Transport, BatchSink, OutgoingBatch, IncomingBatch, BatchResult, WireFrame } from './transport/transport.js';
