/**
 * The daemon's HTTP servers: the peer endpoint (POST /v1/messages, GET /healthz) with authentication,
 * TLS and limits from the config, and the operator's endpoints — read-only (/metrics, /status.json, /)
 * and one action (POST /peers/:name/retry) — on the same server, or on their own address
 * (`admin.listen`), all behind the same bearer token check (`admin.token`). They never reveal message
 * bodies or secrets.
 */
import Fastify, { LogController, type FastifyInstance, type FastifyRequest, type FastifyServerOptions } from 'fastify';
import { readFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { timingSafeEqual, createHash } from 'node:crypto';
import { MqlogError } from '../errors.js';
import { RequestVerifier } from '../transport/auth.js';
import { clientErrorHandler, registerHttpReceiver, sendError } from '../transport/http-receiver.js';
import type { BatchSink } from '../transport/transport.js';
import type { Config, TlsConfig } from './config.js';
import type { Logger } from './logger.js';
import { maxFrameBytesFor } from '../queue/body.js';

export interface TlsMaterial {
  readonly cert?: Buffer;
  readonly key?: Buffer;
  readonly ca?: Buffer;
}

/** Reads the TLS files named in the config. @throws ERR_CONFIG naming the file that cannot be read. */
export async function loadTls(tls: TlsConfig): Promise<TlsMaterial> {
  const read = async (name: 'cert' | 'key' | 'ca'): Promise<Buffer | undefined> => {
    const path = tls[name];
    if (path === undefined) return undefined;
    try {
      return await readFile(path);
    } catch (err) {
      throw new MqlogError('ERR_CONFIG', `tls.${name}: cannot read ${path}: ${(err as Error).message}`, { details: { key: `tls.${name}` }, cause: err });
    }
  };
  const material = { cert: await read('cert'), key: await read('key'), ca: await read('ca') };
  if ((material.cert === undefined) !== (material.key === undefined)) throw new MqlogError('ERR_CONFIG', 'tls.cert and tls.key go together');
  return Object.fromEntries(Object.entries(material).filter(([, v]) => v !== undefined));
}

/** True when two sets of TLS material hold the same bytes (a reload compares the files read again). */
export function sameTls(a: TlsMaterial, b: TlsMaterial): boolean {
  const same = (x: Buffer | undefined, y: Buffer | undefined): boolean => (x === undefined ? y === undefined : y !== undefined && x.equals(y));
  return same(a.cert, b.cert) && same(a.key, b.key) && same(a.ca, b.ca);
}

/** How this node decides who may deliver messages (spec/http-protocol.md §8). */
export type AuthMode = 'keys' | 'loopback' | 'open';

export function authMode(config: Config): AuthMode {
  if (Object.values(config.peers).some((p) => p.key !== undefined)) return 'keys';
  return config.allowUnauthenticated ? 'open' : 'loopback';
}

/** `https`: serve over TLS when the node has a certificate; `peers`: the peer app (client certificates as configured). */
function createApp(config: Config, logger: Logger, tls: TlsMaterial, https: boolean, peers = https): FastifyInstance {
  const limits = config.limits;
  // Given to Node.js when the server is created: set later (as fastify does), the request timeout is
  // never checked.
  const timeouts = { requestTimeout: limits.requestTimeoutMs, connectionsCheckingInterval: Math.max(100, Math.min(1000, Math.floor(limits.requestTimeoutMs / 4))) };
  const serverOptions = https && tls.cert !== undefined && tls.key !== undefined
    ? {
        https: {
          cert: tls.cert,
          key: tls.key,
          ...(tls.ca === undefined ? {} : { ca: tls.ca }),
          ...(peers && config.tls.requireClientCert === true ? { requestCert: true, rejectUnauthorized: true } : {}),
          ...timeouts,
        },
      }
    : { http: timeouts };
  // Typed as the default instance: mqlog's routes do not depend on the pino-specific logger type.
  const app = Fastify({
    schemaController: { compilersFactory: lazySchemaCompilers },
    loggerInstance: logger,
    logController: new LogController({ disableRequestLogging: true }),
    bodyLimit: limits.maxRequestBytes,
    connectionTimeout: limits.connectionTimeoutMs,
    requestTimeout: limits.requestTimeoutMs,
    keepAliveTimeout: Math.min(30_000, limits.connectionTimeoutMs),
    clientErrorHandler,
    ...serverOptions,
  }) as unknown as FastifyInstance;
  app.setErrorHandler(sendError);
  app.setNotFoundHandler((_request, reply) => reply.code(404).send({ code: 'ERR_NOT_FOUND', message: 'no such endpoint' }));
  return app;
}

/**
 * fastify's default schema compilers (ajv and fast-json-stringify), loaded only if a route ever asks for
 * one. mqlog's routes carry no schemas, so they never do; loading them anyway cost ~35 ms of every start.
 */
type Compilers = NonNullable<NonNullable<FastifyServerOptions['schemaController']>['compilersFactory']>;
export const lazySchemaCompilers: Compilers = {
  buildValidator: (...args) => (fastifyRequire('@fastify/ajv-compiler') as () => NonNullable<Compilers['buildValidator']>)()(...args),
  buildSerializer: (...args) => (fastifyRequire('@fastify/fast-json-stringify-compiler') as () => NonNullable<Compilers['buildSerializer']>)()(...args),
};

/** Requires a module as fastify itself would resolve it (its own dependencies). */
function fastifyRequire(id: string): unknown {
  const require = createRequire(import.meta.url);
  return createRequire(require.resolve('fastify'))(id);
}

export interface ReadOnlyRoutes {
  metrics(): Promise<{ contentType: string; text: string }>;
  status(): Promise<unknown>;
  /** Wakes a peer's forwarder waiting to retry; returns the peers woken. @throws ERR_NOT_FOUND for an unknown peer. */
  retry?(peer: string): Promise<readonly string[]>;
  /** Puts a channel's dead letters back (served only behind the admin token). @throws ERR_NOT_FOUND for an unknown channel. */
  redrive?(channel: string): Promise<number>;
  /** Empties a channel's dead letters (served only behind the admin token). @throws ERR_NOT_FOUND for an unknown channel. */
  purgeDeadLetters?(channel: string): Promise<number>;
  page: string;
}

export interface Servers {
  readonly peer: FastifyInstance;
  /** Set when the read-only endpoints have their own address. */
  readonly admin: FastifyInstance | undefined;
  readonly mode: AuthMode;
}

export function createServers(options: {
  config: Config;
  /** The peers' keys signatures are checked with (default: from config); changes to the map apply at once. */
  peerKeys?: ReadonlyMap<string, string>;
  logger: Logger;
  tls: TlsMaterial;
  sink: BatchSink;
  healthy: () => boolean;
  /** What GET /readyz reports: ready (200) when nothing is listed as not ready, else 503 with the reasons. */
  notReady?: () => readonly string[];
  readOnly: ReadOnlyRoutes;
}): Servers {
  const { config, logger, tls } = options;
  const peer = createApp(config, logger, tls, true);
  const mode = authMode(config);
  const verifier = new RequestVerifier({
    keys: options.peerKeys ?? new Map(Object.entries(config.peers).flatMap(([name, p]) => (p.key === undefined ? [] : [[name, p.key] as const]))),
    maxSkewMs: config.limits.maxClockSkewMs,
  });
  registerHttpReceiver(peer, {
    sink: options.sink,
    healthy: options.healthy,
    maxRequestBytes: config.limits.maxRequestBytes,
    maxFramesPerRequest: config.limits.maxFramesPerRequest,
    maxFrameBytes: maxFrameBytesFor(config.limits.maxBodyBytes),
    maxConcurrentPerPeer: config.limits.maxConcurrentRequestsPerPeer,
    authenticate: (request, body) => {
      if (mode === 'keys') return verifier.verify(request.method, request.url.split('?')[0] ?? '', request.headers, body);
      if (mode === 'loopback' && !isLoopback(request.socket.remoteAddress)) {
        throw new MqlogError('ERR_FORBIDDEN', 'this node has no peer keys configured and accepts only loopback requests (set peers.<name>.key, or allowUnauthenticated)');
      }
      return undefined;
    },
  });
  if (config.admin.tls === true && (config.admin.listen === undefined || scheme(tls) !== 'https')) {
    throw new MqlogError('ERR_CONFIG', 'admin.tls needs admin.listen and the node\'s tls.cert and tls.key', { details: { key: 'admin.tls', keys: ['admin.tls'] } });
  }
  const admin = config.admin.listen === undefined ? undefined : createApp(config, logger, tls, config.admin.tls === true, false);
  registerReadOnly(admin ?? peer, options.readOnly, config.admin.token);
  if (admin !== undefined) admin.get('/healthz', async (_request, reply) => reply.code(options.healthy() ? 200 : 503).send({ ok: options.healthy() }));
  // Readiness beside liveness: /healthz says the process serves, /readyz that it can take work now.
  for (const app of admin === undefined ? [peer] : [peer, admin]) {
    app.get('/readyz', async (_request, reply) => {
      const reasons = options.notReady?.() ?? [];
      return reply.code(reasons.length === 0 ? 200 : 503).header('cache-control', 'no-store').send({ ready: reasons.length === 0, reasons });
    });
  }
  return { peer, admin, mode };
}

function registerReadOnly(app: FastifyInstance, routes: ReadOnlyRoutes, token: string | undefined): void {
  const guard = async (request: FastifyRequest): Promise<void> => {
    if (token === undefined) return;
    const header = request.headers.authorization;
    const query = (request.query as Record<string, unknown> | undefined)?.token;
    const given = typeof header === 'string' && header.startsWith('Bearer ') ? header.slice(7) : typeof query === 'string' ? query : undefined;
    if (given === undefined || !sameSecret(given, token)) throw new MqlogError('ERR_UNAUTHORIZED', 'this endpoint needs the admin token (Authorization: Bearer <token>, or ?token=)');
  };
  app.get('/metrics', { onRequest: guard }, async (_request, reply) => {
    const { contentType, text } = await routes.metrics();
    return reply.type(contentType).send(text);
  });
  app.get('/status.json', { onRequest: guard }, async (_request, reply) => reply.header('cache-control', 'no-store').send(await routes.status()));
  // The page holds no data (it asks for the token itself when /status.json wants one).
  app.get('/', async (_request, reply) => reply.type('text/html; charset=utf-8').header('cache-control', 'no-store').send(routes.page));
  // The one action among them: it changes no data, it only ends a forwarder's backoff (spec/http-protocol.md §10).
  if (routes.retry !== undefined) {
    app.post<{ Params: { name: string } }>('/peers/:name/retry', { onRequest: guard }, async (request, reply) =>
      reply.header('cache-control', 'no-store').send({ woken: await routes.retry?.(request.params.name) }),
    );
  }
  // Actions that change data: only where an operator proves who they are (admin.token).
  if (token !== undefined && routes.redrive !== undefined && routes.purgeDeadLetters !== undefined) {
    app.post<{ Params: { channel: string } }>('/channels/:channel/redrive', { onRequest: guard }, async (request, reply) =>
      reply.header('cache-control', 'no-store').send({ redriven: await routes.redrive?.(request.params.channel) }),
    );
    app.post<{ Params: { channel: string } }>('/channels/:channel/dead/purge', { onRequest: guard }, async (request, reply) =>
      reply.header('cache-control', 'no-store').send({ purged: await routes.purgeDeadLetters?.(request.params.channel) }),
    );
  }
}

function sameSecret(a: string, b: string): boolean {
  const ha = createHash('sha256').update(a).digest();
  const hb = createHash('sha256').update(b).digest();
  return timingSafeEqual(ha, hb);
}

export function isLoopback(address: string | undefined): boolean {
  if (address === undefined) return false;
  return address === '::1' || address.startsWith('127.') || address.startsWith('::ffff:127.');
}

/** `http` or `https` for the peer server. */
export function scheme(tls: TlsMaterial): 'http' | 'https' {
  return tls.cert !== undefined && tls.key !== undefined ? 'https' : 'http';
}
