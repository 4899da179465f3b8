/**
 * Frames: the unit of the log on disk and on the wire (spec/log-format.md §2).
 *
 * A frame is self-delimiting, versioned and CRC-checked. It carries the offset it was assigned in its
 * stream, so offsets survive compaction and travel with the frame. The log layer treats the payload as
 * opaque bytes; `type` tells upper layers how to read it.
 *
 * Pure functions, no I/O, safe to call from anywhere.
 */
import { crc32 } from 'node:zlib';
import { MqlogError } from '../errors.js';
import { crcOn } from '../util/crc.js';
import { crc32Combine, crc32Tail } from './crc-combine.js';

/** First byte of every frame. Never 0x00: a zero byte where a frame should start means "no more data". */
export const FRAME_MAGIC = 0xa7;
export const FRAME_VERSION = 1;
export const FRAME_HEADER_BYTES = 20;
/** Format limit on one payload; writers use smaller limits of their own. */
export const MAX_FRAME_PAYLOAD_BYTES = 64 * 1024 * 1024;
/** Offsets are stored as u64 but must stay exact in a JavaScript number. */
export const MAX_OFFSET = Number.MAX_SAFE_INTEGER;

/**
 * Frame types (spec/log-format.md §2.2). The log layer stores any of them alike, except SYNC: its own
 * durability marks (§3.3), written by the log's writers and never handed to callers.
 */
export const FrameType = {
  MESSAGE: 1,
  BODY_CHUNK: 2,
  RECORD: 3,
  SYNC: 4,
} as const;

/** Payload bytes of a SYNC frame: u64 LE, the length of the file's prefix known to be fsync'd. */
export const SYNC_PAYLOAD_BYTES = 8;

export interface Frame {
  readonly type: number;
  readonly offset: number;
  readonly payload: Buffer;
}

/** Header fields, readable before the payload has arrived. */
export interface FrameHeader {
  readonly version: number;
  readonly type: number;
  readonly flags: number;
  readonly payloadBytes: number;
  readonly offset: number;
  readonly crc: number;
}

/** Payload bytes, whole or in parts (written back to back, CRC'd as one). */
export type Payload = Uint8Array | readonly Uint8Array[];

export function payloadLength(payload: Payload): number {
  if (payload instanceof Uint8Array) return payload.length;
  let n = 0;
  for (const part of payload) n += part.length;
  return n;
}

/** Builds the 20-byte header for a payload; the CRC covers header bytes 0..15 and then the payload. */
export function encodeFrameHeader(type: number, offset: number, payload: Payload): Buffer {
  if (!Number.isInteger(type) || type < 1 || type > 255) {
    throw new MqlogError('ERR_INVALID_ARG', `frame type must be 1..255, got ${type}`);
  }
  if (!Number.isSafeInteger(offset) || offset < 0) {
    throw new MqlogError('ERR_INVALID_ARG', `frame offset must be a safe non-negative integer, got ${offset}`);
  }
  const length = payloadLength(payload);
  if (length > MAX_FRAME_PAYLOAD_BYTES) {
    throw new MqlogError('ERR_FRAME_TOO_LARGE', `frame payload of ${length} bytes exceeds ${MAX_FRAME_PAYLOAD_BYTES}`);
  }
  const header = Buffer.allocUnsafe(FRAME_HEADER_BYTES);
  header[0] = FRAME_MAGIC;
  header[1] = FRAME_VERSION;
  header[2] = type;
  header[3] = 0;
  header.writeUInt32LE(length, 4);
  // u64 offset as two u32 halves (no BigInt on the hot path).
  header.writeUInt32LE(offset % 0x1_0000_0000, 8);
  header.writeUInt32LE(Math.floor(offset / 0x1_0000_0000), 12);
  let crc = headerCrc(header);
  if (payload instanceof Uint8Array) crc = crcOnKnown(payload, crc);
  else for (const part of payload) crc = crcOnKnown(part, crc);
  header.writeUInt32LE(crc, 16);
  return header;
}

/** A part this large whose CRC is known is combined into a frame's CRC, not read again. */
const KNOWN_CRC_MIN_BYTES = 64 * 1024;
/** Payload parts whose CRC is known (see withKnownCrc), by identity. */
const knownCrcs = new WeakMap<Uint8Array, number>();

/**
 * Marks `bytes` as having the CRC `crc`, known because they were checked as part of a frame (see
 * tailCrc): a frame written with `bytes` (this very object) as a payload part gets its CRC combined
 * from it instead of reading the bytes again. `bytes` must not change afterwards. Returns `bytes`.
 */
export function withKnownCrc<T extends Uint8Array>(bytes: T, crc: number): T {
  if (bytes.length >= KNOWN_CRC_MIN_BYTES) knownCrcs.set(bytes, crc);
  return bytes;
}

/**
 * The CRC of `raw[from…]` (`from` at or after the header), `raw` being a whole frame whose CRC was
 * checked: from its header's CRC and the bytes before `from`, without reading the rest.
 */
export function tailCrc(raw: Uint8Array, from: number): number {
  const head = crcOn(raw.subarray(FRAME_HEADER_BYTES, from), headerCrc(raw));
  return crc32Tail(frameChecksum(raw), head, raw.length - from);
}

/** crcOn for a frame being written: a part with a known CRC is combined in. */
function crcOnKnown(bytes: Uint8Array, running: number): number {
  const known = bytes.length >= KNOWN_CRC_MIN_BYTES ? knownCrcs.get(bytes) : undefined;
  return known === undefined ? crcOn(bytes, running) : crc32Combine(running, known, bytes.length);
}

/** One contiguous buffer holding header and payload. */
export function encodeFrame(type: number, offset: number, payload: Uint8Array): Buffer {
  return Buffer.concat([encodeFrameHeader(type, offset, payload), payload]);
}

/**
 * A SYNC frame (spec/log-format.md §3.3): states that bytes [0, syncedBytes) of its file were fsync'd
 * before it was written. It carries the offset the next frame will get and does not consume it.
 */
export function encodeSyncFrame(offset: number, syncedBytes: number): Buffer {
  const payload = Buffer.allocUnsafe(SYNC_PAYLOAD_BYTES);
  payload.writeUInt32LE(syncedBytes % 0x1_0000_0000, 0);
  payload.writeUInt32LE(Math.floor(syncedBytes / 0x1_0000_0000), 4);
  return encodeFrame(FrameType.SYNC, offset, payload);
}

/** The synced length a SYNC frame's payload states, or undefined for a payload that is not one. */
export function decodeSyncPayload(payload: Uint8Array): number | undefined {
  if (payload.length !== SYNC_PAYLOAD_BYTES) return undefined;
  const view = Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength);
  const high = view.readUInt32LE(4);
  if (high > 0x1f_ffff) return undefined;
  return high * 0x1_0000_0000 + view.readUInt32LE(0);
}

export type HeaderCheck =
  | { readonly ok: true; readonly header: FrameHeader }
  | { readonly ok: false; readonly code: 'ERR_CORRUPT_FRAME' | 'ERR_UNSUPPORTED_VERSION' | 'ERR_FRAME_TOO_LARGE'; readonly reason: string };

/**
 * Parses and sanity-checks a header (magic, version, flags, length bound, offset range).
 * `bytes` must hold at least FRAME_HEADER_BYTES from `at`.
 */
export function parseFrameHeader(bytes: Uint8Array, at = 0, maxPayloadBytes = MAX_FRAME_PAYLOAD_BYTES): HeaderCheck {
  // Read byte by byte: a view per header (Buffer.from) cost more than the whole check on the read path.
  const magic = bytes[at];
  if (magic !== FRAME_MAGIC) {
    return { ok: false, code: 'ERR_CORRUPT_FRAME', reason: `bad magic byte 0x${hex(magic)}` };
  }
  const version = bytes[at + 1] ?? 0;
  if (version !== FRAME_VERSION) {
    return { ok: false, code: 'ERR_UNSUPPORTED_VERSION', reason: `unsupported frame version ${version}` };
  }
  const type = bytes[at + 2] ?? 0;
  if (type === 0) return { ok: false, code: 'ERR_CORRUPT_FRAME', reason: 'frame type 0' };
  const flags = bytes[at + 3] ?? 0;
  if (flags !== 0) return { ok: false, code: 'ERR_CORRUPT_FRAME', reason: `reserved flags set (0x${hex(flags)})` };
  const payloadBytes = uint32At(bytes, at + 4);
  if (payloadBytes > maxPayloadBytes) {
    return { ok: false, code: 'ERR_FRAME_TOO_LARGE', reason: `declared payload of ${payloadBytes} bytes exceeds ${maxPayloadBytes}` };
  }
  const high = uint32At(bytes, at + 12);
  if (high > 0x1f_ffff) {
    return { ok: false, code: 'ERR_CORRUPT_FRAME', reason: `offset ${(BigInt(high) << 32n) + BigInt(uint32At(bytes, at + 8))} out of range` };
  }
  const offset = high * 0x1_0000_0000 + uint32At(bytes, at + 8);
  return {
    ok: true,
    header: { version, type, flags, payloadBytes, offset, crc: uint32At(bytes, at + 16) },
  };
}

/** The CRC field of a whole frame's header (`raw` holds at least its 20 header bytes): what tells frames apart. */
export function frameChecksum(raw: Uint8Array): number {
  return uint32At(raw, 16);
}

/** The little-endian unsigned 32-bit integer at `at` (the bytes must be there). */
function uint32At(bytes: Uint8Array, at: number): number {
  return ((bytes[at] as number) | ((bytes[at + 1] as number) << 8) | ((bytes[at + 2] as number) << 16)) + (bytes[at + 3] as number) * 0x100_0000;
}

/** The CRC of the header at `at` up to its CRC field (its first 16 bytes): where a frame's CRC starts. */
function headerCrc(bytes: Uint8Array, at = 0): number {
  return crc32(bytes.subarray(at, at + 16));
}

export type DecodeResult =
  | { readonly ok: true; readonly frame: Frame; readonly bytes: number }
  /** Not enough bytes for the whole frame; `needed` is the total the frame claims (or the header size). */
  | { readonly ok: false; readonly incomplete: true; readonly needed: number }
  | { readonly ok: false; readonly incomplete: false; readonly code: MqlogError['code']; readonly reason: string };

/**
 * Decodes one frame starting at `at`. Never throws on bad bytes: it says whether the frame is whole,
 * incomplete (more bytes needed) or invalid, so that callers can tell a torn tail from corruption.
 * The returned payload is a view into `bytes`, not a copy. Bytes from `end` on are not looked at.
 */
export function decodeFrame(bytes: Buffer, at = 0, maxPayloadBytes = MAX_FRAME_PAYLOAD_BYTES, end = bytes.length): DecodeResult {
  const available = end - at;
  if (available < FRAME_HEADER_BYTES) {
    if (available > 0 && bytes[at] !== FRAME_MAGIC) {
      return { ok: false, incomplete: false, code: 'ERR_CORRUPT_FRAME', reason: `bad magic byte 0x${hex(bytes[at])}` };
    }
    return { ok: false, incomplete: true, needed: FRAME_HEADER_BYTES };
  }
  const check = parseFrameHeader(bytes, at, maxPayloadBytes);
  if (!check.ok) return { ok: false, incomplete: false, code: check.code, reason: check.reason };
  const total = FRAME_HEADER_BYTES + check.header.payloadBytes;
  if (available < total) return { ok: false, incomplete: true, needed: total };
  const payload = bytes.subarray(at + FRAME_HEADER_BYTES, at + total);
  if (crcOn(payload, headerCrc(bytes, at)) !== check.header.crc) {
    return { ok: false, incomplete: false, code: 'ERR_CORRUPT_FRAME', reason: 'CRC mismatch' };
  }
  return { ok: true, frame: { type: check.header.type, offset: check.header.offset, payload }, bytes: total };
}

function hex(byte: number | undefined): string {
  return (byte ?? 0).toString(16).padStart(2, '0');
}
