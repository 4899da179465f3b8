/**
 * `mqlog send`: appends to the local outbox and prints each new id once that message is fsync'd.
 * With --lines, every stdin line is a message; ids are printed in input order as each becomes durable,
 * while up to WINDOW sends are in flight so that they share fsyncs.
 */
import { open, readFile, stat, type FileHandle } from 'node:fs/promises';
import { BODY_CHUNK_BYTES, INLINE_BODY_LIMIT } from '../queue/body.js';
import { createInterface } from 'node:readline';
import { MqlogError } from '../errors.js';
import { openNode, type MqlogNode } from '../daemon/node.js';
import type { SendOptions } from '../queue/outbox.js';
import { boolFlag, dataDir, durationFlag, intFlag, stringFlag, stringList, usageError, writeLine, type Command, type ParsedArgs } from './args.js';

const WINDOW = 256;

export const sendCommand: Command = {
  name: 'send',
  summary: 'append a message to the local outbox and print its id once it is on disk',
  usage: `--data DIR --to DEST [--to DEST…] [options] (BODY | --file PATH | --lines)
  --to DEST          peer name from mqlog.json, or http(s)://HOST:PORT; several make one multicast message
  --priority 0-9     higher is more urgent (default 4)
  --channel NAME     default "common"
  --ttl DUR          not delivered after this long (500ms, 10s, 5m, 2h)
  --delay DUR        not delivered before this long
  --receipt          ask for a "job done" receipt (see mqlog receipt)
  --header K=V       a message header; repeatable
  --file PATH        the body is the content of PATH (- for stdin; large bodies are streamed)
  --lines            every line of stdin is one message (without its newline)`,
  options: {
    data: { type: 'string' },
    to: { type: 'string', multiple: true },
    priority: { type: 'string' },
    channel: { type: 'string' },
    ttl: { type: 'string' },
    delay: { type: 'string' },
    receipt: { type: 'boolean' },
    header: { type: 'string', multiple: true },
    file: { type: 'string' },
    lines: { type: 'boolean' },
  },
  allowPositionals: true,
  run,
};

async function run(args: ParsedArgs): Promise<number> {
  const to = stringList(args, 'to');
  if (to.length === 0) throw usageError('--to is required (a peer name or http://HOST:PORT)');
  const file = stringFlag(args, 'file');
  const lines = boolFlag(args, 'lines');
  const sources = (args.positionals.length > 0 ? 1 : 0) + (file !== undefined ? 1 : 0) + (lines ? 1 : 0);
  if (args.positionals.length > 1) throw usageError('give the body as one argument (quote it)');
  if (sources !== 1) throw usageError('give exactly one of BODY, --file PATH or --lines');
  const options = sendOptions(args);

  const node = await openNode({ data: dataDir(args), onWarning: (message) => process.stderr.write(`mqlog: warning: ${message}\n`) });
  try {
    // Check destinations before reading any input, so a typo fails fast with nothing sent.
    for (const dest of to) node.resolveDestination(dest);
    if (lines) {
      await sendLines(node, to, options);
    } else if (file === '-') {
      // A body of unknown size: kept whole while it is small, streamed in chunks once it is not.
      const { head, rest } = await readUpTo(process.stdin, INLINE_BODY_LIMIT + 1);
      await writeLine(rest === undefined ? await node.send(to, head, options) : await node.sendStream(to, prepend(head, rest), options));
    } else if (file !== undefined && (await fileSize(file)) > INLINE_BODY_LIMIT) {
      // Large files are streamed in chunks: never read whole into memory.
      await writeLine(await node.sendStream(to, fileBlocks(file), options));
    } else {
      const body = file !== undefined ? await readBodyFile(file) : Buffer.from(args.positionals[0] ?? '', 'utf8');
      await writeLine(await node.send(to, body, options));
    }
  } finally {
    await node.close();
  }
  return 0;
}

function sendOptions(args: ParsedArgs): SendOptions {
  const headers: Record<string, string> = {};
  for (const h of stringList(args, 'header')) {
    const eq = h.indexOf('=');
    if (eq <= 0) throw usageError(`--header must be K=V, got ${JSON.stringify(h)}`);
    headers[h.slice(0, eq)] = h.slice(eq + 1);
  }
  const options: { -readonly [K in keyof SendOptions]: SendOptions[K] } = {};
  const priority = intFlag(args, 'priority', 0, 9);
  if (priority !== undefined) options.priority = priority;
  const channel = stringFlag(args, 'channel');
  if (channel !== undefined) {
    if (channel.length === 0) throw usageError('--channel must not be empty');
    options.channel = channel;
  }
  const ttl = durationFlag(args, 'ttl');
  if (ttl !== undefined) options.ttlMs = ttl;
  const delay = durationFlag(args, 'delay');
  if (delay !== undefined) options.delayMs = delay;
  if (boolFlag(args, 'receipt')) options.receipt = true;
  if (Object.keys(headers).length > 0) options.headers = headers;
  return options;
}

/**
 * Reads `source` until `limit` bytes or its end. `rest` is the unread remainder (an iterator positioned
 * after `head`), undefined when the source ended within the limit.
 */
async function readUpTo(source: AsyncIterable<Buffer>, limit: number): Promise<{ head: Buffer; rest: AsyncIterator<Buffer> | undefined }> {
  const iterator = source[Symbol.asyncIterator]();
  const parts: Buffer[] = [];
  let bytes = 0;
  while (bytes < limit) {
    const next = await iterator.next();
    if (next.done === true) return { head: Buffer.concat(parts), rest: undefined };
    parts.push(next.value);
    bytes += next.value.length;
  }
  return { head: Buffer.concat(parts), rest: iterator };
}

async function* prepend(head: Buffer, rest: AsyncIterator<Buffer>): AsyncGenerator<Buffer> {
  yield head;
  for (let next = await rest.next(); next.done !== true; next = await rest.next()) yield next.value;
}

/**
 * A file's bytes, 1 MiB at a time, read into one buffer over and over (sendStream copies each piece
 * before it asks for the next): no new memory per MiB, however large the file.
 */
async function* fileBlocks(path: string): AsyncGenerator<Buffer> {
  let handle: FileHandle;
  try {
    handle = await open(path, 'r');
  } catch (err) {
    throw new MqlogError('ERR_INVALID_ARG', `cannot read --file ${path}: ${(err as Error).message}`, { cause: err });
  }
  try {
    const block = Buffer.allocUnsafe(BODY_CHUNK_BYTES);
    for (;;) {
      const { bytesRead } = await handle.read(block, 0, block.length, null);
      if (bytesRead === 0) return;
      yield block.subarray(0, bytesRead);
    }
  } finally {
    await handle.close();
  }
}

async function fileSize(path: string): Promise<number> {
  try {
    return (await stat(path)).size;
  } catch (err) {
    throw new MqlogError('ERR_INVALID_ARG', `cannot read --file ${path}: ${(err as Error).message}`, { cause: err });
  }
}

async function readBodyFile(path: string): Promise<Buffer> {
  try {
    return await readFile(path);
  } catch (err) {
    throw new MqlogError('ERR_INVALID_ARG', `cannot read --file ${path}: ${(err as Error).message}`, { cause: err });
  }
}

/**
 * Sends every stdin line, keeping up to WINDOW in flight. Each id is printed as soon as its message and
 * every earlier one are durable — driven by the sends completing, not by the next input line, so a
 * producer that waits for each id before writing the next line is not left hanging.
 */
async function sendLines(node: MqlogNode, to: string[], options: SendOptions): Promise<void> {
  const inFlight: Sending[] = [];
  let printing: Promise<void> = Promise.resolve();
  let failure: Error | undefined;
  let lineNumber = 0;
  // Ids go out in input order as the sends complete. A failed line is reported on stderr with its
  // number; no new line is sent after a failure, and every line that did become durable is printed.
  const printReady = (): void => {
    printing = printing.then(async () => {
      while (inFlight[0]?.settled === true) {
        const head = inFlight.shift() as Sending;
        if (head.id !== undefined) {
          await writeLine(head.id);
          continue;
        }
        const error = head.error instanceof Error ? head.error : new Error(String(head.error));
        failure ??= error;
        const code = (head.error as { code?: unknown } | undefined)?.code;
        process.stderr.write(`mqlog: ${typeof code === 'string' ? code : 'ERR_IO'}: line ${head.line} was not sent: ${error.message}\n`);
      }
    });
  };
  const input = createInterface({ input: process.stdin, crlfDelay: Number.POSITIVE_INFINITY });
  try {
    for await (const line of input) {
      if (failure !== undefined || inFlight.some((s) => s.settled && s.id === undefined)) break;
      const sending = track(node.send(to, line, options), ++lineNumber);
      inFlight.push(sending);
      void sending.done.then(printReady);
      while (inFlight.length >= WINDOW) await (inFlight[0] as Sending).done.then(() => printing);
    }
    await Promise.all(inFlight.map((s) => s.done));
    printReady();
    await printing;
  } finally {
    input.close();
  }
  if (failure !== undefined) throw failure;
}

interface Sending {
  readonly line: number;
  settled: boolean;
  id?: string;
  error?: unknown;
  readonly done: Promise<void>;
}

function track(promise: Promise<string>, line: number): Sending {
  const sending: Sending = {
    line,
    settled: false,
    done: promise.then(
      (id) => {
        sending.id = id;
        sending.settled = true;
      },
      (error: unknown) => {
        sending.error = error;
        sending.settled = true;
      },
    ),
  };
  return sending;
}
