/**
 * `mqlog verify PATH`: checks every frame of every segment under PATH — CRC, header, offsets rising
 * within and across segments, message fields — and prints one `CORRUPT <file> <byte offset> <reason>`
 * line per problem (exit 1), or a summary (exit 0). After a corrupt frame it searches for the next valid
 * one, so one bad byte does not hide the rest of the file. A torn tail at the very end of a stream (the
 * unsynced last write of a killed writer or a power cut, cut off by the next writer) is reported as a
 * `TORN` note, not as corruption; so is every tail recovery already cut off and kept in a `.torn` file.
 */
import { open, readdir, stat } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { isMqlogError } from '../errors.js';
import { FrameType } from '../log/frame.js';
import { parseStreamName } from '../log/log-store.js';
import { parseTornFileName } from '../log/recovery.js';
import { SegmentReader, findNextFrame } from '../log/segment.js';
import { SegmentSet } from '../log/segment-set.js';
import { decodeMessage } from '../queue/codec.js';
import { usageError, writeLine, type Command, type ParsedArgs } from './args.js';
import { progress } from './progress.js';

export const verifyCommand: Command = {
  name: 'verify',
  summary: 'check every frame of every segment under PATH',
  usage: `PATH
  PATH   a node directory, a queue, a stream directory, a segment file, or any directory above them`,
  options: {},
  allowPositionals: true,
  run,
};

interface Totals {
  segments: number;
  frames: number;
  bytes: number;
  problems: number;
  torn: number;
}

async function run(args: ParsedArgs): Promise<number> {
  if (args.positionals.length !== 1) throw usageError('verify needs exactly one PATH');
  const root = resolve(args.positionals[0] as string);
  const totals: Totals = { segments: 0, frames: 0, bytes: 0, problems: 0, torn: 0 };
  let info;
  try {
    info = await stat(root);
  } catch {
    throw usageError(`${args.positionals[0] as string} does not exist`);
  }
  const line = progress();
  if (info.isFile()) {
    await verifyStream(dirname(root), totals, basename(root));
  } else {
    for (const dir of await streamDirs(root, 0)) {
      await verifyStream(dir, totals);
      line.update(`verifying: ${totals.segments} segments, ${totals.frames} frames, ${totals.problems} problem(s)`);
    }
  }
  line.done();
  const summary = `verified ${totals.segments} segments, ${totals.frames} frames, ${totals.bytes} bytes under ${root}`;
  if (totals.problems > 0) {
    process.stderr.write(`mqlog: ERR_CORRUPT_FRAME: ${totals.problems} problem(s); ${summary}\n`);
    return 1;
  }
  await writeLine(`ok: ${summary}${totals.torn > 0 ? ` (${totals.torn} torn tail(s) noted)` : ''}`);
  return 0;
}

/** Every stream directory (`<key>.w<slot>`) at or under `dir`. */
async function streamDirs(dir: string, depth: number): Promise<string[]> {
  if (parseStreamName(basename(dir)) !== undefined) return [dir];
  if (depth > 6) return [];
  let entries;
  try {
    entries = await readdir(dir, { withFileTypes: true });
  } catch {
    return [];
  }
  const out: string[] = [];
  for (const e of entries.sort((a, b) => (a.name < b.name ? -1 : 1))) {
    if (e.isDirectory() && !e.name.endsWith('.lock')) out.push(...(await streamDirs(join(dir, e.name), depth + 1)));
  }
  return out;
}

/** Notes every tail that recovery cut off in `dir` and kept in a `.torn` file beside its segment. */
async function noteRecoveredTails(dir: string, totals: Totals, onlyFile?: string): Promise<void> {
  let names: string[];
  try {
    names = (await readdir(dir)).sort();
  } catch {
    return;
  }
  for (const name of names) {
    const torn = parseTornFileName(name);
    if (torn === undefined || (onlyFile !== undefined && torn.file !== onlyFile)) continue;
    const bytes = await stat(join(dir, name)).then((s) => s.size, () => 0);
    totals.torn++;
    await writeLine(`TORN ${join(dir, torn.file)} ${torn.position} recovered: ${bytes} bytes of a write that never completed its fsync were cut off and kept in ${join(dir, name)}`);
  }
}

async function problem(file: string, position: number, reason: string, totals: Totals): Promise<void> {
  totals.problems++;
  await writeLine(`CORRUPT ${file} ${position} ${reason}`);
}

/** Verifies the segments of one stream (or only `onlyFile` of it), checking offsets across segments. */
async function verifyStream(dir: string, totals: Totals, onlyFile?: string): Promise<void> {
  const segments = await new SegmentSet(dir).list();
  let previous = -1;
  for (const [index, segment] of segments.entries()) {
    if (onlyFile !== undefined && basename(segment.path) !== onlyFile) continue;
    const isLast = index === segments.length - 1;
    totals.segments++;
    if (segment.baseOffset <= previous) {
      await problem(segment.path, 0, `base offset ${segment.baseOffset} not above the previous segment's last offset ${previous}`, totals);
    }
    previous = Math.max(previous, segment.baseOffset - 1);
    let position = 0;
    for (;;) {
      let reader: SegmentReader;
      try {
        reader = await SegmentReader.open(segment.path, { position });
      } catch (err) {
        // Compaction removed it since the listing (a daemon is running): nothing left to check there.
        if (isMqlogError(err, 'ERR_NOT_FOUND')) break;
        throw err;
      }
      let resumeAt: number | undefined;
      try {
        for (;;) {
          let step;
          try {
            step = await reader.next();
          } catch (err) {
            if (!isMqlogError(err) || (err.code !== 'ERR_CORRUPT_FRAME' && err.code !== 'ERR_UNSUPPORTED_VERSION')) throw err;
            const at = Number(err.details?.position ?? reader.nextPosition);
            const next = await nextValidFrameIn(segment.path, at + 1);
            await problem(segment.path, at, `${typeof err.details?.reason === 'string' ? err.details.reason : err.message}${next === undefined ? '; no valid frame after it' : `; ${next - at} bytes unreadable up to the next valid frame at ${next}`}`, totals);
            resumeAt = next;
            break;
          }
          if (step.kind === 'end') break;
          if (step.kind === 'torn') {
            if (isLast) {
              totals.torn++;
              await writeLine(`TORN ${segment.path} ${step.position} ${step.reason} (${step.tornBytes} bytes; cut off when a writer next opens this stream)`);
            } else {
              await problem(segment.path, step.position, `${step.reason} in a sealed segment`, totals);
            }
            break;
          }
          if (step.kind !== 'frame') continue; // verify skips no type: never happens
          const { frame } = step;
          totals.frames++;
          totals.bytes += frame.bytes;
          if (frame.offset < segment.baseOffset) {
            await problem(segment.path, frame.position, `offset ${frame.offset} below the segment's base offset ${segment.baseOffset}`, totals);
          } else if (frame.offset <= previous) {
            await problem(segment.path, frame.position, `offset ${frame.offset} not above the previous frame's ${previous}`, totals);
          }
          previous = Math.max(previous, frame.offset);
          if (frame.type === FrameType.MESSAGE) {
            try {
              decodeMessage(frame.payload);
            } catch (err) {
              await problem(segment.path, frame.position, `frame ${frame.offset}: ${(err as Error).message}`, totals);
            }
          }
        }
      } finally {
        await reader.close();
      }
      if (resumeAt === undefined) break;
      position = resumeAt;
    }
  }
  await noteRecoveredTails(dir, totals, onlyFile);
}

async function nextValidFrameIn(path: string, from: number): Promise<number | undefined> {
  const handle = await open(path, 'r');
  try {
    return await findNextFrame(handle, from, (await handle.stat()).size);
  } finally {
    await handle.close();
  }
}
