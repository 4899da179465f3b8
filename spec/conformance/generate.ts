/**
 * Writes the conformance corpus (spec/conformance/README.md): small node directories and HTTP request
 * bodies, and what mqlog answers for each. The inputs are built from the spec's byte layouts with fixed
 * ids and times, so the same files come out on every run; the expected outputs are what this
 * implementation prints, reviewed by hand when they change (`git diff spec/conformance`).
 *
 *   node --import tsx spec/conformance/generate.ts        (after npm run build)
 */
import { spawn, spawnSync } from 'node:child_process';
import { mkdir, readdir, rm, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { Packr } from 'msgpackr';
import { FrameType, encodeFrame, encodeSyncFrame } from '../../src/log/frame.ts';
import { envelope as wireEnvelope } from '../../test/helpers/wire.ts';

const HERE = resolve(import.meta.dirname);
const ROOT = resolve(HERE, '..', '..');
const CLI = join(ROOT, 'dist', 'cli', 'main.js');
/** Where the node directories are put when their outputs are taken: paths in outputs say `<NODE>` instead. */
export const NODE_PLACEHOLDER = '<NODE>';

const packr = new Packr({ useRecords: false, mapsAsObjects: true });
const T0 = 1_790_000_000_000;
const NODE_ID = '0190f0c2-7a00-7000-8000-00000000000a';

/** A UUIDv7 with a fixed time and counter, so ids are the same on every run. */
function id(n: number, ts = T0 + n): string {
  const hex = ts.toString(16).padStart(12, '0') + '7' + n.toString(16).padStart(3, '0') + '8' + n.toString(16).padStart(15, '0');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20, 32)}`;
}

interface Fields {
  readonly n: number;
  readonly channel?: string;
  readonly priority?: number;
  readonly to?: readonly string[];
  readonly from?: string;
  readonly headers?: Record<string, string>;
  readonly body: string | Buffer;
}

/** A MESSAGE payload (spec/log-format.md §8): u32 meta length, the meta map, the body. Times as int64. */
function message(f: Fields): Buffer {
  const meta: Record<string, unknown> = { i: id(f.n), t: BigInt(T0 + f.n), c: f.channel ?? 'common', p: f.priority ?? 4, d: f.to ?? ['b'], f: f.from ?? 'a' };
  if (f.headers !== undefined) meta.h = f.headers;
  const packed = packr.pack(meta);
  const prefix = Buffer.alloc(4);
  prefix.writeUInt32LE(packed.length, 0);
  return Buffer.concat([prefix, packed, typeof f.body === 'string' ? Buffer.from(f.body, 'utf8') : f.body]);
}

/** Frames of one write followed by the sync mark a writer puts after its fsync (§3.3). */
function run(firstOffset: number, payloads: readonly Buffer[], startsAt: number): Buffer {
  const frames = payloads.map((p, i) => encodeFrame(FrameType.MESSAGE, firstOffset + i, p));
  const data = Buffer.concat(frames);
  return Buffer.concat([data, encodeSyncFrame(firstOffset + payloads.length, startsAt + data.length)]);
}

interface NodeCase {
  readonly name: string;
  readonly about: string;
  /** path under the node directory → content */
  readonly files: Record<string, Buffer | string>;
}

function queueJson(kind: string, channel: string | null): string {
  return JSON.stringify({ kind, channel });
}

function nodeCases(): NodeCase[] {
  const cases: NodeCase[] = [];
  const base = { 'node.json': JSON.stringify({ id: NODE_ID, createdAt: '2026-09-21T00:00:00.000Z' }), 'mqlog.json': JSON.stringify({ name: 'a', peers: { b: { url: 'http://127.0.0.1:9' } } }) };

  const three = run(0, [message({ n: 1, body: 'hello' }), message({ n: 2, headers: { k: 'v' }, body: 'with a header' }), message({ n: 3, body: Buffer.from([0, 1, 2, 255]) })], 0);
  cases.push({
    name: 'outbox-basic',
    about: 'An outbox with three messages (text, a header, binary) in p4.w0 and one of priority 9 in p9.w0; no cursor, so all pending.',
    files: { ...base, 'outbox/queue.json': queueJson('outbox', null), 'outbox/p4.w0/00000000000000000000.seg': three, 'outbox/p9.w0/00000000000000000000.seg': run(0, [message({ n: 4, priority: 9, body: 'urgent' })], 0) },
  });

  cases.push({
    name: 'inbox-channels',
    about: 'Two inbox channels, one with a name that is encoded on disk (jobs/high? becomes jobs%2Fhigh%3F).',
    files: {
      ...base,
      'inbox/common/queue.json': queueJson('inbox', 'common'),
      'inbox/common/p4.w0/00000000000000000000.seg': run(0, [message({ n: 5, to: ['a'], from: 'b', body: 'in common' })], 0),
      'inbox/jobs%2Fhigh%3F/queue.json': queueJson('inbox', 'jobs/high?'),
      'inbox/jobs%2Fhigh%3F/p7.w0/00000000000000000000.seg': run(0, [message({ n: 6, channel: 'jobs/high?', priority: 7, to: ['a'], from: 'b', body: 'a job' })], 0),
    },
  });

  const first = run(0, [message({ n: 7, body: 'kept 0' }), message({ n: 8, body: 'kept 1' })], 0);
  const torn = encodeFrame(FrameType.MESSAGE, 2, message({ n: 9, body: 'never completed' }));
  cases.push({
    name: 'torn-tail',
    about: 'The last write was cut (no mark after it): a torn tail, not corruption. The two messages before it are intact.',
    files: { ...base, 'outbox/queue.json': queueJson('outbox', null), 'outbox/p4.w0/00000000000000000000.seg': Buffer.concat([first, torn.subarray(0, torn.length - 7)]) },
  });

  const four = [10, 11, 12, 13].map((n) => encodeFrame(FrameType.MESSAGE, n - 10, message({ n, body: `message ${n}` })));
  const flipped = Buffer.from(four[1] as Buffer);
  flipped[flipped.length - 3] = (flipped[flipped.length - 3] as number) ^ 0x20;
  const data = Buffer.concat([four[0] as Buffer, flipped, four[2] as Buffer, four[3] as Buffer]);
  cases.push({
    name: 'corrupt-frame',
    about: 'A flipped bit in the second of four frames, inside data a later sync mark says was fsync-ed: corruption at that frame, the others intact.',
    files: { ...base, 'outbox/queue.json': queueJson('outbox', null), 'outbox/p4.w0/00000000000000000000.seg': Buffer.concat([data, encodeSyncFrame(4, data.length)]) },
  });

  const sealed = run(0, [message({ n: 14, body: 'sealed 0' }), message({ n: 15, body: 'sealed 1' })], 0);
  cases.push({
    name: 'truncated-sealed',
    about: 'A sealed segment cut inside its second frame, followed by an intact last segment: every intact message is read, the cut is damage.',
    files: {
      ...base,
      'outbox/queue.json': queueJson('outbox', null),
      'outbox/p4.w0/00000000000000000000.seg': sealed.subarray(0, sealed.length - 28 - 5),
      'outbox/p4.w0/00000000000000000002.seg': run(2, [message({ n: 16, body: 'last 2' })], 0),
    },
  });
  return cases;
}

interface HttpCase {
  readonly name: string;
  readonly about: string;
  readonly body: Buffer;
  readonly contentType?: string;
}

/** The batch envelope v2 (spec/http-protocol.md §3) around whole frames, with fixed header fields. */
function envelope(frames: readonly { stream: string; frame: Buffer }[]): Buffer {
  return wireEnvelope(frames, { node: '0190f0c2-7a00-7000-8000-0000000000aa', name: 'a', to: 'b' });
}

function httpCases(): HttpCase[] {
  const frame = (n: number, offset: number, fields: Partial<Fields> = {}): Buffer => encodeFrame(FrameType.MESSAGE, offset, message({ n, body: `sent ${n}`, ...fields }));
  const two = envelope([{ stream: 'p4.w0', frame: frame(20, 0) }, { stream: 'p4.w0', frame: frame(21, 1) }]);
  const flipped = Buffer.from(frame(22, 0));
  flipped[flipped.length - 2] = (flipped[flipped.length - 2] as number) ^ 0x10;
  const header = Buffer.from(envelope([{ stream: 'p4.w0', frame: frame(23, 0) }]));
  header[20] = (header[20] as number) ^ 0x01; // inside the envelope header, covered by its CRC
  return [
    { name: 'valid-two', about: 'Two valid messages of one stream: both stored.', body: two },
    { name: 'truncated', about: 'The same body cut inside its second frame.', body: two.subarray(0, two.length - 7) },
    { name: 'corrupt-frame-crc', about: 'A flipped bit in a frame payload: its CRC fails.', body: envelope([{ stream: 'p4.w0', frame: flipped }]) },
    { name: 'corrupt-envelope', about: 'A flipped bit in the envelope header: the envelope CRC fails.', body: header },
    { name: 'stream-path', about: 'A stream name that is a path.', body: envelope([{ stream: '../../x', frame: frame(24, 0) }]) },
    { name: 'bad-priority', about: 'A message of priority 12 inside a sound frame.', body: envelope([{ stream: 'p4.w0', frame: frame(25, 0, { priority: 12 }) }]) },
    { name: 'empty-channel', about: 'A message on the empty channel.', body: envelope([{ stream: 'p4.w0', frame: frame(26, 0, { channel: '' }) }]) },
    { name: 'random', about: '256 bytes that are no envelope.', body: Buffer.from(Array.from({ length: 256 }, (_, i) => (i * 97 + 13) % 256)) },
    { name: 'wrong-content-type', about: 'A valid batch sent as application/json.', body: two, contentType: 'application/json' },
  ];
}

/** Runs the CLI on a node directory copy and records exit code, stdout and stderr (the directory as <NODE>). */
function cli(args: string[], dir: string): { code: number | null; stdout: string; stderr: string } {
  const result = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8' });
  const scrub = (text: string): string => text.split(dir).join(NODE_PLACEHOLDER);
  return { code: result.status, stdout: scrub(result.stdout), stderr: scrub(result.stderr) };
}

export async function writeNodeCase(c: NodeCase, dir: string): Promise<void> {
  for (const [path, content] of Object.entries(c.files)) {
    await mkdir(join(dir, path, '..'), { recursive: true });
    await writeFile(join(dir, path), content);
  }
}

async function main(): Promise<void> {
  const out = join(HERE, 'nodes');
  await rm(out, { recursive: true, force: true });
  for (const c of nodeCases()) {
    const caseDir = join(out, c.name);
    await writeNodeCase(c, join(caseDir, 'node'));
    await writeFile(join(caseDir, 'about.txt'), `${c.about}\n`);
    // Outputs are taken on a scratch copy: reading may set files aside (a torn tail) or build indexes.
    const scratch = join(ROOT, '.conformance-scratch');
    await rm(scratch, { recursive: true, force: true });
    await writeNodeCase(c, scratch);
    for (const [file, args] of [['dump.json', ['dump', scratch, '--json']], ['verify.json', ['verify', scratch]]] as const) {
      await writeFile(join(caseDir, file), `${JSON.stringify(cli([...args], scratch), null, 2)}\n`);
    }
    await rm(scratch, { recursive: true, force: true });
  }
  const httpOut = join(HERE, 'http');
  await rm(httpOut, { recursive: true, force: true });
  await mkdir(httpOut, { recursive: true });
  const answers = await answersOf(httpCases());
  for (const c of httpCases()) {
    await writeFile(join(httpOut, `${c.name}.bin`), c.body);
    await writeFile(join(httpOut, `${c.name}.json`), `${JSON.stringify({ about: c.about, contentType: c.contentType ?? 'application/x-mqlog-batch', expect: answers.get(c.name) }, null, 2)}\n`);
  }
  console.log(`wrote ${(await readdir(out)).length} node cases and ${httpCases().length} HTTP cases under ${HERE}`);
}

/** Posts each body to a fresh receiver (each case its own node) and records status, code and the frame named. */
async function answersOf(cases: readonly HttpCase[]): Promise<Map<string, Record<string, unknown>>> {
  const answers = new Map<string, Record<string, unknown>>();
  for (const c of cases) {
    const dir = join(ROOT, '.conformance-scratch');
    await rm(dir, { recursive: true, force: true });
    await mkdir(dir, { recursive: true });
    await writeFile(join(dir, 'mqlog.json'), JSON.stringify({ name: 'b', listen: '127.0.0.1:0' }));
    const daemon = spawn(process.execPath, [CLI, 'daemon', '--data', dir], { stdio: ['ignore', 'pipe', 'inherit'] });
    const url = await new Promise<string>((resolveUrl) => {
      let seen = '';
      daemon.stdout.on('data', (b: Buffer) => {
        seen += b.toString();
        const m = /listening on (http:\/\/\S+)/.exec(seen);
        if (m !== null) resolveUrl(m[1] as string);
      });
    });
    answers.set(c.name, await answerOf(url, c));
    await new Promise((done) => {
      daemon.on('exit', done);
      daemon.kill('SIGTERM');
    });
    await rm(dir, { recursive: true, force: true });
  }
  return answers;
}

export async function answerOf(url: string, c: { body: Buffer; contentType?: string }): Promise<Record<string, unknown>> {
  const response = await fetch(`${url}/v1/messages`, { method: 'POST', body: c.body, headers: { 'content-type': c.contentType ?? 'application/x-mqlog-batch' } });
  const json = (await response.json()) as Record<string, unknown>;
  return { status: response.status, ...('code' in json ? { code: json.code } : {}), ...('frame' in json ? { frame: json.frame } : {}), ...('stored' in json ? { stored: json.stored, duplicates: json.duplicates } : {}) };
}

if (process.argv[1] !== undefined && resolve(process.argv[1]) === resolve(import.meta.filename)) await main();
