/**
 * CRC-32 (zlib.crc32) continued over more bytes, for every layer that checks or writes one.
 */
import { crc32 } from 'node:zlib';

/**
 * Continues a CRC over more bytes. Empty input leaves it unchanged — zlib.crc32 of Node.js returns 0 for
 * an empty buffer without backing memory, whatever the running value.
 */
export function crcOn(bytes: Uint8Array, running: number): number {
  return bytes.length === 0 ? running : crc32(bytes, running);
}
