/**
 * Peer authentication for the HTTP transport (spec/http-protocol.md §8): an HMAC-SHA256, keyed with the
 * secret both nodes hold for their pair (`peers.<name>.key`), over the method, path, a timestamp, a
 * nonce, the SHA-256 of the body and the sender's name. The receiver checks the clock skew, the signature
 * (in constant time) and that the nonce was not seen before within the skew window.
 */
import { createHash, createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { MqlogError } from '../errors.js';

export const AUTH_SCHEME = 'MQLOG1-HMAC-SHA256';
export const HEADER_PEER = 'x-mqlog-peer';
export const HEADER_TIMESTAMP = 'x-mqlog-timestamp';
export const HEADER_NONCE = 'x-mqlog-nonce';
export const HEADER_SIGNATURE = 'x-mqlog-signature';
export const DEFAULT_MAX_SKEW_MS = 5 * 60_000;

/** The exact bytes that are signed. */
export function stringToSign(method: string, path: string, timestamp: string, nonce: string, bodySha256Hex: string, peer: string): string {
  return [AUTH_SCHEME, method.toUpperCase(), path, timestamp, nonce, bodySha256Hex, peer].join('\n');
}

/** The request body, whole or as the parts it is sent in. */
export type Body = Uint8Array | readonly Uint8Array[];

export function sign(key: string, method: string, path: string, timestamp: string, nonce: string, body: Body, peer: string): string {
  const hash = createHash('sha256');
  if (body instanceof Uint8Array) hash.update(body);
  else for (const part of body) hash.update(part);
  const digest = hash.digest('hex');
  return createHmac('sha256', key).update(stringToSign(method, path, timestamp, nonce, digest, peer)).digest('hex');
}

/** Headers proving that `peer` (this node, as the receiver knows it) sends `body`. */
export function signRequest(peer: string, key: string, method: string, path: string, body: Body, now = Date.now()): Record<string, string> {
  const timestamp = String(now);
  const nonce = randomBytes(16).toString('hex');
  return {
    [HEADER_PEER]: peer,
    [HEADER_TIMESTAMP]: timestamp,
    [HEADER_NONCE]: nonce,
    [HEADER_SIGNATURE]: sign(key, method, path, timestamp, nonce, body, peer),
  };
}

export interface VerifierOptions {
  /** The key of each peer allowed to send; a name absent here is an unknown peer (403). */
  readonly keys: ReadonlyMap<string, string>;
  readonly maxSkewMs?: number;
  readonly now?: () => number;
}

/**
 * Checks request proofs and remembers nonces for the skew window (memory follows the request rate).
 * After a restart the nonce memory is empty: a replay within the window would then pass this check, and
 * be recognised as a duplicate batch by the receiver instead.
 */
export class RequestVerifier {
  private readonly keys: ReadonlyMap<string, string>;
  private readonly maxSkewMs: number;
  private readonly now: () => number;
  private seen = new Map<string, number>();
  private lastSweep = 0;

  constructor(options: VerifierOptions) {
    this.keys = options.keys;
    this.maxSkewMs = options.maxSkewMs ?? DEFAULT_MAX_SKEW_MS;
    this.now = options.now ?? Date.now;
  }

  /**
   * Returns the authenticated peer name.
   * @throws ERR_UNAUTHORIZED (401) for a missing, stale, wrong or replayed proof; ERR_UNKNOWN_PEER (403)
   *   for a peer this node does not know.
   */
  verify(method: string, path: string, headers: Readonly<Record<string, string | string[] | undefined>>, body: Buffer): string {
    const peer = single(headers[HEADER_PEER]);
    const timestamp = single(headers[HEADER_TIMESTAMP]);
    const nonce = single(headers[HEADER_NONCE]);
    const signature = single(headers[HEADER_SIGNATURE]);
    if (peer === undefined || timestamp === undefined || nonce === undefined || signature === undefined) {
      throw new MqlogError('ERR_UNAUTHORIZED', `this node requires signed requests (${HEADER_PEER}, ${HEADER_TIMESTAMP}, ${HEADER_NONCE}, ${HEADER_SIGNATURE})`);
    }
    if (!/^\d{1,16}$/.test(timestamp) || !/^[0-9a-f]{32}$/.test(nonce) || !/^[0-9a-f]{64}$/.test(signature)) {
      throw new MqlogError('ERR_UNAUTHORIZED', 'malformed authentication headers');
    }
    const key = this.keys.get(peer);
    if (key === undefined) throw new MqlogError('ERR_UNKNOWN_PEER', `peer ${JSON.stringify(peer.slice(0, 64))} is not known to this node`, { details: { peer: peer.slice(0, 64) } });
    const now = this.now();
    if (Math.abs(now - Number(timestamp)) > this.maxSkewMs) {
      throw new MqlogError('ERR_UNAUTHORIZED', `request timestamp is more than ${this.maxSkewMs / 1000} s away from this node's clock`);
    }
    const expected = Buffer.from(sign(key, method, path, timestamp, nonce, body, peer), 'hex');
    if (!timingSafeEqual(expected, Buffer.from(signature, 'hex'))) throw new MqlogError('ERR_UNAUTHORIZED', 'bad request signature');
    this.sweep(now);
    const seenKey = `${peer}\n${nonce}`;
    if (this.seen.has(seenKey)) throw new MqlogError('ERR_UNAUTHORIZED', 'replayed request (nonce seen before)');
    this.seen.set(seenKey, Number(timestamp));
    return peer;
  }

  private sweep(now: number): void {
    if (now - this.lastSweep < 10_000) return;
    this.lastSweep = now;
    const horizon = now - 2 * this.maxSkewMs;
    const kept = new Map<string, number>();
    for (const [k, ts] of this.seen) if (ts >= horizon) kept.set(k, ts);
    this.seen = kept;
  }
}

function single(value: string | string[] | undefined): string | undefined {
  if (Array.isArray(value)) return value.length === 1 ? value[0] : undefined;
  return value;
}
