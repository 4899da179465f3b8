/**
 * `mqlog dump PATH [--json]`: one line per stored message, in log order, with its delivery state.
 * Read-only, safe while a daemon runs. A torn tail is a note on stderr. Damaged data is passed over
 * (spec/log-format.md §3.4): every intact message is shown, each damaged range is a line on stderr in
 * verify's format (`CORRUPT <file> <byte offset> <reason>`), and the exit code is 1.
 */
import { isUtf8 } from 'node:buffer';
import { createWriteStream } from 'node:fs';
import { join, resolve } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { inspectQueue } from '../daemon/node.js';
import { segmentFileName } from '../log/index.js';
import { ensureDir } from '../util/fs.js';
import type { MessageRecord } from '../queue/codec.js';
import type { MessageState } from '../queue/outbox-state.js';
import { boolFlag, jsonLine, stringFlag, usageError, writeLine, type Command, type ParsedArgs } from './args.js';
import { progress } from './progress.js';
import { resolveTargets } from './targets.js';

export const dumpCommand: Command = {
  name: 'dump',
  summary: 'print every stored message of a node, queue or segment, with its state',
  usage: `PATH [--json] [--body-to DIR2]
  PATH            a node directory, one queue's directory, a stream directory or one segment file
  --json          one JSON object per line
  --body-to DIR2  also write each message's body to DIR2/<id> (streamed bodies are shown as size and sha256)`,
  options: { json: { type: 'boolean' }, 'body-to': { type: 'string' } },
  allowPositionals: true,
  run,
};

async function run(args: ParsedArgs): Promise<number> {
  if (args.positionals.length !== 1) throw usageError('dump needs exactly one PATH');
  const json = boolFlag(args, 'json');
  const bodyTo = stringFlag(args, 'body-to');
  if (bodyTo !== undefined) await ensureDir(resolve(bodyTo));
  let problems = 0;
  // Progress only when the output goes elsewhere (a file, a pipe) and stderr is a terminal.
  const line = process.stdout.isTTY === true ? progress({ isTTY: false } as NodeJS.WriteStream) : progress();
  let shown = 0;
  for (const target of await resolveTargets(args.positionals[0] as string)) {
    const queue = await inspectQueue(target.info);
    const scan = queue.messages({
      ...(target.stream === undefined ? {} : { stream: target.stream }),
      ...(target.segment === undefined ? {} : { segment: target.segment }),
    });
    for await (const event of scan) {
      if (event.kind === 'message') {
        const { frame, message, state } = event;
        const record = dumpRecord(target.label, frame.stream, frame.segment, frame.offset, message, state);
        if (bodyTo !== undefined) await pipeline(Readable.from(queue.body(message)), createWriteStream(join(resolve(bodyTo), message.id), { mode: 0o600 }));
        if (!json && shown === 0) await writeLine(PLAIN_HEADER);
        await (json ? jsonLine(record) : writeLine(plainLine(record)));
        if (++shown % 1000 === 0) line.update(`dumping ${target.label}: ${shown} messages`);
      } else if (event.kind === 'torn') {
        process.stderr.write(
          `mqlog: note: ${event.torn.path} ends in a torn or unfinished frame at byte ${event.torn.position} ` +
            `(${event.torn.bytes} bytes: ${event.torn.reason}); not shown, the next writer of ${event.stream} cuts it off\n`,
        );
      } else if (event.kind === 'damaged') {
        problems++;
        process.stderr.write(`CORRUPT ${event.range.path} ${event.range.position} ${event.range.reason}\n`);
      } else if (event.kind === 'corrupt') {
        problems++;
        process.stderr.write(`mqlog: ${event.error.code}: ${event.error.message}; dump of ${join(target.label, event.stream)} stopped there\n`);
      }
    }
  }
  line.done();
  return problems === 0 ? 0 : 1;
}

export interface DumpRecord {
  queue: string;
  stream: string;
  segment: string;
  offset: number;
  id: string;
  ts: number;
  channel: string;
  priority: number;
  to: readonly string[];
  from: string;
  size: number;
  /** SHA-256 of a streamed body (such bodies are not shown inline). */
  sha256?: string;
  state: MessageState;
  headers?: Readonly<Record<string, string>>;
  expiresAt?: number;
  notBefore?: number;
  receipt?: boolean;
  body?: string;
  bodyBase64?: string;
}

export function dumpRecord(queue: string, stream: string, segment: number, offset: number, message: MessageRecord, state: MessageState): DumpRecord {
  const record: DumpRecord = {
    queue,
    stream,
    segment: `${stream}/${segmentFileName(segment)}`,
    offset,
    id: message.id,
    ts: message.ts,
    channel: message.channel,
    priority: message.priority,
    to: message.to,
    from: message.from,
    size: message.streamed?.size ?? message.body.length,
    state,
  };
  if (message.headers !== undefined) record.headers = message.headers;
  if (message.expiresAt !== undefined) record.expiresAt = message.expiresAt;
  if (message.notBefore !== undefined) record.notBefore = message.notBefore;
  if (message.receipt === true) record.receipt = true;
  if (message.streamed !== undefined) record.sha256 = message.streamed.sha256;
  else Object.assign(record, bodyField(message.body));
  return record;
}

/** `{ body }` for UTF-8 text, `{ bodyBase64 }` otherwise (CLI contract). */
export function bodyField(body: Buffer): { body: string } | { bodyBase64: string } {
  return isUtf8(body) ? { body: body.toString('utf8') } : { bodyBase64: body.toString('base64') };
}

/** The first line of the plain output: what each column of plainLine() is. */
const PLAIN_HEADER = 'QUEUE STREAM@OFFSET ID TIME CHANNEL PRIORITY FROM->TO STATE SIZE BODY';

function plainLine(r: DumpRecord): string {
  const body = r.sha256 !== undefined ? `<${r.size} bytes streamed, sha256 ${r.sha256}>` : r.body !== undefined ? JSON.stringify(r.body.length > 200 ? `${r.body.slice(0, 200)}…` : r.body) : `<${r.size} bytes binary>`;
  return `${r.queue} ${r.stream}@${r.offset} ${r.id} ${new Date(r.ts).toISOString()} ${r.channel} p${r.priority} ${r.from}->${r.to.join(',')} ${r.state} ${r.size}B ${body}`;
}
