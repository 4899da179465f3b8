/**
 * mqlog's public API: open a node directory, send (durable locally, never blocked by the network),
 * tail and ack an inbox; run a daemon in-process; the storage and transport interfaces to replace either.
 */
export { MqlogError, ERRORS, isMqlogError, type ErrorCode, type ErrorSpec } from './errors.js';
export { openNode, MqlogNode, type NodeOptions } from './daemon/node.js';
export { Daemon, type DaemonOptions } from './daemon/daemon.js';
export { loadConfig, type Config, type PeerConfig } from './daemon/config.js';
export { Outbox, type OutboxOptions, type SendOptions } from './queue/outbox.js';
export { Inbox, type InboxOptions, type ConsumeOptions } from './queue/inbox.js';
export type { Delivery } from './queue/consumer.js';
export type { MessageMeta, MessageRecord, Origin } from './queue/codec.js';
export type { MessageState } from './queue/state-view.js';
export { FileLogStore, type LogStore, type LogWriter, type StreamId } from './log/log-store.js';
export type { Transport, BatchSink, OutgoingBatch, IncomingBatch, BatchResult, WireFrame } from './transport/transport.js';
export { HttpSender } from './transport/http-sender.js';
