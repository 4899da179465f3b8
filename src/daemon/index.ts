/**
 * `mqlog/daemon`: the daemon in-process, and the transports (HTTP, JetStream) with their interfaces.
 * Separate from the application API (`mqlog`) so that an application that only sends and consumes
 * never loads the HTTP server, the NATS client or the metrics registry.
 */
export { Daemon, type DaemonOptions } from './daemon.js';
export type { Handler, HandlerMessage } from './handler.js';
export { HttpSender, type HttpSenderOptions } from '../transport/http-sender.js';
export { NatsSender, NatsSource } from '../transport/nats.js';
export type { Transport, BatchSink, OutgoingBatch, IncomingBatch, BatchResult, WireFrame, ReceivedFrame } from '../transport/transport.js';
