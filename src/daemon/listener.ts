/**
 * One address the daemon listens on, whose HTTP(S) server can be replaced while it runs (a reload of
 * limits, tls or admin). The listener owns the TCP socket bound to the address; each connection it
 * accepts goes to the server of the fastify app in force at that moment (the app's own `server`, which
 * never binds an address itself: the connection is handed to it as Node's http docs allow). Replacing the
 * app (`use`) sends the next connections to the new one and retires the old one gracefully: its idle
 * connections close at once, every request it is serving finishes and is answered with
 * `connection: close`, and the app closes once its last connection is gone (or after `graceMs`, when
 * what is left is destroyed). Nothing in flight is dropped and no connection is refused meanwhile.
 *
 * A new address is a new Listener: the daemon opens it first and closes the old one only once the new
 * one listens (spec/http-protocol.md §11).
 *
 * Concurrency: `use` and `close` are called one at a time by the daemon (its reloads are serial).
 */
import type { FastifyInstance } from 'fastify';
import { createServer, type Server, type Socket } from 'node:net';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { MqlogError } from '../errors.js';
import { checkListen } from './config.js';

type Protocol = 'http' | 'https';

/** An app whose server takes the listener's connections: its connections and its requests in flight. */
class Served {
  readonly app: FastifyInstance;
  readonly sockets = new Set<Socket>();
  readonly responses = new Set<ServerResponse>();
  private retiring: Promise<void> | undefined;
  private retired = false;

  constructor(app: FastifyInstance) {
    this.app = app;
    const server = app.server;
    // The server never binds: 'listening' starts its connection tracking (request and headers timeouts).
    server.emit('listening');
    server.prependListener('request', (_request: IncomingMessage, response: ServerResponse) => {
      // A request that arrives on a kept-alive connection of a retired app is served, then the connection ends.
      if (this.retired) response.setHeader('connection', 'close');
      this.responses.add(response);
      response.once('close', () => {
        this.responses.delete(response);
        if (this.retired) setImmediate(() => server.closeIdleConnections());
      });
    });
  }

  take(socket: Socket): void {
    this.sockets.add(socket);
    socket.once('close', () => this.sockets.delete(socket));
    this.app.server.emit('connection', socket);
  }

  /** Lets the requests in flight finish, ends every connection, then closes the app; idempotent. */
  retire(graceMs: number): Promise<void> {
    this.retiring ??= (async () => {
      this.retired = true;
      for (const response of this.responses) if (!response.headersSent) response.setHeader('connection', 'close');
      this.app.server.closeIdleConnections();
      const deadline = Date.now() + graceMs;
      while (this.sockets.size > 0 && Date.now() < deadline) {
        await new Promise((resolve) => setTimeout(resolve, 50));
        this.app.server.closeIdleConnections();
      }
      for (const socket of this.sockets) socket.destroy();
      await this.app.close();
    })();
    return this.retiring;
  }
}

export class Listener {
  /** The address asked for (`HOST:PORT`, as in the config). */
  readonly address: string;
  private readonly server: Server;
  private current: Served;
  private protocol: Protocol;
  /** `HOST:PORT` bound, the real port when 0 was asked for. */
  private readonly bound: string;
  private readonly graceMs: number;
  private readonly retiring = new Set<Promise<void>>();
  private closing: Promise<void> | undefined;

  private constructor(server: Server, served: Served, address: string, protocol: Protocol, bound: string, graceMs: number) {
    this.server = server;
    this.current = served;
    this.address = address;
    this.protocol = protocol;
    this.bound = bound;
    this.graceMs = graceMs;
    server.on('connection', (socket: Socket) => this.current.take(socket));
  }

  /**
   * Binds `address` and serves `app` there (the app is made ready first).
   * @throws ERR_ADDRESS_IN_USE (details.errno: EADDRINUSE), ERR_IO for another failure to listen.
   */
  static async open(app: FastifyInstance, address: string, protocol: Protocol, graceMs: number): Promise<Listener> {
    const [host, port] = splitListen(checkListen(address, 'listen'));
    await app.ready();
    const server = createServer({ noDelay: true });
    try {
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen({ host, port }, () => {
          server.off('error', reject);
          resolve();
        });
      });
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'EADDRINUSE') {
        throw new MqlogError('ERR_ADDRESS_IN_USE', `cannot listen on ${address}: another process listens there`, { details: { listen: address, errno: code }, cause: err });
      }
      throw new MqlogError('ERR_IO', `cannot listen on ${address}: ${(err as Error).message}`, { details: { listen: address, errno: code ?? null }, cause: err });
    }
    const boundAddress = server.address();
    const actualPort = typeof boundAddress === 'object' && boundAddress !== null ? boundAddress.port : port;
    const bound = `${host.includes(':') && !host.startsWith('[') ? `[${host}]` : host}:${actualPort}`;
    return new Listener(server, new Served(app), address, protocol, bound, graceMs);
  }

  /** `PROTOCOL://HOST:PORT` (with the real port when 0 was asked for). */
  get url(): string {
    return `${this.protocol}://${this.bound}`;
  }

  /** The app serving new connections. */
  get app(): FastifyInstance {
    return this.current.app;
  }

  /**
   * Serves new connections with `app` (made ready first) and retires the app that served until now
   * (in the background: `close` waits for it). The protocol (http or https) may change with the app.
   */
  async use(app: FastifyInstance, protocol: Protocol): Promise<void> {
    if (this.closing !== undefined) throw new MqlogError('ERR_CLOSED', 'the listener is closed');
    await app.ready();
    const old = this.current;
    this.current = new Served(app);
    this.protocol = protocol;
    this.retireInBackground(old);
  }

  private retireInBackground(served: Served): void {
    const retiring = served.retire(this.graceMs).finally(() => this.retiring.delete(retiring));
    this.retiring.add(retiring);
  }

  /** Stops accepting connections, lets every request in flight finish, then closes the apps; idempotent. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
      this.retireInBackground(this.current);
      await Promise.all([...this.retiring]);
      await closed;
    })();
    return this.closing;
  }
}

function splitListen(listen: string): [string, number] {
  const at = listen.lastIndexOf(':');
  let host = listen.slice(0, at);
  if (host.startsWith('[') && host.endsWith(']')) host = host.slice(1, -1);
  return [host, Number(listen.slice(at + 1))];
}
