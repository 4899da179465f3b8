/**
 * The sparse offset index of one segment (spec/log-format.md §16): what is known of a segment's frames
 * without reading them — an entry (offset → byte position) every INDEX_INTERVAL_BYTES, where each type's
 * frames are (runs of consecutive offsets), how many frames and bytes of each type it holds, and its
 * last frame (which identifies the segment). Encoded as `<base>.idx` beside `<base>.seg`; this module
 * is the pure part (building, encoding, decoding), segment-index-file.ts does the I/O.
 *
 * An index is a cache: it is rebuilt by a scan when missing or found stale, and whoever seeks with it
 * re-checks the frame it lands on. An index **sealed** describes its whole segment; a **partial** one
 * describes the frames before `coveredBytes` of the open segment (a checkpoint of its writer).
 *
 * Pure functions and objects, no I/O. An IndexBuilder belongs to one caller at a time.
 */
import { crc32 } from 'node:zlib';
import type { OffsetRun, SegmentSummary, StreamPosition, TypeTotals } from './log-store.js';

export const INDEX_SUFFIX = '.idx';
/** An entry is taken at the first frame at least this many bytes past the previous entry. */
export const INDEX_INTERVAL_BYTES = 16 * 1024;

const MAGIC = 0x5849514d; // "MQIX" read as u32 LE
const INDEX_VERSION = 1;
const HEADER_BYTES = 64;
const TYPE_BYTES = 16;
const RUN_BYTES = 16;
const ENTRY_BYTES = 16;
const TRAILER_BYTES = 4;
const STATE_CODES = { sealed: 1, partial: 2 } as const;
/** Typed arrays use the platform's byte order; the file's is little-endian. */
const LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;

export type IndexState = keyof typeof STATE_CODES;

/** A frame as the index needs it: its header fields and where it lies. */
export interface IndexedFrame {
  readonly type: number;
  readonly offset: number;
  readonly position: number;
  /** Header plus payload bytes. */
  readonly bytes: number;
  /** The CRC field of its header. */
  readonly crc: number;
}

export interface IndexEntry {
  readonly offset: number;
  readonly position: number;
}

export interface LastFrame {
  readonly offset: number;
  readonly position: number;
  readonly crc: number;
}

export class SegmentIndex {
  readonly base: number;
  readonly state: IndexState;
  /** Bytes of the segment described: its whole size when sealed. */
  readonly coveredBytes: number;
  readonly frames: number;
  /** Per frame type (SYNC frames are the log's own and never counted). */
  readonly types: ReadonlyMap<number, TypeTotals>;
  readonly runs: readonly OffsetRun[];
  readonly last: LastFrame | undefined;
  /** The entries, offset and position after each other: no object per entry (thousands per segment). */
  private entryData: Float64Array | undefined;
  /** Decodes the entries of an index read from a file, when they are first needed. */
  private entrySource: (() => Float64Array) | undefined;

  constructor(fields: Pick<SegmentIndex, 'base' | 'state' | 'coveredBytes' | 'types' | 'runs' | 'last'> & { readonly entries: readonly IndexEntry[] | Float64Array | (() => Float64Array) }) {
    this.base = fields.base;
    this.state = fields.state;
    this.coveredBytes = fields.coveredBytes;
    this.types = fields.types;
    this.runs = fields.runs;
    this.last = fields.last;
    const entries = fields.entries;
    if (typeof entries === 'function') this.entrySource = entries;
    else this.entryData = entries instanceof Float64Array ? entries : Float64Array.from(entries.flatMap((e) => [e.offset, e.position]));
    let frames = 0;
    for (const totals of this.types.values()) frames += totals.frames;
    this.frames = frames;
  }

  /** Offsets rising; the first frame always has one. */
  get entries(): IndexEntry[] {
    const entries: IndexEntry[] = [];
    const data = this.entryPairs;
    for (let i = 0; i < data.length; i += 2) entries.push({ offset: data[i] as number, position: data[i + 1] as number });
    return entries;
  }

  get entryCount(): number {
    return this.entryPairs.length / 2;
  }

  /** The entries, offset and position after each other (for a builder that goes on from this index). */
  get entryPairs(): Float64Array {
    if (this.entryData === undefined) {
      this.entryData = (this.entrySource as () => Float64Array)();
      this.entrySource = undefined;
    }
    return this.entryData;
  }

  get firstOffset(): number | undefined {
    return this.runs[0]?.from;
  }

  get lastOffset(): number | undefined {
    return this.last?.offset;
  }

  /**
   * What tells this segment's frames apart from any other frames a segment of that name ever held:
   * compaction's rewrite changes it, the same frames give the same value.
   */
  get id(): string {
    return `${this.base}:${this.frames}:${this.last?.offset ?? '-'}:${this.last?.crc ?? '-'}`;
  }

  /** Where reading goes on after the frames described: the next offset, with a hint to the last frame. */
  get next(): StreamPosition {
    const last = this.last;
    return last === undefined ? { offset: this.base } : { offset: last.offset + 1, hint: { segment: this.base, position: last.position, offset: last.offset } };
  }

  /** The entry with the greatest offset at or below `offset`, or undefined when all are above. */
  seek(offset: number): IndexEntry | undefined {
    const data = this.entryPairs;
    let low = 0;
    let high = data.length / 2;
    while (low < high) {
      const mid = (low + high) >>> 1;
      if ((data[2 * mid] as number) <= offset) low = mid + 1;
      else high = mid;
    }
    return low === 0 ? undefined : { offset: data[2 * (low - 1)] as number, position: data[2 * (low - 1) + 1] as number };
  }

  /** True when both describe the same frames (and were built for the same part of the segment). */
  equals(other: SegmentIndex): boolean {
    return this.encode().equals(other.encode());
  }

  /** The `.idx` file's bytes (spec/log-format.md §16.1). */
  encode(): Buffer {
    const types = [...this.types].sort((a, b) => a[0] - b[0]);
    const bytes = HEADER_BYTES + types.length * TYPE_BYTES + this.runs.length * RUN_BYTES + this.entryCount * ENTRY_BYTES + TRAILER_BYTES;
    const out = Buffer.alloc(bytes);
    out.writeUInt32LE(MAGIC, 0);
    out[4] = INDEX_VERSION;
    out[5] = STATE_CODES[this.state];
    out.writeUInt32LE(INDEX_INTERVAL_BYTES, 8);
    out.writeUInt32LE(types.length, 12);
    writeU64(out, 16, this.base);
    writeU64(out, 24, this.coveredBytes);
    writeU64(out, 32, this.last?.position ?? 0);
    writeU64(out, 40, this.last?.offset ?? 0);
    out.writeUInt32LE(this.last?.crc ?? 0, 48);
    out.writeUInt32LE(this.frames, 52);
    out.writeUInt32LE(this.runs.length, 56);
    out.writeUInt32LE(this.entryCount, 60);
    let at = HEADER_BYTES;
    for (const [type, totals] of types) {
      out.writeUInt32LE(type, at);
      out.writeUInt32LE(totals.frames, at + 4);
      writeU64(out, at + 8, totals.bytes);
      at += TYPE_BYTES;
    }
    for (const run of this.runs) {
      out.writeUInt32LE(run.type, at);
      out.writeUInt32LE(run.to - run.from, at + 4);
      writeU64(out, at + 8, run.from);
      at += RUN_BYTES;
    }
    const entries = this.entryPairs;
    for (let i = 0; i < entries.length; i++, at += 8) writeU64(out, at, entries[i] as number);
    out.writeUInt32LE(crc32(out.subarray(0, at)), at);
    return out;
  }

  /**
   * Decodes an `.idx` file of the segment with base offset `base`; a string says why it is not one
   * (damaged, another version, inconsistent, or another segment's).
   */
  static decode(bytes: Buffer, base: number): SegmentIndex | string {
    if (bytes.length < HEADER_BYTES + TRAILER_BYTES) return `too short (${bytes.length} bytes)`;
    if (bytes.readUInt32LE(0) !== MAGIC) return 'bad magic';
    if (bytes[4] !== INDEX_VERSION) return `unknown version ${bytes[4]}`;
    const state = bytes[5] === STATE_CODES.sealed ? 'sealed' : bytes[5] === STATE_CODES.partial ? 'partial' : undefined;
    if (state === undefined) return `unknown state ${bytes[5]}`;
    const typeCount = bytes.readUInt32LE(12);
    const runCount = bytes.readUInt32LE(56);
    const entryCount = bytes.readUInt32LE(60);
    const expected = HEADER_BYTES + typeCount * TYPE_BYTES + runCount * RUN_BYTES + entryCount * ENTRY_BYTES + TRAILER_BYTES;
    if (bytes.length !== expected) return `${bytes.length} bytes where its counts make ${expected}`;
    const body = bytes.length - TRAILER_BYTES;
    if (crc32(bytes.subarray(0, body)) !== bytes.readUInt32LE(body)) return 'CRC mismatch';
    const fileBase = readU64(bytes, 16);
    if (fileBase !== base) return `built for base offset ${fileBase}`;
    const coveredBytes = readU64(bytes, 24);
    const frames = bytes.readUInt32LE(52);
    const types = new Map<number, TypeTotals>();
    let at = HEADER_BYTES;
    for (let i = 0; i < typeCount; i++, at += TYPE_BYTES) types.set(bytes.readUInt32LE(at), { frames: bytes.readUInt32LE(at + 4), bytes: readU64(bytes, at + 8) });
    const runs: OffsetRun[] = [];
    for (let i = 0; i < runCount; i++, at += RUN_BYTES) {
      const from = readU64(bytes, at + 8);
      runs.push({ type: bytes.readUInt32LE(at), from, to: from + bytes.readUInt32LE(at + 4) });
    }
    const entriesAt = at;
    const firstEntry = entryCount === 0 ? undefined : { offset: readU64(bytes, at), position: readU64(bytes, at + 8) };
    // Thousands of entries, needed only to seek: decoded (and checked) when first used. Entries that do
    // not fit together are not used (a seek then finds none: reading starts at the segment's start).
    const entries = (): Float64Array => {
      const pairs = readU64s(bytes, entriesAt, 2 * entryCount);
      return entryDisorder(pairs, coveredBytes) === undefined ? pairs : new Float64Array(0);
    };
    const last = frames === 0 ? undefined : { position: readU64(bytes, 32), offset: readU64(bytes, 40), crc: bytes.readUInt32LE(48) };
    const index = new SegmentIndex({ base, state, coveredBytes, types, runs, entries, last });
    const problem = inconsistency(index, frames, entryCount, firstEntry);
    return problem ?? index;
  }
}

/** Why a decoded index's entries do not fit together (offsets and positions rising, within the covered bytes), or undefined. */
function entryDisorder(entries: Float64Array, coveredBytes: number): string | undefined {
  for (let i = 0; i < entries.length; i += 2) {
    const [offset, position] = [entries[i] as number, entries[i + 1] as number];
    if (i > 0 && (offset <= (entries[i - 2] as number) || position <= (entries[i - 1] as number))) return 'entries out of order';
    if (position >= coveredBytes) return `entry at byte ${position} past the covered ${coveredBytes} bytes`;
  }
  return undefined;
}

/**
 * Why the parts of a decoded index do not fit together, or undefined when they do. The entries are
 * checked by their count and first one here; their order when they are decoded (entryDisorder).
 */
function inconsistency(index: SegmentIndex, frames: number, entryCount: number, firstEntry: IndexEntry | undefined): string | undefined {
  if (index.frames !== frames) return `type totals make ${index.frames} frames, the header says ${frames}`;
  let inRuns = 0;
  let previous = index.base - 1;
  for (const run of index.runs) {
    if (run.from <= previous || run.to <= run.from) return `run [${run.from}, ${run.to}) out of order`;
    inRuns += run.to - run.from;
    previous = run.to - 1;
  }
  if (inRuns !== frames) return `runs hold ${inRuns} frames, the header says ${frames}`;
  if (frames > 0 && index.last?.offset !== previous) return `last frame ${index.last?.offset} is not the last run's end ${previous}`;
  if ((frames === 0) !== (entryCount === 0)) return 'entries do not match the frame count';
  if (frames > 0 && firstEntry?.offset !== index.firstOffset) return 'the first frame has no entry';
  if (firstEntry !== undefined && firstEntry.position >= index.coveredBytes) return `entry at byte ${firstEntry.position} past the covered ${index.coveredBytes} bytes`;
  if (index.last !== undefined && index.last.position >= index.coveredBytes) return 'last frame past the covered bytes';
  return undefined;
}

/**
 * Builds a segment's index frame by frame, in file order (the writer as it appends, a scan as it reads,
 * compaction as it rewrites). The same frames at the same positions always build the same index.
 */
export class IndexBuilder {
  readonly base: number;
  private readonly types = new Map<number, { frames: number; bytes: number }>();
  private readonly runs: { type: number; from: number; to: number }[] = [];
  /** Offset and position of each entry, after each other. */
  private readonly entries: number[] = [];
  private last: LastFrame | undefined;
  private count = 0;

  /** A builder for the segment `base`, continuing from what `from` (an index of it) describes. */
  constructor(base: number, from?: SegmentIndex) {
    this.base = base;
    if (from === undefined) return;
    for (const [type, totals] of from.types) this.types.set(type, { ...totals });
    for (const run of from.runs) this.runs.push({ ...run });
    for (const value of from.entryPairs) this.entries.push(value);
    this.last = from.last;
    this.count = from.frames;
  }

  /** Frames added so far. */
  get frames(): number {
    return this.count;
  }

  add(frame: IndexedFrame): void {
    const totals = this.types.get(frame.type);
    if (totals === undefined) this.types.set(frame.type, { frames: 1, bytes: frame.bytes });
    else {
      totals.frames++;
      totals.bytes += frame.bytes;
    }
    const run = this.runs.at(-1);
    if (run !== undefined && run.type === frame.type && run.to === frame.offset) run.to++;
    else this.runs.push({ type: frame.type, from: frame.offset, to: frame.offset + 1 });
    const lastEntry = this.entries.at(-1);
    if (lastEntry === undefined || frame.position - lastEntry >= INDEX_INTERVAL_BYTES) this.entries.push(frame.offset, frame.position);
    this.last = { offset: frame.offset, position: frame.position, crc: frame.crc };
    this.count++;
  }

  /** The index of what was added so far, describing the first `coveredBytes` bytes of the segment. */
  build(state: IndexState, coveredBytes: number): SegmentIndex {
    const types = new Map<number, TypeTotals>();
    for (const [type, totals] of this.types) types.set(type, { ...totals });
    return new SegmentIndex({ base: this.base, state, coveredBytes, types, runs: this.runs.map((r) => ({ ...r })), entries: Float64Array.from(this.entries), last: this.last });
  }
}

/** A segment's summary from its index (or from none: then a reader from its start finds its frames). */
export function summarize(stream: string, base: number, sealed: boolean, bytes: number, index: SegmentIndex | undefined): SegmentSummary {
  return {
    stream,
    base,
    sealed,
    complete: sealed && index?.state === 'sealed',
    bytes,
    id: index?.id ?? `${base}:0:-:-`,
    frames: index?.frames ?? 0,
    types: index?.types ?? new Map(),
    runs: index?.runs ?? [],
    firstOffset: index?.firstOffset,
    lastOffset: index?.lastOffset,
    next: index?.next ?? { offset: base },
  };
}

function writeU64(out: Buffer, at: number, value: number): void {
  out.writeUInt32LE(value % 0x1_0000_0000, at);
  out.writeUInt32LE(Math.floor(value / 0x1_0000_0000), at + 4);
}

/**
 * `count` u64 values from byte `at` (thousands per index: read through a 32-bit view rather than one
 * bounds-checked Buffer call per half).
 */
function readU64s(bytes: Buffer, at: number, count: number): Float64Array {
  if (!LITTLE_ENDIAN) return Float64Array.from({ length: count }, (_, i) => readU64(bytes, at + 8 * i));
  const start = bytes.byteOffset + at;
  const words = start % 4 === 0 ? new Uint32Array(bytes.buffer, start, 2 * count) : new Uint32Array(Uint8Array.from(bytes.subarray(at, at + 8 * count)).buffer);
  const values = new Float64Array(count);
  for (let i = 0; i < count; i++) values[i] = (words[2 * i + 1] as number) * 0x1_0000_0000 + (words[2 * i] as number);
  return values;
}

function readU64(bytes: Buffer, at: number): number {
  return bytes.readUInt32LE(at + 4) * 0x1_0000_0000 + bytes.readUInt32LE(at);
}
