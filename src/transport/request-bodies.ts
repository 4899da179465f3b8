/**
 * Reads request bodies for the receiver, the large ones into buffers reused from one request to the next.
 *
 * A batch of body chunks is up to 16 MiB. Gathered into a new buffer each time (as fastify's own body
 * parser does), every such body costs the kernel a fresh zeroed page per 4 KiB touched (memory that large
 * is mapped for it and unmapped when the buffer is collected) and the collector a large external
 * allocation to account for: on a 1 GiB transfer that was a sixth of the receiving daemon's CPU time.
 * A body declared (Content-Length) at `pooledFromBytes` or more is read into a spare buffer instead, and
 * the buffer goes back to the spares when the request's handler calls `release()`.
 *
 * Ownership: a body's frames are views of its buffer, so `release()` may be called only once nothing
 * holds a view: the receiver calls it when the request's handler has settled, by which time the sink
 * has stored (copied to disk, or to memory by a store that copies; see the LogStore contract) or refused
 * every frame. Whatever must outlive the request copies its bytes. Not calling `release()` is safe: the
 * buffer is then collected like any other.
 *
 * Two spares are kept at most, dropped after 10 s without a large request, so an idle node does not
 * hold them. Single-threaded, like all of Node.js.
 */
import type { Readable } from 'node:stream';
import { MqlogError } from '../errors.js';

export interface RequestBody {
  readonly bytes: Buffer;
  /** Hands the body's buffer back for reuse; idempotent. Call it only once no view of `bytes` is held. */
  release(): void;
}

export interface RequestBodiesOptions {
  /** Largest body accepted; larger ones are refused with ERR_REQUEST_TOO_LARGE. */
  readonly maxBytes: number;
  /** Bodies declared at least this large are read into reused buffers (default 1 MiB). */
  readonly pooledFromBytes?: number;
}

/** Spare buffers kept at most, and how long without a large request before they are dropped. */
const SPARES = 2;
const SPARES_IDLE_MS = 10_000;

const NOTHING_TO_RELEASE = (): void => undefined;

export class RequestBodies {
  private readonly maxBytes: number;
  private readonly pooledFromBytes: number;
  /** Buffers of maxBytes each: any body accepted fits one. */
  private readonly spare: Buffer[] = [];
  private idle: NodeJS.Timeout | undefined;

  constructor(options: RequestBodiesOptions) {
    this.maxBytes = options.maxBytes;
    this.pooledFromBytes = options.pooledFromBytes ?? 1024 * 1024;
  }

  /**
   * Reads `payload` to its end; `declared` is its Content-Length (NaN when it has none).
   * @throws ERR_REQUEST_TOO_LARGE past the limit, ERR_BAD_REQUEST when the body's length differs from
   *   its Content-Length, and the stream's own error (a connection cut mid-body).
   */
  read(payload: Readable, declared: number): Promise<RequestBody> {
    if (declared > this.maxBytes) return Promise.reject(requestTooLarge(declared, this.maxBytes));
    const known = Number.isSafeInteger(declared);
    // A body may not pass its declared length, nor the limit.
    const limit = known ? declared : this.maxBytes;
    const buffer = known && declared >= this.pooledFromBytes ? (this.spare.pop() ?? Buffer.allocUnsafeSlow(this.maxBytes)) : undefined;
    const chunks: Buffer[] = [];
    let received = 0;
    return new Promise<RequestBody>((resolve, reject) => {
      const finish = (err: Error | undefined): void => {
        payload.removeListener('data', onData);
        payload.removeListener('end', onEnd);
        payload.removeListener('error', onError);
        if (err !== undefined) {
          if (buffer !== undefined) this.give(buffer);
          reject(err);
        } else if (buffer !== undefined) {
          let released = false;
          const release = (): void => {
            if (!released) this.give(buffer);
            released = true;
          };
          resolve({ bytes: buffer.subarray(0, received), release });
        } else {
          resolve({ bytes: chunks.length === 1 ? (chunks[0] as Buffer) : Buffer.concat(chunks, received), release: NOTHING_TO_RELEASE });
        }
      };
      const onData = (chunk: Buffer | string): void => {
        const bytes = typeof chunk === 'string' ? Buffer.from(chunk) : chunk;
        if (received + bytes.length > limit) {
          finish(known ? lengthMismatch(declared, 'more') : requestTooLarge(received + bytes.length, this.maxBytes));
          return;
        }
        if (buffer !== undefined) bytes.copy(buffer, received);
        else chunks.push(bytes);
        received += bytes.length;
      };
      // A stream error (a connection cut mid-body) is the request's fault, as fastify's own parser says.
      const onError = (err: Error & { statusCode?: number }): void => {
        if (!(typeof err.statusCode === 'number' && err.statusCode >= 400)) err.statusCode = 400;
        finish(err);
      };
      const onEnd = (): void => finish(known && received !== declared ? lengthMismatch(declared, 'fewer') : undefined);
      payload.on('data', onData);
      payload.on('end', onEnd);
      payload.on('error', onError);
      payload.resume();
    });
  }

  private give(buffer: Buffer): void {
    if (this.spare.length >= SPARES) return;
    this.spare.push(buffer);
    this.idle?.refresh();
    this.idle ??= setTimeout(() => {
      this.spare.length = 0;
      this.idle = undefined;
    }, SPARES_IDLE_MS).unref();
  }
}

/** The refusal of a body larger than the receiver takes (declared, or as it came). */
export function requestTooLarge(bytes: number, maxBytes: number): MqlogError {
  return new MqlogError('ERR_REQUEST_TOO_LARGE', `request body of ${bytes} bytes is larger than the limit of ${maxBytes}`);
}

function lengthMismatch(declared: number, which: 'more' | 'fewer'): MqlogError {
  return new MqlogError('ERR_BAD_REQUEST', `request body has ${which} bytes than its Content-Length of ${declared}`);
}
