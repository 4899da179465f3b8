/**
 * The HTTP receiving side (fastify plugin): `POST /v1/messages` decodes the batch envelope, hands the
 * frames to the BatchSink, and answers 200 only after the sink made them durable; `GET /healthz`
 * (spec/http-protocol.md). Any request it cannot accept gets a 4xx with `{"code", "message"}` and
 * nothing of it is stored; 5xx only for the node's own faults.
 */
import type { IncomingMessage } from 'node:http';
import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { ERRORS, MqlogError, isErrorCode } from '../errors.js';
import type { BatchSink } from './transport.js';
import { RequestBodies, requestTooLarge, type RequestBody } from './request-bodies.js';
import { CONTENT_TYPE, decodeBatch } from './wire.js';

export const DEFAULT_MAX_REQUEST_BYTES = 16 * 1024 * 1024;
const EMPTY: RequestBody = { bytes: Buffer.alloc(0), release: () => undefined };

export interface HttpReceiverOptions {
  readonly sink: BatchSink;
  /** Largest request body accepted (413 above). */
  readonly maxRequestBytes?: number;
  readonly maxFramesPerRequest?: number;
  readonly maxFrameBytes?: number;
  /** Says whether the node can serve (healthz answers 503 otherwise). */
  readonly healthy?: () => boolean;
  /**
   * Checks the request's proof of identity and returns the authenticated peer name, or undefined when
   * the node runs without authentication. Throws an MqlogError (401/403) to refuse.
   */
  readonly authenticate?: (request: FastifyRequest, body: Buffer) => string | undefined;
  /** Requests one peer (authenticated name, else address) may have in flight; more get 429. */
  readonly maxConcurrentPerPeer?: number;
}

/** Registers the receiver's routes on a fastify instance. */
export function registerHttpReceiver(app: FastifyInstance, options: HttpReceiverOptions): void {
  const maxRequestBytes = options.maxRequestBytes ?? DEFAULT_MAX_REQUEST_BYTES;
  const inFlight = new Map<string, number>();
  const bodies = new RequestBodies({ maxBytes: maxRequestBytes });
  // The route reads every body as bytes, whatever its declared type, in a scope of its own (the read-only
  // routes beside it keep fastify's parsers): the sender is authenticated before anything in the request
  // is looked at — its content type included — so an unsigned request always gets 401 where keys are
  // configured, never a hint about its contents.
  void app.register(async (scope) => {
    scope.removeAllContentTypeParsers();
    // Large bodies are read into reused buffers, handed back once the handler settled (request-bodies.ts).
    scope.addContentTypeParser('*', (request: FastifyRequest, payload: IncomingMessage) => bodies.read(payload, Number(request.headers['content-length'] ?? Number.NaN)));
    // No bodyLimit here: fastify applies it in its own body parsers only; RequestBodies enforces the limit.
    scope.post('/v1/messages', {
      // Before any body is read: a peer gets only so many requests in flight, uploads included, and a
      // body declared larger than the limit is refused at once.
      onRequest: async (request, reply) => {
        const declared = Number(request.headers['content-length'] ?? Number.NaN);
        if (declared > maxRequestBytes) {
          // Answer at once, but read the body to its end before the connection may close: a sender still
          // writing would otherwise see a broken pipe instead of this answer.
          request.raw.resume();
          throw requestTooLarge(declared, maxRequestBytes);
        }
        const claimed = request.headers['x-mqlog-peer'];
        const who = `${request.ip}|${typeof claimed === 'string' ? claimed.slice(0, 64) : ''}`;
        const running = inFlight.get(who) ?? 0;
        if (running >= (options.maxConcurrentPerPeer ?? Number.POSITIVE_INFINITY)) {
          throw new MqlogError('ERR_TOO_MANY_REQUESTS', `${running} requests of this peer are in flight already (limit ${options.maxConcurrentPerPeer})`);
        }
        inFlight.set(who, running + 1);
        reply.raw.once('close', () => {
          const left = (inFlight.get(who) ?? 1) - 1;
          if (left <= 0) inFlight.delete(who);
          else inFlight.set(who, left);
        });
      },
    }, async (request, reply) => {
      // The only parser of this scope gives a RequestBody; a request without a body has none.
      const received = (request.body as RequestBody | undefined) ?? EMPTY;
      try {
        return await answer(request, reply, received.bytes);
      } finally {
        // Every frame of the body was stored (copied) or refused by now: its buffer may be reused.
        received.release();
      }
    });
  });

  async function answer(request: FastifyRequest, reply: FastifyReply, body: Buffer): Promise<FastifyReply> {
    const peer = options.authenticate?.(request, body);
    const type = (request.headers['content-type'] ?? '').split(';')[0]?.trim().toLowerCase();
    if (type !== CONTENT_TYPE) throw new MqlogError('ERR_UNSUPPORTED_MEDIA_TYPE', `content type must be ${CONTENT_TYPE}, got ${JSON.stringify(type ?? '')}`);
    if (body.length === 0) throw new MqlogError('ERR_BAD_REQUEST', 'malformed batch: empty body');
    const decoded = decodeBatch(body, {
      ...(options.maxFramesPerRequest === undefined ? {} : { maxFrames: options.maxFramesPerRequest }),
      ...(options.maxFrameBytes === undefined ? {} : { maxFrameBytes: options.maxFrameBytes }),
    });
    const result = await options.sink.accept({ ...decoded, peer, remoteAddress: request.ip });
    return reply.code(200).send(result);
  }

  app.get('/healthz', async (_request, reply) => {
    const ok = options.healthy?.() ?? true;
    return reply.code(ok ? 200 : 503).send({ ok });
  });
}

/**
 * Answers errors Node.js raises before a request reaches a route: a request that took longer than the
 * request timeout gets `408 ERR_REQUEST_TIMEOUT`, any other malformed HTTP `400 ERR_BAD_REQUEST`.
 */
export function clientErrorHandler(error: Error & { code?: string }, socket: import('node:net').Socket): void {
  if (!socket.writable) {
    socket.destroy();
    return;
  }
  const timeout = error.code === 'ERR_HTTP_REQUEST_TIMEOUT';
  const body = JSON.stringify(timeout ? { code: 'ERR_REQUEST_TIMEOUT', message: 'the request took too long' } : { code: 'ERR_BAD_REQUEST', message: 'malformed HTTP request' });
  socket.end(`HTTP/1.1 ${timeout ? '408 Request Timeout' : '400 Bad Request'}\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);
}

/** The error handler every mqlog HTTP server uses: stable codes, JSON bodies, no stack traces. */
export function sendError(error: FastifyError | Error, request: FastifyRequest, reply: FastifyReply): FastifyReply {
  const { status, body } = errorResponse(error);
  if (status >= 500) request.log.error({ err: error }, 'request failed');
  else if (request.method === 'POST') {
    // A refused delivery is worth a line: the peer retries it or dead-letters a message because of it.
    const claimed = request.headers['x-mqlog-peer'];
    request.log.warn({ event: 'refused', status, code: body.code, frame: body.frame, address: request.ip, peer: typeof claimed === 'string' ? claimed.slice(0, 64) : undefined, error: body.message.slice(0, 300) }, 'refused a request');
  }
  return reply.code(status).type('application/json').send(body);
}

export function errorResponse(error: unknown): { status: number; body: { code: string; message: string; frame?: number } } {
  if (error instanceof MqlogError) {
    const frame = error.details?.frame;
    return {
      status: ERRORS[error.code].httpStatus,
      body: { code: error.code, message: error.message, ...(typeof frame === 'number' ? { frame } : {}) },
    };
  }
  const fastifyCode = (error as FastifyError).code;
  const statusCode = (error as FastifyError).statusCode ?? 500;
  const message = error instanceof Error ? error.message : String(error);
  switch (fastifyCode) {
    case 'FST_ERR_REQUEST_TIMEOUT':
      return { status: 408, body: { code: 'ERR_REQUEST_TIMEOUT', message: 'the request took too long' } };
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return { status: 413, body: { code: 'ERR_REQUEST_TOO_LARGE', message: 'request body larger than the limit' } };
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
      return { status: 415, body: { code: 'ERR_UNSUPPORTED_MEDIA_TYPE', message: `content type must be ${CONTENT_TYPE}` } };
    default:
      break;
  }
  if (statusCode >= 400 && statusCode < 500) {
    const code = isErrorCode(fastifyCode) ? fastifyCode : statusCode === 404 ? 'ERR_NOT_FOUND' : 'ERR_BAD_REQUEST';
    return { status: statusCode, body: { code, message } };
  }
  return { status: 500, body: { code: 'ERR_IO', message: 'internal error' } };
}
