/**
 * Every error mqlog raises is an {@link MqlogError} carrying one of the codes below.
 *
 * Codes are API: scripts branch on them, peers receive them in HTTP bodies, and `spec/errors.md`
 * documents each one (a test keeps the two in step). Never rename or reuse a code; only add.
 * This module imports nothing from the rest of the project.
 */

export interface ErrorSpec {
  /** Default human message; callers usually give a more precise one. */
  readonly message: string;
  /** Status a receiver answers with when this error rejects a request. */
  readonly httpStatus: number;
  /** Whether retrying the same operation later can succeed without a change by the caller. */
  readonly retryable: boolean;
}

export const ERRORS = {
  // --- arguments and configuration
  ERR_INVALID_ARG: { message: 'invalid argument', httpStatus: 400, retryable: false },
  ERR_USAGE: { message: 'usage error', httpStatus: 400, retryable: false },
  ERR_CONFIG: { message: 'invalid configuration', httpStatus: 500, retryable: false },
  ERR_UNKNOWN_PEER: { message: 'unknown peer', httpStatus: 403, retryable: false },
  ERR_INVALID_NAME: { message: 'invalid name', httpStatus: 400, retryable: false },

  // --- life cycle
  ERR_CLOSED: { message: 'the object is closed', httpStatus: 503, retryable: false },
  ERR_ABORTED: { message: 'the operation was aborted', httpStatus: 499, retryable: true },
  ERR_TIMEOUT: { message: 'the operation timed out', httpStatus: 504, retryable: true },
  ERR_LOCKED: { message: 'another process holds the lock', httpStatus: 409, retryable: true },
  ERR_NOT_FOUND: { message: 'not found', httpStatus: 404, retryable: false },

  // --- the log on disk
  ERR_CORRUPT_FRAME: { message: 'corrupt frame', httpStatus: 400, retryable: false },
  ERR_TRUNCATED_FRAME: { message: 'truncated frame', httpStatus: 400, retryable: false },
  ERR_UNSUPPORTED_VERSION: { message: 'unsupported format version', httpStatus: 400, retryable: false },
  ERR_FRAME_TOO_LARGE: { message: 'frame larger than the limit', httpStatus: 413, retryable: false },
  ERR_CORRUPT_STATE: { message: 'corrupt state file', httpStatus: 500, retryable: false },
  ERR_DISK_FULL: { message: 'no space left on the device', httpStatus: 507, retryable: true },
  ERR_QUEUE_FULL: { message: 'the queue reached its size limit', httpStatus: 507, retryable: true },
  ERR_IO: { message: 'input/output error', httpStatus: 500, retryable: true },

  // --- messages and delivery
  ERR_INVALID_MESSAGE: { message: 'invalid message', httpStatus: 400, retryable: false },
  ERR_BODY_TOO_LARGE: { message: 'message body larger than the limit', httpStatus: 413, retryable: false },
  ERR_LEASE_EXPIRED: { message: 'the lease expired and the message was handed to another consumer', httpStatus: 409, retryable: false },
  ERR_ALREADY_ACKED: { message: 'the message was already acknowledged', httpStatus: 409, retryable: false },
  ERR_BODY_DIGEST_MISMATCH: { message: 'the streamed body does not match its size or SHA-256', httpStatus: 400, retryable: false },
  ERR_BODY_INCOMPLETE: { message: 'the streamed body is still arriving', httpStatus: 503, retryable: true },

  // --- transport
  ERR_BAD_REQUEST: { message: 'malformed request body', httpStatus: 400, retryable: false },
  ERR_REQUEST_TOO_LARGE: { message: 'request body larger than the limit', httpStatus: 413, retryable: false },
  ERR_UNSUPPORTED_MEDIA_TYPE: { message: 'unsupported content type', httpStatus: 415, retryable: false },
  ERR_PEER_UNREACHABLE: { message: 'the peer could not be reached', httpStatus: 502, retryable: true },
  ERR_PEER_REJECTED: { message: 'the peer rejected the request', httpStatus: 502, retryable: false },
  ERR_PEER_FAILED: { message: 'the peer failed to store the request', httpStatus: 502, retryable: true },
  ERR_STREAM_CONFLICT: { message: 'an existing JetStream stream or bucket has other settings than configured', httpStatus: 409, retryable: false },

  // --- security and limits
  ERR_UNAUTHORIZED: { message: 'missing or invalid proof of identity', httpStatus: 401, retryable: false },
  ERR_FORBIDDEN: { message: 'not allowed', httpStatus: 403, retryable: false },
  ERR_TOO_MANY_FRAMES: { message: 'more frames in one request than the limit', httpStatus: 413, retryable: false },
  ERR_HEADERS_TOO_LARGE: { message: 'message headers beyond the limits', httpStatus: 400, retryable: false },
  ERR_TOO_MANY_REQUESTS: { message: 'too many concurrent requests from this peer', httpStatus: 429, retryable: true },
  ERR_REQUEST_TIMEOUT: { message: 'the request took too long', httpStatus: 408, retryable: true },
  ERR_ADDRESS_IN_USE: { message: 'the address to listen on is already in use', httpStatus: 500, retryable: true },
} as const satisfies Record<string, ErrorSpec>;

export type ErrorCode = keyof typeof ERRORS;

/**
 * Codes with which a peer refuses a frame for how it arrived, not for what it says: the sender's copy is
 * CRC-checked on its disk, so the frame was damaged on the way (or the peer was busy) and is sent again.
 * A peer's refusal of a frame with any other 4xx code is for good (the frame goes to the dead letters).
 * This is the sender's reading of a peer's answer; `retryable` above stays the one notion for an
 * operation of this process.
 */
export const RESENT_WHEN_REFUSED: ReadonlySet<ErrorCode> = new Set<ErrorCode>(['ERR_CORRUPT_FRAME', 'ERR_TRUNCATED_FRAME', 'ERR_BAD_REQUEST', 'ERR_UNSUPPORTED_VERSION', 'ERR_TOO_MANY_REQUESTS']);

export function isErrorCode(value: unknown): value is ErrorCode {
  return typeof value === 'string' && Object.hasOwn(ERRORS, value);
}

export interface ErrorDetails {
  readonly [key: string]: unknown;
}

/**
 * Marks an MqlogError. `Symbol.for` returns the same symbol in every copy of this package loaded in a
 * process (two versions in node_modules, a bundle beside the package), where `instanceof` would not.
 */
const MQLOG_ERROR: unique symbol = Symbol.for('mqlog.error') as never;

/**
 * The one error class of mqlog. Branch on `code`, never on `message`.
 * `details` names what the error is about (a path, a byte offset, a peer); `cause` wraps a foreign error.
 */
export class MqlogError extends Error {
  readonly code: ErrorCode;
  readonly details: ErrorDetails | undefined;
  /** The brand isMqlogError looks for: shared by every copy of this module (a registered symbol). */
  readonly [MQLOG_ERROR] = true as const;

  constructor(code: ErrorCode, message?: string, options?: { details?: ErrorDetails; cause?: unknown }) {
    super(message ?? ERRORS[code].message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'MqlogError';
    this.code = code;
    this.details = options?.details;
  }

  /** `instanceof` agrees with isMqlogError: an MqlogError of another copy of the package is one too. */
  static override [Symbol.hasInstance](value: unknown): boolean {
    return isMqlogError(value);
  }

  get httpStatus(): number {
    return ERRORS[this.code].httpStatus;
  }

  get retryable(): boolean {
    return ERRORS[this.code].retryable;
  }

  toJSON(): { code: ErrorCode; message: string; details?: ErrorDetails } {
    return this.details === undefined
      ? { code: this.code, message: this.message }
      : { code: this.code, message: this.message, details: this.details };
  }
}

/**
 * True when `err` is an MqlogError — of this copy of the package or of any other loaded in the process
 * (by its `Symbol.for` brand) — optionally with the given code.
 */
export function isMqlogError(err: unknown, code?: ErrorCode): err is MqlogError {
  if (typeof err !== 'object' || err === null || (err as { [MQLOG_ERROR]?: unknown })[MQLOG_ERROR] !== true) return false;
  const found = (err as { code?: unknown }).code;
  return isErrorCode(found) && (code === undefined || found === code);
}

/** An ERR_ABORTED error for a signal, with the signal's reason as cause. */
export function abortError(signal: AbortSignal): MqlogError {
  const reason: unknown = signal.reason;
  if (reason instanceof MqlogError) return reason;
  const timedOut = reason instanceof DOMException && reason.name === 'TimeoutError';
  return new MqlogError(timedOut ? 'ERR_TIMEOUT' : 'ERR_ABORTED', undefined, { cause: reason });
}

/** Wraps a Node.js system error from disk I/O into the matching MqlogError. */
export function ioError(err: unknown, message: string, details?: ErrorDetails): MqlogError {
  if (err instanceof MqlogError) return err;
  const sysCode = (err as NodeJS.ErrnoException | undefined)?.code;
  if (sysCode === 'ENOSPC' || sysCode === 'EDQUOT') {
    return new MqlogError('ERR_DISK_FULL', `${message}: no space left on the device`, { details, cause: err });
  }
  const reason = err instanceof Error ? err.message : String(err);
  return new MqlogError('ERR_IO', `${message}: ${reason}`, { details, cause: err });
}

/** `err` (an MqlogError, or a foreign error wrapped as ERR_IO) with `details` added to its own. */
export function withDetails(err: unknown, details: ErrorDetails): MqlogError {
  const error = err instanceof MqlogError ? err : ioError(err, 'I/O failed');
  return new MqlogError(error.code, error.message, { details: { ...error.details, ...details }, cause: error.cause ?? err });
}
