/**
 * NATS destination and source URLs (spec/transports.md §3.1): `nats://HOST:PORT/STREAM`, or
 * `tls://HOST:PORT/STREAM` for a server that requires TLS. A configured peer's or source's URL may carry
 * credentials (`nats://user:pass@…`, or `nats://token@…`); a URL named by a message may not, since the
 * message stores its destinations and `dump` shows them (credentials go in mqlog.json).
 */
import { MqlogError } from '../errors.js';

export const STREAM_NAME = /^[A-Za-z0-9_-]{1,64}$/;
export const DEFAULT_NATS_PORT = 4222;

export interface NatsAddress {
  /** `tls` when the URL asks for TLS. */
  readonly scheme: 'nats' | 'tls';
  /** `HOST:PORT` (an IPv6 host in brackets). */
  readonly server: string;
  /** The JetStream stream. */
  readonly stream: string;
  readonly user?: string | undefined;
  readonly pass?: string | undefined;
  /** A lone user name in the URL is a token, as NATS clients take it. */
  readonly token?: string | undefined;
}

/** Parses a NATS URL. @throws ERR_INVALID_ARG saying what is wrong (never echoing credentials). */
export function parseNatsUrl(value: string | URL): NatsAddress {
  let url: URL;
  try {
    url = typeof value === 'string' ? new URL(value) : value;
  } catch {
    throw new MqlogError('ERR_INVALID_ARG', 'not a nats://HOST:PORT/STREAM URL');
  }
  const scheme = url.protocol === 'nats:' ? 'nats' : url.protocol === 'tls:' ? 'tls' : undefined;
  const stream = url.pathname.replace(/^\//, '');
  const host = url.hostname.toLowerCase();
  const port = url.port === '' ? DEFAULT_NATS_PORT : Number(url.port);
  if (scheme === undefined || host === '' || !STREAM_NAME.test(stream) || url.search !== '' || url.hash !== '' || !Number.isInteger(port) || port < 1 || port > 65535) {
    throw new MqlogError('ERR_INVALID_ARG', `${scheme ?? 'nats'}://${host === '' ? 'HOST' : host}:${url.port === '' ? 'PORT' : url.port}/… must be nats://HOST:PORT/STREAM or tls://HOST:PORT/STREAM (STREAM of 1-64 letters, digits, _ and -)`);
  }
  const user = url.username === '' ? undefined : decodeURIComponent(url.username);
  const pass = url.password === '' ? undefined : decodeURIComponent(url.password);
  return {
    scheme,
    server: `${host}:${port}`,
    stream,
    ...(pass === undefined ? (user === undefined ? {} : { token: user }) : { user: user ?? '', pass }),
  };
}

/**
 * The form a NATS destination is recorded in: scheme, lower-case host, port and stream.
 * @throws ERR_INVALID_ARG for a URL that is not one, or that carries credentials when `forMessage`.
 */
export function canonicalNatsUrl(url: URL, forMessage: boolean): string {
  const address = parseNatsUrl(url);
  if (forMessage && (address.user !== undefined || address.token !== undefined)) {
    throw new MqlogError('ERR_INVALID_ARG', 'a destination URL named by a message cannot carry credentials (the message would store them): configure a peer with this URL in mqlog.json, or put them in its "nats" settings');
  }
  const base = `${address.scheme}://${address.server}/${address.stream}`;
  if (forMessage) return base;
  return url.username === '' && url.password === '' ? base : `${address.scheme}://${url.username}${url.password === '' ? '' : `:${url.password}`}@${address.server}/${address.stream}`;
}
