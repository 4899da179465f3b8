/**
 * A node's configuration: `DIR/mqlog.json`, validated on load, with command-line overrides on top.
 * A missing file means defaults; an unknown key or a wrong value is ERR_CONFIG naming the key.
 * Every key, its default and its meaning is listed in KEYS below and in the README.
 */
import { hostname } from 'node:os';
import { join } from 'node:path';
import { MqlogError } from '../errors.js';
import { readFileIfExists } from '../util/fs.js';

export const CONFIG_FILE = 'mqlog.json';

export interface PeerConfig {
  /** `http://HOST:PORT` or `https://HOST:PORT`. */
  readonly url: string;
  /** Shared secret both nodes hold for this pair. */
  readonly key?: string | undefined;
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
  /** Size limit of one queue on disk; null for none. */
  readonly maxQueueBytes: number | null;
  /** How long a consumer holds a message before it comes back. Default 30 s. */
  readonly visibilityTimeoutMs: number;
  /** Hand-outs before a message goes to the dead letters. Default 5. */
  readonly maxDeliveries: number;
  /** Handler calls running at once (`daemon --handler`). Default 4. */
  readonly handlerConcurrency: number;
  /** First retry delay after a handler failure; doubles per delivery, capped at 60 s. Default 1000. */
  readonly handlerRetryDelayMs: number;
  /** Done messages (sent, acked, dead-lettered, expired) are kept this long for dump before compaction removes them. Default 0. */
  readonly retainDoneMs: number;
  /** Settled receipts (processed, dead, expired) are kept this long for `mqlog receipt`. Default 7 days. */
  readonly retainReceiptsMs: number;
  /** How often the daemon compacts its queues; 0 turns background compaction off. Default 10 s. */
  readonly compactIntervalMs: number;
}

export const DEFAULT_LISTEN = '127.0.0.1:7420';

export const DEFAULTS: Omit<Config, 'name'> = {
  listen: DEFAULT_LISTEN,
  advertise: undefined,
  peers: {},
  segmentBytes: 64 * 1024 * 1024,
  maxQueueBytes: null,
  visibilityTimeoutMs: 30_000,
  maxDeliveries: 5,
  handlerConcurrency: 4,
  handlerRetryDelayMs: 1000,
  retainDoneMs: 0,
  retainReceiptsMs: 7 * 24 * 3_600_000,
  compactIntervalMs: 10_000,
};

type Check = (value: unknown, key: string) => unknown;

const KEYS: Record<keyof Config, Check> = {
  name: (v, k) => checkName(v, k),
  listen: (v, k) => checkListen(v, k),
  advertise: (v, k) => checkUrl(v, k),
  peers: (v, k) => checkPeers(v, k),
  segmentBytes: (v, k) => checkInt(v, k, 1024, 2 ** 40),
  maxQueueBytes: (v, k) => (v === null ? null : checkInt(v, k, 1024, Number.MAX_SAFE_INTEGER)),
  visibilityTimeoutMs: (v, k) => checkInt(v, k, 1, 2 ** 31),
  maxDeliveries: (v, k) => checkInt(v, k, 1, 1_000_000),
  handlerConcurrency: (v, k) => checkInt(v, k, 1, 1024),
  handlerRetryDelayMs: (v, k) => checkInt(v, k, 0, 3_600_000),
  retainDoneMs: (v, k) => checkInt(v, k, 0, Number.MAX_SAFE_INTEGER),
  retainReceiptsMs: (v, k) => checkInt(v, k, 0, Number.MAX_SAFE_INTEGER),
  compactIntervalMs: (v, k) => checkInt(v, k, 0, 86_400_000),
};

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
  const out: Record<string, unknown> = { ...DEFAULTS, name: defaultName() };
  for (const [key, value] of Object.entries(input)) {
    const check = (KEYS as Record<string, Check | undefined>)[key];
    if (check === undefined) {
      throw new MqlogError('ERR_CONFIG', `${source}: unknown key "${key}"`, { details: { key } });
    }
    try {
      out[key] = check(value, key);
    } catch (err) {
      if (err instanceof MqlogError) {
        throw new MqlogError('ERR_CONFIG', `${source}: ${err.message}`, { details: { key }, cause: err });
      }
      throw err;
    }
  }
  return out as unknown as Config;
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

function checkPeers(value: unknown, key: string): Record<string, PeerConfig> {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) throw bad(key, 'an object of peer name to { url, key }');
  const peers: Record<string, PeerConfig> = {};
  for (const [name, peer] of Object.entries(value)) {
    const at = `${key}.${name}`;
    checkName(name, `${key} name "${name}"`);
    if (peer === null || typeof peer !== 'object' || Array.isArray(peer)) throw bad(at, 'an object { url, key }');
    const p = peer as Record<string, unknown>;
    for (const k of Object.keys(p)) if (k !== 'url' && k !== 'key') throw new MqlogError('ERR_CONFIG', `unknown key "${at}.${k}"`, { details: { key: `${at}.${k}` } });
    const url = checkUrl(p.url, `${at}.url`);
    if (url === undefined) throw bad(`${at}.url`, 'an http:// or https:// URL');
    if (p.key !== undefined && (typeof p.key !== 'string' || p.key.length < 16)) throw bad(`${at}.key`, 'a string of at least 16 characters');
    peers[name] = { url, key: p.key };
  }
  return peers;
}

/**
 * Resolves a destination given by a user: a configured peer name, or an http(s) URL (normalized to its
 * origin, or to the peer name when it is a configured peer's URL).
 * @throws ERR_UNKNOWN_PEER otherwise.
 */
export function resolveDestination(config: Config, to: string): string {
  if (Object.hasOwn(config.peers, to)) return to;
  if (/^https?:\/\//i.test(to)) {
    let url: URL;
    try {
      url = new URL(to);
    } catch {
      throw new MqlogError('ERR_UNKNOWN_PEER', `destination ${JSON.stringify(to)} is not a valid URL`, { details: { to } });
    }
    const origin = url.origin;
    for (const [name, peer] of Object.entries(config.peers)) if (peer.url === origin) return name;
    return origin;
  }
  throw new MqlogError('ERR_UNKNOWN_PEER', `unknown peer ${JSON.stringify(to)}: not in the peers of mqlog.json and not an http(s) URL`, { details: { to } });
}
