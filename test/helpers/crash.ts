/**
 * Helpers for the crash and multi-process tests: feeding a child a steady stream of lines, collecting
 * what it printed before it was killed, reading the log back through the CLI (dump, verify) and
 * checking what must survive, and looking at segment files byte by byte.
 *
 * The byte-level parser here is written from the frame layout (src/log/frame.ts, spec/log-format.md §2),
 * not with src/ code, so that a bug in src cannot hide itself from the tests.
 */
import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import { randomInt } from 'node:crypto';
import { once } from 'node:events';
import { open, readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import type { TestContext } from 'node:test';
import { exited, jsonLines, mqlog, type RunResult } from './index.ts';

/** A destination nobody listens on: `send` never needs the network. */
export const NOWHERE = 'http://127.0.0.1:9';

const ID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

// ---------------------------------------------------------------------------------------------------
// Randomness that can be replayed

/**
 * A seeded PRNG (mulberry32). The seed is printed as a test diagnostic; set MQLOG_TEST_SEED to replay
 * the same kill points (the exact moments still depend on scheduling).
 */
export function seededRandom(t: TestContext): { next: () => number; seed: number } {
  const fromEnv = process.env.MQLOG_TEST_SEED;
  const seed = fromEnv !== undefined && fromEnv !== '' ? Number(fromEnv) >>> 0 : randomInt(2 ** 31);
  t.diagnostic(`random seed ${seed} (MQLOG_TEST_SEED=${seed} replays it)`);
  let state = seed;
  const next = (): number => {
    state = (state + 0x6d2b79f5) >>> 0;
    let x = state;
    x = Math.imul(x ^ (x >>> 15), x | 1);
    x ^= x + Math.imul(x ^ (x >>> 7), x | 61);
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
  };
  return { next, seed };
}

/** An integer in [min, max], log-uniformly distributed: small and large values are both common. */
export function logUniformInt(random: () => number, min: number, max: number): number {
  const value = Math.floor(Math.exp(Math.log(min) + random() * (Math.log(max + 1) - Math.log(min))));
  return Math.min(max, Math.max(min, value));
}

export function randomHex(random: () => number, chars = 8): string {
  let out = '';
  while (out.length < chars) out += Math.floor(random() * 0x100000000).toString(16).padStart(8, '0');
  return out.slice(0, chars);
}

// ---------------------------------------------------------------------------------------------------
// Talking to a child process

/**
 * Collects the complete lines a child writes to one of its streams. A line counts only once its
 * newline arrived: a line the child was killed in the middle of writing was never printed.
 */
export class LineCollector {
  readonly lines: string[] = [];
  /** Resolves when the stream ended (the child and everything it wrote are gone). */
  readonly ended: Promise<void>;
  private partial = '';
  private waiters: { count: number; resolve: () => void }[] = [];

  constructor(stream: Readable) {
    stream.setEncoding('utf8');
    stream.on('data', (chunk: string) => {
      const parts = (this.partial + chunk).split('\n');
      this.partial = parts.pop() ?? '';
      for (const line of parts) this.lines.push(line);
      this.waiters = this.waiters.filter((w) => {
        if (this.lines.length < w.count) return true;
        w.resolve();
        return false;
      });
    });
    this.ended = new Promise((resolve) => stream.once('close', () => resolve()));
  }

  /** Text after the last newline: what a killed child had not finished writing. */
  get unterminated(): string {
    return this.partial;
  }

  /**
   * Resolves as soon as `count` lines have arrived. Rejects if the child exits first or the deadline
   * passes, with the child's stderr in the message.
   */
  async waitForLines(count: number, child: ChildProcess, stderr: LineCollector, what: string, timeoutMs = 60_000): Promise<void> {
    if (this.lines.length >= count) return;
    let timer: NodeJS.Timeout | undefined;
    let waiter: { count: number; resolve: () => void } | undefined;
    const arrived = new Promise<void>((resolve) => {
      waiter = { count, resolve };
      this.waiters.push(waiter);
    });
    const died = exited(child).then(async ({ code, signal }) => {
      await Promise.race([stderr.ended, arrived]);
      throw new Error(`${what}: the child exited (code ${code}, signal ${signal}) after ${this.lines.length} lines; stderr: ${stderr.lines.join('\n')}`);
    });
    const late = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new Error(`${what}: timed out after ${timeoutMs} ms with ${this.lines.length} of ${count} lines; stderr: ${stderr.lines.join('\n')}`)),
        timeoutMs,
      );
    });
    try {
      await Promise.race([arrived, died, late]);
    } finally {
      clearTimeout(timer);
      this.waiters = this.waiters.filter((w) => w !== waiter);
    }
  }
}

export interface Feeder {
  /** Stops writing and resolves once the feeding loop has returned. */
  stop(): Promise<void>;
  /** Lines handed to the child, in order (written, or queued in its stdin pipe). */
  readonly written: string[];
}

/**
 * Writes lines to the child's stdin as fast as it takes them (honouring back-pressure) until stopped
 * or the child is gone. `makeLine(n)` makes the n-th line (from 0); it is recorded before it is written.
 */
export function feedLines(child: ChildProcess, makeLine: (n: number) => string, { linesPerChunk = 64, limit = Number.POSITIVE_INFINITY, end = false } = {}): Feeder {
  const stdin = child.stdin;
  if (stdin === null) throw new Error('the child has no stdin pipe');
  // Writing to a killed child fails with EPIPE: expected here, not a test failure.
  stdin.on('error', () => undefined);
  const written: string[] = [];
  let stopped = false;
  let wake: (() => void) | undefined;
  const gone = exited(child).then(() => {
    stopped = true;
  });
  const loop = (async () => {
    while (!stopped && written.length < limit && stdin.writable) {
      let chunk = '';
      for (let i = 0; i < linesPerChunk && written.length < limit; i++) {
        const line = makeLine(written.length);
        written.push(line);
        chunk += `${line}\n`;
      }
      if (!stdin.write(chunk)) {
        await Promise.race([once(stdin, 'drain').catch(() => undefined), gone, new Promise<void>((resolve) => (wake = resolve))]);
      }
    }
    if (end && !stopped) stdin.end();
  })();
  return {
    written,
    async stop() {
      stopped = true;
      wake?.();
      await loop;
    },
  };
}

// ---------------------------------------------------------------------------------------------------
// Reading the log back through the CLI

export interface DumpRecord {
  readonly queue: string;
  readonly stream: string;
  readonly segment: string;
  readonly offset: number;
  readonly id: string;
  readonly priority: number;
  readonly body?: string;
  readonly bodyBase64?: string;
}

export interface DumpResult extends RunResult {
  readonly records: DumpRecord[];
}

export async function dump(path: string): Promise<DumpResult> {
  const result = await mqlog(['dump', path, '--json']);
  return { ...result, records: jsonLines<DumpRecord>(result.stdout) };
}

export function verify(path: string): Promise<RunResult> {
  return mqlog(['verify', path]);
}

/** Sends one message with the CLI and returns its id; fails the test unless send exits 0 with one id. */
export async function sendOne(dir: string, body: string, extra: string[] = []): Promise<string> {
  const result = await mqlog(['send', '--data', dir, '--to', NOWHERE, ...extra, body]);
  assert.equal(result.code, 0, `send exited ${result.code}: ${result.stderr}`);
  const id = result.stdout.trim();
  assert.match(id, ID, `send printed ${JSON.stringify(result.stdout)}`);
  return id;
}

export function assertId(id: string, what: string): void {
  assert.match(id, ID, `${what}: ${JSON.stringify(id)} is not a message id`);
}

export interface Expected {
  /** Messages whose id a writer reported, so they are durable: id → body. */
  readonly acked: ReadonlyMap<string, string>;
  /** Every body ever handed to a writer; anything in the log must be one of these. */
  readonly sent: ReadonlySet<string>;
}

/**
 * Segment files named in TORN notes of verify about tails not yet cut off, and in torn-tail notes of
 * dump (tails recovery already cut off are in `.torn` files: verify notes them, dump has nothing to say).
 */
function tornFiles(verifyStdout: string, dumpStderr: string): { byVerify: string[]; byDump: string[] } {
  const byVerify = [...verifyStdout.matchAll(/^TORN (\S+) \d+ (?!recovered:)/gm)].map((m) => m[1] as string).sort();
  const byDump = [...dumpStderr.matchAll(/^mqlog: note: (\S+) ends in a torn or unfinished frame/gm)].map((m) => m[1] as string).sort();
  return { byVerify, byDump };
}

/**
 * What must hold after any crash of a writer: `dump` and `verify` exit 0 (a torn tail is a note, not
 * corruption, and both name the same torn files); every acked id is in the dump once, with its body;
 * no id and no body appears twice; nothing appears that was never sent; offsets rise in every stream.
 * Returns the dumped records, in log order, and the segment files that end in a torn tail.
 */
export async function assertLogIntact(dir: string, expected: Expected, label: string): Promise<{ records: DumpRecord[]; torn: string[] }> {
  // Both only read: run them side by side.
  const [dumped, verified] = await Promise.all([dump(dir), verify(dir)]);
  assert.equal(dumped.code, 0, `${label}: dump exited ${dumped.code}; stderr: ${dumped.stderr}`);
  assert.doesNotMatch(dumped.stderr, /ERR_/, `${label}: dump reported an error`);
  const byId = new Map<string, DumpRecord>();
  const bodies = new Set<string>();
  const lastOffset = new Map<string, number>();
  for (const r of dumped.records) {
    assert.ok(!byId.has(r.id), `${label}: id ${r.id} appears twice in the dump (${r.stream}@${r.offset} and ${byId.get(r.id)?.stream}@${byId.get(r.id)?.offset})`);
    byId.set(r.id, r);
    assert.equal(typeof r.body, 'string', `${label}: ${r.stream}@${r.offset} has no UTF-8 body`);
    const body = r.body as string;
    assert.ok(expected.sent.has(body), `${label}: ${r.stream}@${r.offset} holds a body that was never sent: ${JSON.stringify(body.slice(0, 80))}`);
    assert.ok(!bodies.has(body), `${label}: body ${JSON.stringify(body.slice(0, 80))} appears twice in the dump`);
    bodies.add(body);
    const key = `${r.queue}/${r.stream}`;
    const previous = lastOffset.get(key) ?? -1;
    assert.ok(r.offset > previous, `${label}: offsets of ${key} do not rise: ${r.offset} after ${previous}`);
    lastOffset.set(key, r.offset);
  }
  let missing = 0;
  let firstMissing: string | undefined;
  for (const [id, body] of expected.acked) {
    const r = byId.get(id);
    if (r === undefined) {
      missing++;
      firstMissing ??= id;
      continue;
    }
    assert.equal(r.body, body, `${label}: acked id ${id} (${r.stream}@${r.offset}) has the wrong body`);
  }
  assert.equal(missing, 0, `${label}: ${missing} of ${expected.acked.size} acked ids are missing from the dump, e.g. ${firstMissing}`);

  assert.equal(verified.code, 0, `${label}: verify exited ${verified.code}\n${verified.stdout}${verified.stderr}`);
  assert.doesNotMatch(verified.stdout, /^CORRUPT /m, `${label}: verify found corruption`);
  assert.match(verified.stdout, /^ok: verified \d+ segments/m, `${label}: verify printed no summary`);
  const torn = tornFiles(verified.stdout, dumped.stderr);
  assert.deepEqual(torn.byDump, torn.byVerify, `${label}: dump and verify disagree about torn tails`);
  return { records: dumped.records, torn: torn.byVerify };
}

/**
 * Checks that the messages a writer made durable form a prefix of what it was given, in order, with
 * no hole: a log keeps appends in order, so a crash can only lose a tail. `indexOf` returns the
 * position of a body in the writer's input (or undefined for bodies of other writers). Returns how
 * many of them the log holds.
 */
export function assertPrefix(records: readonly DumpRecord[], indexOf: (body: string) => number | undefined, label: string): number {
  let expectedNext = 0;
  for (const r of records) {
    const index = indexOf(r.body ?? '');
    if (index === undefined) continue;
    assert.equal(index, expectedNext, `${label}: ${r.stream}@${r.offset} holds input #${index} where #${expectedNext} was due (a hole or reordering)`);
    expectedNext++;
  }
  return expectedNext;
}

// ---------------------------------------------------------------------------------------------------
// Segment files, byte by byte

export const FRAME_MAGIC = 0xa7;
export const FRAME_HEADER_BYTES = 20;
/** Type of the log's own durability marks (spec/log-format.md §3.3): not data, and they take no offset. */
export const SYNC_FRAME_TYPE = 4;

/** One frame as found in a segment file: magic, version, type, flags, u32 length, u64 offset, u32 CRC. */
export interface RawFrame {
  readonly position: number;
  readonly bytes: number;
  readonly type: number;
  readonly offset: number;
  readonly payloadBytes: number;
}

/**
 * The whole data frames at the start of a segment image, up to the first byte that is not the start
 * of a complete frame (end of file, zero fill, torn or damaged data); `marks` are the SYNC frames met
 * on the way, `end` where the last whole frame of either kind ends. No CRC check: the images handed in
 * are ones the tests wrote themselves or that src/ already accepted.
 */
export function parseFrames(image: Buffer): { frames: RawFrame[]; marks: RawFrame[]; end: number } {
  const frames: RawFrame[] = [];
  const marks: RawFrame[] = [];
  let at = 0;
  while (at + FRAME_HEADER_BYTES <= image.length && image[at] === FRAME_MAGIC) {
    const payloadBytes = image.readUInt32LE(at + 4);
    const bytes = FRAME_HEADER_BYTES + payloadBytes;
    if (at + bytes > image.length) break;
    const frame = { position: at, bytes, type: image[at + 2] as number, offset: Number(image.readBigUInt64LE(at + 8)), payloadBytes };
    (frame.type === SYNC_FRAME_TYPE ? marks : frames).push(frame);
    at += bytes;
  }
  return { frames, marks, end: at };
}

export async function framesOf(path: string): Promise<{ frames: RawFrame[]; marks: RawFrame[]; end: number; size: number }> {
  const image = await readFile(path);
  return { ...parseFrames(image), size: image.length };
}

/** Segment files of a stream directory, in base-offset order (the names sort that way). */
export async function segmentFiles(streamDir: string): Promise<string[]> {
  return (await readdir(streamDir)).filter((name) => name.endsWith('.seg')).sort().map((name) => join(streamDir, name));
}

/** Stream directories (`<key>.w<slot>`) of a queue directory. */
export async function streamDirs(queueDir: string): Promise<string[]> {
  return (await readdir(queueDir, { withFileTypes: true }))
    .filter((e) => e.isDirectory() && /^[a-z0-9]+\.w\d+$/.test(e.name))
    .map((e) => join(queueDir, e.name))
    .sort();
}

/** XORs one byte of a file with `mask` in place. */
export async function flipByte(path: string, position: number, mask = 0xff): Promise<void> {
  const handle = await open(path, 'r+');
  try {
    const byte = Buffer.alloc(1);
    const { bytesRead } = await handle.read(byte, 0, 1, position);
    assert.equal(bytesRead, 1, `${path} has no byte ${position}`);
    byte[0] = (byte[0] as number) ^ mask;
    await handle.write(byte, 0, 1, position);
  } finally {
    await handle.close();
  }
}
