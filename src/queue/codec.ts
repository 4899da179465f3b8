/**
 * What a MESSAGE frame's payload means (spec/log-format.md §8): a length-prefixed msgpack map of
 * message fields, then the body bytes as they are.
 *
 *   u32 LE metaBytes | meta (msgpack map, metaBytes long) | body (the rest of the payload)
 *
 * The body is never msgpack-encoded, so it is neither copied nor inspected on the way through, and a
 * reader that only needs the fields (a forwarder choosing frames for a peer) decodes the small map alone.
 * Decoding validates every field: input from disk or from a peer is untrusted.
 */
import { Packr } from 'msgpackr';
import { MqlogError } from '../errors.js';
import { FRAME_HEADER_BYTES, FrameType, parseFrameHeader } from '../log/frame.js';
import { isId } from '../util/ids.js';
import { MsgpackCursor } from './msgpack-cursor.js';

export const MIN_PRIORITY = 0;
export const MAX_PRIORITY = 9;
export const DEFAULT_PRIORITY = 4;
export const DEFAULT_CHANNEL = 'common';
export const MAX_CHANNEL_BYTES = 255;
export const MAX_DESTINATIONS = 64;
export const MAX_DESTINATION_BYTES = 1024;
export const MAX_HEADERS = 64;
export const MAX_HEADER_KEY_BYTES = 255;
export const MAX_HEADER_VALUE_BYTES = 4096;
const MAX_META_BYTES = 256 * 1024;
/** A UTF-16 surrogate without its pair: such a string has no UTF-8 form. */
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;
/** Header a dead letter carries with the reason it was given up on. */
export const DEAD_REASON_HEADER = 'mqlog-dead-reason';

/** Where an inbox message came from: the sender's node id, its stream and offset there, and the destination it was forwarded for. */
export interface Origin {
  readonly node: string;
  readonly stream: string;
  readonly offset: number;
  readonly destination?: string | undefined;
}

/** The fields of a message, without its body. */
export interface MessageMeta {
  readonly id: string;
  /** Milliseconds since the epoch when it was sent. */
  readonly ts: number;
  readonly channel: string;
  /** 0..9, higher is more urgent. */
  readonly priority: number;
  /** Destinations: peer names or URLs. */
  readonly to: readonly string[];
  /** Name of the sending node (in an inbox: the authenticated peer). */
  readonly from: string;
  /** Id of the sending node. */
  readonly node?: string | undefined;
  /** Not delivered after this time (ms since the epoch). */
  readonly expiresAt?: number | undefined;
  /** Not delivered before this time (ms since the epoch). */
  readonly notBefore?: number | undefined;
  readonly headers?: Readonly<Record<string, string>> | undefined;
  /** The sender wants a "job done" receipt. */
  readonly receipt?: boolean | undefined;
  /** Address the receipt goes back to when the sender is not a configured peer. */
  readonly replyTo?: string | undefined;
  /** Set on inbox copies: where the message came from, for duplicate detection. */
  readonly origin?: Origin | undefined;
  /** What the message is for mqlog itself: absent for application messages, `receipt` for a receipt. */
  readonly kind?: 'receipt' | undefined;
  /** Set when the body is not in this frame but in BODY_CHUNK frames before it (a streamed body). */
  readonly streamed?: StreamedBody | undefined;
}

/** Where a streamed body's chunks are: ranges of offsets, each in a stream of the same queue. */
export interface StreamedBody {
  readonly size: number;
  /** Lower-case hex SHA-256 of the whole body. */
  readonly sha256: string;
  readonly parts: readonly BodyPart[];
}

export interface BodyPart {
  readonly stream: string;
  /** Offset of the first chunk frame of the part. */
  readonly first: number;
  /** Offset of the last chunk frame of the part. */
  readonly last: number;
}

/** The fields of a BODY_CHUNK frame: whose body it is, where its bytes go, and what the forwarder needs. */
export interface ChunkMeta {
  readonly id: string;
  /** Byte position of this chunk's data in the body. */
  readonly position: number;
  /** When the chunk was written (ms since epoch): orders it among other messages of its priority. */
  readonly ts: number;
  readonly channel: string;
  readonly priority: number;
  readonly to: readonly string[];
  readonly expiresAt?: number | undefined;
  /** Set on inbox copies, as for messages. */
  readonly origin?: Origin | undefined;
}

export interface MessageRecord extends MessageMeta {
  readonly body: Buffer;
}

// copyBuffers: a binary field decoded is a copy, never a view that would keep (or see the reuse of) the
// buffer it was read from — a request body, a read block.
const packr = new Packr({ useRecords: false, mapsAsObjects: true, copyBuffers: true, int64AsType: 'number', variableMapSize: true });

/** Short keys on disk, documented in spec/log-format.md §8.1. */
const KEYS = {
  id: 'i',
  ts: 't',
  channel: 'c',
  priority: 'p',
  to: 'd',
  from: 'f',
  node: 'n',
  expiresAt: 'x',
  notBefore: 'b',
  headers: 'h',
  receipt: 'r',
  replyTo: 'a',
  origin: 'o',
  kind: 'k',
  streamed: 'z',
} as const;

/**
 * An integer field as msgpackr should write it: a MessagePack integer whatever its size (msgpackr writes a
 * JS number beyond 32 bits as float64; a BigInt goes out as int64). spec/log-format.md §8.1.
 */
export function int(value: number): number | bigint {
  return Number.isInteger(value) && (value > 0xffff_ffff || value < -0x8000_0000) ? BigInt(value) : value;
}

export function encodeMeta(meta: MessageMeta): Buffer {
  return packMeta(meta, meta.from, meta.origin, meta.replyTo);
}

/** The fields of `meta` with `from`, `origin` and `replyTo` as given, packed (no copy of `meta` made to set them). */
function packMeta(meta: MessageMeta, from: string, origin: Origin | undefined, replyTo: string | undefined): Buffer {
  // The keys of KEYS written as literals, values read once: cheaper than an object literal with computed keys.
  const map: Record<string, unknown> = { i: meta.id, t: int(meta.ts), c: meta.channel, p: meta.priority, d: meta.to, f: from };
  if (meta.node !== undefined) map.n = meta.node;
  if (meta.expiresAt !== undefined) map.x = int(meta.expiresAt);
  if (meta.notBefore !== undefined) map.b = int(meta.notBefore);
  if (meta.headers !== undefined && Object.keys(meta.headers).length > 0) map.h = meta.headers;
  if (meta.receipt === true) map.r = true;
  if (replyTo !== undefined) map.a = replyTo;
  if (origin !== undefined) map.o = encodeOrigin(origin);
  if (meta.kind !== undefined) map.k = meta.kind;
  if (meta.streamed !== undefined) map.z = [int(meta.streamed.size), meta.streamed.sha256, meta.streamed.parts.map((p) => [p.stream, int(p.first), int(p.last)])];
  return packr.pack(map);
}

/**
 * The payload of a message's inbox copy made from the payload it arrived with: its fields with `from`,
 * `origin` and (when given) `replyTo` set, replacing any the sender put there, and every other field and
 * the body as they came, byte for byte — no decoding into an object and no encoding of the whole map
 * again. The caller has checked the payload with decodeMeta. `fields`: the same set fields packed before,
 * for the messages of one sender stream (InboxCopyFields).
 * @throws ERR_INVALID_MESSAGE when the map cannot be read.
 */
export function inboxCopyPayload(payload: Buffer, set: { readonly from: string; readonly origin: Origin; readonly replyTo?: string | undefined }, fields = new InboxCopyFields(set)): Buffer[] {
  const { origin, replyTo } = set;
  const metaBytes = payload.readUInt32LE(0);
  const cursor = new MsgpackCursor(payload, 4, 4 + metaBytes);
  const count = cursor.mapHeader();
  // Runs of entries kept as they are, with the set fields left out: [start, end) pairs of `payload`.
  const kept: number[] = [];
  let keptBytes = 0;
  let runStart = cursor.position;
  let entries = 0;
  for (let i = 0; i < count; i++) {
    const entryStart = cursor.position;
    const key = cursor.keyCode();
    cursor.skip();
    if (key !== FROM_KEY && key !== ORIGIN_KEY && (replyTo === undefined || key !== REPLY_KEY)) {
      entries++;
      continue;
    }
    if (entryStart > runStart) {
      kept.push(runStart, entryStart);
      keptBytes += entryStart - runStart;
    }
    runStart = cursor.position;
  }
  if (cursor.position > runStart) {
    kept.push(runStart, cursor.position);
    keptBytes += cursor.position - runStart;
  }
  // The new meta in one buffer (its length prefix, map header, kept runs and set fields), the body as it came.
  const mapEntries = entries + (replyTo === undefined ? 2 : 3);
  const headerBytes = mapEntries < 16 ? 1 : mapEntries < 0x1_0000 ? 3 : 5;
  const length = headerBytes + keptBytes + fields.bytesAt(origin.offset);
  const meta = Buffer.allocUnsafe(4 + length);
  meta.writeUInt32LE(length, 0);
  let at = writeMapHeader(meta, 4, mapEntries);
  for (let i = 0; i < kept.length; i += 2) at += payload.copy(meta, at, kept[i], kept[i + 1]);
  fields.writeAt(meta, at, origin.offset);
  return [meta, payload.subarray(4 + metaBytes)];
}

/**
 * The entries an inbox copy sets — `from`, `origin` and (when given) `replyTo` — packed as a map of them
 * would be, without the map's header (they join the entries kept). All but the origin's offset are the
 * same for every message of a sender stream in a batch: packed once here, the offset written between.
 */
export class InboxCopyFields {
  private readonly head: Buffer;
  private readonly tail: Buffer;

  constructor(set: { readonly from: string; readonly origin: Omit<Origin, 'offset'>; readonly replyTo?: string | undefined }) {
    const { from, origin, replyTo } = set;
    const pack = (offset: number): Buffer => packr.pack({ [KEYS.from]: from, [KEYS.origin]: encodeOrigin({ ...origin, offset }), ...(replyTo === undefined ? {} : { [KEYS.replyTo]: replyTo }) });
    // Offsets 0 and 1 are one byte each (positive fixint): the first byte that differs is the offset's.
    const [zero, one] = [pack(0), pack(1)];
    let at = 0;
    while (zero[at] === one[at]) at++;
    this.head = zero.subarray(1, at);
    this.tail = zero.subarray(at + 1);
  }

  /** How many bytes the entries for the message at `offset` take. */
  bytesAt(offset: number): number {
    return this.head.length + uintBytes(offset) + this.tail.length;
  }

  /** Writes the entries for the message at `offset` of the sender stream into `target` at `at`. */
  writeAt(target: Buffer, at: number, offset: number): void {
    const next = at + this.head.copy(target, at);
    this.tail.copy(target, writeUint(target, next, offset));
  }
}

/** The bytes writeUint takes for `value`. */
function uintBytes(value: number): number {
  return value < 0x80 ? 1 : value < 0x100 ? 2 : value < 0x1_0000 ? 3 : value <= 0xffff_ffff ? 5 : 9;
}

/**
 * Writes a non-negative safe integer as msgpackr packs int(value) — the smallest unsigned form, int64
 * past 32 bits — into `target` at `at`; returns where it ends.
 */
function writeUint(target: Buffer, at: number, value: number): number {
  if (value < 0x80) {
    target[at] = value;
    return at + 1;
  }
  if (value < 0x100) {
    target[at] = 0xcc;
    target[at + 1] = value;
    return at + 2;
  }
  if (value < 0x1_0000) {
    target[at] = 0xcd;
    return target.writeUInt16BE(value, at + 1);
  }
  if (value <= 0xffff_ffff) {
    target[at] = 0xce;
    return target.writeUInt32BE(value, at + 1);
  }
  target[at] = 0xd3;
  target.writeUInt32BE(Math.floor(value / 0x1_0000_0000), at + 1);
  return target.writeUInt32BE(value % 0x1_0000_0000, at + 5);
}

/** Writes a msgpack map header for `entries` entries into `target` at `at`; returns where it ends. */
function writeMapHeader(target: Buffer, at: number, entries: number): number {
  if (entries < 16) {
    target[at] = 0x80 | entries;
    return at + 1;
  }
  if (entries < 0x1_0000) {
    target[at] = 0xde;
    return target.writeUInt16BE(entries, at + 1);
  }
  target[at] = 0xdf;
  return target.writeUInt32BE(entries, at + 1);
}

/** The payload of a MESSAGE frame. */
export function encodeMessage(meta: MessageMeta, body: Uint8Array): Buffer[] {
  return messagePayload(encodeMeta(meta), body);
}

/**
 * The payload of the inbox copy of a message whose fields came checked but not as a frame (a source's
 * message): as inboxCopyPayload makes it of a frame, `from`, `origin` and (when given) `replyTo` set.
 */
export function inboxCopyMessage(meta: MessageMeta, body: Uint8Array, set: { readonly from: string; readonly origin: Origin; readonly replyTo?: string | undefined }): Buffer[] {
  return messagePayload(packMeta(meta, set.from, set.origin, set.replyTo ?? meta.replyTo), body);
}

function messagePayload(metaBytes: Buffer, body: Uint8Array): Buffer[] {
  const prefix = Buffer.allocUnsafe(4);
  prefix.writeUInt32LE(metaBytes.length, 0);
  return [prefix, metaBytes, Buffer.from(body.buffer, body.byteOffset, body.byteLength)];
}

export function encodeMessagePayload(meta: MessageMeta, body: Uint8Array): Buffer {
  return Buffer.concat(encodeMessage(meta, body));
}

/**
 * Decodes the fields of a MESSAGE payload without touching the body.
 * @throws ERR_INVALID_MESSAGE naming the first field that is wrong.
 */
export function decodeMeta(payload: Buffer): { meta: MessageMeta; bodyStart: number } {
  if (payload.length < 4) throw invalid('payload shorter than its length prefix');
  const metaBytes = payload.readUInt32LE(0);
  if (metaBytes > MAX_META_BYTES || 4 + metaBytes > payload.length) throw invalid(`meta length ${metaBytes} out of range`);
  let raw: unknown;
  try {
    raw = packr.unpack(payload.subarray(4, 4 + metaBytes));
  } catch (err) {
    throw invalid('meta is not valid msgpack', err);
  }
  return { meta: validateMeta(raw), bodyStart: 4 + metaBytes };
}

const [ID_KEY, PRIORITY_KEY, TS_KEY, CHANNEL_KEY, TO_KEY, EXPIRES_KEY, KIND_KEY, FROM_KEY, ORIGIN_KEY, REPLY_KEY, RECEIPT_KEY, STREAMED_KEY] = [KEYS.id, KEYS.priority, KEYS.ts, KEYS.channel, KEYS.to, KEYS.expiresAt, KEYS.kind, KEYS.from, KEYS.origin, KEYS.replyTo, KEYS.receipt, KEYS.streamed].map((k) => k.charCodeAt(0));

/** What a counter of the outbox needs of a message: read without decoding the rest of its fields. */
export interface MessageRouting {
  readonly ts: number;
  readonly channel: string;
  readonly to: readonly string[];
  readonly expiresAt?: number | undefined;
  readonly kind?: string | undefined;
  /** The sender asked for a receipt. */
  readonly receipt: boolean;
  /** The body was streamed as chunk frames (only whether it was: the body's fields are not read). */
  readonly streamed: boolean;
}

/**
 * The routing fields of a MESSAGE payload (`t`, `c`, `d`, `x`, `k`), read straight from the msgpack map;
 * every other field is passed over by its length, not decoded or checked (decodeMeta checks a whole
 * message). For counting a queue, where a message is read only to know where it goes.
 * @throws ERR_INVALID_MESSAGE when the map cannot be read or a routing field has the wrong type.
 */
export function decodeRouting(payload: Buffer): MessageRouting {
  return readRouting(payload, false);
}

/** What a forwarder needs of a message: where it goes and until when, and what it is (id, channel, priority). */
export interface MessageAddress extends MessageRouting {
  readonly id: string;
  readonly priority: number;
}

/**
 * The routing fields of a MESSAGE payload and its id and priority, read as decodeRouting reads the
 * routing fields: every other field is passed over unchecked. For forwarding a message stored by this
 * node's own outbox (whose fields were checked when it was appended); the receiver checks every field.
 * @throws ERR_INVALID_MESSAGE when the map cannot be read or one of these fields has the wrong type.
 */
export function decodeAddress(payload: Buffer): MessageAddress {
  return readRouting(payload, true) as MessageAddress;
}

function readRouting(payload: Buffer, identity: boolean): MessageRouting | MessageAddress {
  if (payload.length < 4) throw invalid('payload shorter than its length prefix');
  const metaBytes = payload.readUInt32LE(0);
  if (metaBytes > MAX_META_BYTES || 4 + metaBytes > payload.length) throw invalid(`meta length ${metaBytes} out of range`);
  const reader = new MsgpackCursor(payload, 4, 4 + metaBytes);
  let id: unknown;
  let priority: unknown;
  let ts: unknown;
  let channel: unknown;
  let to: unknown;
  let expiresAt: unknown;
  let kind: unknown;
  let receipt: unknown;
  let streamed = false;
  for (let entries = reader.mapHeader(); entries > 0; entries--) {
    // Keys are one character (spec/log-format.md §8.1): compared by their code, no string made.
    const key = reader.keyCode();
    if (key === TS_KEY) ts = reader.value();
    else if (key === CHANNEL_KEY) channel = reader.value();
    else if (key === TO_KEY) to = reader.value();
    else if (key === EXPIRES_KEY) expiresAt = reader.value();
    else if (key === KIND_KEY) kind = reader.value();
    else if (key === RECEIPT_KEY) receipt = reader.value();
    else if (identity && key === ID_KEY) id = reader.value();
    else if (identity && key === PRIORITY_KEY) priority = reader.value();
    else {
      if (key === STREAMED_KEY) streamed = true;
      reader.skip();
    }
  }
  if (!isTime(ts)) throw invalid('ts is not a timestamp');
  if (typeof channel !== 'string') throw invalid('channel is not a string');
  if (!Array.isArray(to) || !to.every((d) => typeof d === 'string')) throw invalid('to is not a list of names');
  if (expiresAt !== undefined && !isTime(expiresAt)) throw invalid('expiresAt is not a timestamp');
  if (kind !== undefined && typeof kind !== 'string') throw invalid('kind is not a string');
  if (receipt !== undefined && typeof receipt !== 'boolean') throw invalid('receipt is not a boolean');
  if (!identity) return { ts, channel, to: to, expiresAt, kind, receipt: receipt === true, streamed };
  if (!isId(id)) throw invalid('id is not a UUID');
  if (!Number.isInteger(priority) || (priority as number) < MIN_PRIORITY || (priority as number) > MAX_PRIORITY) throw invalid(`priority ${String(priority)} is not an integer ${MIN_PRIORITY}-${MAX_PRIORITY}`);
  return { id, priority: priority as number, ts, channel, to: to, expiresAt, kind, receipt: receipt === true, streamed };
}

export function decodeMessage(payload: Buffer): MessageRecord {
  const { meta, bodyStart } = decodeMeta(payload);
  return { ...meta, body: payload.subarray(bodyStart) };
}

function validateMeta(raw: unknown): MessageMeta {
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) throw invalid('meta is not a map');
  const m = raw as Record<string, unknown>;
  const meta = checkedMeta({
    id: m[KEYS.id],
    ts: m[KEYS.ts],
    channel: m[KEYS.channel],
    priority: m[KEYS.priority],
    to: m[KEYS.to],
    from: m[KEYS.from],
    node: m[KEYS.node],
    expiresAt: m[KEYS.expiresAt],
    notBefore: m[KEYS.notBefore],
    headers: m[KEYS.headers],
    receipt: m[KEYS.receipt],
    replyTo: m[KEYS.replyTo],
    kind: m[KEYS.kind],
  });
  const origin = m[KEYS.origin];
  if (origin !== undefined) meta.origin = decodeOrigin(origin);
  const streamed = m[KEYS.streamed];
  if (streamed !== undefined) meta.streamed = checkStreamedBody(streamed);
  return meta;
}

/** A message's fields as a source hands them over (not from a frame): no origin, a streamed body's size and digest without parts. */
export type GivenMeta = Omit<MessageMeta, 'origin' | 'streamed'> & { readonly streamed?: { readonly size: number; readonly sha256: string } | undefined };

/**
 * Fields a source handed over as an object (a JetStream message's headers), checked as decodeMeta checks
 * decoded ones; a streamed body gets no parts yet (the intake finds where its chunks were stored).
 * @throws ERR_INVALID_MESSAGE naming the first field that is wrong.
 */
export function checkGivenMeta(given: Omit<GivenMeta, 'streamed'>, streamed?: GivenMeta['streamed']): MessageMeta {
  const meta = checkedMeta(given);
  if (streamed !== undefined) meta.streamed = checkStreamedBody([streamed.size, streamed.sha256, []]);
  return meta;
}

/** The fields every message has, under their long names (KEYS), not checked yet. */
type UncheckedMeta = { readonly [K in Exclude<keyof typeof KEYS, 'origin' | 'streamed'>]?: unknown };

/** The fields every message has, checked (origin and streamed are the caller's). */
function checkedMeta(m: UncheckedMeta): { -readonly [K in keyof MessageMeta]: MessageMeta[K] } {
  const id = m.id;
  if (!isId(id)) throw invalid('id is not a UUID');
  const ts = m.ts;
  if (!isTime(ts)) throw invalid('ts is not a timestamp');
  const channel = m.channel;
  checkChannel(channel);
  const priority = m.priority as number;
  // Decoded data: a wrong value is a bad message (ERR_INVALID_MESSAGE), not a bad argument of the caller.
  if (!Number.isInteger(priority) || priority < MIN_PRIORITY || priority > MAX_PRIORITY) throw invalid(`priority ${String(priority)} is not an integer ${MIN_PRIORITY}-${MAX_PRIORITY}`);
  const to = m.to;
  checkDestinations(to);
  const from = m.from;
  if (typeof from !== 'string' || Buffer.byteLength(from) > MAX_DESTINATION_BYTES) throw invalid('from is not a name');
  const meta: { -readonly [K in keyof MessageMeta]: MessageMeta[K] } = { id, ts, channel, priority, to, from };
  const node = m.node;
  if (node !== undefined) {
    if (typeof node !== 'string' || node.length > 64) throw invalid('node is not a node id');
    meta.node = node;
  }
  const expiresAt = m.expiresAt;
  if (expiresAt !== undefined) {
    if (!isTime(expiresAt)) throw invalid('expiresAt is not a timestamp');
    meta.expiresAt = expiresAt;
  }
  const notBefore = m.notBefore;
  if (notBefore !== undefined) {
    if (!isTime(notBefore)) throw invalid('notBefore is not a timestamp');
    meta.notBefore = notBefore;
  }
  const headers = m.headers;
  if (headers !== undefined) {
    checkHeaders(headers, 'ERR_INVALID_MESSAGE');
    meta.headers = headers;
  }
  const receipt = m.receipt;
  if (receipt !== undefined) {
    if (typeof receipt !== 'boolean') throw invalid('receipt is not a boolean');
    meta.receipt = receipt;
  }
  const replyTo = m.replyTo;
  if (replyTo !== undefined) {
    if (typeof replyTo !== 'string' || Buffer.byteLength(replyTo) > MAX_DESTINATION_BYTES) throw invalid('replyTo is not an address');
    meta.replyTo = replyTo;
  }
  const kind = m.kind;
  if (kind !== undefined) {
    if (kind !== 'receipt') throw invalid(`unknown message kind ${JSON.stringify(kind)}`);
    meta.kind = kind;
  }
  return meta;
}

function encodeOrigin(origin: Origin): unknown[] {
  const { node, stream, offset, destination } = origin;
  return destination === undefined ? [node, stream, int(offset)] : [node, stream, int(offset), destination];
}

function decodeOrigin(origin: unknown): Origin {
  if (!Array.isArray(origin) || origin.length < 3 || origin.length > 4) throw invalid('origin is not [node, stream, offset, destination?]');
  const [node, stream, offset, destination] = origin as unknown[];
  if (typeof node !== 'string' || typeof stream !== 'string' || !Number.isSafeInteger(offset) || (offset as number) < 0 || (destination !== undefined && typeof destination !== 'string')) {
    throw invalid('origin is not [node, stream, offset, destination?]');
  }
  return { node, stream, offset: offset as number, ...(destination === undefined ? {} : { destination }) };
}

function checkStreamedBody(value: unknown): StreamedBody {
  if (!Array.isArray(value) || value.length !== 3) throw invalid('body is not [size, sha256, parts]');
  const [size, sha256, parts] = value as unknown[];
  if (!Number.isSafeInteger(size) || (size as number) < 0) throw invalid('body size is not a byte count');
  if (typeof sha256 !== 'string' || !/^[0-9a-f]{64}$/.test(sha256)) throw invalid('body sha256 is not 64 hex digits');
  if (!Array.isArray(parts) || parts.length > 1024) throw invalid('body parts is not a list');
  const checked: BodyPart[] = [];
  for (const part of parts as unknown[]) {
    if (!Array.isArray(part) || part.length !== 3) throw invalid('body part is not [stream, first, last]');
    const [stream, first, last] = part as unknown[];
    if (typeof stream !== 'string' || stream.length > 64 || !Number.isSafeInteger(first) || !Number.isSafeInteger(last) || (first as number) < 0 || (last as number) < (first as number)) {
      throw invalid('body part is not [stream, first, last]');
    }
    checked.push({ stream, first: first as number, last: last as number });
  }
  return { size: size as number, sha256, parts: checked };
}

/** The payload of a BODY_CHUNK frame: u32 LE metaBytes | msgpack chunk fields | data. */
export function encodeChunk(meta: ChunkMeta, data: Uint8Array): Buffer[] {
  const map: Record<string, unknown> = { i: meta.id, p: int(meta.position), t: int(meta.ts), c: meta.channel, r: meta.priority, d: meta.to };
  if (meta.expiresAt !== undefined) map.x = int(meta.expiresAt);
  if (meta.origin !== undefined) map.o = encodeOrigin(meta.origin);
  const packed = packr.pack(map);
  const prefix = Buffer.allocUnsafe(4);
  prefix.writeUInt32LE(packed.length, 0);
  // The data as given when it is a Buffer: a CRC known for it (withKnownCrc) is found by its identity.
  return [prefix, packed, Buffer.isBuffer(data) ? data : Buffer.from(data.buffer, data.byteOffset, data.byteLength)];
}

/** @throws ERR_INVALID_MESSAGE for a chunk payload whose fields do not decode or validate. */
export function decodeChunk(payload: Buffer): { meta: ChunkMeta; data: Buffer } {
  if (payload.length < 4) throw invalid('chunk shorter than its length prefix');
  const metaBytes = payload.readUInt32LE(0);
  if (metaBytes > MAX_META_BYTES || 4 + metaBytes > payload.length) throw invalid(`chunk meta length ${metaBytes} out of range`);
  let raw: unknown;
  try {
    raw = packr.unpack(payload.subarray(4, 4 + metaBytes));
  } catch (err) {
    throw invalid('chunk meta is not valid msgpack', err);
  }
  const m = (raw ?? {}) as Record<string, unknown>;
  if (!isId(m.i)) throw invalid('chunk id is not a UUID');
  if (!Number.isSafeInteger(m.p) || (m.p as number) < 0) throw invalid('chunk position is not a byte count');
  if (!isTime(m.t)) throw invalid('chunk ts is not a timestamp');
  checkChannel(m.c);
  checkPriority(m.r);
  checkDestinations(m.d);
  if (m.x !== undefined && !isTime(m.x)) throw invalid('chunk expiresAt is not a timestamp');
  const meta: ChunkMeta = {
    id: m.i,
    position: m.p as number,
    ts: m.t,
    channel: m.c,
    priority: m.r,
    to: m.d,
    ...(m.x === undefined ? {} : { expiresAt: m.x }),
    ...(m.o === undefined ? {} : { origin: decodeOrigin(m.o) }),
  };
  return { meta, data: payload.subarray(4 + metaBytes) };
}

/** @throws ERR_INVALID_NAME unless `channel` is a non-empty string of at most 255 UTF-8 bytes. */
export function checkChannel(channel: unknown): asserts channel is string {
  if (typeof channel !== 'string' || channel.length === 0) {
    throw new MqlogError('ERR_INVALID_NAME', 'channel must be a non-empty string');
  }
  if (Buffer.byteLength(channel, 'utf8') > MAX_CHANNEL_BYTES) {
    throw new MqlogError('ERR_INVALID_NAME', `channel name longer than ${MAX_CHANNEL_BYTES} bytes`);
  }
  if (LONE_SURROGATE.test(channel)) {
    throw new MqlogError('ERR_INVALID_NAME', 'channel name is not valid Unicode (lone surrogate)');
  }
}

/** @throws ERR_INVALID_ARG unless `priority` is an integer 0..9. */
export function checkPriority(priority: unknown): asserts priority is number {
  if (!Number.isInteger(priority) || (priority as number) < MIN_PRIORITY || (priority as number) > MAX_PRIORITY) {
    throw new MqlogError('ERR_INVALID_ARG', `priority must be an integer ${MIN_PRIORITY}-${MAX_PRIORITY}, got ${String(priority)}`);
  }
}

function checkDestinations(to: unknown): asserts to is string[] {
  if (!Array.isArray(to) || to.length === 0 || to.length > MAX_DESTINATIONS) {
    throw invalid(`to must list 1-${MAX_DESTINATIONS} destinations`);
  }
  for (const d of to) {
    if (typeof d !== 'string' || d.length === 0 || Buffer.byteLength(d) > MAX_DESTINATION_BYTES) throw invalid('destination is not a name or URL');
  }
}

/**
 * Checks a header map: at most 64 string keys (1-MAX_HEADER_KEY_BYTES bytes) to string values (at most
 * MAX_HEADER_VALUE_BYTES bytes).
 * @throws ERR_HEADERS_TOO_LARGE past a count or size limit; `fault` (ERR_INVALID_ARG for an argument of
 *   the caller, ERR_INVALID_MESSAGE for decoded data) when it is not a map of strings.
 */
export function checkHeaders(headers: unknown, fault: 'ERR_INVALID_ARG' | 'ERR_INVALID_MESSAGE' = 'ERR_INVALID_ARG'): asserts headers is Record<string, string> {
  if (headers === null || typeof headers !== 'object' || Array.isArray(headers)) throw new MqlogError(fault, 'headers is not a map');
  const entries = Object.entries(headers);
  if (entries.length > MAX_HEADERS) throw new MqlogError('ERR_HEADERS_TOO_LARGE', `${entries.length} headers: more than ${MAX_HEADERS}`);
  for (const [key, value] of entries) {
    if (key.length === 0) throw new MqlogError(fault, 'a header key is empty');
    if (Buffer.byteLength(key) > MAX_HEADER_KEY_BYTES) throw new MqlogError('ERR_HEADERS_TOO_LARGE', `header key must be 1-${MAX_HEADER_KEY_BYTES} bytes`);
    if (typeof value !== 'string') throw new MqlogError(fault, `header ${key} is not a string`);
    if (Buffer.byteLength(value) > MAX_HEADER_VALUE_BYTES) throw new MqlogError('ERR_HEADERS_TOO_LARGE', `header ${key} must be a string of at most ${MAX_HEADER_VALUE_BYTES} bytes`);
  }
}

function isTime(value: unknown): value is number {
  return Number.isSafeInteger(value) && (value as number) >= 0;
}

function invalid(reason: string, cause?: unknown): MqlogError {
  return new MqlogError('ERR_INVALID_MESSAGE', `invalid message: ${reason}`, cause === undefined ? undefined : { cause });
}

/** A whole stored frame (header and payload, already checked when read), decoded by its type. */
export type StoredFrame =
  | { readonly type: 'message'; readonly offset: number; readonly meta: MessageMeta; readonly body: Buffer }
  | { readonly type: 'chunk'; readonly offset: number; readonly meta: ChunkMeta; readonly data: Buffer }
  | { readonly type: 'other'; readonly offset: number };

/** Decodes a whole frame as the log stores it: a message, a body chunk, or another type (only its offset). */
export function decodeStoredFrame(raw: Buffer): StoredFrame {
  const header = parseFrameHeader(raw);
  if (!header.ok) throw new Error(`a stored frame has a bad header: ${header.reason}`);
  const { type, offset, payloadBytes } = header.header;
  const payload = raw.subarray(FRAME_HEADER_BYTES, FRAME_HEADER_BYTES + payloadBytes);
  if (type === FrameType.MESSAGE) {
    const { meta, bodyStart } = decodeMeta(payload);
    return { type: 'message', offset, meta, body: payload.subarray(bodyStart) };
  }
  if (type === FrameType.BODY_CHUNK) {
    const { meta, data } = decodeChunk(payload);
    return { type: 'chunk', offset, meta, data };
  }
  return { type: 'other', offset };
}
