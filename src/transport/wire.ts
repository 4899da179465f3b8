/**
 * The body of `POST /v1/messages` (spec/http-protocol.md §3): an envelope naming the sender and its
 * streams, then length-prefixed frames exactly as they are on disk.
 *
 *   "MQLB" | u8 version=2 | 3 zero bytes | u32 headerBytes | u32 envelopeCrc | header (msgpack map) |
 *   repeated: u16 streamIndex | u32 frameBytes | frameBytes bytes
 *
 * `envelopeCrc` covers everything that is not a frame — the first 12 bytes, the header and every record's
 * 6-byte prefix — so a damaged envelope (another sender, another stream named) is refused before anything
 * is stored; frames carry CRCs of their own. The decoder checks every length against the bytes present and
 * against limits before it allocates or copies anything.
 */
import { Packr } from 'msgpackr';
import { crc32 } from 'node:zlib';
import { MqlogError } from '../errors.js';
import { crcOn } from '../util/crc.js';
import type { OutgoingBatch, ReceivedFrame } from './transport.js';

export const WIRE_MAGIC = 'MQLB';
export const WIRE_VERSION = 2;
export const CONTENT_TYPE = 'application/x-mqlog-batch';
const PREFIX_BYTES = 16;
/** The part of the prefix the envelope CRC covers (it does not cover itself). */
const CHECKED_PREFIX_BYTES = 12;
const RECORD_PREFIX_BYTES = 6;
const MAX_HEADER_BYTES = 64 * 1024;
const MAX_STREAMS = 1024;
const MAX_NAME_BYTES = 255;

// copyBuffers: a binary field decoded is a copy, never a view that would keep (or see the reuse of) the
// buffer it was read from — a request body, a read block.
const packr = new Packr({ useRecords: false, mapsAsObjects: true, copyBuffers: true });

export interface WireLimits {
  readonly maxFrames?: number;
  readonly maxFrameBytes?: number;
}

/** Encodes a batch as a list of buffers (header, then per frame a prefix and the frame itself). */
export function encodeBatch(batch: OutgoingBatch): Buffer[] {
  const streams: string[] = [];
  const index = new Map<string, number>();
  for (const { stream } of batch.frames) {
    if (!index.has(stream)) {
      index.set(stream, streams.length);
      streams.push(stream);
    }
  }
  const covers = batch.covers === undefined ? undefined : Object.entries(batch.covers).flatMap(([stream, [from, to]]) => (index.has(stream) ? [[index.get(stream), from, to]] : []));
  const header = packr.pack({ node: batch.node, name: batch.name, to: batch.destination, streams, ...(covers === undefined ? {} : { covers }), ...(batch.replyTo === undefined ? {} : { reply: batch.replyTo }) });
  const prefix = Buffer.alloc(PREFIX_BYTES);
  prefix.write(WIRE_MAGIC, 0, 'latin1');
  prefix[4] = WIRE_VERSION;
  prefix.writeUInt32LE(header.length, 8);
  // Every record's prefix in one buffer, CRC'd in one pass (the CRC of the prefixes one after another).
  const records = Buffer.allocUnsafe(RECORD_PREFIX_BYTES * batch.frames.length);
  const out: Buffer[] = [prefix, header];
  let at = 0;
  for (const { stream, frame } of batch.frames) {
    records.writeUInt16LE(index.get(stream) as number, at);
    records.writeUInt32LE(Buffer.isBuffer(frame) ? frame.length : frame.reduce((n, p) => n + p.length, 0), at + 2);
    out.push(records.subarray(at, at + RECORD_PREFIX_BYTES));
    if (Buffer.isBuffer(frame)) out.push(frame);
    else out.push(...frame);
    at += RECORD_PREFIX_BYTES;
  }
  prefix.writeUInt32LE(crcOn(records, crc32(header, crc32(prefix.subarray(0, CHECKED_PREFIX_BYTES)))), CHECKED_PREFIX_BYTES);
  return out;
}

export interface DecodedBatch {
  readonly node: string;
  readonly name: string;
  readonly destination: string;
  readonly frames: ReceivedFrame[];
  readonly covers?: Record<string, readonly [number, number]>;
  readonly replyTo?: string;
}

/**
 * Decodes a request body. Frame buffers are views into `body`.
 * @throws ERR_BAD_REQUEST (malformed envelope, details.frame for a bad record),
 *   ERR_UNSUPPORTED_VERSION, ERR_FRAME_TOO_LARGE, ERR_TRUNCATED_FRAME.
 */
export function decodeBatch(body: Buffer, limits: WireLimits = {}): DecodedBatch {
  const maxFrames = limits.maxFrames ?? 100_000;
  const maxFrameBytes = limits.maxFrameBytes ?? 64 * 1024 * 1024 + 20;
  if (body.length === 0) throw bad('empty body');
  if (body.length < PREFIX_BYTES) throw bad(`body of ${body.length} bytes is shorter than the ${PREFIX_BYTES}-byte prefix`);
  if (body.toString('latin1', 0, 4) !== WIRE_MAGIC) throw bad('body does not start with "MQLB"');
  if (body[4] !== WIRE_VERSION) {
    throw new MqlogError('ERR_UNSUPPORTED_VERSION', `batch version ${body[4]} is not supported (this node speaks ${WIRE_VERSION})`);
  }
  if (body[5] !== 0 || body[6] !== 0 || body[7] !== 0) throw bad('reserved prefix bytes are not zero');
  const headerBytes = body.readUInt32LE(8);
  if (headerBytes > MAX_HEADER_BYTES || PREFIX_BYTES + headerBytes > body.length) throw bad(`header length ${headerBytes} out of range`);
  // Checked before the header is trusted: a damaged header could name another sender or stream.
  const expectedCrc = body.readUInt32LE(CHECKED_PREFIX_BYTES);
  let crc = crc32(body.subarray(PREFIX_BYTES, PREFIX_BYTES + headerBytes), crc32(body.subarray(0, CHECKED_PREFIX_BYTES)));
  let header: unknown;
  try {
    header = packr.unpack(body.subarray(PREFIX_BYTES, PREFIX_BYTES + headerBytes));
  } catch (err) {
    throw new MqlogError('ERR_BAD_REQUEST', 'batch header is not valid msgpack', { cause: err });
  }
  const { node, name, to, streams, covers, reply } = (header ?? {}) as { node?: unknown; name?: unknown; to?: unknown; streams?: unknown; covers?: unknown; reply?: unknown };
  if (typeof node !== 'string' || node.length === 0 || Buffer.byteLength(node) > MAX_NAME_BYTES) throw bad('header.node is not a node id');
  if (typeof name !== 'string' || Buffer.byteLength(name) > MAX_NAME_BYTES) throw bad('header.name is not a name');
  if (typeof to !== 'string' || Buffer.byteLength(to) > 1024) throw bad('header.to is not a destination');
  if (reply !== undefined && (typeof reply !== 'string' || Buffer.byteLength(reply) > 1024)) throw bad('header.reply is not an address');
  if (!Array.isArray(streams) || streams.length > MAX_STREAMS || !streams.every((s) => typeof s === 'string' && s.length > 0 && Buffer.byteLength(s) <= MAX_NAME_BYTES)) {
    throw bad('header.streams is not a list of stream names');
  }
  const covered = decodeCovers(covers, streams as string[]);
  const frames: ReceivedFrame[] = [];
  let at = PREFIX_BYTES + headerBytes;
  while (at < body.length) {
    const i = frames.length;
    if (i >= maxFrames) throw new MqlogError('ERR_TOO_MANY_FRAMES', `more than ${maxFrames} frames in one request`);
    if (body.length - at < RECORD_PREFIX_BYTES) throw truncated(i, 'record prefix');
    crc = crc32(body.subarray(at, at + RECORD_PREFIX_BYTES), crc);
    const streamIndex = body.readUInt16LE(at);
    const frameBytes = body.readUInt32LE(at + 2);
    const stream = (streams as string[])[streamIndex];
    if (stream === undefined) throw bad(`frame ${i} names stream #${streamIndex}, the header has ${streams.length}`, i);
    if (frameBytes > maxFrameBytes) {
      throw new MqlogError('ERR_FRAME_TOO_LARGE', `frame ${i} of ${frameBytes} bytes exceeds ${maxFrameBytes}`, { details: { frame: i } });
    }
    at += RECORD_PREFIX_BYTES;
    if (body.length - at < frameBytes) throw truncated(i, `frame of ${frameBytes} bytes (${body.length - at} present)`);
    frames.push({ stream, frame: body.subarray(at, at + frameBytes) });
    at += frameBytes;
  }
  if (frames.length === 0) throw bad('batch holds no frames');
  if (crc !== expectedCrc) throw bad(`envelope CRC is ${crc.toString(16).padStart(8, '0')}, the request says ${expectedCrc.toString(16).padStart(8, '0')}: the header or a record prefix is damaged`);
  return { node, name, destination: to, frames, ...(covered === undefined ? {} : { covers: covered }), ...(reply === undefined ? {} : { replyTo: reply }) };
}

/** `covers`: a list of `[streamIndex, from, to]` with `0 <= from <= to < 2^53`, at most one per stream. */
function decodeCovers(covers: unknown, streams: readonly string[]): Record<string, readonly [number, number]> | undefined {
  if (covers === undefined) return undefined;
  if (!Array.isArray(covers) || covers.length > streams.length) throw bad('header.covers is not a list of [stream, from, to]');
  const out: Record<string, readonly [number, number]> = {};
  for (const entry of covers as unknown[]) {
    if (!Array.isArray(entry) || entry.length !== 3) throw bad('header.covers is not a list of [stream, from, to]');
    const [index, from, to] = entry as unknown[];
    const stream = Number.isSafeInteger(index) ? streams[index as number] : undefined;
    if (stream === undefined || Object.hasOwn(out, stream)) throw bad('header.covers names a stream the header does not list, or one twice');
    if (!Number.isSafeInteger(from) || !Number.isSafeInteger(to) || (from as number) < 0 || (to as number) < (from as number)) throw bad(`header.covers range of ${stream} is not [from, to) of offsets`);
    out[stream] = [from as number, to as number];
  }
  return out;
}

function bad(reason: string, frame?: number): MqlogError {
  return new MqlogError('ERR_BAD_REQUEST', `malformed batch: ${reason}`, frame === undefined ? undefined : { details: { frame } });
}

function truncated(frame: number, what: string): MqlogError {
  return new MqlogError('ERR_TRUNCATED_FRAME', `batch ends inside frame ${frame}: ${what}`, { details: { frame } });
}
