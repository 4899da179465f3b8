/**
 * `mqlog verify PATH`: checks every frame of every segment under PATH — CRC, header, offsets rising
 * within and across segments, message fields — and prints one `CORRUPT <file> <byte offset> <reason>`
 * line per problem (exit 1), or a summary (exit 0). After a corrupt frame it searches for the next valid
 * one, so one bad byte does not hide the rest of the file. A torn tail at the very end of a stream (the
 * unsynced last write of a killed writer or a power cut, cut off by the next writer) is reported as a
 * `TORN` note, not as corruption; so is every tail recovery already cut off and kept in a `.torn` file.
 * A segment index that does not describe its segment is an `INDEX <file> <reason>` note: indexes are
 * rebuilt from their segments when next needed.
 */
import { resolve } from 'node:path';
import { inspectQueue } from '../daemon/node.js';
import { verifyQueue } from '../queue/queue-scan.js';
import { usageError, writeLine, type Command, type ParsedArgs } from './args.js';
import { progress } from './progress.js';
import { resolveTargets } from './targets.js';

export const verifyCommand: Command = {
  name: 'verify',
  summary: 'check every frame of every segment under PATH',
  usage: `PATH
  PATH   a node directory, a queue, a stream directory, a segment file, or any directory above them`,
  options: {},
  allowPositionals: true,
  run,
};

async function run(args: ParsedArgs): Promise<number> {
  if (args.positionals.length !== 1) throw usageError('verify needs exactly one PATH');
  const root = resolve(args.positionals[0] as string);
  const totals = { segments: 0, frames: 0, bytes: 0, problems: 0, torn: 0, indexes: 0 };
  // A PATH that does not exist is a problem found (exit 1), as with dump.
  const targets = await resolveTargets(root);
  const line = progress();
  for (const target of targets) {
    const queue = await inspectQueue(target.info);
    const only = { ...(target.stream === undefined ? {} : { stream: target.stream }), ...(target.segment === undefined ? {} : { segment: target.segment }) };
    for await (const event of verifyQueue(queue.store, target.info.queue, only)) {
      if (event.kind === 'segment') {
        totals.segments++;
        totals.frames += event.frames;
        totals.bytes += event.bytes;
        line.update(`verifying: ${totals.segments} segments, ${totals.frames} frames, ${totals.problems} problem(s)`);
      } else if (event.kind === 'corrupt') {
        totals.problems++;
        await writeLine(`CORRUPT ${event.path} ${event.position} ${event.reason}`);
      } else if (event.kind === 'torn') {
        totals.torn++;
        await writeLine(`TORN ${event.path} ${event.position} ${event.recovered ? `recovered: ${event.reason}` : event.reason}`);
      } else if (event.kind === 'index') {
        totals.indexes++;
        await writeLine(`INDEX ${event.path} ${event.reason}`);
      }
    }
  }
  line.done();
  const summary = `verified ${totals.segments} segments, ${totals.frames} frames, ${totals.bytes} bytes under ${root}`;
  if (totals.problems > 0) {
    process.stderr.write(`mqlog: ERR_CORRUPT_FRAME: ${totals.problems} problem(s); ${summary}\n`);
    return 1;
  }
  const notes = [...(totals.torn > 0 ? [`${totals.torn} torn tail(s)`] : []), ...(totals.indexes > 0 ? [`${totals.indexes} stale index(es)`] : [])];
  await writeLine(`ok: ${summary}${notes.length > 0 ? ` (${notes.join(', ')} noted)` : ''}`);
  return 0;
}
