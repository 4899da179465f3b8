/**
 * The HTTP sending side (undici): one keep-alive connection pool per peer; `send` POSTs one batch to
 * `/v1/messages` and resolves when the peer answered 200, i.e. when the batch is durable there
 * (spec/http-protocol.md). Failures are classified for the forwarder:
 *
 * - no answer (refused, reset, timeout): ERR_PEER_UNREACHABLE, retry with backoff;
 * - an answer refusing one frame (`frame` in the error body): ERR_PEER_REJECTED, that frame goes to the
 *   dead letters;
 * - any other refusal (401, 403, 413, 5xx, 507…): ERR_PEER_FAILED, retry with backoff, nothing dropped.
 */
import { createRequire } from 'node:module';
import { Readable } from 'node:stream';
import type { Dispatcher, Pool as UndiciPool, errors as UndiciErrors } from 'undici';
import { MqlogError, RESENT_WHEN_REFUSED, abortError, isErrorCode } from '../errors.js';
import type { BatchResult, OutgoingBatch, Transport } from './transport.js';
import { CONTENT_TYPE, encodeBatch } from './wire.js';

export interface HttpSenderOptions {
  readonly connections?: number;
  readonly connectTimeoutMs?: number;
  /** Time to wait for the peer's answer (it fsyncs before answering). */
  readonly requestTimeoutMs?: number;
  /** Extra headers for a request, e.g. an authentication proof over the body. */
  readonly sign?: (method: string, path: string, body: readonly Buffer[]) => Record<string, string>;
  /** undici connect options (TLS: ca, cert, key, servername). */
  readonly connect?: Record<string, unknown>;
}

export const MESSAGES_PATH = '/v1/messages';

/** Small parts (prefixes, headers, small frames) are joined into writes of about this size; large ones go as they are. */
const WRITE_BYTES = 64 * 1024;

// undici's pool, its request call and its errors, without its index: that loads every dispatcher, fetch,
// WebSocket and the caches too (~75 ms of every daemon start for nothing used here). The index would add
// `request` to every dispatcher's prototype; it is called on the pool instead (`request.call(pool, …)`).
const require = createRequire(import.meta.url);
const Pool = require('undici/lib/dispatcher/pool.js') as typeof UndiciPool;
const request = require('undici/lib/api/api-request.js') as (this: Dispatcher, options: Dispatcher.RequestOptions) => Promise<Dispatcher.ResponseData>;
const undiciErrors = require('undici/lib/core/errors.js') as typeof UndiciErrors;

export class HttpSender implements Transport {
  readonly url: string;
  private readonly pool: UndiciPool;
  private readonly options: HttpSenderOptions;
  private closing: Promise<void> | undefined;

  constructor(url: string, options: HttpSenderOptions = {}) {
    this.url = url;
    this.options = options;
    this.pool = new Pool(url, {
      connections: options.connections ?? 2,
      pipelining: 1,
      keepAliveTimeout: 30_000,
      connectTimeout: options.connectTimeoutMs ?? 5_000,
      headersTimeout: options.requestTimeoutMs ?? 60_000,
      bodyTimeout: options.requestTimeoutMs ?? 60_000,
      ...(options.connect === undefined ? {} : { connect: options.connect }),
    });
  }

  async send(batch: OutgoingBatch, signal?: AbortSignal): Promise<BatchResult> {
    if (this.closing !== undefined) throw new MqlogError('ERR_CLOSED', 'sender is closed');
    // Sent as its parts, frames as they were read: no copy of the whole batch.
    const parts = encodeBatch(batch);
    const length = parts.reduce((n, p) => n + p.length, 0);
    let statusCode: number;
    let text: string;
    try {
      const response = await request.call(this.pool, {
        method: 'POST',
        path: MESSAGES_PATH,
        headers: { 'content-type': CONTENT_TYPE, 'content-length': String(length), ...this.options.sign?.('POST', MESSAGES_PATH, parts) },
        // Small frames go out in one write with the headers (they would be copied into writes anyway, and
        // a stream costs more than the copy); a batch with large frames as a stream of its parts.
        body: parts.every((p) => p.length < WRITE_BYTES) ? Buffer.concat(parts, length) : Readable.from(coalesce(parts, WRITE_BYTES), { objectMode: false }),
        ...(signal === undefined ? {} : { signal }),
      });
      statusCode = response.statusCode;
      text = await response.body.text();
    } catch (err) {
      if (signal?.aborted === true) throw abortError(signal);
      throw new MqlogError('ERR_PEER_UNREACHABLE', `${this.url}: ${describe(err)}`, { details: { url: this.url }, cause: err });
    }
    if (statusCode === 200) {
      const result = parseJson(text) as Partial<BatchResult> | undefined;
      if (typeof result?.stored !== 'number' || typeof result.duplicates !== 'number') {
        throw new MqlogError('ERR_PEER_FAILED', `${this.url} answered 200 without a batch result`, { details: { url: this.url, status: statusCode } });
      }
      return { stored: result.stored, duplicates: result.duplicates };
    }
    const error = (parseJson(text) ?? {}) as { code?: unknown; message?: unknown; frame?: unknown };
    // The peer's code when it answered as an mqlog receiver does; none is made up for other answers (a proxy's 502).
    const code = typeof error.code === 'string' && /^ERR_[A-Z0-9_]{1,60}$/.test(error.code) ? error.code : undefined;
    const message = typeof error.message === 'string' ? error.message : `not an mqlog answer: ${text.slice(0, 200)}`;
    const details = { url: this.url, status: statusCode, ...(code === undefined ? {} : { code }), ...(typeof error.frame === 'number' ? { frame: error.frame } : {}) };
    const answered = `${this.url} answered ${statusCode}${code === undefined ? '' : ` ${code}`}: ${message}`;
    // A frame refused for what it says (not for how it arrived: the copy on disk is CRC-checked, so a
    // corrupt or truncated frame was damaged on the way and is worth sending again).
    if (statusCode >= 400 && statusCode < 500 && typeof error.frame === 'number' && !(isErrorCode(code) && RESENT_WHEN_REFUSED.has(code))) {
      throw new MqlogError('ERR_PEER_REJECTED', `${this.url} rejected frame ${error.frame}: ${code ?? statusCode}: ${message}`, { details });
    }
    throw new MqlogError('ERR_PEER_FAILED', answered, { details });
  }

  /** Closes the connections after in-flight requests. Idempotent. */
  close(): Promise<void> {
    this.closing ??= this.pool.close();
    return this.closing;
  }

  /** Drops the connections now, failing in-flight requests. */
  async destroy(): Promise<void> {
    this.closing ??= Promise.resolve();
    await this.pool.destroy();
  }
}

function parseJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

function describe(err: unknown): string {
  if (err instanceof undiciErrors.ConnectTimeoutError) return 'connect timeout';
  if (err instanceof undiciErrors.HeadersTimeoutError || err instanceof undiciErrors.BodyTimeoutError) return 'no answer in time';
  const code = (err as { code?: unknown }).code;
  const message = err instanceof Error ? err.message : String(err);
  return typeof code === 'string' ? `${code} ${message}` : message;
}

/**
 * The body's parts in fewer, larger writes: runs of small parts are copied into one buffer of up to
 * `size` bytes; a part of that size or more is passed on as it is (no copy of large frames).
 */
export function* coalesce(parts: readonly Buffer[], size: number): Generator<Buffer> {
  let run: Buffer[] = [];
  let bytes = 0;
  for (const part of parts) {
    if (part.length >= size) {
      if (run.length > 0) yield run.length === 1 ? (run[0] as Buffer) : Buffer.concat(run, bytes);
      run = [];
      bytes = 0;
      yield part;
      continue;
    }
    if (bytes + part.length > size && run.length > 0) {
      yield run.length === 1 ? (run[0] as Buffer) : Buffer.concat(run, bytes);
      run = [];
      bytes = 0;
    }
    run.push(part);
    bytes += part.length;
  }
  if (run.length > 0) yield run.length === 1 ? (run[0] as Buffer) : Buffer.concat(run, bytes);
}
