/**
 * The transport registry (spec/transports.md §1.2): URL scheme → factory. It is the one place that says
 * what a destination URL is: `resolveDestination` (when a message is appended) asks it for the URL's
 * canonical form, and the daemon asks it for the transport of every destination its outbox names,
 * configured peer or not. `http`, `https`, `nats` and `tls` (NATS over TLS) are built in; an application
 * adds its own with `transports.register(scheme, factory)` before it opens a node or starts a daemon.
 *
 * This module loads no transport code: a factory loads its implementation when `create` is called, so
 * that the application API (`mqlog`), which resolves destinations, never loads an HTTP or NATS client.
 */
import { MqlogError } from '../errors.js';
import type { FrameContents } from './frame-contents.js';
import { canonicalNatsUrl } from './nats-address.js';
import type { Transport, WireFrame } from './transport.js';

/** What a factory is given to build the transport of one destination. */
export interface TransportContext {
  /** The destination as the outbox names it: a configured peer's name, or the URL itself. */
  readonly destination: string;
  /** The URL to reach it (a configured peer's `url` may carry credentials: never log it whole). */
  readonly url: string;
  /** This node's permanent id and name. */
  readonly node: { readonly id: string; readonly name: string };
  /**
   * Settings for this destination from mqlog.json: for `nats:`/`tls:` the merged `nats` settings of the
   * node and the peer (NatsSettings), for `http:`/`https:` `{ key, tls }`; for a scheme of an
   * application, the peer's `options` object (or `{}`).
   */
  readonly settings: unknown;
  /** The fields and body of a frame the forwarder hands over (for transports that publish bodies, not frames). */
  readonly unpack: (frame: WireFrame) => FrameContents;
  /** Where a transport reports what it does not throw (a slow reconnect, a resync); never secrets. */
  readonly log: (level: 'info' | 'warn' | 'error', event: string, fields: Record<string, unknown>, message: string) => void;
}

export interface TransportFactory {
  /**
   * The canonical form of a URL of this scheme, as a message records it (the same destination always
   * gives the same string). `forMessage` is false for the URL of a configured peer, true for a URL
   * named by a message (which is stored in the message and shown by dump: it must hold no secret).
   * @throws MqlogError ERR_INVALID_ARG, saying what is wrong, for a URL this transport cannot serve.
   */
  canonical(url: URL, forMessage: boolean): string;
  /** The transport of one destination; the daemon closes it when it stops. */
  create(context: TransportContext): Transport | Promise<Transport>;
  /** The URL as it may be shown (stat, logs, the status page): without secrets. Default: without a password. */
  display?(url: URL): string;
}

export class TransportRegistry {
  private readonly factories = new Map<string, TransportFactory>();
  private readonly parent: TransportRegistry | undefined;

  /** A registry that falls back to `parent` for schemes it has no factory of its own for. */
  constructor(parent?: TransportRegistry) {
    this.parent = parent;
  }

  /**
   * Makes destinations `scheme://…` go through `factory` (replacing any earlier one of this registry).
   * @throws ERR_INVALID_ARG for a scheme that is not `[a-z][a-z0-9+.-]*`.
   */
  register(scheme: string, factory: TransportFactory): this {
    if (!/^[a-z][a-z0-9+.-]*$/.test(scheme)) throw new MqlogError('ERR_INVALID_ARG', `transport scheme ${JSON.stringify(scheme)} must be lower case letters, digits, +, . or -`);
    this.factories.set(scheme, factory);
    return this;
  }

  /** The factory for a scheme (without the colon), or undefined. */
  factory(scheme: string): TransportFactory | undefined {
    return this.factories.get(scheme) ?? this.parent?.factory(scheme);
  }

  /** Every scheme with a factory. */
  schemes(): string[] {
    return [...new Set([...(this.parent?.schemes() ?? []), ...this.factories.keys()])].sort();
  }

  /**
   * The canonical form of a destination URL, or undefined when it is not a URL of a registered scheme.
   * @throws ERR_INVALID_ARG when the scheme is registered but the URL is not one its transport serves.
   */
  canonical(value: string, forMessage: boolean): string | undefined {
    const found = this.lookup(value);
    return found === undefined ? undefined : found.factory.canonical(found.url, forMessage);
  }

  /** The transport for a destination URL. @throws ERR_INVALID_ARG for a URL of no registered scheme. */
  async create(context: TransportContext): Promise<Transport> {
    const found = this.lookup(context.url);
    if (found === undefined) throw new MqlogError('ERR_INVALID_ARG', `no transport for ${this.display(context.url)} (registered: ${this.schemes().join(', ')})`);
    return found.factory.create(context);
  }

  /**
   * A URL as it may be shown: without secrets. Never throws: a value of no registered scheme is shown as
   * it is, a URL without credentials as written, one that does not parse with what is before an `@` hidden.
   */
  display(value: string): string {
    let found: { url: URL; factory: TransportFactory } | undefined;
    try {
      found = this.lookup(value);
    } catch {
      return value.replace(/^([A-Za-z][A-Za-z0-9+.-]*:\/\/)[^/]*@/, '$1***@');
    }
    if (found === undefined) return value;
    if (found.factory.display !== undefined) return found.factory.display(found.url);
    return found.url.username === '' && found.url.password === '' ? value : withoutPassword(found.url);
  }

  private lookup(value: string): { url: URL; factory: TransportFactory } | undefined {
    const scheme = /^([A-Za-z][A-Za-z0-9+.-]*):\/\//.exec(value)?.[1]?.toLowerCase();
    if (scheme === undefined) return undefined;
    const factory = this.factory(scheme);
    if (factory === undefined) return undefined;
    let url: URL;
    try {
      url = new URL(value);
    } catch {
      throw new MqlogError('ERR_INVALID_ARG', `${JSON.stringify(value)} is not a valid URL`);
    }
    return { url, factory };
  }
}

/** `scheme://user:***@host…`: the password (or a lone user, which NATS takes as a token) hidden. */
export function withoutPassword(url: URL): string {
  if (url.username === '' && url.password === '') return url.href;
  const copy = new URL(url.href);
  if (copy.password !== '') copy.password = '***';
  else copy.username = '***';
  return copy.href;
}

const http: TransportFactory = {
  // An http(s) destination is its origin (a path, query or credentials in it are not part of it).
  canonical: (url) => url.origin,
  async create(context) {
    const { httpTransport } = await import('./http-transport.js');
    return httpTransport(context);
  },
};

const nats: TransportFactory = {
  canonical: (url, forMessage) => canonicalNatsUrl(url, forMessage),
  async create(context) {
    const { NatsSender } = await import('./nats-sender.js');
    return NatsSender.create(context);
  },
};

/**
 * The registry a node and a daemon use unless they are given another: the built-in transports, and
 * whatever the application registers here.
 */
export const transports = new TransportRegistry().register('http', http).register('https', http).register('nats', nats).register('tls', nats);
