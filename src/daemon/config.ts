/**
 * A node's configuration: `DIR/mqlog.json`, validated on load, with command-line overrides on top.
 * A missing file means defaults; unknown keys and wrong values are one ERR_CONFIG naming every one of them.
 * Validation runs in two passes: CONFIG_SCHEMA (JSON Schema, checked by ajv with all errors collected)
 * for the shape, types, ranges and unknown keys; then KEYS below for what a schema cannot say (URLs
 * normalized to their origin, byte lengths). Every key, its default and its meaning is in KEYS and the README.
 */
import type { ErrorObject, ValidateFunction } from 'ajv';
import { createRequire } from 'node:module';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { MqlogError } from '../errors.js';
import { parseNatsUrl } from '../transport/nats-address.js';
import type { NatsSettings, StreamSettings } from '../transport/nats-settings.js';
import { transports } from '../transport/registry.js';
import { readFileIfExists } from '../util/fs.js';

export const CONFIG_FILE = 'mqlog.json';

export interface PeerConfig {
  /**
   * `http://HOST:PORT`, `https://HOST:PORT`, `nats://[user:pass@]HOST:PORT/STREAM`, `tls://…/STREAM`, or
   * a URL of a transport an application registered.
   */
  readonly url: string;
  /** Shared secret both nodes hold for this pair. */
  readonly key?: string | undefined;
  /** NATS settings of this peer, over the node's `nats` settings. */
  readonly nats?: NatsSettings | undefined;
  /** Settings handed as they are to the transport of an application's scheme. */
  readonly options?: Readonly<Record<string, unknown>> | undefined;
}

export interface TlsConfig {
  /** PEM certificate chain of this node (file path), to listen with https. */
  readonly cert?: string | undefined;
  /** PEM private key of this node (file path). */
  readonly key?: string | undefined;
  /** PEM CA bundle (file path) trusted for peers' https certificates (and client certificates with mTLS). */
  readonly ca?: string | undefined;
  /** Require peers to present a client certificate signed by `ca` (mutual TLS). Default false. */
  readonly requireClientCert?: boolean | undefined;
}

export interface Limits {
  /** Largest request body (413 ERR_REQUEST_TOO_LARGE). Default 16 MiB. */
  readonly maxRequestBytes: number;
  /** Most frames in one request (413 ERR_TOO_MANY_FRAMES). Default 10 000. */
  readonly maxFramesPerRequest: number;
  /** Largest message body accepted from a peer (413 ERR_BODY_TOO_LARGE). Default 32 MiB. */
  readonly maxBodyBytes: number;
  /** Largest streamed (chunked) body accepted from a peer (413 ERR_BODY_TOO_LARGE). Default 64 GiB. */
  readonly maxStreamedBodyBytes: number;
  /** Most headers on one message (400 ERR_HEADERS_TOO_LARGE). Default 64. */
  readonly maxHeaders: number;
  /** Most bytes of header keys and values on one message (400 ERR_HEADERS_TOO_LARGE). Default 16 KiB. */
  readonly maxHeaderBytes: number;
  /** Longest channel name in bytes (400 ERR_INVALID_NAME); at most 255. Default 255. */
  readonly maxChannelBytes: number;
  /** Idle time after which a connection is closed. Default 60 s. */
  readonly connectionTimeoutMs: number;
  /** Time to receive a whole request (408 ERR_REQUEST_TIMEOUT). Default 60 s. */
  readonly requestTimeoutMs: number;
  /** Requests one peer may have in flight (429 ERR_TOO_MANY_REQUESTS). Default 4. */
  readonly maxConcurrentRequestsPerPeer: number;
  /** Largest clock difference accepted on signed requests (401 beyond). Default 5 min. */
  readonly maxClockSkewMs: number;
}

export interface AdminConfig {
  /** Serve /metrics, /status.json and / on this `HOST:PORT` instead of the peer port. */
  readonly listen?: string | undefined;
  /** Require `Authorization: Bearer <token>` (or `?token=`) on /metrics, /status.json and the actions. */
  readonly token?: string | undefined;
  /**
   * Serve the admin address over HTTPS with the node's `tls.cert` and `tls.key` (client certificates are
   * not asked for there). Needs `listen` and the certificate.
   */
  readonly tls?: boolean | undefined;
}

export interface Config {
  /** This node's name, as `from` of its messages. Default: the host name. */
  readonly name: string;
  /** `HOST:PORT` the daemon's receiver listens on. Default `127.0.0.1:7420`. */
  readonly listen: string;
  /** Address peers use to reach this node (for receipts). Default: `http://` + listen. */
  readonly advertise: string | undefined;
  readonly peers: Readonly<Record<string, PeerConfig>>;
  /** Size at which a new segment starts. Default 64 MiB. */
  readonly segmentBytes: number;
  /** An open segment idle this long is sealed, so that compaction can reclaim a drained queue; 0: never. Default 60 s. */
  readonly segmentRollIdleMs: number;
  /** Size limit of one queue on disk; null for none. */
  readonly maxQueueBytes: number | null;
  /** How long a consumer holds a message before it comes back. Default 30 s. */
  readonly visibilityTimeoutMs: number;
  /**
   * Consumers renew the lease of every message they handed out until it is acked or nacked. Default true;
   * false: a message held past the visibility timeout goes out again.
   */
  readonly renewLeases: boolean;
  /** Hand-outs before a message goes to the dead letters. Default 5. */
  readonly maxDeliveries: number;
  /** Handler calls running at once (`daemon --handler`). Default 4. */
  readonly handlerConcurrency: number;
  /** A handler call running longer than this is aborted (its signal fires) and counts as a failure. Default 30 s. */
  readonly handlerTimeoutMs: number;
  /** First retry delay after a handler failure; doubles per delivery, capped at 60 s. Default 1000. */
  readonly handlerRetryDelayMs: number;
  /**
   * First delay before a forwarder sends again after a failed batch; doubles per consecutive failure
   * (equal jitter, spec/http-protocol.md §6), capped at `forwardMaxRetryDelayMs`. Default 100.
   */
  readonly forwardRetryDelayMs: number;
  /** Longest delay between a forwarder's attempts while its peer keeps failing. Default 30 s. */
  readonly forwardMaxRetryDelayMs: number;
  /** Done messages (sent, acked, dead-lettered, expired) are kept this long for dump before compaction removes them. Default 0. */
  readonly retainDoneMs: number;
  /** Settled receipts (processed, dead, expired) are kept this long for `mqlog receipt`. Default 7 days. */
  readonly retainReceiptsMs: number;
  /**
   * Chunks of a streamed body whose message never came (the sender died mid-body, or the peer refused
   * the body) are removed by compaction once this much older than their send time. Default 1 hour.
   */
  readonly orphanChunkMs: number;
  /** How often the daemon compacts its queues; 0 turns background compaction off. Default 10 s. */
  readonly compactIntervalMs: number;
  /** Accept unsigned requests from any address (only when no peer has a key). Default false: loopback only. */
  readonly allowUnauthenticated: boolean;
  readonly tls: TlsConfig;
  readonly limits: Limits;
  readonly admin: AdminConfig;
  /** JetStream streams this node takes messages from into its inbox. */
  readonly sources: readonly SourceConfig[];
  /** How to reach NATS (servers, credentials, TLS, stream settings), for every NATS peer, URL and source. */
  readonly nats: NatsSettings;
}

export const DEFAULT_LIMITS: Limits = {
  maxRequestBytes: 16 * 1024 * 1024,
  maxFramesPerRequest: 10_000,
  maxBodyBytes: 32 * 1024 * 1024,
  maxStreamedBodyBytes: 64 * 1024 * 1024 * 1024,
  maxHeaders: 64,
  maxHeaderBytes: 16 * 1024,
  maxChannelBytes: 255,
  connectionTimeoutMs: 60_000,
  requestTimeoutMs: 60_000,
  maxConcurrentRequestsPerPeer: 4,
  maxClockSkewMs: 5 * 60_000,
};

export const DEFAULT_LISTEN = '127.0.0.1:7420';

export const DEFAULTS: Omit<Config, 'name'> = {
  listen: DEFAULT_LISTEN,
  advertise: undefined,
  peers: {},
  segmentBytes: 64 * 1024 * 1024,
  segmentRollIdleMs: 60_000,
  maxQueueBytes: null,
  visibilityTimeoutMs: 30_000,
  renewLeases: true,
  maxDeliveries: 5,
  handlerConcurrency: 4,
  handlerTimeoutMs: 30_000,
  handlerRetryDelayMs: 1000,
  forwardRetryDelayMs: 100,
  forwardMaxRetryDelayMs: 30_000,
  retainDoneMs: 0,
  retainReceiptsMs: 7 * 24 * 3_600_000,
  orphanChunkMs: 3_600_000,
  compactIntervalMs: 10_000,
  allowUnauthenticated: false,
  tls: {},
  limits: DEFAULT_LIMITS,
  admin: {},
  sources: [],
  nats: {},
};

type Check = (value: unknown, key: string) => unknown;

const KEYS: Record<keyof Config, Check> = {
  name: (v, k) => checkName(v, k),
  listen: (v, k) => checkListen(v, k),
  advertise: (v, k) => checkUrl(v, k),
  peers: (v, k) => checkPeers(v, k),
  segmentBytes: (v, k) => checkInt(v, k, 1024, 2 ** 40),
  segmentRollIdleMs: (v, k) => checkInt(v, k, 0, 2 ** 31),
  maxQueueBytes: (v, k) => (v === null ? null : checkInt(v, k, 1024, Number.MAX_SAFE_INTEGER)),
  visibilityTimeoutMs: (v, k) => checkInt(v, k, 1, 2 ** 31),
  renewLeases: (v, k) => checkBool(v, k),
  maxDeliveries: (v, k) => checkInt(v, k, 1, 1_000_000),
  handlerConcurrency: (v, k) => checkInt(v, k, 1, 1024),
  handlerTimeoutMs: (v, k) => checkInt(v, k, 1, 2 ** 31),
  handlerRetryDelayMs: (v, k) => checkInt(v, k, 0, 3_600_000),
  forwardRetryDelayMs: (v, k) => checkInt(v, k, 10, 3_600_000),
  forwardMaxRetryDelayMs: (v, k) => checkInt(v, k, 10, 86_400_000),
  retainDoneMs: (v, k) => checkInt(v, k, 0, Number.MAX_SAFE_INTEGER),
  retainReceiptsMs: (v, k) => checkInt(v, k, 0, Number.MAX_SAFE_INTEGER),
  orphanChunkMs: (v, k) => checkInt(v, k, 0, Number.MAX_SAFE_INTEGER),
  compactIntervalMs: (v, k) => checkInt(v, k, 0, 86_400_000),
  allowUnauthenticated: (v, k) => checkBool(v, k),
  sources: (v, k) => checkSources(v, k),
  nats: (v, k) => checkNats(v, k),
  tls: (v, k) => checkObject<TlsConfig>(v, k, {
    cert: (x, kk) => checkPath(x, kk),
    key: (x, kk) => checkPath(x, kk),
    ca: (x, kk) => checkPath(x, kk),
    requireClientCert: (x, kk) => checkBool(x, kk),
  }),
  limits: (v, k) => ({
    ...DEFAULT_LIMITS,
    ...checkObject<Partial<Limits>>(v, k, {
      maxRequestBytes: (x, kk) => checkInt(x, kk, 1024, 1024 * 1024 * 1024),
      maxFramesPerRequest: (x, kk) => checkInt(x, kk, 1, 1_000_000),
      maxBodyBytes: (x, kk) => checkInt(x, kk, 0, 64 * 1024 * 1024),
      maxStreamedBodyBytes: (x, kk) => checkInt(x, kk, 0, Number.MAX_SAFE_INTEGER),
      maxHeaders: (x, kk) => checkInt(x, kk, 0, 64),
      maxHeaderBytes: (x, kk) => checkInt(x, kk, 0, 1024 * 1024),
      maxChannelBytes: (x, kk) => checkInt(x, kk, 1, 255),
      connectionTimeoutMs: (x, kk) => checkInt(x, kk, 100, 86_400_000),
      requestTimeoutMs: (x, kk) => checkInt(x, kk, 100, 86_400_000),
      maxConcurrentRequestsPerPeer: (x, kk) => checkInt(x, kk, 1, 1024),
      maxClockSkewMs: (x, kk) => checkInt(x, kk, 1000, 86_400_000),
    }),
  }),
  admin: (v, k) => checkObject<AdminConfig>(v, k, {
    listen: (x, kk) => checkListen(x, kk),
    token: (x, kk) => {
      if (typeof x !== 'string' || x.length < 16) throw bad(kk, 'a string of at least 16 characters');
      return x;
    },
    tls: (x, kk) => checkBool(x, kk),
  }),
};

function checkBool(value: unknown, key: string): boolean {
  if (typeof value !== 'boolean') throw bad(key, 'true or false');
  return value;
}

function checkPath(value: unknown, key: string): string {
  if (typeof value !== 'string' || value.length === 0) throw bad(key, 'a file path');
  return value;
}

/** Validates a nested object key by key; unknown keys are errors like at the top level. */
function checkObject<T>(value: unknown, key: string, checks: Record<string, Check>): T {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) throw bad(key, 'an object');
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(value)) {
    const check = Object.hasOwn(checks, k) ? checks[k] : undefined;
    if (check === undefined) throw new MqlogError('ERR_CONFIG', `unknown key "${key}.${k}"`, { details: { key: `${key}.${k}` } });
    out[k] = check(v, `${key}.${k}`);
  }
  return out as T;
}

/**
 * Reads and validates `DIR/mqlog.json`, then applies `overrides` (from flags), validated the same way.
 * @throws ERR_CONFIG naming the file and the key.
 */
export async function loadConfig(dataDir: string, overrides: Partial<Record<keyof Config, unknown>> = {}): Promise<Config> {
  const path = join(dataDir, CONFIG_FILE);
  const raw = await readFileIfExists(path);
  let fromFile: Record<string, unknown> = {};
  if (raw !== undefined) {
    let parsed: unknown;
    try {
      parsed = JSON.parse(raw.toString('utf8'));
    } catch (err) {
      throw new MqlogError('ERR_CONFIG', `${path}: not valid JSON (${(err as Error).message})`, { details: { path }, cause: err });
    }
    if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) {
      throw new MqlogError('ERR_CONFIG', `${path}: must hold a JSON object`, { details: { path } });
    }
    fromFile = parsed as Record<string, unknown>;
  }
  return parseConfig({ ...fromFile, ...dropUndefined(overrides) }, path);
}

/** Validates a config object; `source` names it in errors. */
export function parseConfig(input: Record<string, unknown>, source = CONFIG_FILE): Config {
  const problems = schemaProblems(input);
  const out: Record<string, unknown> = { ...DEFAULTS, name: defaultName() };
  for (const [key, value] of Object.entries(input)) {
    // Own keys only: `constructor`, `toString`, `__proto__`… are unknown keys like any other.
    const check = Object.hasOwn(KEYS, key) ? (KEYS as Record<string, Check>)[key] : undefined;
    if (check === undefined) {
      if (!problems.some((p) => p.key === key)) problems.push({ key, message: `unknown key "${key}"` });
      continue;
    }
    // A key the schema refused is reported once, as the schema says.
    if (problems.some((p) => p.key === key || p.key.startsWith(`${key}.`) || p.key.startsWith(`${key}[`))) continue;
    try {
      out[key] = check(value, key);
    } catch (err) {
      if (!(err instanceof MqlogError)) throw err;
      problems.push({ key: typeof err.details?.key === 'string' ? err.details.key : key, message: err.message });
    }
  }
  if (problems.length > 0) {
    const keys = problems.map((p) => p.key);
    throw new MqlogError('ERR_CONFIG', `${source}: ${problems.map((p) => p.message).join('; ')}`, { details: { key: keys[0], keys } });
  }
  return out as unknown as Config;
}

interface Problem {
  /** The key's path (`limits.maxBodyBytes`, `peers.b.url`, `sources[0].durable`). */
  readonly key: string;
  readonly message: string;
}

const LISTEN_PATTERN = '^(\\[[0-9a-fA-F:.]+\\]|[A-Za-z0-9.-]+):(\\d{1,4}|[1-5]\\d{4}|6[0-4]\\d{3}|65[0-4]\\d{2}|655[0-2]\\d|6553[0-5])$';
const NAME_PATTERN = '^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$';
const NAME_RULE = 'a name of 1-63 characters from [A-Za-z0-9._-], starting with a letter or digit';
const int = (minimum: number, maximum: number): object => ({ type: 'integer', minimum, maximum });
const str = (extra: object = {}): object => ({ type: 'string', ...extra });
const object = (properties: Record<string, object>, extra: object = {}): object => ({ type: 'object', properties, additionalProperties: false, ...extra });

/** The shape of mqlog.json as JSON Schema (draft 7): every key, its type and range; nothing else allowed. */
export const CONFIG_SCHEMA = object({
  name: str({ pattern: NAME_PATTERN, description: NAME_RULE }),
  listen: str({ pattern: LISTEN_PATTERN, description: 'a HOST:PORT string' }),
  advertise: str({ pattern: '^https?://', description: 'an http:// or https:// URL' }),
  peers: {
    type: 'object',
    propertyNames: { pattern: NAME_PATTERN },
    // nats and options (per-transport settings) are checked in detail by checkPeers.
    // The url asks the transport registry (an application may register its own schemes): schemaProblems.
    additionalProperties: object({ url: str(), key: str({ minLength: 16 }), nats: {}, options: {} }, { required: ['url'] }),
  },
  segmentBytes: int(1024, 2 ** 40),
  segmentRollIdleMs: int(0, 2 ** 31),
  maxQueueBytes: { type: ['integer', 'null'], minimum: 1024, maximum: Number.MAX_SAFE_INTEGER },
  visibilityTimeoutMs: int(1, 2 ** 31),
  renewLeases: { type: 'boolean' },
  maxDeliveries: int(1, 1_000_000),
  handlerConcurrency: int(1, 1024),
  handlerTimeoutMs: int(1, 2 ** 31),
  handlerRetryDelayMs: int(0, 3_600_000),
  forwardRetryDelayMs: int(10, 3_600_000),
  forwardMaxRetryDelayMs: int(10, 86_400_000),
  retainDoneMs: int(0, Number.MAX_SAFE_INTEGER),
  retainReceiptsMs: int(0, Number.MAX_SAFE_INTEGER),
  orphanChunkMs: int(0, Number.MAX_SAFE_INTEGER),
  compactIntervalMs: int(0, 86_400_000),
  allowUnauthenticated: { type: 'boolean' },
  tls: object({ cert: str({ minLength: 1 }), key: str({ minLength: 1 }), ca: str({ minLength: 1 }), requireClientCert: { type: 'boolean' } }),
  limits: object({
    maxRequestBytes: int(1024, 1024 * 1024 * 1024),
    maxFramesPerRequest: int(1, 1_000_000),
    maxBodyBytes: int(0, 64 * 1024 * 1024),
    maxStreamedBodyBytes: int(0, Number.MAX_SAFE_INTEGER),
    maxHeaders: int(0, 64),
    maxHeaderBytes: int(0, 1024 * 1024),
    maxChannelBytes: int(1, 255),
    connectionTimeoutMs: int(100, 86_400_000),
    requestTimeoutMs: int(100, 86_400_000),
    maxConcurrentRequestsPerPeer: int(1, 1024),
    maxClockSkewMs: int(1000, 86_400_000),
  }),
  admin: object({ listen: str({ pattern: LISTEN_PATTERN, description: 'a HOST:PORT string' }), token: str({ minLength: 16 }), tls: { type: 'boolean' } }),
  sources: {
    type: 'array',
    // nats (the source's connection settings) is checked in detail by checkSources.
    items: object({ url: str({ pattern: '^(nats|tls)://', description: 'nats://HOST:PORT/STREAM or tls://HOST:PORT/STREAM' }), durable: str({ pattern: NAME_PATTERN, description: NAME_RULE }), subject: str({ pattern: '^[A-Za-z0-9_.*>%-]{1,255}$', description: 'a NATS subject' }), channel: str({ minLength: 1 }), nats: {} }, { required: ['url', 'durable'] }),
  },
});

/** How ajv checks CONFIG_SCHEMA: every error, each with the schema that says what a pattern means. */
export const AJV_OPTIONS = { allErrors: true, strict: true, verbose: true } as const;

/** The schema ajv runs: CONFIG_SCHEMA, with the keys it does not describe in detail (KEYS checks them). */
export function validatorSchema(): object {
  const schema = CONFIG_SCHEMA as { properties: Record<string, object> };
  return { ...schema, properties: { ...Object.fromEntries(Object.keys(KEYS).map((key) => [key, {}])), ...schema.properties } };
}

let validator: ValidateFunction | undefined;

/**
 * The schema's validator: the code `npm run build` generated beside this module (ajv's standalone code,
 * so that a start neither loads ajv nor compiles the schema), else compiled now (running from the sources).
 */
function schemaValidator(): ValidateFunction {
  if (validator !== undefined) return validator;
  const require = createRequire(import.meta.url);
  try {
    validator = require('./config-validator.cjs') as ValidateFunction;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'MODULE_NOT_FOUND') throw err;
    const { Ajv } = require('ajv') as typeof import('ajv');
    validator = new Ajv(AJV_OPTIONS).compile(validatorSchema());
  }
  return validator;
}

/** Every problem the schema finds (not only the first), each naming its key; and peer URLs no transport knows. */
function schemaProblems(input: Record<string, unknown>): Problem[] {
  const validate = schemaValidator();
  const problems: Problem[] = [];
  if (!validate(input)) {
    for (const error of validate.errors ?? []) {
      const problem = describe(error);
      if (problem !== undefined && !problems.some((p) => p.message === problem.message)) problems.push(problem);
    }
  }
  // Beside the schema, not after it: a peer URL is reported even when something else of `peers` is wrong.
  const { peers } = input;
  if (peers !== null && typeof peers === 'object' && !Array.isArray(peers)) {
    for (const [name, peer] of Object.entries(peers)) {
      const url = (peer as { url?: unknown } | null)?.url;
      if (typeof url !== 'string') continue;
      try {
        checkPeerUrl(url, `peers.${name}.url`);
      } catch (err) {
        if (!(err instanceof MqlogError)) throw err;
        problems.push({ key: `peers.${name}.url`, message: err.message });
      }
    }
  }
  return problems;
}

function describe(error: ErrorObject): Problem | undefined {
  const at = error.instancePath
    .split('/')
    .slice(1)
    .map((part) => part.replace(/~1/g, '/').replace(/~0/g, '~'))
    .reduce((path, part) => (/^\d+$/.test(part) && path === 'sources' ? `${path}[${part}]` : path === '' ? part : `${path}.${part}`), '');
  const params = error.params as Record<string, unknown>;
  switch (error.keyword) {
    case 'additionalProperties': {
      const key = at === '' ? String(params.additionalProperty) : `${at}.${String(params.additionalProperty)}`;
      return { key, message: `unknown key "${key}"` };
    }
    case 'propertyNames':
      return { key: at, message: `${at} name "${String(params.propertyName)}" must be ${NAME_RULE}` };
    case 'pattern':
      // Reported with the name by propertyNames.
      if (error.propertyName !== undefined) return undefined;
      return { key: at, message: `${at} must be ${String((error.parentSchema as { description?: string } | undefined)?.description ?? `a string matching ${String(params.pattern)}`)}` };
    case 'required':
      return { key: at === '' ? String(params.missingProperty) : `${at}.${String(params.missingProperty)}`, message: `${at === '' ? '' : `${at}.`}${String(params.missingProperty)} is missing` };
    default:
      return { key: at, message: `${at === '' ? 'the configuration' : at} ${error.message ?? 'is not valid'}` };
  }
}

/** The URL this node tells peers to answer to. */
export function advertisedUrl(config: Config): string {
  return config.advertise ?? `http://${config.listen}`;
}

function defaultName(): string {
  return hostname() || 'mqlog';
}

function dropUndefined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}

function bad(key: string, what: string): MqlogError {
  return new MqlogError('ERR_CONFIG', `${key} must be ${what}`, { details: { key } });
}

function checkInt(value: unknown, key: string, min: number, max: number): number {
  if (!Number.isSafeInteger(value) || (value as number) < min || (value as number) > max) {
    throw bad(key, `an integer from ${min} to ${max}`);
  }
  return value as number;
}

const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;

export function isPeerName(value: string): boolean {
  return NAME.test(value);
}

function checkName(value: unknown, key: string): string {
  if (typeof value !== 'string' || !NAME.test(value)) {
    throw bad(key, 'a name of 1-63 characters from [A-Za-z0-9._-], starting with a letter or digit');
  }
  return value;
}

/** `HOST:PORT` with a port from 0 to 65535; HOST may be an IPv6 address in brackets. */
export function checkListen(value: unknown, key: string): string {
  if (typeof value !== 'string') throw bad(key, 'a HOST:PORT string');
  const match = /^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})$/.exec(value);
  if (match === null || Number(match[2]) > 65535) throw bad(key, 'a HOST:PORT string');
  return value;
}

function checkUrl(value: unknown, key: string): string | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== 'string') throw bad(key, 'an http:// or https:// URL');
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw bad(key, 'an http:// or https:// URL');
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw bad(key, 'an http:// or https:// URL');
  return url.origin;
}

/**
 * A peer address: a URL of a registered transport (http(s), nats, tls, or an application's), in its
 * canonical form. A peer's URL may carry credentials (mqlog.json holds secrets anyway); they are never shown.
 */
function checkPeerUrl(value: unknown, key: string): string {
  if (typeof value !== 'string') throw bad(key, `a URL (${transports.schemes().join(', ')})`);
  let canonical: string | undefined;
  try {
    canonical = transports.canonical(value, false);
  } catch (err) {
    throw bad(key, `a valid URL: ${(err as Error).message}`);
  }
  if (canonical === undefined) throw bad(key, `a URL of a known transport (${transports.schemes().join(', ')})`);
  return canonical;
}

/** A file path, a string of 1-4096 characters. */
function checkString(value: unknown, key: string, what = 'a non-empty string'): string {
  if (typeof value !== 'string' || value.length === 0 || value.length > 4096) throw bad(key, what);
  return value;
}

const NATS_SERVER = /^(nats|tls):\/\/([A-Za-z0-9.-]+|\[[0-9a-fA-F:.]+\]):(\d{1,5})$/;

/** The `nats` settings (spec/transports.md §3.5); values are never echoed in errors (some are secrets). */
function checkNats(value: unknown, key: string): NatsSettings {
  return checkObject<NatsSettings>(value, key, {
    servers: (x, k) => {
      if (!Array.isArray(x) || x.length > 64 || x.some((s) => typeof s !== 'string' || !NATS_SERVER.test(s))) throw bad(k, 'a list of nats://HOST:PORT or tls://HOST:PORT');
      return x as string[];
    },
    user: (x, k) => checkString(x, k),
    pass: (x, k) => checkString(x, k),
    token: (x, k) => checkString(x, k),
    nkeySeed: (x, k) => checkPath(x, k),
    creds: (x, k) => checkPath(x, k),
    tls: (x, k) => checkObject(x, k, { ca: (y, kk) => checkPath(y, kk), cert: (y, kk) => checkPath(y, kk), key: (y, kk) => checkPath(y, kk) }),
    stream: (x, k) =>
      checkObject<StreamSettings>(x, k, {
        replicas: (y, kk) => checkInt(y, kk, 1, 5),
        maxBytes: (y, kk) => checkInt(y, kk, 1024, Number.MAX_SAFE_INTEGER),
        maxAgeMs: (y, kk) => checkInt(y, kk, 1000, 100 * 365 * 86_400_000),
        storage: (y, kk) => {
          if (y !== 'file' && y !== 'memory') throw bad(kk, '"file" or "memory"');
          return y;
        },
        duplicateWindowMs: (y, kk) => checkInt(y, kk, 100, 7 * 86_400_000),
      }),
    format: (x, k) => {
      if (x !== 'headers' && x !== 'frame') throw bad(k, '"headers" or "frame"');
      return x;
    },
    bucket: (x, k) => {
      if (typeof x !== 'string' || !/^[A-Za-z0-9_-]{1,64}$/.test(x)) throw bad(k, 'a bucket name of 1-64 letters, digits, _ and -');
      return x;
    },
  });
}

export interface SourceConfig {
  /** `nats://[user:pass@]HOST:PORT/STREAM` (or tls://): a JetStream stream to take messages from into this node's inbox. */
  readonly url: string;
  /** Name of the durable consumer JetStream keeps for this node. */
  readonly durable: string;
  /** Only messages on this subject (default: the whole stream). */
  readonly subject?: string | undefined;
  /** Inbox channel for messages that are not mqlog's (default: from the subject). */
  readonly channel?: string | undefined;
  /** NATS settings of this source, over the node's `nats` settings. */
  readonly nats?: NatsSettings | undefined;
}

function checkSources(value: unknown, key: string): SourceConfig[] {
  if (!Array.isArray(value)) throw bad(key, 'a list of { url, durable, subject?, channel?, nats? }');
  return value.map((source, i) =>
    checkObject<SourceConfig>(source, `${key}[${i}]`, {
      url: (x, k) => {
        if (typeof x !== 'string') throw bad(k, 'nats://HOST:PORT/STREAM');
        try {
          parseNatsUrl(x);
        } catch (err) {
          throw bad(k, (err as Error).message);
        }
        return x;
      },
      durable: (x, k) => checkName(x, k),
      subject: (x, k) => {
        if (typeof x !== 'string' || !/^[A-Za-z0-9_.*>%-]{1,255}$/.test(x)) throw bad(k, 'a NATS subject');
        return x;
      },
      channel: (x, k) => {
        if (typeof x !== 'string' || x.length === 0 || Buffer.byteLength(x) > 255) throw bad(k, 'a channel name of 1-255 bytes');
        return x;
      },
      nats: (x, k) => checkNats(x, k),
    }),
  ).map((source, i) => {
    if (source.durable === undefined || source.url === undefined) throw bad(`${key}[${i}]`, 'an object with url and durable');
    return source;
  });
}

function checkPeers(value: unknown, key: string): Record<string, PeerConfig> {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) throw bad(key, 'an object of peer name to { url, key }');
  const peers: Record<string, PeerConfig> = {};
  for (const [name, peer] of Object.entries(value)) {
    const at = `${key}.${name}`;
    checkName(name, `${key} name "${name}"`);
    if (peer === null || typeof peer !== 'object' || Array.isArray(peer)) throw bad(at, 'an object { url, key }');
    const p = peer as Record<string, unknown>;
    for (const k of Object.keys(p)) if (k !== 'url' && k !== 'key' && k !== 'nats' && k !== 'options') throw new MqlogError('ERR_CONFIG', `unknown key "${at}.${k}"`, { details: { key: `${at}.${k}` } });
    const url = checkPeerUrl(p.url, `${at}.url`);
    if (p.key !== undefined && (typeof p.key !== 'string' || p.key.length < 16)) throw bad(`${at}.key`, 'a string of at least 16 characters');
    if (p.options !== undefined && (p.options === null || typeof p.options !== 'object' || Array.isArray(p.options))) throw bad(`${at}.options`, 'an object');
    peers[name] = {
      url,
      key: p.key,
      ...(p.nats === undefined ? {} : { nats: checkNats(p.nats, `${at}.nats`) }),
      ...(p.options === undefined ? {} : { options: p.options as Record<string, unknown> }),
    };
  }
  return peers;
}

/**
 * Resolves a destination given by a user, once, when a message is appended (spec/transports.md §1.2):
 * a configured peer name, or a URL of a registered transport in its canonical form (an http(s) URL is
 * its origin, a nats URL `nats://host:port/STREAM`) — the peer's name when it is a configured peer's URL.
 * What it returns is what the outbox records and what the daemon forwards to.
 * @throws ERR_UNKNOWN_PEER otherwise, saying why.
 */
export function resolveDestination(config: Config, to: string): string {
  if (Object.hasOwn(config.peers, to)) return to;
  let canonical: string | undefined;
  try {
    canonical = transports.canonical(to, true);
  } catch (err) {
    throw new MqlogError('ERR_UNKNOWN_PEER', `destination ${JSON.stringify(transports.display(to))}: ${(err as Error).message}`, { details: { to: transports.display(to) }, cause: err });
  }
  if (canonical === undefined) {
    throw new MqlogError('ERR_UNKNOWN_PEER', `unknown peer ${JSON.stringify(to)}: not in the peers of mqlog.json and not a URL of a known transport (${transports.schemes().join(', ')})`, { details: { to } });
  }
  for (const [name, peer] of Object.entries(config.peers)) if (peer.url === canonical || withoutCredentials(peer.url) === canonical) return name;
  return canonical;
}

/** A configured peer's URL as a message would name it (no credentials), or undefined when it has none to drop. */
function withoutCredentials(url: string): string | undefined {
  if (!/^[a-z][a-z0-9+.-]*:\/\/[^/]*@/i.test(url)) return undefined;
  try {
    const parsed = new URL(url);
    parsed.username = '';
    parsed.password = '';
    return transports.canonical(parsed.href, true);
  } catch {
    return undefined;
  }
}

/**
 * Where a destination the outbox names is reached: a configured peer's URL, or the destination itself
 * when it is a URL of a registered transport; undefined for neither (a peer removed from mqlog.json).
 */
export function destinationUrl(config: Config, destination: string): string | undefined {
  const peer = Object.hasOwn(config.peers, destination) ? config.peers[destination] : undefined;
  if (peer !== undefined) return peer.url;
  try {
    return transports.canonical(destination, true) === undefined ? undefined : destination;
  } catch {
    return undefined;
  }
}
