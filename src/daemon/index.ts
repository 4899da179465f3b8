/**
 * `mqlog/daemon`: the daemon in-process, the transport registry and the transports (HTTP, JetStream)
 * with their interfaces. Separate from the application API (`mqlog`) so that an application that only
 * sends and consumes never loads the HTTP server, the NATS client or the metrics registry.
 *
 * A transport of an application's own (spec/transports.md §1.2): `transports.register('kafka', factory)`
 * before opening a node or starting a daemon in the same process; destinations `kafka://…` then resolve
 * when a message is appended and are forwarded through it.
 */
export { Daemon, type DaemonOptions } from './daemon.js';
export type { Handler, HandlerMessage } from './handler.js';
export { transports, TransportRegistry, withoutPassword, type TransportFactory, type TransportContext } from '../transport/registry.js';
export type { FrameContents, MessageFields } from '../transport/frame-contents.js';
export { HttpSender, type HttpSenderOptions } from '../transport/http-sender.js';
export { NatsSender, type NatsSenderOptions } from '../transport/nats-sender.js';
export { NatsSource, type NatsSourceOptions, type SourceCodec } from '../transport/nats-source.js';
export type { NatsSettings, StreamSettings } from '../transport/nats-settings.js';
export type { Transport, BatchSink, OutgoingBatch, IncomingBatch, BatchResult, WireFrame, ReceivedFrame } from '../transport/transport.js';
