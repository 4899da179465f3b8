/**
 * The floor of the lone-message latency on this machine: the hops a message makes from `send()` on A
 * to a consumer on B, with nothing of mqlog in them. Four processes, as in the e2e bench:
 *
 *   this process   writes a 1 KiB record to a file, fdatasyncs it, then appends a 16-byte mark after it
 *   hop "a"        woken by a watch of that file's directory, reads up to the mark and POSTs the record
 *                  to "b" (node:http, kept-alive connection)
 *   hop "b"        writes the body to a file of its own, fdatasyncs, answers 200 and appends a mark
 *   hop "c"        woken by a watch of b's directory, reads up to the mark, prints the record's number
 *
 * A sample runs from the write in this process to the line from "c" (as the e2e bench's lone message).
 * What mqlog adds on top of this — framing, CRCs, claims, leases, acks — is what the e2e figure shows
 * beyond it. The records and marks are the simplest that make each hop wait for the durability the
 * real path waits for: a reader acts on a record only once the writer's mark after it says it was
 * fsync'd.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, fstatSync, mkdirSync, openSync, readSync, watch, writeSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { Agent, createServer, request } from 'node:http';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { nextLine, runsAsChild, type BenchContext } from './harness.ts';

const RECORD_BYTES = 1024;
const MARK_BYTES = 16;
const HOP_FLAG = '--hop';
const SELF = fileURLToPath(import.meta.url);
/** Records sent through first and not timed: each hop's code compiled, its connection open. */
const WARM_RECORDS = 20;

/** Runs `samples` lone records through the hops (after WARM_RECORDS untimed), `pauseMs` apart; the milliseconds of each. */
export async function hopsFloor(ctx: BenchContext, dir: string, samples: number, pauseMs: number): Promise<number[]> {
  const aDir = join(dir, 'hop-a');
  const bDir = join(dir, 'hop-b');
  mkdirSync(aDir, { recursive: true });
  mkdirSync(bDir, { recursive: true });
  const children: ChildProcess[] = [];
  const start = (role: string, ...args: string[]): ReturnType<typeof createInterface> => {
    const child = spawn(process.execPath, ['--import', 'tsx', SELF, HOP_FLAG, role, ...args], { cwd: ctx.root, stdio: ['ignore', 'pipe', 'inherit'], signal: ctx.signal });
    child.on('error', () => undefined);
    children.push(child);
    return createInterface({ input: child.stdout as NodeJS.ReadableStream });
  };
  try {
    const b = start('b', bDir)[Symbol.asyncIterator]();
    const port = await nextLine(b, 'hops: "b" to listen');
    const c = start('c', bDir)[Symbol.asyncIterator]();
    await nextLine(c, 'hops: "c" to watch');
    const a = start('a', aDir, port)[Symbol.asyncIterator]();
    await nextLine(a, 'hops: "a" to watch');
    const file = await open(join(aDir, 'out.dat'), 'a+');
    const times: number[] = [];
    try {
      let at = 0;
      for (let i = 0; i < WARM_RECORDS + samples; i++) {
        ctx.signal.throwIfAborted();
        await new Promise((resolve) => setTimeout(resolve, pauseMs));
        const startedMs = performance.now();
        writeSync(file.fd, record(i), 0, RECORD_BYTES, at);
        await file.datasync();
        writeSync(file.fd, mark(at + RECORD_BYTES), 0, MARK_BYTES, at + RECORD_BYTES);
        at += RECORD_BYTES + MARK_BYTES;
        const line = await nextLine(c, `hops: record ${i} to "c"`);
        if (line !== String(i)) throw new Error(`hops: "c" printed ${line}, ${i} was written`);
        if (i >= WARM_RECORDS) times.push(performance.now() - startedMs);
      }
    } finally {
      await file.close();
    }
    return times;
  } finally {
    for (const child of children) child.kill('SIGKILL');
  }
}

function record(n: number): Buffer {
  const bytes = Buffer.alloc(RECORD_BYTES, 0x2e);
  bytes.write(`M${n}:`, 0);
  return bytes;
}

function mark(syncedBytes: number): Buffer {
  const bytes = Buffer.alloc(MARK_BYTES, 0x20);
  bytes.write(`S${syncedBytes}`, 0);
  return bytes;
}

/**
 * Follows `path` (written by one writer as records each followed by its mark) from a watch of its
 * directory, calling `onRecord` with each record once the mark after it is there.
 */
function follow(dir: string, name: string, onRecord: (record: Buffer) => void): void {
  let fd: number | undefined;
  let at = 0;
  const look = (): void => {
    if (fd === undefined) {
      try {
        fd = openSync(join(dir, name), 'r');
      } catch {
        return;
      }
    }
    const size = fstatSync(fd).size;
    while (size - at >= RECORD_BYTES + MARK_BYTES) {
      const bytes = Buffer.allocUnsafe(RECORD_BYTES + MARK_BYTES);
      readSync(fd, bytes, 0, bytes.length, at);
      if (bytes[RECORD_BYTES] !== 0x53) return;
      at += bytes.length;
      onRecord(bytes.subarray(0, RECORD_BYTES));
    }
  };
  watch(dir, (_event, changed) => {
    if (changed === name) look();
  });
  process.on('exit', () => fd !== undefined && closeSync(fd));
}

async function hop(role: string, dir: string, port: string | undefined): Promise<void> {
  if (role === 'b') {
    const file = await open(join(dir, 'in.dat'), 'a+');
    let at = 0;
    const server = createServer((req, res) => {
      const parts: Buffer[] = [];
      req.on('data', (part: Buffer) => parts.push(part));
      req.on('end', () => {
        const body = Buffer.concat(parts);
        writeSync(file.fd, body, 0, body.length, at);
        file.datasync().then(() => {
          res.end('ok');
          writeSync(file.fd, mark(at + body.length), 0, MARK_BYTES, at + body.length);
          at += body.length + MARK_BYTES;
        }, (err: unknown) => res.destroy(err as Error));
      });
    });
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      process.stdout.write(`${typeof address === 'object' && address !== null ? address.port : 0}\n`);
    });
    return;
  }
  if (role === 'c') {
    follow(dir, 'in.dat', (rec) => process.stdout.write(`${rec.subarray(1, rec.indexOf(0x3a)).toString()}\n`));
    process.stdout.write('ready\n');
    return;
  }
  const agent = new Agent({ keepAlive: true, maxSockets: 1 });
  follow(dir, 'out.dat', (rec) => {
    const post = request({ host: '127.0.0.1', port: Number(port), method: 'POST', path: '/', agent, headers: { 'content-length': rec.length } }, (res) => res.resume());
    post.end(rec);
  });
  process.stdout.write('ready\n');
}

// Entry point of a hop: `node --import tsx bench/hops.ts --hop <a|b|c> <dir> [port]`.
if (runsAsChild(import.meta.url, HOP_FLAG)) {
  await hop(process.argv[3] ?? '', process.argv[4] ?? '', process.argv[5]);
}
