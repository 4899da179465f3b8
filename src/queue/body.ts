/**
 * Streamed bodies (spec/log-format.md §15): a body larger than an inline frame travels as BODY_CHUNK
 * frames of at most 1 MiB, written before the MESSAGE frame that makes the message visible. The message
 * names where its chunks are (ranges of offsets in streams of its queue) with the size and SHA-256 of the
 * whole body. Reading a body streams the chunks in order, one at a time: memory stays flat for any size.
 */
import { createHash } from 'node:crypto';
import { MqlogError } from '../errors.js';
import { FrameType } from '../log/frame.js';
import type { LogStore } from '../log/log-store.js';
import { readFrames } from '../log/stream-scan.js';
import { decodeChunk, type StreamedBody } from './codec.js';

/** Data per chunk frame. */
export const BODY_CHUNK_BYTES = 1024 * 1024;
/** Bodies larger than this are streamed in chunks rather than stored inline. */
export const INLINE_BODY_LIMIT = 8 * 1024 * 1024;
/** Room for a frame's header and its message fields beside the body bytes. */
const FIELDS_ALLOWANCE_BYTES = 512 * 1024;

/**
 * The largest frame a receiver takes when its inline bodies are limited to `maxBodyBytes`: such a body,
 * or a whole chunk of a streamed body (a chunk's size does not follow the body limit: streamed bodies
 * have a limit of their own), with room for the fields.
 */
export function maxFrameBytesFor(maxBodyBytes: number): number {
  return Math.max(maxBodyBytes, BODY_CHUNK_BYTES) + FIELDS_ALLOWANCE_BYTES;
}

/**
 * Yields the body's bytes in order from the chunk frames of `queue`.
 * @throws ERR_INVALID_MESSAGE when a chunk is missing or out of place (the body is incomplete).
 */
export async function* readStreamedBody(store: LogStore, queue: string, id: string, streamed: StreamedBody): AsyncGenerator<Buffer> {
  let size = 0;
  for await (const data of chunksOf(store, queue, id, streamed.parts)) {
    size += data.length;
    if (size > streamed.size) break;
    yield data;
  }
  if (size !== streamed.size) {
    throw new MqlogError('ERR_INVALID_MESSAGE', `body of ${id} is incomplete: ${size} of ${streamed.size} bytes found`, { details: { id } });
  }
}

/** Chunk data of message `id` in the given parts, in order, checking that positions follow each other. */
async function* chunksOf(store: LogStore, queue: string, id: string, parts: StreamedBody['parts']): AsyncGenerator<Buffer> {
  let expected = 0;
  for (const part of parts) {
    for await (const frame of readFrames(store, queue, part.stream, { from: { offset: part.first }, maxFrames: 8, maxBytes: 4 * BODY_CHUNK_BYTES })) {
      if (frame.offset > part.last) break;
      if (frame.type !== FrameType.BODY_CHUNK) continue;
      const { meta, data } = decodeChunk(frame.payload);
      if (meta.id !== id) continue;
      if (meta.position !== expected) {
        throw new MqlogError('ERR_INVALID_MESSAGE', `body of ${id}: chunk at byte ${meta.position} where ${expected} was expected`, { details: { id, position: meta.position } });
      }
      expected += data.length;
      yield data;
    }
  }
}

/** Size and SHA-256 of a streamed body as stored (reads it through once). */
export async function digestStreamedBody(store: LogStore, queue: string, id: string, parts: StreamedBody['parts']): Promise<{ size: number; sha256: string }> {
  const hash = createHash('sha256');
  let size = 0;
  for await (const data of chunksOf(store, queue, id, parts)) {
    hash.update(data);
    size += data.length;
  }
  return { size, sha256: hash.digest('hex') };
}
