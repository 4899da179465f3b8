/**
 * How an mqlog message looks in a JetStream stream (spec/transports.md §3.2): the body is the NATS
 * payload, the fields are NATS headers, so that any NATS client reads it. This module is the one
 * mapping both ways; `nats-sender.ts` writes with it and `nats-source.ts` reads with it.
 *
 * Header values are text without CR/LF and without surrounding blanks; mqlog's own values are
 * percent-encoded where needed (`%`, control characters, blanks at either end) and decoded back.
 */
import { MsgHdrsImpl, type MsgHdrs } from '@nats-io/transport-node';
import type { MessageFields } from './frame-contents.js';

export const H = {
  msgId: 'Nats-Msg-Id',
  id: 'Mqlog-Id',
  channel: 'Mqlog-Channel',
  priority: 'Mqlog-Priority',
  ts: 'Mqlog-Ts',
  from: 'Mqlog-From',
  node: 'Mqlog-Node',
  stream: 'Mqlog-Stream',
  offset: 'Mqlog-Offset',
  coversFrom: 'Mqlog-Covers-From',
  expiresAt: 'Mqlog-Expires-At',
  notBefore: 'Mqlog-Not-Before',
  receipt: 'Mqlog-Receipt',
  replyTo: 'Mqlog-Reply-To',
  kind: 'Mqlog-Kind',
  header: 'Mqlog-Header',
  object: 'Mqlog-Object',
  size: 'Mqlog-Size',
  sha256: 'Mqlog-Sha256',
  frame: 'Mqlog-Frame',
  position: 'Mqlog-Position',
} as const;

/** Where a message comes from in its sender's outbox: the key of exactly-once on a sourcing node. */
export interface NatsOrigin {
  readonly node: string;
  readonly stream: string;
  readonly offset: number;
  /**
   * Every frame of that stream for this destination in `[coversFrom, offset)` is not in the stream
   * (refused, expired, or a chunk of a body that went to the object store): a sourcing node may take
   * the whole range as stored once it stored this one (spec/http-protocol.md §5, covers).
   */
  readonly coversFrom?: number | undefined;
}

/** A large body's place in the object store: bucket, object name, size and lower-case hex SHA-256. */
export interface NatsObjectRef {
  readonly bucket: string;
  readonly name: string;
  readonly size: number;
  readonly sha256: string;
}

/** The `Nats-Msg-Id` of a frame: stable per (node, outbox stream, offset), whatever the attempt. */
export function natsMsgId(origin: { readonly node: string; readonly stream: string; readonly offset: number }): string {
  return `${origin.node}:${origin.stream}:${origin.offset}`;
}

/** A channel as one subject token: bytes outside [A-Za-z0-9_-] percent-encoded (so `.`, `*`, `>` are safe). */
export function channelToken(channel: string): string {
  if (/^[A-Za-z0-9_-]+$/.test(channel)) return channel;
  let out = '';
  for (const byte of Buffer.from(channel, 'utf8')) {
    const ch = String.fromCharCode(byte);
    out += /^[A-Za-z0-9_-]$/.test(ch) ? ch : `%${byte.toString(16).toUpperCase().padStart(2, '0')}`;
  }
  return out;
}

/** The channel a subject's last token names (percent-decoded). */
export function tokenChannel(subject: string): string {
  const token = subject.split('.').at(-1) ?? '';
  try {
    return decodeURIComponent(token);
  } catch {
    return token;
  }
}

// eslint-disable-next-line no-control-regex -- control characters are what must be encoded
const UNSAFE = /[%\u0000-\u001f\u007f]|^[ \t]|[ \t]$/g;

/** A value made safe for a header: `%`, control characters and blanks at either end percent-encoded. */
export function encodeValue(value: string): string {
  return value.replace(UNSAFE, (ch) => `%${ch.charCodeAt(0).toString(16).toUpperCase().padStart(2, '0')}`);
}

/** The value `encodeValue` made (a value that is not valid percent-encoding is taken as it is). */
export function decodeValue(value: string): string {
  if (!value.includes('%')) return value;
  try {
    return decodeURIComponent(value);
  } catch {
    return value;
  }
}

const TOKEN = /^[!-9;-~]+$/;
const RESERVED = /^(nats|mqlog)-/i;
// eslint-disable-next-line no-control-regex -- a value shown as it is holds no control character
const BARE_VALUE = /^[^\u0000-\u001f\u007f \t](?:[^\u0000-\u001f\u007f]*[^\u0000-\u001f\u007f \t])?$/;

/** Header values by name, in the order they go out. */
type HeaderRecord = Record<string, string[]>;

/**
 * The headers of a message published as itself (format `headers`): mqlog's fields, the application's
 * headers, the origin, and, for a body in the object store, where it is.
 *
 * Built as a record and handed to the client as it is (`MsgHdrsImpl.fromRecord`): every name here is a
 * header token and every value is safe (encoded above, or checked by BARE_VALUE), so the client's
 * checks per `set` (a scan of the names so far, each time) are not needed; they were a tenth of a
 * forwarding daemon's CPU.
 */
export function messageHeaders(fields: MessageFields, origin: NatsOrigin, object?: NatsObjectRef): MsgHdrs {
  const h = identityHeaders(fields, origin, false);
  h[H.ts] = [String(fields.ts)];
  h[H.from] = [encodeValue(fields.from)];
  if (fields.expiresAt !== undefined) h[H.expiresAt] = [String(fields.expiresAt)];
  if (fields.notBefore !== undefined) h[H.notBefore] = [String(fields.notBefore)];
  if (fields.receipt === true) h[H.receipt] = ['1'];
  if (fields.replyTo !== undefined) h[H.replyTo] = [encodeValue(fields.replyTo)];
  if (fields.kind !== undefined) h[H.kind] = [fields.kind];
  if (fields.headers !== undefined) {
    for (const [key, value] of Object.entries(fields.headers)) {
      // A header any NATS client can read under its own name when it can be one; else encoded in Mqlog-Header.
      if (TOKEN.test(key) && !RESERVED.test(key) && (value === '' || BARE_VALUE.test(value)) && h[key] === undefined) h[key] = [value];
      else (h[H.header] ??= []).push(`${encodeURIComponent(key)}=${encodeURIComponent(value)}`);
    }
  }
  if (object !== undefined) {
    h[H.object] = [`${object.bucket}/${object.name}`];
    h[H.size] = [String(object.size)];
    h[H.sha256] = [object.sha256];
  }
  return MsgHdrsImpl.fromRecord(h);
}

/** The headers of a frame published as it is stored (format `frame`). */
export function frameHeaders(fields: { readonly id: string; readonly channel: string; readonly priority: number }, origin: NatsOrigin): MsgHdrs {
  return MsgHdrsImpl.fromRecord(identityHeaders(fields, origin, true));
}

/** What both formats carry: Nats-Msg-Id, the message's id, channel and priority, and its origin. */
function identityHeaders(fields: { readonly id: string; readonly channel: string; readonly priority: number }, origin: NatsOrigin, frame: boolean): HeaderRecord {
  // No prototype: an application's header may be named `__proto__` or `constructor`.
  const h = Object.create(null) as HeaderRecord;
  h[H.msgId] = [natsMsgId(origin)];
  if (frame) h[H.frame] = ['1'];
  h[H.id] = [fields.id];
  h[H.channel] = [encodeValue(fields.channel)];
  h[H.priority] = [String(fields.priority)];
  h[H.node] = [origin.node];
  h[H.stream] = [origin.stream];
  h[H.offset] = [String(origin.offset)];
  if (origin.coversFrom !== undefined && origin.coversFrom < origin.offset) h[H.coversFrom] = [String(origin.coversFrom)];
  return h;
}

/** Bytes the headers take in a message (close enough to decide whether a message fits). */
export function headerBytes(h: MsgHdrs): number {
  let bytes = 12; // NATS/1.0 and the blank line
  for (const [key, values] of h) for (const value of values) bytes += Buffer.byteLength(key) + Buffer.byteLength(value) + 4;
  return bytes;
}

/** A received message's headers: the first value of each name (exact case), and every value of Mqlog-Header. */
export interface ReadHeaders {
  readonly first: ReadonlyMap<string, string>;
  readonly encoded: readonly string[];
}

export function readHeaders(h: MsgHdrs | undefined): ReadHeaders {
  const first = new Map<string, string>();
  let encoded: string[] = [];
  if (h !== undefined) {
    for (const [key, values] of h) {
      if (key === H.header) encoded = [...values];
      else first.set(key, values[0] ?? '');
    }
  }
  return { first, encoded };
}

/**
 * A received JetStream message's headers, read straight from the header block the client received
 * (`NATS/1.0` line, then `Name: value` lines) when the client keeps it where the 3.x client does, else
 * through the client's parsed headers. Both read the same: names exactly as sent, values trimmed, the
 * first value of each name. Reading the block here spares the client's per-header checks and
 * normalising (`MsgHdrsImpl.decode`), which were a tenth of a sourcing daemon's CPU.
 */
export function readMessageHeaders(m: { readonly headers?: MsgHdrs | undefined }): ReadHeaders {
  const block = headerBlock(m);
  return block === undefined ? readHeaders(m.headers) : readHeaderBlock(block);
}

/** The raw header block of a message, where the 3.x client keeps it (`msg._rdata` up to `msg._msg.hdr`), or undefined. */
function headerBlock(m: object): Uint8Array | undefined {
  const msg = (m as { msg?: { _rdata?: unknown; _msg?: { hdr?: unknown } } }).msg;
  const data = msg?._rdata;
  const end = msg?._msg?.hdr;
  return data instanceof Uint8Array && typeof end === 'number' && end > 0 && end <= data.length ? data.subarray(0, end) : undefined;
}

/** Reads a header block as `MsgHdrsImpl.decode` does (lines split at CRLF, the first line skipped, `name:value` with the value trimmed). */
export function readHeaderBlock(block: Uint8Array): ReadHeaders {
  const text = Buffer.from(block.buffer, block.byteOffset, block.byteLength).toString('utf8');
  const first = new Map<string, string>();
  const encoded: string[] = [];
  let at = text.indexOf('\r\n');
  if (at < 0) return { first, encoded };
  for (at += 2; at < text.length; ) {
    let end = text.indexOf('\r\n', at);
    if (end < 0) end = text.length;
    const colon = text.indexOf(':', at);
    if (colon >= 0 && colon < end) {
      const key = text.slice(at, colon);
      const value = text.slice(colon + 1, end).trim();
      if (key === H.header) encoded.push(value);
      else if (!first.has(key)) first.set(key, value);
    }
    at = end + 2;
  }
  return { first, encoded };
}

const INTEGER = /^(0|[1-9][0-9]{0,15})$/;

function integer(value: string | undefined): number | undefined {
  return value !== undefined && INTEGER.test(value) && Number.isSafeInteger(Number(value)) ? Number(value) : undefined;
}

/** The origin a message carries (Mqlog-Node, -Stream, -Offset), or undefined when it carries none or a bad one. */
export function readOrigin(h: ReadHeaders): NatsOrigin | undefined {
  const node = h.first.get(H.node);
  const stream = h.first.get(H.stream);
  const offset = integer(h.first.get(H.offset));
  if (node === undefined || node === '' || stream === undefined || !/^[a-z0-9]{1,16}\.w\d{1,6}$/.test(stream) || offset === undefined) return undefined;
  const coversFrom = integer(h.first.get(H.coversFrom));
  const origin: { -readonly [K in keyof NatsOrigin]: NatsOrigin[K] } = { node, stream, offset };
  if (coversFrom !== undefined && coversFrom < offset) origin.coversFrom = coversFrom;
  return origin;
}

/**
 * The fields of a message published with format `headers`, or undefined when the headers are not
 * mqlog's (no Mqlog-Id). `from` and `to` are set by the sourcing node.
 */
export function readFields(h: ReadHeaders): Omit<MessageFields, 'from'> | undefined {
  const id = h.first.get(H.id);
  if (id === undefined) return undefined;
  const headers: Record<string, string> = {};
  for (const [key, value] of h.first) if (!RESERVED.test(key)) headers[key] = value;
  for (const pair of h.encoded) {
    const at = pair.indexOf('=');
    if (at > 0) headers[decodeValue(pair.slice(0, at))] = decodeValue(pair.slice(at + 1));
  }
  // Set field by field, no spreads: this runs for every message a source takes.
  const fields: { -readonly [K in keyof Omit<MessageFields, 'from'>]: Omit<MessageFields, 'from'>[K] } = {
    id,
    ts: integer(h.first.get(H.ts)) ?? Date.now(),
    channel: decodeValue(h.first.get(H.channel) ?? ''),
    priority: integer(h.first.get(H.priority)) ?? -1,
  };
  const expiresAt = integer(h.first.get(H.expiresAt));
  if (expiresAt !== undefined) fields.expiresAt = expiresAt;
  const notBefore = integer(h.first.get(H.notBefore));
  if (notBefore !== undefined) fields.notBefore = notBefore;
  if (Object.keys(headers).length > 0) fields.headers = headers;
  if (h.first.get(H.receipt) === '1') fields.receipt = true;
  const replyTo = h.first.get(H.replyTo);
  if (replyTo !== undefined) fields.replyTo = decodeValue(replyTo);
  if (h.first.get(H.kind) === 'receipt') fields.kind = 'receipt';
  return fields;
}

/** Where a message's body is when it went to the object store, or undefined. */
export function readObjectRef(h: ReadHeaders): NatsObjectRef | undefined {
  const ref = h.first.get(H.object);
  const size = integer(h.first.get(H.size));
  const sha256 = h.first.get(H.sha256);
  if (ref === undefined || size === undefined || sha256 === undefined || !/^[0-9a-f]{64}$/.test(sha256)) return undefined;
  const at = ref.indexOf('/');
  if (at <= 0 || at === ref.length - 1) return undefined;
  return { bucket: ref.slice(0, at), name: ref.slice(at + 1), size, sha256 };
}
