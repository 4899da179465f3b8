/**
 * What the log does with damaged bytes. A torn final frame (a writer killed mid-write) is expected:
 * verify and dump note it and exit 0, and the next writer of the stream cuts it off and says so. Any
 * other damage is corruption: verify and dump exit 1 and name the file and the byte where the bad frame
 * starts; verify then resynchronizes and goes on checking the rest; no writer ever cuts off valid
 * frames that follow damage.
 */
import assert from 'node:assert/strict';
import { readFile, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import { FrameType } from '../../src/log/frame.ts';
import { FileLogStore } from '../../src/log/file-log-store.ts';
import type { TruncatedTail } from '../../src/log/log-store.ts';
import { encodeMessagePayload } from '../../src/queue/codec.ts';
import { newId } from '../../src/util/ids.ts';
import { assertLogIntact, dump, flipByte, framesOf, FRAME_HEADER_BYTES, NOWHERE, segmentFiles, sendOne, verify, type RawFrame } from '../helpers/crash.ts';
import { mqlog, tempDir } from '../helpers/index.ts';

const FIRST_SEGMENT = '00000000000000000000.seg';
/** A sync mark: 20-byte header and an 8-byte synced length (spec/log-format.md §3.3). */
const SYNC_FRAME_BYTES = 28;

interface Logged {
  readonly dir: string;
  readonly ids: string[];
  readonly bodies: string[];
  /** The stream directory p4.w0 of the outbox. */
  readonly stream: string;
  /** Its first segment. */
  readonly seg: string;
  /** The frames of the first segment. */
  readonly frames: RawFrame[];
}

/** A node whose outbox holds `count` messages in stream p4.w0, written by one `send --lines`. */
async function logWith(t: TestContext, count: number, { bodyBytes = 40, config }: { bodyBytes?: number; config?: object } = {}): Promise<Logged> {
  const dir = await tempDir(t, 'mqlog-corrupt-');
  if (config !== undefined) await writeFile(join(dir, 'mqlog.json'), JSON.stringify(config));
  const bodies = Array.from({ length: count }, (_, i) => `m-${i}-`.padEnd(bodyBytes, 'x'));
  const sent = await mqlog(['send', '--data', dir, '--to', NOWHERE, '--lines'], { input: `${bodies.join('\n')}\n` });
  assert.equal(sent.code, 0, sent.stderr);
  const ids = sent.stdout.trim().split('\n');
  assert.equal(ids.length, count);
  const stream = join(dir, 'outbox', 'p4.w0');
  const seg = join(stream, FIRST_SEGMENT);
  const { frames, end, size } = await framesOf(seg);
  assert.equal(end, size, 'a writer that closed leaves no zero fill behind');
  return { dir, ids, bodies, stream, seg, frames };
}

function frameAt(frames: readonly RawFrame[], index: number): RawFrame {
  const frame = frames[index];
  assert.ok(frame !== undefined, `no frame #${index}`);
  return frame;
}

interface CorruptLine {
  readonly file: string;
  readonly position: number;
  readonly reason: string;
}

function corruptLines(stdout: string): CorruptLine[] {
  return [...stdout.matchAll(/^CORRUPT (\S+) (\d+) (.+)$/gm)].map((m) => ({ file: m[1] as string, position: Number(m[2]), reason: m[3] as string }));
}

// --- torn tails ------------------------------------------------------------------------------------

test('a torn final frame is a note for verify and dump, and the next send cuts it off and reuses its offset', async (t) => {
  const { dir, ids, bodies, seg, frames } = await logWith(t, 10);
  const last = frameAt(frames, 9);
  await truncate(seg, last.position + last.bytes - 7);
  const tornBytes = (await readFile(seg)).subarray(last.position);

  const verified = await verify(dir);
  assert.equal(verified.code, 0, verified.stdout + verified.stderr);
  assert.match(verified.stdout, new RegExp(`^TORN ${seg} ${last.position} `, 'm'));
  assert.equal(corruptLines(verified.stdout).length, 0);
  assert.match(verified.stdout, /^ok: verified 1 segments, 9 frames/m);

  const dumped = await dump(dir);
  assert.equal(dumped.code, 0, dumped.stderr);
  assert.deepEqual(dumped.records.map((r) => [r.offset, r.id, r.body]), ids.slice(0, 9).map((id, i) => [i, id, bodies[i]]));
  assert.match(dumped.stderr, new RegExp(`${seg} ends in a torn or unfinished frame at byte ${last.position}`));
  // The check the kill tests run after every crash accepts this state and finds the same torn file.
  const { torn } = await assertLogIntact(dir, { acked: new Map(ids.slice(0, 9).map((id, i) => [id, bodies[i] as string])), sent: new Set(bodies) }, 'torn tail');
  assert.deepEqual(torn, [seg]);

  // Slot w0 is free, so the next writer takes it, cuts the torn frame off and appends in its place. The
  // cut bytes are kept beside the segment, and verify notes the recovered tail without failing.
  const sent = await mqlog(['send', '--data', dir, '--to', NOWHERE, 'after the tear']);
  assert.equal(sent.code, 0, sent.stderr);
  const id = sent.stdout.trim();
  assert.match(sent.stderr, new RegExp(`cut off a torn tail of p4\\.w0 .* ${last.bytes - 7} bytes at byte ${last.position} of ${seg}, kept in ${seg}\\.${last.position}\\.torn`));
  assert.deepEqual(await readFile(`${seg}.${last.position}.torn`), tornBytes, 'the .torn file holds exactly the bytes cut off');
  const healed = await verify(dir);
  assert.equal(healed.code, 0, healed.stdout + healed.stderr);
  assert.match(healed.stdout, new RegExp(`^TORN ${seg} ${last.position} recovered: ${last.bytes - 7} bytes .* kept in ${seg}\\.${last.position}\\.torn$`, 'm'));
  assert.equal([...healed.stdout.matchAll(/^TORN /gm)].length, 1);
  assert.match(healed.stdout, /^ok: verified 1 segments, 10 frames/m);
  const after = await dump(dir);
  assert.equal(after.code, 0, after.stderr);
  assert.equal(after.stderr, '');
  assert.deepEqual(
    after.records.map((r) => [r.stream, r.offset, r.id, r.body]),
    [...ids.slice(0, 9).map((old, i) => ['p4.w0', i, old, bodies[i]]), ['p4.w0', 9, id, 'after the tear']],
  );
  const { frames: now, end, size } = await framesOf(seg);
  assert.equal(end, size);
  assert.deepEqual(now.map((f) => f.offset), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
});

test('a torn frame followed by preallocated zeros is a torn tail, not corruption', async (t) => {
  const { dir, ids, seg, frames } = await logWith(t, 10);
  const last = frameAt(frames, 9);
  // What a writer killed inside a zero-filled preallocated region leaves: half a frame, then zeros.
  await truncate(seg, last.position + Math.floor(last.bytes / 2));
  await truncate(seg, last.position + last.bytes + 64 * 1024);

  const verified = await verify(dir);
  assert.equal(verified.code, 0, verified.stdout + verified.stderr);
  assert.match(verified.stdout, new RegExp(`^TORN ${seg} ${last.position} `, 'm'));
  const dumped = await dump(dir);
  assert.equal(dumped.code, 0, dumped.stderr);
  assert.deepEqual(dumped.records.map((r) => r.id), ids.slice(0, 9));

  await sendOne(dir, 'after the tear');
  const healed = await verify(dir);
  assert.equal(healed.code, 0, healed.stdout + healed.stderr);
  // Only the half frame is kept, not the zeros after it.
  assert.match(healed.stdout, new RegExp(`^TORN ${seg} ${last.position} recovered: ${Math.floor(last.bytes / 2)} bytes `, 'm'));
  assert.deepEqual([...healed.stdout.matchAll(/^TORN \S+ \d+ (\S+)/gm)].map((m) => m[1]), ['recovered:'], 'no tail is left to cut');
  const { frames: now, end, size } = await framesOf(seg);
  assert.equal(end, size, 'the zero fill is gone once the writer closed');
  assert.equal(now.length, 10);
});

test('opening a writer on a stream with a torn tail cuts it off and reports it through onTruncated', async (t) => {
  const { dir, ids, seg, frames } = await logWith(t, 5);
  const last = frameAt(frames, 4);
  await truncate(seg, last.position + last.bytes - 7);

  const store = new FileLogStore(dir);
  const reports: { stream: string; tail: TruncatedTail }[] = [];
  const onTruncated = (stream: string, tail: TruncatedTail): void => {
    reports.push({ stream, tail });
  };
  const writer = await store.claimWriter('outbox', { onTruncated });
  t.after(() => writer.close());
  assert.equal(writer.slot, 0, 'the slot of the torn stream is free');

  const ts = Date.now();
  const id = newId(ts);
  const payload = encodeMessagePayload({ id, ts, channel: 'common', priority: 4, to: [NOWHERE], from: 'test' }, Buffer.from('direct'));
  const appended = await writer.append('p4', FrameType.MESSAGE, payload);

  assert.equal(reports.length, 1, 'exactly one truncation is reported');
  const [report] = reports;
  assert.equal(report?.stream, 'p4.w0');
  assert.equal(report?.tail.path, seg);
  assert.equal(report?.tail.position, last.position, 'the cut starts where the torn frame starts');
  assert.equal(report?.tail.bytes, last.bytes - 7, 'the cut covers the torn frame to the end of the file');
  assert.ok((report?.tail.reason.length ?? 0) > 0, 'the report says why');
  assert.equal(report?.tail.savedAs, `${seg}.${last.position}.torn`, 'the report says where the cut bytes are kept');
  // The torn frame was never acknowledged, so its offset and place are taken by the next write: its
  // 28-byte sync mark (spec/log-format.md §3.3), then the frame.
  assert.deepEqual({ stream: appended.stream, offset: appended.offset, segment: appended.segment, position: appended.position }, {
    stream: 'p4.w0',
    offset: 4,
    segment: 0,
    position: last.position + SYNC_FRAME_BYTES,
  });

  // A second append to the recovered stream reports nothing new.
  await writer.append('p4', FrameType.MESSAGE, encodeMessagePayload({ id: newId(), ts, channel: 'common', priority: 4, to: [NOWHERE], from: 'test' }, Buffer.from('again')));
  await writer.close();
  assert.equal(reports.length, 1);

  // A clean stream opened again reports nothing.
  const again = await store.claimWriter('outbox', { onTruncated });
  await again.append('p4', FrameType.MESSAGE, encodeMessagePayload({ id: newId(), ts, channel: 'common', priority: 4, to: [NOWHERE], from: 'test' }, Buffer.from('clean')));
  await again.close();
  assert.equal(reports.length, 1);

  const verified = await verify(dir);
  assert.equal(verified.code, 0, verified.stdout + verified.stderr);
  assert.deepEqual([...verified.stdout.matchAll(/^TORN (\S+) (\d+) (\S+)/gm)].map((m) => [m[1], Number(m[2]), m[3]]), [[seg, last.position, 'recovered:']]);
  const dumped = await dump(dir);
  assert.deepEqual(dumped.records.map((r) => [r.offset, r.body?.slice(0, 6)]), [
    [0, 'm-0-xx'],
    [1, 'm-1-xx'],
    [2, 'm-2-xx'],
    [3, 'm-3-xx'],
    [4, 'direct'],
    [5, 'again'],
    [6, 'clean'],
  ]);
  assert.equal(dumped.records[4]?.id, id);
  assert.ok(!dumped.records.some((r) => r.id === ids[4]), 'the torn message is gone');
});

// --- corruption ------------------------------------------------------------------------------------

test('a flipped payload byte in a frame before the end of its stream makes verify and dump fail at that frame', async (t) => {
  const { dir, seg, frames } = await logWith(t, 10);
  const bad = frameAt(frames, 4);
  const following = frameAt(frames, 5);
  await flipByte(seg, bad.position + FRAME_HEADER_BYTES + 10, 0x10);

  const verified = await verify(dir);
  assert.equal(verified.code, 1, verified.stdout + verified.stderr);
  const problems = corruptLines(verified.stdout);
  assert.equal(problems.length, 1, verified.stdout);
  assert.equal(problems[0]?.file, seg);
  assert.equal(problems[0]?.position, bad.position, 'the byte offset is where the bad frame starts');
  assert.match(problems[0]?.reason ?? '', /CRC/);
  assert.match(problems[0]?.reason ?? '', new RegExp(`next valid frame at ${following.position}\\b`));
  assert.match(verified.stderr, /^mqlog: ERR_CORRUPT_FRAME: 1 problem\(s\); verified 1 segments, 9 frames/m, 'verify checked the frames after the bad one');

  // dump passes over the bad frame, says where in verify's format, and shows every other message.
  const dumped = await dump(dir);
  assert.equal(dumped.code, 1, dumped.stderr);
  assert.deepEqual(corruptLines(dumped.stderr).map((p) => [p.file, p.position]), [[seg, bad.position]], dumped.stderr);
  assert.match(corruptLines(dumped.stderr)[0]?.reason ?? '', new RegExp(`next valid frame at ${following.position}\\b`));
  assert.deepEqual(dumped.records.map((r) => r.offset), [0, 1, 2, 3, 5, 6, 7, 8, 9], 'dump shows every intact message');

  // A writer must not "recover" by cutting off the valid frames after the bad one.
  const before = await readFile(seg);
  await mqlog(['send', '--data', dir, '--to', NOWHERE, 'after the damage']);
  const after = await readFile(seg);
  assert.ok(after.length >= before.length && after.subarray(0, before.length).equals(before), 'the damaged segment was changed by the next send');
});

test('dump shows every message before and after a damaged frame', async (t) => {
  const { dir, ids, bodies, seg, frames } = await logWith(t, 10);
  await flipByte(seg, frameAt(frames, 4).position + FRAME_HEADER_BYTES + 10, 0x10);

  const dumped = await dump(dir);
  assert.equal(dumped.code, 1, dumped.stderr);
  const sound = [0, 1, 2, 3, 5, 6, 7, 8, 9];
  assert.deepEqual(
    dumped.records.map((r) => [r.offset, r.id, r.body]),
    sound.map((i) => [i, ids[i], bodies[i]]),
    `dump must show the 9 sound messages around the damaged frame; it showed ${dumped.records.length}. stderr: ${dumped.stderr}`,
  );
});

test('a damaged last frame of a sealed segment is corruption, not a torn tail', async (t) => {
  const { dir, stream } = await logWith(t, 40, { bodyBytes: 200, config: { segmentBytes: 4096 } });
  const segments = await segmentFiles(stream);
  assert.ok(segments.length >= 3, `expected several segments, got ${segments.length}`);
  const sealed = segments[0] as string;
  const { frames } = await framesOf(sealed);
  const last = frameAt(frames, frames.length - 1);
  await flipByte(sealed, last.position + last.bytes - 1, 0x01);

  const verified = await verify(dir);
  assert.equal(verified.code, 1, verified.stdout + verified.stderr);
  assert.deepEqual(
    corruptLines(verified.stdout).map((p) => [p.file, p.position]),
    [[sealed, last.position]],
  );
  assert.doesNotMatch(verified.stdout, /^TORN /m);
  const dumped = await dump(dir);
  assert.equal(dumped.code, 1, dumped.stderr);
  assert.deepEqual(corruptLines(dumped.stderr).map((p) => [p.file, p.position]), [[sealed, last.position]], dumped.stderr);
  assert.ok(!dumped.records.some((r) => r.offset === last.offset), 'the damaged message is not shown');
  assert.equal(dumped.records.length, 39, 'every other message is shown, the later segments included');
});

/** Header damage that the header checks or the CRC catch; the frame's extent stays inside the file. */
const HEADER_DAMAGE: readonly { readonly what: string; readonly byte: number; readonly mask: number }[] = [
  { what: 'a flipped magic byte', byte: 0, mask: 0xff },
  { what: 'a zeroed magic byte', byte: 0, mask: 0xa7 },
  { what: 'a wrong version byte', byte: 1, mask: 0x02 },
  { what: 'a zero type byte', byte: 2, mask: 0x01 },
  { what: 'a reserved flag set', byte: 3, mask: 0x01 },
  { what: 'a length one off', byte: 4, mask: 0x01 },
  { what: 'a length over the size limit', byte: 7, mask: 0x80 },
  { what: 'a flipped offset bit', byte: 8, mask: 0x01 },
  { what: 'a flipped CRC byte', byte: 16, mask: 0xff },
];

for (const damage of HEADER_DAMAGE) {
  test(`a mid-segment frame with ${damage.what} is reported at its start and verify resynchronizes after it`, async (t) => {
    const { dir, seg, frames } = await logWith(t, 10);
    const bad = frameAt(frames, 4);
    await flipByte(seg, bad.position + damage.byte, damage.mask);

    const verified = await verify(dir);
    assert.equal(verified.code, 1, verified.stdout + verified.stderr);
    const problems = corruptLines(verified.stdout);
    assert.deepEqual(problems.map((p) => [p.file, p.position]), [[seg, bad.position]], verified.stdout);
    assert.match(problems[0]?.reason ?? '', new RegExp(`next valid frame at ${frameAt(frames, 5).position}\\b`));
    assert.match(verified.stderr, /verified 1 segments, 9 frames/, 'the five frames after the bad one were checked');

    const dumped = await dump(dir);
    assert.equal(dumped.code, 1, dumped.stderr);
    assert.deepEqual(corruptLines(dumped.stderr).map((p) => [p.file, p.position]), [[seg, bad.position]], dumped.stderr);
    assert.deepEqual(dumped.records.map((r) => r.offset), [0, 1, 2, 3, 5, 6, 7, 8, 9], 'dump shows every intact message');
  });
}

test('verify reports every damaged frame of a segment, not only the first', async (t) => {
  const { dir, seg, frames } = await logWith(t, 10);
  await flipByte(seg, frameAt(frames, 2).position, 0xff);
  await flipByte(seg, frameAt(frames, 7).position + FRAME_HEADER_BYTES + 5, 0x04);

  const verified = await verify(dir);
  assert.equal(verified.code, 1);
  assert.deepEqual(
    corruptLines(verified.stdout).map((p) => [p.file, p.position]),
    [
      [seg, frameAt(frames, 2).position],
      [seg, frameAt(frames, 7).position],
    ],
  );
  assert.match(verified.stderr, /2 problem\(s\); verified 1 segments, 8 frames/);
});

// A length field damaged to a value that is still under the format's size limit but reaches past the
// end of the file makes a frame in the middle of a segment look like an unfinished final frame.
const LENGTH_PAST_END: readonly { readonly what: string; readonly byte: number }[] = [
  { what: '+16 MiB', byte: 7 },
  { what: '+64 KiB', byte: 6 },
];

for (const damage of LENGTH_PAST_END) {
  test(`a mid-segment frame whose length was damaged to reach past the end of the file (${damage.what}) is corruption, not a torn tail`, async (t) => {
    const { dir, seg, frames } = await logWith(t, 10);
    const bad = frameAt(frames, 4);
    await flipByte(seg, bad.position + damage.byte, 0x01);

    const verified = await verify(dir);
    assert.equal(
      verified.code,
      1,
      `verify passed a segment with five valid frames after a damaged one, calling them a torn tail:\n${verified.stdout}${verified.stderr}`,
    );
    assert.deepEqual(corruptLines(verified.stdout).map((p) => [p.file, p.position]), [[seg, bad.position]], verified.stdout);
    const dumped = await dump(dir);
    assert.equal(dumped.code, 1, `dump hid five valid frames after a damaged one as a torn tail: ${dumped.stderr}`);
  });

  test(`the next writer never cuts off acknowledged frames after a frame with a damaged length (${damage.what})`, async (t) => {
    const { dir, seg, frames } = await logWith(t, 10);
    const bad = frameAt(frames, 4);
    await flipByte(seg, bad.position + damage.byte, 0x01);
    const before = await readFile(seg);

    await mqlog(['send', '--data', dir, '--to', NOWHERE, 'after the damage']);
    const after = await readFile(seg);
    assert.ok(
      after.length >= before.length && after.subarray(0, before.length).equals(before),
      `the next send cut the segment from ${before.length} to ${after.length} bytes, destroying ${frames.length - 5} acknowledged messages after the damaged frame at byte ${bad.position}`,
    );
  });
}

// --- resynchronisation and repair ------------------------------------------------------------------

test('dump of a stream with a sealed segment truncated mid-frame shows every intact message and reports the damaged range', async (t) => {
  const { dir, ids, stream } = await logWith(t, 40, { bodyBytes: 200, config: { segmentBytes: 4096 } });
  const segments = await segmentFiles(stream);
  assert.ok(segments.length >= 3, `expected several segments, got ${segments.length}`);
  const sealed = segments[1] as string;
  const { frames, size } = await framesOf(sealed);
  const cut = frameAt(frames, frames.length - 2);
  await truncate(sealed, cut.position + 30);
  const lost = new Set([frameAt(frames, frames.length - 2).offset, frameAt(frames, frames.length - 1).offset]);

  const dumped = await dump(dir);
  assert.equal(dumped.code, 1, dumped.stderr);
  assert.deepEqual(
    dumped.records.map((r) => r.id),
    ids.filter((_, i) => !lost.has(i)),
    `dump must show all ${ids.length - lost.size} intact messages; stderr: ${dumped.stderr}`,
  );
  const problems = corruptLines(dumped.stderr);
  assert.deepEqual(problems.map((p) => [p.file, p.position]), [[sealed, cut.position]], dumped.stderr);
  assert.ok(size > cut.position + 30);

  const verified = await verify(dir);
  assert.deepEqual(corruptLines(verified.stdout).map((p) => [p.file, p.position]), [[sealed, cut.position]], 'verify names the same range');
});
