/**
 * A peer that refuses a batch as a whole (413 for a request over its limit) gets it again split, down
 * to one frame, with a pause between tries: small enough frames arrive, a frame too large alone goes to
 * the outbox's dead letters with the peer's reason. Real daemons.
 */
import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { test } from 'node:test';
import { FileLogStore } from '../../src/log/file-log-store.ts';
import { FrameType } from '../../src/log/frame.ts';
import { encodeMessagePayload } from '../../src/queue/codec.ts';
import { outboxInfo } from '../../src/queue/layout.ts';
import { newId } from '../../src/util/ids.ts';
import { daemons, inboxDump, makeNodes } from '../helpers/daemon.js';
import { jsonLines, mqlog, tempDir, waitFor } from '../helpers/index.js';

test('a batch the peer refuses as too large is split down to single frames; a frame too large alone is dead-lettered', async (t) => {
  const root = await tempDir(t);
  const nodes = await makeNodes(root, ['a', 'b']);
  const { a, b } = nodes;
  assert.ok(a !== undefined && b !== undefined);
  // b takes requests of at most 2 KiB: one 900-byte message fits, five of them together do not.
  const bConfig = JSON.parse(await readFile(join(b.dir, 'mqlog.json'), 'utf8')) as Record<string, unknown>;
  await writeFile(join(b.dir, 'mqlog.json'), JSON.stringify({ ...bConfig, limits: { maxRequestBytes: 2048 } }));
  const bodies = Array.from({ length: 5 }, (_, i) => `m${i}-`.padEnd(900, 'x'));
  const sent = await mqlog(['send', '--data', a.dir, '--to', 'b', '--lines'], { input: `${bodies.join('\n')}\n` });
  assert.equal(sent.code, 0, sent.stderr);
  const big = await mqlog(['send', '--data', a.dir, '--to', 'b', 'y'.repeat(3000)]);
  assert.equal(big.code, 0, big.stderr);
  const [da, db] = daemons(t, [a, b]);
  await db!.start();
  await da!.start();

  await waitFor(async () => (await inboxDump(b.dir)).length === 5, { timeoutMs: 60_000, message: 'the five small messages to arrive one by one' });
  assert.deepEqual((await inboxDump(b.dir)).map((r) => r.body).sort(), [...bodies].sort());
  await waitFor(
    async () => {
      const dumped = await mqlog(['dump', a.dir, '--json']);
      return jsonLines<{ queue: string; state: string }>(dumped.stdout).some((r) => r.queue === 'outbox-dead');
    },
    { timeoutMs: 60_000, message: 'the message too large alone to be dead-lettered' },
  );
  const dead = jsonLines<{ queue: string; size: number; headers?: Record<string, string> }>((await mqlog(['dump', a.dir, '--json'])).stdout).filter((r) => r.queue === 'outbox-dead');
  assert.equal(dead.length, 1);
  assert.equal(dead[0]?.size, 3000);
  assert.match(JSON.stringify(dead[0]?.headers ?? {}), /too large|ERR_REQUEST_TOO_LARGE/);
  // Never a loop without pause: the tries are few (each split halves the batch, then a pause).
  const failures = (da!.output.match(/forward_failed/g) ?? []).length;
  assert.ok(failures < 20, `${failures} failed tries`);
});

test('a request the peer refuses before reading its body (413 on its length) is dead-lettered with the reason, not retried as unreachable', async (t) => {
  const root = await tempDir(t);
  const { a, b } = await makeNodes(root, ['a', 'b']);
  assert.ok(a !== undefined && b !== undefined);
  // 900 KiB in one request against a 64 KiB limit: b answers at once and closes while a still writes.
  const bConfig = JSON.parse(await readFile(join(b.dir, 'mqlog.json'), 'utf8')) as Record<string, unknown>;
  await writeFile(join(b.dir, 'mqlog.json'), JSON.stringify({ ...bConfig, limits: { maxRequestBytes: 64 * 1024 } }));
  const file = join(root, 'body');
  await writeFile(file, Buffer.alloc(900 * 1024, 0x61));
  const sent = await mqlog(['send', '--data', a.dir, '--to', 'b', '--file', file]);
  assert.equal(sent.code, 0, sent.stderr);
  const [da, db] = daemons(t, [a, b]);
  await db!.start();
  await da!.start();
  const dead = await waitFor(
    async () => jsonLines<{ queue: string; size: number; headers?: Record<string, string> }>((await mqlog(['dump', a.dir, '--json'])).stdout).filter((r) => r.queue === 'outbox-dead')[0],
    { timeoutMs: 60_000, message: 'the message to be dead-lettered' },
  );
  assert.equal(dead.size, 900 * 1024);
  assert.match(JSON.stringify(dead.headers ?? {}), /413 ERR_REQUEST_TOO_LARGE/);
  assert.doesNotMatch(da!.output, /ERR_PEER_UNREACHABLE/, 'the early answer was read, not taken for a broken connection');
});

test('an answer that is not from an mqlog receiver (a proxy\'s 502 page) is reported as it came, with no made-up code, and retried', async (t) => {
  const root = await tempDir(t);
  const { a } = await makeNodes(root, ['a', 'b']);
  assert.ok(a !== undefined);
  const proxy = createServer((request, response) => {
    request.resume();
    response.writeHead(502, { 'content-type': 'text/html' }).end('<html><body>Bad Gateway</body></html>');
  });
  await new Promise<void>((resolve) => proxy.listen(0, '127.0.0.1', resolve));
  t.after(() => new Promise<void>((resolve) => proxy.close(() => resolve())));
  const config = JSON.parse(await readFile(join(a.dir, 'mqlog.json'), 'utf8')) as { peers: Record<string, { url: string }> };
  config.peers.b = { url: `http://127.0.0.1:${(proxy.address() as AddressInfo).port}` };
  await writeFile(join(a.dir, 'mqlog.json'), JSON.stringify(config));
  assert.equal((await mqlog(['send', '--data', a.dir, '--to', 'b', 'through a proxy'])).code, 0);
  const [da] = daemons(t, [a]);
  await da!.start();
  const peer = await waitFor(
    async () => jsonLines<{ peer?: string; lastError?: string | null; backlog?: number }>((await mqlog(['stat', '--data', a.dir, '--json'])).stdout).find((r) => r.peer === 'b' && typeof r.lastError === 'string'),
    { timeoutMs: 60_000, message: "b's first failure" },
  );
  assert.match(peer.lastError ?? '', /answered 502: not an mqlog answer: <html><body>Bad Gateway/);
  assert.doesNotMatch(peer.lastError ?? '', /HTTP_/);
  assert.equal(peer.backlog, 1, 'kept for the next try, not dead-lettered');
  assert.match(da!.output, /"code":"ERR_PEER_FAILED"/);
});

test('an outbox message whose fields (other than its address) do not decode is forwarded, refused by the peer, and reported: never kept as a dead letter, never holding back the next', async (t) => {
  const root = await tempDir(t);
  const { a, b } = await makeNodes(root, ['a', 'b']);
  assert.ok(a !== undefined && b !== undefined);
  const before = await mqlog(['send', '--data', a.dir, '--to', 'b', 'before']);
  assert.equal(before.code, 0, before.stderr);
  // A frame with a good CRC and a good address, whose node id is too long: written as a damaged writer
  // of an older version could have, past the checks of send().
  const store = new FileLogStore(a.dir);
  const writer = await store.claimWriter(outboxInfo(a.dir).queue);
  const ts = Date.now();
  await writer.append('p4', FrameType.MESSAGE, encodeMessagePayload({ id: newId(ts), ts, channel: 'common', priority: 4, to: ['b'], from: 'a', node: 'n'.repeat(100) }, Buffer.from('bad')));
  await writer.close();
  await store.close();
  const after = await mqlog(['send', '--data', a.dir, '--to', 'b', 'after']);
  assert.equal(after.code, 0, after.stderr);

  const [da, db] = daemons(t, [a, b]);
  await db!.start();
  await da!.start();
  await waitFor(async () => (await inboxDump(b.dir)).length === 2, { timeoutMs: 60_000, message: 'the two good messages to arrive' });
  assert.deepEqual((await inboxDump(b.dir)).map((r) => r.body).sort(), ['after', 'before']);
  await waitFor(() => da!.output.includes('dead_letter_unreadable'), { timeoutMs: 30_000, message: 'the refused message to be reported' });
  assert.match(da!.output, /"event":"dead_letter_unreadable".*node is not a node id/);
  const dumped = jsonLines<{ queue: string }>((await mqlog(['dump', a.dir, '--json'])).stdout);
  assert.equal(dumped.filter((r) => r.queue === 'outbox-dead').length, 0, 'nothing to keep as a dead letter');
});
