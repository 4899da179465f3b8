/**
 * The built-in factory's side of HTTP(S) destinations (spec/transports.md §2): an HttpSender that signs
 * its requests with the peer's shared key, if it has one, and trusts the node's CA for https.
 */
import { signRequest } from './auth.js';
import { HttpSender } from './http-sender.js';
import type { TransportContext } from './registry.js';
import type { Transport } from './transport.js';

/** What the daemon puts in `TransportContext.settings` for an http(s) destination. */
export interface HttpSettings {
  /** The peer's shared secret (configured peers only). */
  readonly key?: string | undefined;
  /** The node's TLS material (PEM), for https destinations. */
  readonly tls?: { readonly ca?: Buffer | undefined; readonly cert?: Buffer | undefined; readonly key?: Buffer | undefined } | undefined;
}

export function httpTransport(context: TransportContext): Transport {
  const settings = (context.settings ?? {}) as HttpSettings;
  const key = settings.key;
  const tls = settings.tls ?? {};
  return new HttpSender(context.url, {
    ...(key === undefined ? {} : { sign: (method: string, path: string, body: readonly Buffer[]) => signRequest(context.node.name, key, method, path, body) }),
    ...(context.url.startsWith('https:') ? { connect: { ...(tls.ca === undefined ? {} : { ca: tls.ca }), ...(tls.cert === undefined || tls.key === undefined ? {} : { cert: tls.cert, key: tls.key }) } } : {}),
  });
}
