/**
 * Path traversal through every name a receiver accepts from a peer (channel, header keys, the wire
 * header's node/name/to, stream names): hand-built frames posted to a real daemon whose data directory
 * DIR sits a few levels below a temporary root. Nothing may appear outside DIR; odd channels that are
 * accepted land in `inbox/<encoded name>` and `mqlog dump` shows their original name; bad stream names are
 * refused. Every file the node creates under DIR is 0600 and every directory 0700.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join, relative, sep } from 'node:path';
import { test, type TestContext } from 'node:test';
import { encodeName } from '../../src/util/names.js';
import { jsonLines, mqlog, tempDir, waitFor } from '../helpers/index.js';
import { allInbox, type NodeSpec } from '../helpers/daemon.js';
import { envelope, frame, healthz } from '../helpers/wire.js';
import { UNREACHABLE, anyDaemons, listTree, nodeSpec, payloadWith, postWith, writeConfig, type AnyDaemon } from '../helpers/security.js';

/** Channel names a peer may use: each is a valid channel (1..255 UTF-8 bytes) and must stay a name. */
const ODD_CHANNELS = [
  '../escape',
  '../../x',
  '../../../../../../../../x',
  '/abs/path',
  '/etc/passwd',
  'a/../../b',
  '..',
  '.',
  './.',
  'a\0b',
  '\0',
  '../\0/x',
  'x'.repeat(255),
  '.'.repeat(255),
  '../'.repeat(85),
  'é'.repeat(127),
  '\u2215etc\u2215passwd', // DIVISION SLASH
  '．．／．．／x', // FULLWIDTH FULL STOP and SOLIDUS
  '\u2024\u2024\u2215x', // ONE DOT LEADER
  '..\u002f..\u005cx',
  'C:\\Windows\\System32',
  '\\\\server\\share',
  '%2e%2e%2fx',
  '%',
  '~',
  '~root/x',
  'CON',
  'nul',
  'inbox',
  'queue.json',
  ' ',
  '\n',
  '\uFEFF',
  '📦/../📦',
];

/** Channels the receiver must refuse (400 ERR_INVALID_NAME). */
const BAD_CHANNELS = ['', 'x'.repeat(256), 'é'.repeat(128), '../'.repeat(86)];

/** Stream names that are not `[a-z0-9]{1,16}.w[0-9]{1,6}` (400 ERR_BAD_REQUEST). */
const BAD_STREAMS = [
  '../p4.w0',
  '../../p4.w0',
  'p4.w0/../../x',
  '/p4.w0',
  '/tmp/p4.w0',
  'p4.w0/',
  '..',
  '.',
  'p4.w0\0',
  '\0',
  'P4.w0',
  'p4.w0\n',
  'p4.w1234567',
  'abcdefghijklmnopq.w0',
  'p4',
  '\u2215p4.w0',
  '．．／p4.w0',
  'p4\u2024w0',
];

interface Setup {
  readonly root: string;
  readonly b: NodeSpec;
  readonly daemon: AnyDaemon;
}

/** Node b with DIR = <root>/l1/l2/l3/b (so that `../../..` from DIR still lands under root), running. */
async function deepReceiver(t: TestContext): Promise<Setup> {
  const root = await tempDir(t);
  const b = await nodeSpec(join(root, 'l1', 'l2', 'l3'), 'b');
  await writeConfig(b, { peers: { a: { url: UNREACHABLE } } });
  const [daemon] = anyDaemons(t, [b]);
  await daemon!.start();
  return { root, b, daemon: daemon! };
}

function inside(dir: string, path: string): boolean {
  return path === dir || path.startsWith(dir + sep);
}

/** Every entry under root is DIR, inside DIR, or one of DIR's ancestors; nothing is a symbolic link. */
async function assertContained(root: string, dir: string): Promise<void> {
  const stray = (await listTree(root)).filter((e) => e.kind === 'symlink' || !(inside(dir, e.path) || inside(e.path, dir)));
  assert.deepEqual(stray.map((e) => `${e.kind} ${relative(root, e.path)}`), [], 'entries outside DIR (or links)');
}

test('channels, header keys and envelope names with traversal strings never create anything outside DIR, and dump shows the original channel names', async (t) => {
  const { root, b } = await deepReceiver(t);
  const absBefore = existsSync('/abs');
  const node = randomUUID();
  let offset = 0;
  for (const channel of ODD_CHANNELS) {
    const body = envelope([{ stream: 'p4.w0', frame: frame(payloadWith({ c: channel, h: { '../../h': '../../v', '/etc/passwd': channel } }, `on ${JSON.stringify(channel)}`), offset++) }], { node, to: 'b' });
    const answer = await postWith(b.url, body);
    assert.deepEqual([answer.status, answer.json], [200, { stored: 1, duplicates: 0 }], `channel ${JSON.stringify(channel)}: ${answer.text}`);
  }
  // The envelope's names: they end up as `from` and in the duplicate table, never in a path.
  const hostile = ['../../../../x', '/abs/path', '..', '\0', '．．／x'];
  for (const name of hostile) {
    const body = envelope([{ stream: 'p4.w0', frame: frame(payloadWith({ c: 'named' }, `from ${JSON.stringify(name)}`), 0) }], { node: name, name, to: name });
    const answer = await postWith(b.url, body);
    assert.equal(answer.status, 200, `envelope names ${JSON.stringify(name)}: ${answer.text}`);
  }
  for (const channel of BAD_CHANNELS) {
    const answer = await postWith(b.url, envelope([{ stream: 'p4.w0', frame: frame(payloadWith({ c: channel }), 0) }]));
    assert.deepEqual([answer.status, answer.json?.code, answer.json?.frame], [400, 'ERR_INVALID_NAME', 0], `channel of ${Buffer.byteLength(channel)} bytes: ${answer.text}`);
  }
  assert.equal(await healthz(b.url), 200);

  // Wait for the duplicate table's checkpoint, which holds the envelope names.
  await waitFor(async () => (await readFile(join(b.dir, 'receiver', 'dedup.json'), 'utf8')).includes('．．／x'), { message: 'the dedup checkpoint' });
  await assertContained(root, b.dir);
  assert.equal(existsSync('/abs'), absBefore, 'nothing made at /abs');

  // Each accepted channel has its own inbox named by its encoding, and dump shows the name as it was sent.
  const inbox = await allInbox(b.dir);
  const byChannel = new Map<string, Record<string, unknown>[]>();
  for (const m of inbox) byChannel.set(m.channel as string, [...(byChannel.get(m.channel as string) ?? []), m]);
  for (const channel of ODD_CHANNELS) {
    const messages = byChannel.get(channel) ?? [];
    assert.equal(messages.length, 1, `one message on ${JSON.stringify(channel)}`);
    const m = messages[0]!;
    assert.equal(m.queue, `inbox/${encodeName(channel)}`, `queue of ${JSON.stringify(channel)}`);
    assert.match(String(m.queue), /^inbox\/[A-Za-z0-9_%~-]+$/, 'a plain path component');
    assert.equal(m.body, `on ${JSON.stringify(channel)}`);
  }
  assert.deepEqual((byChannel.get('named') ?? []).map((m) => m.from).sort(), [...hostile].sort(), 'from is the envelope name, stored as data');
  const names = (await listTree(join(b.dir, 'inbox'))).filter((e) => e.kind === 'dir' && relative(join(b.dir, 'inbox'), e.path).split(sep).length === 1);
  assert.equal(names.length, ODD_CHANNELS.length + 1, 'one inbox directory per channel');
  for (const e of names) assert.match(relative(join(b.dir, 'inbox'), e.path), /^[A-Za-z0-9_%~-]+$/);

  // Readers find those channels by their names.
  for (const channel of ['../escape', '/abs/path', 'a/../../b', '．．／．．／x']) {
    const tailed = await mqlog(['tail', '--data', b.dir, '--channel', channel, '--json']);
    assert.equal(tailed.code, 0, tailed.stderr);
    assert.deepEqual(jsonLines(tailed.stdout).map((m) => [m.channel, m.body]), [[channel, `on ${JSON.stringify(channel)}`]]);
  }
  const verify = await mqlog(['verify', b.dir]);
  assert.equal(verify.code, 0, verify.stdout + verify.stderr);
});

test('stream names that are not [a-z0-9]{1,16}.w[0-9]{1,6} are refused with 400 ERR_BAD_REQUEST and create nothing', async (t) => {
  const { root, b } = await deepReceiver(t);
  const before = (await listTree(b.dir)).map((e) => e.path);
  const failures: string[] = [];
  for (const stream of BAD_STREAMS) {
    // After a sound frame on a good stream, so the whole request must be refused.
    const body = envelope([{ stream: 'p4.w0', frame: frame(payloadWith({ c: 'streams' }), 0) }, { stream, frame: frame(payloadWith({ c: 'streams' }), 1) }]);
    const answer = await postWith(b.url, body);
    if (answer.status !== 400 || answer.json?.code !== 'ERR_BAD_REQUEST' || answer.json.frame !== 1) failures.push(`${JSON.stringify(stream)}: ${answer.status} ${answer.text}`);
  }
  assert.deepEqual(failures, []);
  assert.deepEqual(await allInbox(b.dir), []);
  assert.equal(await healthz(b.url), 200);
  await assertContained(root, b.dir);
  const created = (await listTree(b.dir)).map((e) => e.path).filter((p) => !before.includes(p) && !p.endsWith('.tmp'));
  assert.deepEqual(created.filter((p) => p.includes(`${sep}inbox${sep}`)), [], 'no inbox was created');
});

test('every file the node creates under DIR is 0600 and every directory 0700', async (t) => {
  // With umask 0 (inherited by the daemon and the CLI), a file or directory created without an explicit
  // mode shows up as 0666 / 0777 instead of being hidden by a strict umask.
  const umask = process.umask(0);
  t.after(() => void process.umask(umask));
  const { root, b, daemon } = await deepReceiver(t);
  // Inbox messages on two channels, an outbox message for a peer that is down (cursor with lastError),
  // and a consumer that acks (consumer journal).
  for (const [i, channel] of ['../private', 'jobs'].entries()) {
    const answer = await postWith(b.url, envelope([{ stream: 'p4.w0', frame: frame(payloadWith({ c: channel }), i) }], { node: 'n1' }));
    assert.equal(answer.status, 200, answer.text);
  }
  const sent = await mqlog(['send', '--data', b.dir, '--to', 'a', '--receipt', 'to a peer that is down']);
  assert.equal(sent.code, 0, sent.stderr);
  const tailed = await mqlog(['tail', '--data', b.dir, '--channel', 'jobs', '--ack', '--json']);
  assert.equal(tailed.code, 0, tailed.stderr);
  assert.equal(jsonLines(tailed.stdout).length, 1);
  await waitFor(async () => {
    const stat = jsonLines((await mqlog(['stat', '--data', b.dir, '--json'])).stdout).find((r) => r.peer === 'a');
    return typeof stat?.lastError === 'string';
  }, { message: 'the forwarder to record its failure' });
  await waitFor(() => existsSync(join(b.dir, 'receiver', 'dedup.json')), { message: 'the dedup checkpoint' });

  const check = async (when: string): Promise<void> => {
    const entries = await listTree(b.dir);
    const wrong = entries.filter((e) => (e.kind === 'dir' ? e.mode !== 0o700 : e.mode !== 0o600)).map((e) => `${e.kind} ${relative(b.dir, e.path)} ${e.mode.toString(8)}`);
    assert.deepEqual(wrong, [], `modes ${when}`);
    const kinds = new Set(entries.map((e) => e.kind));
    assert.deepEqual([...kinds].sort(), ['dir', 'file'], `only files and directories ${when}`);
    t.diagnostic(`${when}: ${entries.length} entries checked`);
  };
  await check('while the daemon runs');
  assert.equal(await daemon.stop(), 0, daemon.output);
  await check('after the daemon stopped');
  const compacted = await mqlog(['compact', '--data', b.dir]);
  assert.equal(compacted.code, 0, compacted.stderr);
  await check('after compaction');
  // The supervised daemon too: the angel's state and the log files under DIR/logs.
  const started = await mqlog(['start', '--data', b.dir]);
  assert.equal(started.code, 0, started.stderr);
  t.after(async () => void (await mqlog(['stop', '--data', b.dir])));
  const status = await mqlog(['status', '--data', b.dir, '--json']);
  assert.equal((JSON.parse(status.stdout) as { running?: unknown }).running, true, status.stdout);
  await check('under the angel');
  const stopped = await mqlog(['stop', '--data', b.dir]);
  assert.equal(stopped.code, 0, stopped.stderr);
  await check('after mqlog stop');
  await assertContained(root, b.dir);
});
