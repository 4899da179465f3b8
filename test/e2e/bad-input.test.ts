import assert from 'node:assert/strict';
import { createHash, randomUUID } from 'node:crypto';
import { readFile, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import { Packr } from 'msgpackr';
import { mqlog, tempDir } from '../helpers/index.js';
import { allInbox, daemons, makeNodes, type NodeSpec } from '../helpers/daemon.js';
import { envelope, firstFrameAt, frame, healthz, messagePayload, postBatch, resealFrame, uuidV7, type RawFrame } from '../helpers/wire.js';

/** One running daemon (node b), with a peer a it never reaches. */
async function receiver(t: TestContext): Promise<NodeSpec> {
  const root = await tempDir(t);
  const { b } = await makeNodes(root, ['a', 'b']);
  const [db] = daemons(t, [b!]);
  await db!.start();
  return b!;
}

/** `n` bytes that look random but are the same on every run (SHA-256 in counter mode). */
function noise(n: number, seed: string): Buffer {
  const blocks: Buffer[] = [];
  for (let i = 0; blocks.length * 32 < n; i++) blocks.push(createHash('sha256').update(`${seed}/${i}`).digest());
  return Buffer.concat(blocks).subarray(0, n);
}

function validFrames(count: number, stream = 'p4.w0'): RawFrame[] {
  return Array.from({ length: count }, (_, i) => ({ stream, frame: frame(messagePayload({ body: `valid ${i}` }), i) }));
}

interface BadCase {
  readonly name: string;
  readonly body: Buffer;
  /** Default: the batch content type; null: none. */
  readonly contentType?: string | null;
  readonly status: number;
  readonly code: string;
  /** Index of the frame the answer must name; undefined when the request as a whole is bad. */
  readonly frame?: number;
}

function badCases(): BadCase[] {
  const cases: BadCase[] = [];
  const two = envelope(validFrames(2));

  cases.push({ name: 'a body cut inside its second frame', body: two.subarray(0, two.length - 7), status: 400, code: 'ERR_TRUNCATED_FRAME', frame: 1 });
  cases.push({ name: 'a body cut inside the header of its first frame', body: two.subarray(0, firstFrameAt(two) + 10), status: 400, code: 'ERR_TRUNCATED_FRAME', frame: 0 });
  cases.push({ name: 'a body cut inside the record prefix of its second frame', body: two.subarray(0, firstFrameAt(two) + (validFrames(1)[0]!.frame.length) + 3), status: 400, code: 'ERR_TRUNCATED_FRAME', frame: 1 });
  cases.push({ name: 'a body cut inside its envelope header', body: two.subarray(0, 14), status: 400, code: 'ERR_BAD_REQUEST' });

  // One flipped byte inside a frame's payload: the CRC no longer matches. Frames 0 and 1 are sound and
  // must not be stored either.
  const three = validFrames(3);
  const flipped = Buffer.from(three[2]!.frame);
  flipped[flipped.length - 2]! ^= 0x10;
  cases.push({ name: 'a flipped byte in the third frame (CRC)', body: envelope([three[0]!, three[1]!, { stream: 'p4.w0', frame: flipped }]), status: 400, code: 'ERR_CORRUPT_FRAME', frame: 2 });
  const flippedHeader = Buffer.from(validFrames(1)[0]!.frame);
  flippedHeader[9]! ^= 0x01; // inside the offset field, covered by the CRC
  cases.push({ name: 'a flipped byte in a frame header (CRC)', body: envelope([{ stream: 'p4.w0', frame: flippedHeader }]), status: 400, code: 'ERR_CORRUPT_FRAME', frame: 0 });
  const badMagic = Buffer.from(validFrames(1)[0]!.frame);
  badMagic[0] = 0xa8;
  cases.push({ name: 'a frame with a wrong magic byte', body: envelope([{ stream: 'p4.w0', frame: badMagic }]), status: 400, code: 'ERR_CORRUPT_FRAME', frame: 0 });

  const wireVersion = Buffer.from(envelope(validFrames(1)));
  wireVersion[4] = 3;
  cases.push({ name: 'version 3 in the batch prefix', body: wireVersion, status: 400, code: 'ERR_UNSUPPORTED_VERSION' });
  const frameVersion = Buffer.from(validFrames(1)[0]!.frame);
  frameVersion[1] = 2;
  cases.push({ name: 'a frame of version 2 (CRC resealed)', body: envelope([validFrames(1)[0]!, { stream: 'p4.w0', frame: resealFrame(frameVersion) }]), status: 400, code: 'ERR_UNSUPPORTED_VERSION', frame: 1 });

  cases.push({ name: 'an empty body', body: Buffer.alloc(0), status: 400, code: 'ERR_BAD_REQUEST' });
  cases.push({ name: 'an envelope without frames', body: envelope([]), status: 400, code: 'ERR_BAD_REQUEST' });

  // Declared lengths beyond the bytes present: in the record prefix, and in the frame header.
  const hugeRecord = Buffer.from(envelope(validFrames(1)));
  hugeRecord.writeUInt32LE(0xffff_fff0, firstFrameAt(hugeRecord) - 4);
  cases.push({ name: 'a record declaring a 4 GiB frame', body: hugeRecord, status: 413, code: 'ERR_FRAME_TOO_LARGE', frame: 0 });
  const longRecord = Buffer.from(envelope(validFrames(1)));
  longRecord.writeUInt32LE(1024 * 1024, firstFrameAt(longRecord) - 4);
  cases.push({ name: 'a record declaring a 1 MiB frame in a small body', body: longRecord, status: 400, code: 'ERR_TRUNCATED_FRAME', frame: 0 });
  const hugePayload = Buffer.from(validFrames(1)[0]!.frame);
  hugePayload.writeUInt32LE(60 * 1024 * 1024, 4);
  cases.push({ name: 'a frame header declaring a 60 MiB payload', body: envelope([{ stream: 'p4.w0', frame: resealFrame(hugePayload) }]), status: 413, code: 'ERR_FRAME_TOO_LARGE', frame: 0 });
  const longPayload = Buffer.from(validFrames(1)[0]!.frame);
  longPayload.writeUInt32LE(1024 * 1024, 4);
  cases.push({ name: 'a frame header declaring a 1 MiB payload in a small frame', body: envelope([{ stream: 'p4.w0', frame: resealFrame(longPayload) }]), status: 400, code: 'ERR_TRUNCATED_FRAME', frame: 0 });
  const trailing = Buffer.concat([validFrames(1)[0]!.frame, Buffer.from('extra')]);
  cases.push({ name: 'a record holding bytes after its frame', body: envelope([{ stream: 'p4.w0', frame: trailing }]), status: 400, code: 'ERR_BAD_REQUEST', frame: 0 });

  const random = Buffer.from(noise(4096, 'body'));
  random.write('XXXX', 0, 'latin1'); // never "MQLB" by chance
  cases.push({ name: '4 KiB of random bytes', body: random, status: 400, code: 'ERR_BAD_REQUEST' });
  const randomAfterPrefix = Buffer.concat([envelope(validFrames(1)).subarray(0, 12), noise(64, 'header')]);
  randomAfterPrefix.writeUInt32LE(64, 8);
  cases.push({ name: 'random bytes as the envelope header', body: randomAfterPrefix, status: 400, code: 'ERR_BAD_REQUEST' });

  // Fields of the message inside a sound frame.
  const longChannel = 'c'.repeat(300);
  cases.push({
    name: 'a message on a 300-byte channel (after a valid frame)',
    body: envelope([validFrames(1)[0]!, { stream: 'p4.w0', frame: frame(messagePayload({ channel: longChannel }), 1) }]),
    status: 400,
    code: 'ERR_INVALID_NAME',
    frame: 1,
  });
  cases.push({ name: 'a message on the empty channel', body: envelope([{ stream: 'p4.w0', frame: frame(messagePayload({ channel: '' }), 0) }]), status: 400, code: 'ERR_INVALID_NAME', frame: 0 });
  cases.push({ name: 'a message whose id is not a UUID', body: envelope([{ stream: 'p4.w0', frame: frame(messagePayload({ id: 'not-an-id' }), 0) }]), status: 400, code: 'ERR_INVALID_MESSAGE', frame: 0 });
  cases.push({ name: 'a message with priority 12', body: envelope([{ stream: 'p4.w0', frame: frame(messagePayload({ priority: 12 }), 0) }]), status: 400, code: 'ERR_INVALID_MESSAGE', frame: 0 });
  const garbageMeta = Buffer.concat([Buffer.from([5, 0, 0, 0]), Buffer.from([0xc1, 0xc1, 0xc1, 0xc1, 0xc1])]);
  cases.push({ name: 'a message whose meta is not msgpack', body: envelope([{ stream: 'p4.w0', frame: frame(garbageMeta, 0) }]), status: 400, code: 'ERR_INVALID_MESSAGE', frame: 0 });
  cases.push({ name: 'a RECORD frame instead of a message', body: envelope([{ stream: 'p4.w0', frame: frame(messagePayload(), 0, 3) }]), status: 400, code: 'ERR_INVALID_MESSAGE', frame: 0 });
  cases.push({ name: 'a stream name that is a path', body: envelope([{ stream: '../../x', frame: frame(messagePayload(), 0) }]), status: 400, code: 'ERR_BAD_REQUEST', frame: 0 });
  const badIndex = Buffer.from(envelope(validFrames(1)));
  badIndex.writeUInt16LE(7, firstFrameAt(badIndex) - 6);
  cases.push({ name: 'a record naming a stream the header does not list', body: badIndex, status: 400, code: 'ERR_BAD_REQUEST', frame: 0 });

  return cases;
}

/** A valid batch sent with a content type other than the batch type, or none (spec/errors.md: 415). */
function contentTypeCases(): BadCase[] {
  const valid = envelope(validFrames(1));
  return ['application/octet-stream', 'text/plain', 'application/json', 'application/x-www-form-urlencoded', null].map((contentType) => ({
    name: `a valid batch sent as ${contentType ?? 'no content type'}`,
    body: valid,
    contentType,
    status: 415,
    code: 'ERR_UNSUPPORTED_MEDIA_TYPE',
  }));
}

/** Posts every case, checks the answer and that /healthz still answers 200; returns the mismatches. */
async function postAll(node: NodeSpec, cases: BadCase[]): Promise<string[]> {
  const failures: string[] = [];
  for (const c of cases) {
    const response = await postBatch(node.url, c.body, c.contentType);
    const got = response.json as { code?: unknown; message?: unknown; frame?: unknown } | undefined;
    const expected = { status: c.status, code: c.code, frame: c.frame, messageIsText: true, json: true };
    const actual = {
      status: response.status,
      code: got?.code,
      frame: got?.frame,
      messageIsText: typeof got?.message === 'string' && got.message.length > 0,
      json: response.contentType?.startsWith('application/json') ?? false,
    };
    try {
      assert.deepEqual(actual, expected);
    } catch {
      failures.push(`${c.name}: expected ${JSON.stringify(expected)}, got ${JSON.stringify(actual)} ${response.text.slice(0, 200)}`);
    }
    assert.equal(await healthz(node.url), 200, `healthz after ${c.name}`);
    // Each refusal on its own stores nothing: no byte in any inbox segment.
    const written = await inboxSegmentsWithData(node.dir);
    if (written.length > 0) failures.push(`${c.name}: stored something in ${written.join(', ')}`);
  }
  return failures;
}

/** Inbox segment files of a node that hold a byte other than zero (a frame or a mark was written). */
async function inboxSegmentsWithData(dir: string): Promise<string[]> {
  const found: string[] = [];
  const walk = async (at: string): Promise<void> => {
    for (const entry of await readdir(at, { withFileTypes: true }).catch(() => [])) {
      const path = join(at, entry.name);
      if (entry.isDirectory()) await walk(path);
      else if (entry.name.endsWith('.seg') && (await readFile(path)).some((byte) => byte !== 0)) found.push(path);
    }
  };
  await walk(join(dir, 'inbox'));
  return found;
}

async function assertNothingStored(node: NodeSpec): Promise<void> {
  assert.deepEqual((await allInbox(node.dir)).map((m) => m.body), [], 'no inbox message');
  const verify = await mqlog(['verify', node.dir]);
  assert.equal(verify.code, 0, `verify: ${verify.stdout}${verify.stderr}`);
}

test('malformed batches get a 4xx with a stable code, store nothing, and the daemon keeps serving', async (t) => {
  const b = await receiver(t);
  const failures = await postAll(b, badCases());
  await assertNothingStored(b);
  assert.deepEqual(failures, []);
  // Still taking good batches after all that.
  const good = await postBatch(b.url, envelope(validFrames(1)));
  assert.deepEqual([good.status, good.json], [200, { stored: 1, duplicates: 0 }]);
});

test('a batch with a content type other than application/x-mqlog-batch gets 415 ERR_UNSUPPORTED_MEDIA_TYPE and stores nothing', async (t) => {
  const b = await receiver(t);
  const failures = await postAll(b, contentTypeCases());
  await assertNothingStored(b);
  assert.deepEqual(failures, []);
});

test('a request body over the 16 MiB limit gets 413 ERR_REQUEST_TOO_LARGE and stores nothing', async (t) => {
  const b = await receiver(t);
  // A well-formed batch of one 17 MiB message: only its size is wrong (the node's body limit is larger).
  const body = envelope([{ stream: 'p4.w0', frame: frame(messagePayload({ body: Buffer.alloc(17 * 1024 * 1024, 0x61) }), 0) }]);
  const response = await postBatch(b.url, body);
  assert.equal(response.status, 413, response.text.slice(0, 200));
  assert.equal((response.json as { code?: unknown }).code, 'ERR_REQUEST_TOO_LARGE');
  assert.equal(typeof (response.json as { message?: unknown }).message, 'string');
  assert.equal(await healthz(b.url), 200);
  await assertNothingStored(b);
});

test('a valid hand-built batch is stored once, and the same body again counts as a duplicate', async (t) => {
  const b = await receiver(t);
  const node = randomUUID();
  const id = uuidV7();
  const body = envelope([{ stream: 'p7.w0', frame: frame(messagePayload({ id, channel: 'raw', priority: 7, to: ['b'], body: 'hand built' }), 0) }], { node, name: 'a', to: 'b' });
  const first = await postBatch(b.url, body);
  assert.equal(first.status, 200, first.text);
  assert.deepEqual(first.json, { stored: 1, duplicates: 0 });
  const again = await postBatch(b.url, body);
  assert.equal(again.status, 200, again.text);
  assert.deepEqual(again.json, { stored: 0, duplicates: 1 });
  const inbox = await allInbox(b.dir);
  assert.deepEqual(
    inbox.map((m) => [m.id, m.channel, m.priority, m.from, m.body]),
    [[id, 'raw', 7, 'a', 'hand built']],
  );
  const verify = await mqlog(['verify', b.dir]);
  assert.equal(verify.code, 0, verify.stderr);
});

test('a receipt report about a message the receiver holds no receipt for is taken but counted as ignored, not stored', async (t) => {
  const b = await receiver(t);
  const report = new Packr({ useRecords: false }).pack({ id: uuidV7(), destination: 'b', state: 'processed', at: Date.now() });
  const body = envelope([{ stream: 'p4.w0', frame: frame(messagePayload({ kind: 'receipt', to: ['a'], from: 'b', body: report }), 0) }]);
  const response = await postBatch(b.url, body);
  assert.equal(response.status, 200);
  assert.deepEqual(response.json, { stored: 0, duplicates: 0, ignored: 1 });
  assert.deepEqual(await allInbox(b.dir), [], 'a receipt report is never stored as a message');
});
