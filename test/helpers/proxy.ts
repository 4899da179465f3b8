/**
 * A TCP proxy for tests that need to see or damage what travels between two daemons: it counts the
 * bytes in each direction and can hand every piece of an HTTP/1.1 request body (client → server) to a
 * tap that may change bytes in place before they are passed on.
 *
 * Each client connection gets its own connection to the target; when either side closes or fails, both
 * are torn down (so a killed server looks like a reset to the client, as it would without the proxy).
 * The request parser knows only what mqlog's sender sends: a head ending in CRLF CRLF, then a body of
 * exactly Content-Length bytes; a chunked request makes the proxy drop the connection and record why.
 */
import { createServer, connect, type Server, type Socket } from 'node:net';
import { Transform, type TransformCallback } from 'node:stream';

export interface TappedRequest {
  /** Requests seen through this proxy before this one, across connections. */
  readonly index: number;
  readonly head: string;
  readonly contentLength: number;
}

/** Sees `piece`, the bytes at `bodyOffset` of the body of `request`; may change them in place. */
export type BodyTap = (request: TappedRequest, bodyOffset: number, piece: Buffer) => void;

export class TcpProxy {
  /** Bytes passed from clients to the target. */
  bytesUp = 0;
  /** Bytes passed from the target back to clients. */
  bytesDown = 0;
  requests = 0;
  /** What the target answered, as latin1 text (the first MiB; mqlog's answers are small JSON). */
  answers = '';
  /** Why the proxy gave up on a connection, if it did. */
  problems: string[] = [];
  readonly url: string;
  private readonly server: Server;
  private readonly sockets = new Set<Socket>();
  private closing: Promise<void> | undefined;

  private constructor(server: Server, port: number) {
    this.server = server;
    this.url = `http://127.0.0.1:${port}`;
  }

  /** Listens on a free loopback port and forwards each connection to `127.0.0.1:targetPort`. */
  static async start(targetPort: number, tap?: BodyTap): Promise<TcpProxy> {
    const holder: { proxy?: TcpProxy } = {};
    const server = createServer((client) => holder.proxy?.accept(client, targetPort, tap));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(0, '127.0.0.1', () => resolve());
    });
    const address = server.address();
    if (address === null || typeof address === 'string') throw new Error('proxy has no port');
    const proxy = new TcpProxy(server, address.port);
    holder.proxy = proxy;
    return proxy;
  }

  private accept(client: Socket, targetPort: number, tap: BodyTap | undefined): void {
    const upstream = connect({ host: '127.0.0.1', port: targetPort });
    for (const s of [client, upstream]) {
      this.sockets.add(s);
      s.on('close', () => {
        this.sockets.delete(s);
        client.destroy();
        upstream.destroy();
      });
      s.on('error', () => {
        client.destroy();
        upstream.destroy();
      });
    }
    const up = new RequestParser(this, tap, (reason) => {
      this.problems.push(reason);
      client.destroy();
      upstream.destroy();
    });
    const down = new Transform({
      transform: (chunk: Buffer, _encoding, callback: TransformCallback) => {
        this.bytesDown += chunk.length;
        if (this.answers.length < 1024 * 1024) this.answers += chunk.toString('latin1');
        callback(null, chunk);
      },
    });
    client.pipe(up).pipe(upstream);
    upstream.pipe(down).pipe(client);
  }

  /** Stops listening and drops every connection. Idempotent. */
  close(): Promise<void> {
    this.closing ??= new Promise<void>((resolve) => {
      for (const s of this.sockets) s.destroy();
      this.server.close(() => resolve());
    });
    return this.closing;
  }

  /** @internal */
  nextRequestIndex(): number {
    return this.requests++;
  }
}

const HEAD_END = Buffer.from('\r\n\r\n', 'latin1');
const MAX_HEAD_BYTES = 64 * 1024;

/** Splits a client's byte stream into requests, counting bytes and showing body pieces to the tap. */
class RequestParser extends Transform {
  private readonly proxy: TcpProxy;
  private readonly tap: BodyTap | undefined;
  private readonly fail: (reason: string) => void;
  private head: Buffer = Buffer.alloc(0);
  private request: TappedRequest | undefined;
  private bodyOffset = 0;

  constructor(proxy: TcpProxy, tap: BodyTap | undefined, fail: (reason: string) => void) {
    super();
    this.proxy = proxy;
    this.tap = tap;
    this.fail = fail;
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    this.proxy.bytesUp += chunk.length;
    try {
      this.parse(chunk);
    } catch (err) {
      this.fail(err instanceof Error ? err.message : String(err));
      callback();
      return;
    }
    callback(null, chunk);
  }

  /** Walks `chunk`; body bytes are handed to the tap as views, so its changes go out with `chunk`. */
  private parse(chunk: Buffer): void {
    let at = 0;
    while (at < chunk.length) {
      if (this.request === undefined) {
        const before = this.head.length;
        this.head = Buffer.concat([this.head, chunk.subarray(at)]);
        const end = this.head.indexOf(HEAD_END);
        if (end < 0) {
          if (this.head.length > MAX_HEAD_BYTES) throw new Error('request head longer than 64 KiB');
          return;
        }
        const head = this.head.subarray(0, end).toString('latin1');
        at += end + HEAD_END.length - before;
        this.head = Buffer.alloc(0);
        if (/^transfer-encoding:\s*chunked/im.test(head)) throw new Error('chunked request bodies are not supported by the test proxy');
        const length = /^content-length:\s*(\d+)\s*$/im.exec(head);
        this.request = { index: this.proxy.nextRequestIndex(), head, contentLength: length === null ? 0 : Number(length[1]) };
        this.bodyOffset = 0;
      }
      const request = this.request;
      const take = Math.min(chunk.length - at, request.contentLength - this.bodyOffset);
      if (take > 0) {
        this.tap?.(request, this.bodyOffset, chunk.subarray(at, at + take));
        this.bodyOffset += take;
        at += take;
      }
      if (this.bodyOffset >= request.contentLength) this.request = undefined;
    }
  }
}
