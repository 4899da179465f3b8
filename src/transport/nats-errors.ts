/**
 * Every failure of the NATS client, classified on purpose (spec/transports.md §3.6) into the three
 * answers the forwarder knows:
 *
 * - ERR_PEER_UNREACHABLE (retry): no answer — the connection is down, refused or closed, a request timed
 *   out, or no JetStream server answered (no responders: the stream has no leader yet, JetStream is
 *   restarting);
 * - ERR_PEER_FAILED (retry): an answer refusing for now — storage full (10077 maximum bytes exceeded,
 *   10047 insufficient resources), the stream is gone (10059: mqlog creates it again), authorization or
 *   permission refused (fixed by an operator, never by dropping messages), or any JetStream error not
 *   listed as terminal;
 * - ERR_PEER_REJECTED (terminal, with `details.frame` set by the caller): this message can never be
 *   stored — 10054 message size exceeds the stream's `max_msg_size`, or a body larger than the stream or
 *   bucket can ever hold. The forwarder moves it to `outbox-dead` with the reason and goes on.
 *
 * ERR_STREAM_CONFLICT (an existing stream with other settings) passes through as it is.
 */
import { MqlogError } from '../errors.js';

/** JetStream API error codes with a meaning here. */
export const JS_MESSAGE_TOO_LARGE = 10054;
export const JS_WRONG_LAST_SEQUENCE = 10071;
export const JS_STREAM_NOT_FOUND = 10059;

/** The JetStream API error code of a client error, if it carries one. */
export function jsErrorCode(err: unknown): number | undefined {
  // JetStreamApiError and its subclasses (StreamNotFoundError…): a numeric code and the API error behind it.
  const error = err as { code?: unknown; apiError?: unknown } | undefined;
  return err instanceof Error && typeof error?.apiError === 'function' && typeof error.code === 'number' ? error.code : undefined;
}

/**
 * The MqlogError for a failure talking to `where` (a URL fit to show: no credentials).
 * `terminal` is set for ERR_PEER_REJECTED so the caller can name the frame.
 */
export function natsError(err: unknown, where: string, doing: string): MqlogError {
  if (err instanceof MqlogError) return err;
  const error = err instanceof Error ? err : new Error(String(err));
  const message = `${where}: ${doing}: ${error.message}`;
  const jsCode = jsErrorCode(error);
  if (jsCode === JS_MESSAGE_TOO_LARGE) return new MqlogError('ERR_PEER_REJECTED', message, { details: { url: where, natsCode: jsCode }, cause: err });
  if (jsCode !== undefined) return new MqlogError('ERR_PEER_FAILED', message, { details: { url: where, natsCode: jsCode }, cause: err });
  switch (error.name) {
    case 'TimeoutError':
    case 'ConnectionError':
    case 'ClosedConnectionError':
    case 'DrainingConnectionError':
    case 'JetStreamNotEnabled':
    case 'NoResponders':
      return new MqlogError('ERR_PEER_UNREACHABLE', message, { details: { url: where }, cause: err });
    case 'RequestError':
      return new MqlogError((error as Error & { isNoResponders?: () => boolean }).isNoResponders?.() === true ? 'ERR_PEER_UNREACHABLE' : 'ERR_PEER_FAILED', message, { details: { url: where }, cause: err });
    case 'AuthorizationError':
    case 'UserAuthenticationExpiredError':
    case 'PermissionViolationError':
      return new MqlogError('ERR_PEER_FAILED', message, { details: { url: where, refused: error.name }, cause: err });
    default:
  }
  // Sockets that never connected (refused, unreachable, DNS) come as system errors.
  if (typeof (error as NodeJS.ErrnoException).code === 'string') return new MqlogError('ERR_PEER_UNREACHABLE', message, { details: { url: where }, cause: err });
  return new MqlogError('ERR_PEER_FAILED', message, { details: { url: where }, cause: err });
}

/** A message this destination can never take: ERR_PEER_REJECTED naming the frame. */
export function refused(where: string, frame: number, reason: string, cause?: unknown): MqlogError {
  return new MqlogError('ERR_PEER_REJECTED', `${where}: ${reason}`, { details: { url: where, frame }, cause });
}
