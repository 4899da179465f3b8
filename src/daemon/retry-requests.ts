/**
 * `DIR/control/`: requests to a running daemon that need no HTTP (they work whatever its listeners, TLS
 * or admin token), made by `mqlog retry`. Layout and protocol in spec/log-format.md §1.3.
 *
 * A request is a file `retry-all` or `retry-peer-<encoded peer name>` holding `{"peer", "requestedAt"}`,
 * written atomically; then the requester sends SIGUSR2 to the daemon (the holder of `DIR/daemon.lock`).
 * The daemon takes every request: it wakes the forwarders, writes the answer to `<request>.reply`, then
 * removes the request, so a requester that sees its request gone finds the answer already there. The
 * same request made twice before the daemon takes it is one request (one wake serves both). The daemon
 * takes requests one round at a time.
 */
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { MqlogError, isErrorCode, type ErrorCode } from '../errors.js';
import { ensureDir, readFileIfExists, readdirIfExists, writeFileAtomic } from '../util/fs.js';
import { encodeName } from '../util/names.js';

export const CONTROL_DIR = 'control';
const RETRY_ALL = 'retry-all';
/** Apart from `retry-all`: a peer may be named "all". */
const RETRY_PEER = 'retry-peer-';
const REPLY = '.reply';

/** A request to retry one peer (`peer`) or every peer (`peer: null`) now. */
export interface RetryRequest {
  readonly peer: string | null;
  /** When it was made (ms since the epoch); the answer repeats it. */
  readonly requestedAt: number;
}

/** The daemon's answer to a RetryRequest. */
export interface RetryReply extends RetryRequest {
  /** The peers whose backoff was cut short (those that were waiting to retry). */
  readonly woken: readonly string[];
  /** Why nothing was done (an unknown peer: ERR_NOT_FOUND). */
  readonly error?: { readonly code: ErrorCode; readonly message: string };
}

export class RetryRequests {
  private readonly dir: string;

  constructor(dataDir: string) {
    this.dir = join(dataDir, CONTROL_DIR);
  }

  /** The request file's name for one peer, or for all (`null`). */
  static fileName(peer: string | null): string {
    return peer === null ? RETRY_ALL : `${RETRY_PEER}${encodeName(peer)}`;
  }

  /** Writes a request (durable when this resolves); the caller then signals the daemon. @throws ERR_IO */
  async file(peer: string | null): Promise<RetryRequest> {
    await ensureDir(this.dir);
    const request: RetryRequest = { peer, requestedAt: Date.now() };
    await writeFileAtomic(join(this.dir, RetryRequests.fileName(peer)), `${JSON.stringify(request)}\n`);
    return request;
  }

  /** True while the request for `peer` is still waiting for the daemon. */
  async pending(peer: string | null): Promise<boolean> {
    return (await readFileIfExists(join(this.dir, RetryRequests.fileName(peer)))) !== undefined;
  }

  /** Withdraws a request the daemon did not take. */
  async withdraw(peer: string | null): Promise<void> {
    await rm(join(this.dir, RetryRequests.fileName(peer)), { force: true });
  }

  /** The daemon's answer to `request`; undefined when the last answer for that peer is not to it. */
  async reply(request: RetryRequest): Promise<RetryReply | undefined> {
    const raw = await readFileIfExists(join(this.dir, `${RetryRequests.fileName(request.peer)}${REPLY}`));
    const reply = raw === undefined ? undefined : parse<RetryReply>(raw);
    return reply?.peer === request.peer && reply.requestedAt === request.requestedAt && Array.isArray(reply.woken) ? reply : undefined;
  }

  /**
   * For the daemon: takes every waiting request, calls `wake` for each and answers it. A `wake` that
   * throws an MqlogError answers with its code; anything else thrown is rethrown after the round.
   * Files it cannot read as a request are removed.
   */
  async take(wake: (peer: string | null) => readonly string[]): Promise<RetryReply[]> {
    const replies: RetryReply[] = [];
    for (const name of await readdirIfExists(this.dir)) {
      // Replies, and the temp files of requests being written, have a dot; request names never do.
      if (!name.startsWith('retry-') || name.includes('.')) continue;
      const path = join(this.dir, name);
      const raw = await readFileIfExists(path);
      if (raw === undefined) continue;
      const request = parse<RetryRequest>(raw);
      if (request === undefined || (request.peer !== null && typeof request.peer !== 'string') || typeof request.requestedAt !== 'number') {
        await rm(path, { force: true });
        continue;
      }
      let reply: RetryReply;
      try {
        reply = { peer: request.peer, requestedAt: request.requestedAt, woken: wake(request.peer) };
      } catch (err) {
        if (!(err instanceof MqlogError)) throw err;
        reply = { peer: request.peer, requestedAt: request.requestedAt, woken: [], error: { code: err.code, message: err.message } };
      }
      // The answer first: a requester that sees its request gone reads it at once.
      await writeFileAtomic(`${path}${REPLY}`, `${JSON.stringify(reply)}\n`);
      await rm(path, { force: true });
      replies.push(reply);
    }
    return replies;
  }

  /** For a daemon that starts: drops the answers of earlier daemons (nobody waits for them any more). */
  async clearReplies(): Promise<void> {
    for (const name of await readdirIfExists(this.dir)) if (name.endsWith(REPLY)) await rm(join(this.dir, name), { force: true });
  }
}

function parse<T>(raw: Buffer): T | undefined {
  try {
    const value = JSON.parse(raw.toString('utf8')) as unknown;
    return value !== null && typeof value === 'object' ? (value as T) : undefined;
  } catch {
    return undefined;
  }
}

/** An answer's error as the MqlogError it was. */
export function replyError(reply: RetryReply): MqlogError | undefined {
  if (reply.error === undefined) return undefined;
  return new MqlogError(isErrorCode(reply.error.code) ? reply.error.code : 'ERR_IO', reply.error.message);
}
