/**
 * A connection to a NATS deployment (spec/transports.md §3.5): the URL's server and the configured seed
 * servers, credentials (user/password, token, nkey seed, creds file) and TLS, reconnecting forever in
 * the background. One per sender and per source. Nothing here logs or puts into an error message a
 * password, token, seed or key: errors name the server as `nats://HOST:PORT` only.
 *
 * `close()` is idempotent; `get()` after it rejects with ERR_CLOSED.
 */
import { readFile } from 'node:fs/promises';
import { checkServerIdentity, type PeerCertificate } from 'node:tls';
import { connect, credsAuthenticator, nkeyAuthenticator, type Authenticator, type ConnectionOptions, type NatsConnection, type TlsOptions } from '@nats-io/transport-node';
import { MqlogError } from '../errors.js';
import type { NatsAddress } from './nats-address.js';
import { natsError } from './nats-errors.js';
import type { NatsSettings } from './nats-settings.js';

/** `nats://HOST:PORT/STREAM` (or tls://): the address as it may be shown. */
export function displayAddress(address: NatsAddress): string {
  return `${address.scheme}://${address.server}/${address.stream}`;
}

/** The client options for an address and its settings (reads the nkey seed and creds files). */
export async function connectionOptions(address: NatsAddress, settings: NatsSettings): Promise<ConnectionOptions> {
  const tlsFiles = settings.tls ?? {};
  const wantsTls = address.scheme === 'tls' || Object.values(tlsFiles).some((v) => v !== undefined) || (settings.servers ?? []).some((s) => s.startsWith('tls://'));
  const servers = [`${address.scheme}://${address.server}`, ...(settings.servers ?? [])].map((s) => s.replace(/^tls:\/\//, 'nats://'));
  const authenticators: Authenticator[] = [];
  if (settings.nkeySeed !== undefined) authenticators.push(nkeyAuthenticator(new TextEncoder().encode((await readSecret(settings.nkeySeed, 'nats.nkeySeed')).trim())));
  if (settings.creds !== undefined) authenticators.push(credsAuthenticator(new TextEncoder().encode(await readSecret(settings.creds, 'nats.creds'))));
  const user = address.user ?? settings.user;
  const pass = address.pass ?? settings.pass;
  const token = address.token ?? settings.token;
  return {
    servers: [...new Set(servers)],
    name: 'mqlog',
    reconnect: true,
    maxReconnectAttempts: -1,
    reconnectTimeWait: 250,
    timeout: 5000,
    // No stack trace captured for each request in case it fails: two Error objects per publish otherwise
    // (about a tenth of a forwarding daemon's CPU). Errors still say what failed.
    noAsyncTraces: true,
    ...(user === undefined ? {} : { user, pass: pass ?? '' }),
    ...(token === undefined ? {} : { token }),
    ...(authenticators.length === 0 ? {} : { authenticator: authenticators }),
    ...(wantsTls ? { tls: tlsOptions(servers, tlsFiles) } : {}),
  };
}

/** TLS options of the client: the files, and a certificate check that knows the configured hosts. */
function tlsOptions(servers: readonly string[], files: NonNullable<NatsSettings['tls']>): TlsOptions {
  const options = {
    ...(files.ca === undefined ? {} : { caFile: files.ca }),
    ...(files.cert === undefined ? {} : { certFile: files.cert }),
    ...(files.key === undefined ? {} : { keyFile: files.key }),
    // The client names no host when it connects by IP address (TLS allows no IP as a server name), so
    // Node would check the certificate against "localhost": accept one made for a configured host. The
    // client passes its tls options on to Node's tls.connect.
    checkServerIdentity: identityOf(servers),
  };
  return options;
}

/** A certificate check that accepts the name asked for or any host of `servers`. */
function identityOf(servers: readonly string[]): (hostname: string, cert: PeerCertificate) => Error | undefined {
  const hosts = servers.map((s) => new URL(s).hostname.replace(/^\[|\]$/g, ''));
  return (hostname, cert) => {
    const error = checkServerIdentity(hostname, cert);
    if (error === undefined) return undefined;
    return hosts.some((host) => checkServerIdentity(host, cert) === undefined) ? undefined : error;
  };
}

async function readSecret(path: string, key: string): Promise<string> {
  try {
    return (await readFile(path)).toString('utf8');
  } catch (err) {
    throw new MqlogError('ERR_CONFIG', `${key}: cannot read ${path}: ${(err as NodeJS.ErrnoException).code ?? 'error'}`, { details: { key, path }, cause: err });
  }
}

/** A shared connection, made on first use and again after it closed for good. */
export class NatsLink {
  readonly address: NatsAddress;
  readonly where: string;
  private readonly settings: NatsSettings;
  private connecting: Promise<NatsConnection> | undefined;
  /** Callers waiting to hear that the connection dropped (requests in flight will get no answer). */
  private readonly dropWaiters = new Set<() => void>();
  private closing: Promise<void> | undefined;

  constructor(address: NatsAddress, settings: NatsSettings) {
    this.address = address;
    this.settings = settings;
    this.where = displayAddress(address);
  }

  /** The connection, once connected. @throws ERR_PEER_UNREACHABLE (or ERR_PEER_FAILED when refused, ERR_CONFIG for unreadable files). */
  get(): Promise<NatsConnection> {
    if (this.closing !== undefined) return Promise.reject(new MqlogError('ERR_CLOSED', `${this.where}: connection closed`));
    this.connecting ??= (async () => {
      const nc = await connect(await connectionOptions(this.address, this.settings));
      void this.watch(nc);
      return nc;
    })().catch((err: unknown) => {
      this.connecting = undefined;
      throw natsError(err, this.where, 'cannot connect');
    });
    return this.connecting;
  }

  /** The server's largest message (payload and headers), once connected. */
  maxPayload(nc: NatsConnection): number {
    return nc.info?.max_payload ?? 1024 * 1024;
  }

  /** Resolves when the connection drops next. */
  dropped(): { promise: Promise<void>; cancel: () => void } {
    let wake = (): void => undefined;
    const promise = new Promise<void>((resolve) => {
      wake = resolve;
      this.dropWaiters.add(resolve);
    });
    return { promise, cancel: () => this.dropWaiters.delete(wake) };
  }

  private async watch(nc: NatsConnection): Promise<void> {
    const closed = nc.closed().then(() => {
      // Closed for good (not by close()): the next get() connects anew.
      if (this.closing === undefined) this.connecting = undefined;
      this.wakeAll();
    });
    for await (const status of nc.status()) {
      if (status.type === 'disconnect') this.wakeAll();
    }
    await closed;
  }

  private wakeAll(): void {
    for (const wake of this.dropWaiters) wake();
    this.dropWaiters.clear();
  }

  close(): Promise<void> {
    this.closing ??= (async () => {
      const nc = await this.connecting?.catch(() => undefined);
      await nc?.close().catch(() => undefined);
      this.wakeAll();
    })();
    return this.closing;
  }
}
