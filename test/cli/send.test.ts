import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { jsonLines, mqlog, tempDir } from '../helpers/index.js';

const TO = 'http://127.0.0.1:9';

test('send prints one id and dump shows the message with every contract field', async (t) => {
  const dir = await tempDir(t);
  const sent = await mqlog(['send', '--data', dir, '--to', TO, '--priority', '7', '--channel', 'jobs/high?', '--header', 'k=v=w', '--ttl', '1h', '--delay', '0s', 'hello world']);
  assert.equal(sent.code, 0, sent.stderr);
  const id = sent.stdout.trim();
  assert.match(id, /^[0-9a-f-]{36}$/);
  const dumped = await mqlog(['dump', dir, '--json']);
  assert.equal(dumped.code, 0, dumped.stderr);
  const [record, ...rest] = jsonLines(dumped.stdout);
  assert.equal(rest.length, 0);
  for (const key of ['queue', 'segment', 'offset', 'id', 'ts', 'channel', 'priority', 'to', 'from', 'size', 'state', 'body']) {
    assert.ok(record && key in record, `dump lacks ${key}`);
  }
  assert.equal(record!.id, id);
  assert.equal(record!.queue, 'outbox');
  assert.equal(record!.channel, 'jobs/high?');
  assert.equal(record!.priority, 7);
  assert.deepEqual(record!.to, [TO]);
  assert.equal(record!.state, 'pending');
  assert.equal(record!.body, 'hello world');
  assert.equal(record!.size, 11);
  assert.deepEqual(record!.headers, { k: 'v=w' });
});

test('binary bodies from --file appear as bodyBase64', async (t) => {
  const dir = await tempDir(t);
  const file = join(dir, 'body.bin');
  const bytes = Buffer.from([0xff, 0x00, 0xfe, 0x80]);
  await writeFile(file, bytes);
  const sent = await mqlog(['send', '--data', join(dir, 'n'), '--to', TO, '--file', file]);
  assert.equal(sent.code, 0, sent.stderr);
  const [record] = jsonLines(await mqlog(['dump', join(dir, 'n'), '--json']).then((r) => r.stdout));
  assert.equal(record!.bodyBase64, bytes.toString('base64'));
  assert.ok(!('body' in record!));
});

test('send --lines prints ids in input order, each line one message', async (t) => {
  const dir = await tempDir(t);
  const lines = Array.from({ length: 1000 }, (_, i) => `line ${i}`);
  const sent = await mqlog(['send', '--data', dir, '--to', TO, '--lines'], { input: `${lines.join('\n')}\n` });
  assert.equal(sent.code, 0, sent.stderr);
  const ids = sent.stdout.trim().split('\n');
  assert.equal(ids.length, 1000);
  const records = jsonLines<{ id: string; body: string; offset: number }>((await mqlog(['dump', dir, '--json'])).stdout);
  const byId = new Map(records.map((r) => [r.id, r]));
  ids.forEach((id, i) => assert.equal(byId.get(id)?.body, lines[i]));
  assert.deepEqual(records.map((r) => r.offset), lines.map((_, i) => i), 'FIFO within a priority');
});

test('several --to make one multicast message with one id', async (t) => {
  const dir = await tempDir(t);
  const sent = await mqlog(['send', '--data', dir, '--to', TO, '--to', 'http://127.0.0.1:10', 'x']);
  assert.equal(sent.stdout.trim().split('\n').length, 1);
  const [record] = jsonLines((await mqlog(['dump', dir, '--json'])).stdout);
  assert.deepEqual(record!.to, [TO, 'http://127.0.0.1:10']);
});

test('usage errors exit 2 with a coded message and send nothing', async (t) => {
  const dir = await tempDir(t);
  const cases = [
    ['send', '--data', dir, 'no destination'],
    ['send', '--data', dir, '--to', TO],
    ['send', '--data', dir, '--to', TO, '--priority', '10', 'x'],
    ['send', '--data', dir, '--to', TO, '--priority', 'high', 'x'],
    ['send', '--data', dir, '--to', TO, '--ttl', 'soon', 'x'],
    ['send', '--data', dir, '--to', TO, '--header', 'novalue', 'x'],
    ['send', '--data', dir, '--to', TO, '--bogus', 'x'],
    ['send', '--data', dir, '--to', 'nobody', 'x'],
    ['send', '--data', dir, '--to', TO, '--channel', 'x'.repeat(256), 'x'],
    ['send', '--data', dir, '--to', TO, '--file', '/nonexistent', 'x'],
    ['frobnicate'],
  ];
  for (const args of cases) {
    const result = await mqlog(args);
    assert.equal(result.code, 2, `${args.join(' ')} → ${result.code}: ${result.stderr}`);
    assert.match(result.stderr, /^mqlog: ERR_[A-Z_]+: .+\n$/, args.join(' '));
  }
  const dumped = await mqlog(['dump', dir, '--json']);
  assert.equal(dumped.stdout, '');
});

test('--help works for mqlog and every command', async () => {
  const top = await mqlog(['--help']);
  assert.equal(top.code, 0);
  for (const command of ['send', 'dump', 'verify', 'stat']) {
    assert.match(top.stdout, new RegExp(`\\b${command}\\b`));
    const sub = await mqlog([command, '--help']);
    assert.equal(sub.code, 0, command);
    assert.match(sub.stdout, new RegExp(`usage: mqlog ${command}`));
  }
});

test('MQLOG_DATA is the default data directory', async (t) => {
  const dir = await tempDir(t);
  const sent = await mqlog(['send', '--to', TO, 'via env'], { env: { MQLOG_DATA: dir } });
  assert.equal(sent.code, 0, sent.stderr);
  const [record] = jsonLines((await mqlog(['dump', dir, '--json'])).stdout);
  assert.equal(record!.body, 'via env');
});

test('stat counts messages and the backlog per destination', async (t) => {
  const dir = await tempDir(t);
  await writeFile(join(dir, 'mqlog.json'), JSON.stringify({ peers: { b: { url: 'http://127.0.0.1:7999' } } }));
  await mqlog(['send', '--data', dir, '--to', 'b', '--lines'], { input: 'a\nb\nc\n' });
  await mqlog(['send', '--data', dir, '--to', TO, 'd']);
  const result = await mqlog(['stat', '--data', dir, '--json']);
  assert.equal(result.code, 0, result.stderr);
  const rows = jsonLines(result.stdout);
  const outbox = rows.find((r) => r.queue === 'outbox');
  assert.deepEqual(
    { messages: outbox?.messages, pending: outbox?.pending, kind: outbox?.kind, segments: outbox?.segments },
    { messages: 4, pending: 4, kind: 'outbox', segments: 1 },
  );
  assert.ok((outbox?.bytes as number) > 0);
  const peerB = rows.find((r) => r.peer === 'b');
  assert.deepEqual(peerB, { type: 'peer', peer: 'b', url: 'http://127.0.0.1:7999', backlog: 3, lastError: null, lastSentAt: null });
  assert.equal(rows.find((r) => r.peer === TO)?.backlog, 1);
});

test('a send that cuts off a torn tail left by a killed writer says so on stderr', async (t) => {
  const dir = await tempDir(t);
  assert.equal((await mqlog(['send', '--data', dir, '--to', TO, 'first'])).code, 0);
  const { appendFile } = await import('node:fs/promises');
  await appendFile(join(dir, 'outbox', 'p4.w0', '00000000000000000000.seg'), Buffer.from([0xa7, 1, 1, 0, 50, 0, 0, 0]));
  const second = await mqlog(['send', '--data', dir, '--to', TO, 'second']);
  assert.equal(second.code, 0, second.stderr);
  assert.match(second.stderr, /cut off a torn tail of p4\.w0 .*8 bytes at byte \d+ of \S+00000000000000000000\.seg, kept in \S+\.torn/);
});
