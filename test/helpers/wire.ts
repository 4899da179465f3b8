/**
 * Raw requests to a daemon's `POST /v1/messages`, for tests that send what no well-behaved peer sends.
 *
 * Frames, message payloads and the batch envelope are built here from the documented layouts
 * (spec/log-format.md §2 and §8, the envelope in src/transport/wire.ts), not with the src encoders, so
 * that an encoder bug cannot hide itself from the tests; only msgpack comes from the library both use.
 *
 *   frame:    u8 magic 0xA7 | u8 version 1 | u8 type | u8 flags 0 | u32 length | u64 offset | u32 crc | payload
 *   message:  u32 metaBytes | msgpack meta map | body
 *   envelope: "MQLB" | u8 version 2 | 3 zero bytes | u32 headerBytes | u32 envelopeCrc |
 *             msgpack {node, name, to, streams} | repeated: u16 streamIndex | u32 frameBytes | frame
 *             (envelopeCrc: CRC-32 of the first 12 bytes, the header and every record prefix)
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { crc32 } from 'node:zlib';
import { Packr } from 'msgpackr';
import { request } from 'undici';

export const BATCH_CONTENT_TYPE = 'application/x-mqlog-batch';
export const FRAME_HEADER_BYTES = 20;
const MESSAGE_FRAME_TYPE = 1;

const packr = new Packr({ useRecords: false, mapsAsObjects: true });

/** A UUIDv7 string for `now` (the only id form mqlog accepts). */
export function uuidV7(now = Date.now()): string {
  const bytes = randomBytes(16);
  bytes.writeUIntBE(now, 0, 6);
  bytes[6] = 0x70 | ((bytes[6] as number) & 0x0f);
  bytes[8] = 0x80 | ((bytes[8] as number) & 0x3f);
  const hex = bytes.toString('hex');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

export interface RawMessage {
  readonly id?: string;
  readonly ts?: number;
  readonly channel?: string;
  readonly priority?: number;
  readonly to?: readonly string[];
  readonly from?: string;
  /** `receipt` for a receipt report (its body then the report's msgpack map). */
  readonly kind?: string;
  readonly body?: string | Buffer;
}

/** A MESSAGE payload (§8) with the short meta keys (§8.1). */
export function messagePayload(message: RawMessage = {}): Buffer {
  const meta = packr.pack({
    i: message.id ?? uuidV7(),
    t: message.ts ?? Date.now(),
    c: message.channel ?? 'common',
    p: message.priority ?? 4,
    d: message.to ?? ['b'],
    f: message.from ?? 'a',
    ...(message.kind === undefined ? {} : { k: message.kind }),
  });
  const prefix = Buffer.alloc(4);
  prefix.writeUInt32LE(meta.length, 0);
  const body = typeof message.body === 'string' ? Buffer.from(message.body, 'utf8') : (message.body ?? Buffer.from('hello', 'utf8'));
  return Buffer.concat([prefix, meta, body]);
}

/** A whole frame (§2); the CRC covers header bytes 0..15 and the payload. */
export function frame(payload: Buffer, offset: number, type = MESSAGE_FRAME_TYPE): Buffer {
  const header = Buffer.alloc(FRAME_HEADER_BYTES);
  header[0] = 0xa7;
  header[1] = 1;
  header[2] = type;
  header[3] = 0;
  header.writeUInt32LE(payload.length, 4);
  header.writeBigUInt64LE(BigInt(offset), 8);
  header.writeUInt32LE(crc32(payload, crc32(header.subarray(0, 16))), 16);
  return Buffer.concat([header, payload]);
}

/** Recomputes a frame's CRC after a header edit, so that only the edited field is wrong. */
export function resealFrame(bytes: Buffer): Buffer {
  const out = Buffer.from(bytes);
  const payload = out.subarray(FRAME_HEADER_BYTES);
  out.writeUInt32LE(crc32(payload, crc32(out.subarray(0, 16))), 16);
  return out;
}

export interface RawFrame {
  readonly stream: string;
  readonly frame: Buffer;
}

export interface EnvelopeOptions {
  /** Sender node id; a fresh one per call unless given. */
  readonly node?: string;
  readonly name?: string;
  readonly to?: string;
}

/** The request body for a list of frames. */
export function envelope(frames: readonly RawFrame[], options: EnvelopeOptions = {}): Buffer {
  const streams = [...new Set(frames.map((f) => f.stream))];
  const header = packr.pack({ node: options.node ?? randomUUID(), name: options.name ?? 'a', to: options.to ?? 'b', streams });
  const prefix = Buffer.alloc(16);
  prefix.write('MQLB', 0, 'latin1');
  prefix[4] = 2;
  prefix.writeUInt32LE(header.length, 8);
  const parts: Buffer[] = [prefix, header];
  const covered: Buffer[] = [prefix.subarray(0, 12), header];
  for (const f of frames) {
    const record = Buffer.alloc(6);
    record.writeUInt16LE(streams.indexOf(f.stream), 0);
    record.writeUInt32LE(f.frame.length, 2);
    parts.push(record, f.frame);
    covered.push(record);
  }
  prefix.writeUInt32LE(crc32(Buffer.concat(covered)), 12);
  return Buffer.concat(parts);
}

/** Byte position of the first frame of a body built by `envelope` (after prefix, header, first record prefix). */
export function firstFrameAt(body: Buffer): number {
  return 16 + body.readUInt32LE(8) + 6;
}

export interface RawResponse {
  readonly status: number;
  readonly contentType: string | undefined;
  readonly text: string;
  readonly json: unknown;
}

/** POSTs `body` to `${url}/v1/messages` and reads the whole answer; `contentType` null sends none. */
export async function postBatch(url: string, body: Buffer, contentType: string | null = BATCH_CONTENT_TYPE): Promise<RawResponse> {
  const response = await request(`${url}/v1/messages`, {
    method: 'POST',
    headers: contentType === null ? {} : { 'content-type': contentType },
    body,
    headersTimeout: 60_000,
    bodyTimeout: 60_000,
  });
  const text = await response.body.text();
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  const type = response.headers['content-type'];
  return { status: response.statusCode, contentType: Array.isArray(type) ? type[0] : type, text, json };
}

/** GET /healthz: the status code. */
export async function healthz(url: string): Promise<number> {
  const response = await request(`${url}/healthz`, { headersTimeout: 30_000, bodyTimeout: 30_000 });
  await response.body.dump();
  return response.statusCode;
}
