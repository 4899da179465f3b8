import assert from 'node:assert/strict';
import { readdir, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import stringWidth from 'string-width';
import { openNode } from '../../src/index.js';
import { newId } from '../../src/util/ids.js';
import { jsonLines, mqlog, tempDir } from '../helpers/index.js';

const exists = (path: string): Promise<boolean> => stat(path).then(() => true, () => false);

/** A node with one message in each of CHANNELS' inboxes, written as the daemon's receiver would. */
async function nodeWithChannels(dir: string, channels: readonly string[]): Promise<void> {
  const node = await openNode({ data: dir });
  try {
    for (const channel of channels) {
      const inbox = await node.inbox(channel);
      await inbox.append({ id: newId(), ts: Date.now(), channel, priority: 4, to: ['b'], from: 'a' }, Buffer.from('hello'));
    }
  } finally {
    await node.close();
  }
}

test('commands that read a node refuse a --data that is no node, with ERR_NOT_FOUND and exit 1, and create nothing', async (t) => {
  const missing = join(await tempDir(t), 'typo');
  const commands = [
    ['stat', '--data', missing],
    ['tail', '--data', missing],
    ['tail', '--data', missing, '--follow', '--timeout', '1s'],
    ['receipt', '--data', missing, '00000000-0000-7000-8000-000000000000'],
    ['redrive', '--data', missing],
    ['purge', '--data', missing, '--channel', 'common'],
    ['peers', '--data', missing],
    ['retry', '--data', missing, '--peer', 'b'],
  ];
  for (const args of commands) {
    const result = await mqlog(args);
    assert.deepEqual([result.code, result.stderr.split(':').slice(0, 2).join(':')], [1, 'mqlog: ERR_NOT_FOUND'], `${args.join(' ')}: ${result.stderr}`);
    assert.match(result.stderr, /no mqlog node at .*typo/);
    assert.equal(await exists(missing), false, `${args[0]} created ${missing}`);
  }
  const verify = await mqlog(['verify', missing]);
  assert.deepEqual([verify.code, /ERR_NOT_FOUND/.test(verify.stderr)], [1, true], 'verify of a missing path is a problem found, as with dump');
  const dump = await mqlog(['dump', missing]);
  assert.equal(dump.code, 1);
});

test('a mistyped --channel is an error naming the channels there, and creates no queue', async (t) => {
  const dir = await tempDir(t);
  await nodeWithChannels(dir, ['jobs', 'mail']);
  const before = await readdir(join(dir, 'inbox'));
  for (const args of [['tail', '--data', dir, '--channel', 'jbos'], ['purge', '--data', dir, '--channel', 'jbos'], ['redrive', '--data', dir, '--channel', 'jbos']]) {
    const result = await mqlog(args);
    assert.equal(result.code, 1, `${args.join(' ')}: ${result.stderr}`);
    assert.match(result.stderr, /^mqlog: ERR_NOT_FOUND: no channel "jbos" on the node at .*\(its channels: jobs, mail\)/);
  }
  assert.deepEqual(await readdir(join(dir, 'inbox')), before);
  // A follower may start before its channel's first message: it is told, and waits.
  const follow = await mqlog(['tail', '--data', dir, '--channel', 'later', '--follow', '--timeout', '200ms']);
  assert.equal(follow.code, 0, follow.stderr);
  assert.match(follow.stderr, /warning: no channel "later" .*waiting for its first message/);
  const right = await mqlog(['tail', '--data', dir, '--channel', 'jobs', '--ack']);
  assert.deepEqual([right.code, right.stdout.includes('hello')], [0, true], right.stderr);
});

test('stat prints a header row, aligns columns whatever the names, shows channels as typed, and types its JSON records', async (t) => {
  const dir = await tempDir(t);
  const channels = ['日本語 jobs', 'a-very-long-channel-name-for-the-width', 'common'];
  await nodeWithChannels(dir, channels);
  await mqlog(['send', '--data', dir, '--to', 'http://127.0.0.1:9', 'x']);
  const text = await mqlog(['stat', '--data', dir]);
  assert.equal(text.code, 0, text.stderr);
  const lines = text.stdout.split('\n');
  assert.match(lines[0] ?? '', /^QUEUE +KIND +CHANNEL +MESSAGES +PENDING +BYTES +SEGMENTS$/);
  const queueLines = lines.slice(0, lines.indexOf(''));
  assert.equal(queueLines.length, 1 + 1 + channels.length);
  // Every row's KIND column starts at the same terminal column as the header's.
  const kindColumn = (line: string): number => stringWidth(line.slice(0, line.search(/ (KIND|outbox|inbox) /) + 1));
  for (const line of queueLines) assert.equal(kindColumn(line), kindColumn(queueLines[0]!), line);
  assert.ok(queueLines.some((l) => l.startsWith('inbox/日本語 jobs ')), 'the channel as typed, not its encoded directory name');
  assert.match(lines[lines.indexOf('') + 1] ?? '', /^PEER +URL +BACKLOG +LAST SENT +LAST ERROR$/);

  const rows = jsonLines((await mqlog(['stat', '--data', dir, '--json'])).stdout);
  assert.deepEqual(rows.map((r) => r.type), ['queue', 'queue', 'queue', 'queue', 'peer']);
  assert.ok(rows.filter((r) => r.type === 'queue').every((r) => typeof r.queue === 'string' && typeof r.pending === 'number'));
});

test('stat names a destination that messages wait for but no peer in mqlog.json is, as its last error', async (t) => {
  const dir = await tempDir(t);
  await writeFile(join(dir, 'mqlog.json'), JSON.stringify({ name: 'a', peers: { b: { url: 'http://127.0.0.1:9' } } }));
  assert.equal((await mqlog(['send', '--data', dir, '--to', 'b', 'for b'])).code, 0);
  // b is dropped from the configuration while a message still waits for it.
  await writeFile(join(dir, 'mqlog.json'), JSON.stringify({ name: 'a' }));
  const rows = jsonLines<{ type: string; peer?: string; url?: string | null; backlog?: number; lastError?: string | null }>((await mqlog(['stat', '--data', dir, '--json'])).stdout);
  const b = rows.find((r) => r.type === 'peer' && r.peer === 'b');
  assert.equal(b?.url, null);
  assert.equal(b?.backlog, 1);
  assert.match(b?.lastError ?? '', /^unknown destination: b is not a peer in mqlog\.json/);
});
