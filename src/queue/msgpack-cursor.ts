/**
 * A forward-only reader of msgpack bytes (the map of a message's fields, spec/log-format.md §8): for
 * readers that need a few fields of a map and pass over the rest by their length, without decoding
 * the whole map into an object. Bounds-checked: reading past `end` is an error, never a read of
 * other bytes.
 */
import { MqlogError } from '../errors.js';

function malformed(reason: string): MqlogError {
  return new MqlogError('ERR_INVALID_MESSAGE', `invalid message: ${reason}`);
}

/**
 * Reads a msgpack map entry by entry within [at, end): keys that are short strings, values decoded
 * (nil, booleans, numbers, strings, arrays of them) or passed over by their length.
 */
export class MsgpackCursor {
  private at: number;

  constructor(
    private readonly bytes: Buffer,
    start: number,
    private readonly end: number,
  ) {
    this.at = start;
  }

  /** Where the next read starts. */
  get position(): number {
    return this.at;
  }

  private need(n: number): void {
    if (this.at + n > this.end) throw malformed('meta is not valid msgpack (cut short)');
  }

  private byte(): number {
    this.need(1);
    return this.bytes[this.at++] as number;
  }

  mapHeader(): number {
    const b = this.byte();
    if ((b & 0xf0) === 0x80) return b & 0x0f;
    if (b === 0xde) return this.uint(2);
    if (b === 0xdf) return this.uint(4);
    throw malformed('meta is not a map');
  }

  /** A key: the code of a one-character string key, -1 for any other string key (passed over). */
  keyCode(): number {
    const b = this.byte();
    const length = (b & 0xe0) === 0xa0 ? b & 0x1f : b === 0xd9 ? this.uint(1) : -1;
    if (length < 0) throw malformed('meta has a key that is not a string');
    if (length !== 1) {
      this.advance(length);
      return -1;
    }
    return this.byte();
  }

  private uint(n: 1 | 2 | 4 | 8): number {
    this.need(n);
    const at = this.at;
    this.at += n;
    if (n === 1) return this.bytes[at] as number;
    if (n === 2) return this.bytes.readUInt16BE(at);
    if (n === 4) return this.bytes.readUInt32BE(at);
    // Two halves rather than a BigInt (one per timestamp read): the same number, rounded once past 2^53.
    return this.bytes.readUInt32BE(at) * 0x1_0000_0000 + this.bytes.readUInt32BE(at + 4);
  }

  private int(n: 1 | 2 | 4 | 8): number {
    this.need(n);
    const at = this.at;
    this.at += n;
    if (n === 1) return this.bytes.readInt8(at);
    if (n === 2) return this.bytes.readInt16BE(at);
    if (n === 4) return this.bytes.readInt32BE(at);
    return this.bytes.readInt32BE(at) * 0x1_0000_0000 + this.bytes.readUInt32BE(at + 4);
  }

  private string(length: number): string {
    this.need(length);
    const value = this.bytes.toString('utf8', this.at, this.at + length);
    this.at += length;
    return value;
  }

  /** The next value, decoded (maps and binary data are passed over: undefined). */
  value(): unknown {
    const b = this.byte();
    if (b <= 0x7f) return b;
    if (b >= 0xe0) return b - 0x100;
    if ((b & 0xe0) === 0xa0) return this.string(b & 0x1f);
    if ((b & 0xf0) === 0x90) return this.array(b & 0x0f);
    switch (b) {
      case 0xc0:
        return null;
      case 0xc2:
        return false;
      case 0xc3:
        return true;
      case 0xcc:
        return this.uint(1);
      case 0xcd:
        return this.uint(2);
      case 0xce:
        return this.uint(4);
      case 0xcf:
        return this.uint(8);
      case 0xd0:
        return this.int(1);
      case 0xd1:
        return this.int(2);
      case 0xd2:
        return this.int(4);
      case 0xd3:
        return this.int(8);
      case 0xca:
        this.need(4);
        this.at += 4;
        return this.bytes.readFloatBE(this.at - 4);
      case 0xcb:
        this.need(8);
        this.at += 8;
        return this.bytes.readDoubleBE(this.at - 8);
      case 0xd9:
        return this.string(this.uint(1));
      case 0xda:
        return this.string(this.uint(2));
      case 0xdb:
        return this.string(this.uint(4));
      case 0xdc:
        return this.array(this.uint(2));
      case 0xdd:
        return this.array(this.uint(4));
    }
    this.at--;
    this.skip();
    return undefined;
  }

  private array(length: number): unknown[] {
    const items: unknown[] = [];
    for (let i = 0; i < length; i++) items.push(this.value());
    return items;
  }

  /** Passes over the next value, whatever it is. */
  skip(): void {
    const b = this.byte();
    if (b <= 0x7f || b >= 0xe0 || b === 0xc0 || b === 0xc2 || b === 0xc3) return;
    if ((b & 0xe0) === 0xa0) return this.advance(b & 0x1f);
    if ((b & 0xf0) === 0x90) return this.skipItems(b & 0x0f);
    if ((b & 0xf0) === 0x80) return this.skipItems(2 * (b & 0x0f));
    switch (b) {
      case 0xcc:
      case 0xd0:
        return this.advance(1);
      case 0xcd:
      case 0xd1:
        return this.advance(2);
      case 0xce:
      case 0xd2:
      case 0xca:
        return this.advance(4);
      case 0xcf:
      case 0xd3:
      case 0xcb:
        return this.advance(8);
      case 0xd9:
      case 0xc4:
        return this.advance(this.uint(1));
      case 0xda:
      case 0xc5:
        return this.advance(this.uint(2));
      case 0xdb:
      case 0xc6:
        return this.advance(this.uint(4));
      case 0xdc:
        return this.skipItems(this.uint(2));
      case 0xdd:
        return this.skipItems(this.uint(4));
      case 0xde:
        return this.skipItems(2 * this.uint(2));
      case 0xdf:
        return this.skipItems(2 * this.uint(4));
      case 0xd4:
        return this.advance(2);
      case 0xd5:
        return this.advance(3);
      case 0xd6:
        return this.advance(5);
      case 0xd7:
        return this.advance(9);
      case 0xd8:
        return this.advance(17);
      case 0xc7:
        return this.advance(this.uint(1) + 1);
      case 0xc8:
        return this.advance(this.uint(2) + 1);
      case 0xc9:
        return this.advance(this.uint(4) + 1);
    }
    throw malformed(`meta is not valid msgpack (byte 0x${b.toString(16)})`);
  }

  private advance(n: number): void {
    this.need(n);
    this.at += n;
  }

  private skipItems(n: number): void {
    for (let i = 0; i < n; i++) this.skip();
  }
}
