/**
 * Codes not triggered elsewhere in the suite, each by the situation it names.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { writeFile, mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { Daemon } from '../../src/daemon/daemon.js';
import { parseConfig } from '../../src/daemon/config.js';
import { createServers } from '../../src/daemon/http-server.js';
import { silentLogger } from '../../src/daemon/logger.js';
import { openNode } from '../../src/daemon/node.js';
import { FrameType, encodeFrame } from '../../src/log/frame.js';
import { encodeChunk, encodeMessagePayload } from '../../src/queue/codec.js';
import { CONTENT_TYPE, encodeBatch } from '../../src/transport/wire.js';
import { newId } from '../../src/util/ids.js';
import { defer, jsonLines, mqlog, tempDir, waitFor } from '../helpers/index.js';
import { postBatch } from '../helpers/wire.js';

test('ERR_NOT_FOUND: a receipt for an id this node never sent', async (t) => {
  const dir = await tempDir(t);
  const result = await mqlog(['receipt', '--data', dir, newId()]);
  assert.equal(result.code, 1);
  assert.match(result.stderr, /^mqlog: ERR_NOT_FOUND: /);
});

test('ERR_CORRUPT_STATE: a consumer checkpoint that is not JSON stops tail with a clear error', async (t) => {
  const dir = await tempDir(t);
  const node = await openNode({ data: dir });
  const inbox = await node.inbox('c');
  await inbox.append({ id: newId(), ts: Date.now(), channel: 'c', priority: 4, to: ['me'], from: 'x' }, Buffer.from('m'));
  await node.close();
  await mkdir(join(inbox.info.dir, 'consumer'), { recursive: true });
  await writeFile(join(inbox.info.dir, 'consumer', 'checkpoint.json'), '{ not json');
  const result = await mqlog(['tail', '--data', dir, '--channel', 'c']);
  assert.equal(result.code, 1);
  assert.match(result.stderr, /ERR_CORRUPT_STATE: .*checkpoint\.json/);
});

test('ERR_ALREADY_ACKED: a second ack of the same delivery is refused', async (t) => {
  const dir = await tempDir(t);
  const node = await openNode({ data: dir });
  defer(t, () => node.close());
  const inbox = await node.inbox('c');
  await inbox.append({ id: newId(), ts: Date.now(), channel: 'c', priority: 4, to: ['me'], from: 'x' }, Buffer.from('m'));
  let delivered = 0;
  for await (const message of node.tail({ channel: 'c', limit: 1 })) {
    delivered++;
    await message.ack();
    await assert.rejects(message.ack(), { code: 'ERR_ALREADY_ACKED' });
  }
  // The assertion above runs inside the loop: it proves nothing unless the loop ran.
  assert.equal(delivered, 1, 'the message was delivered, so the second ack was tried');
});

test('ERR_FORBIDDEN: a node without peer keys refuses requests from other addresses than loopback', async (t) => {
  const sink = { accept: () => Promise.reject(new Error('must not be reached')) };
  const servers = createServers({
    config: parseConfig({}),
    logger: silentLogger(),
    tls: {},
    sink,
    healthy: () => true,
    readOnly: { metrics: async () => ({ contentType: 'text/plain', text: '' }), status: async () => ({}), page: '' },
  });
  defer(t, () => servers.peer.close());
  assert.equal(servers.mode, 'loopback');
  const body = Buffer.concat(encodeBatch({ node: 'n', name: 'a', destination: 'b', frames: [{ stream: 'p4.w0', frame: encodeFrame(FrameType.MESSAGE, 0, encodeMessagePayload({ id: newId(), ts: 1, channel: 'c', priority: 4, to: ['b'], from: 'a' }, Buffer.from('x'))) }] }));
  const far = await servers.peer.inject({ method: 'POST', url: '/v1/messages', remoteAddress: '192.0.2.7', headers: { 'content-type': CONTENT_TYPE }, payload: body });
  assert.equal(far.statusCode, 403);
  assert.equal(far.json<{ code: string }>().code, 'ERR_FORBIDDEN');
});

test('ERR_BODY_DIGEST_MISMATCH: chunks that do not add up to the declared digest are refused and never delivered', async (t) => {
  const dir = await tempDir(t);
  await writeFile(join(dir, 'mqlog.json'), JSON.stringify({ name: 'b', listen: '127.0.0.1:0' }));
  const daemon = await Daemon.start({ data: dir, logger: silentLogger() });
  defer(t, () => daemon.stop());
  const id = newId();
  const data = Buffer.alloc(1000, 7);
  const chunk = encodeFrame(FrameType.BODY_CHUNK, 0, Buffer.concat(encodeChunk({ id, position: 0, ts: Date.now(), channel: 'c', priority: 4, to: ['b'] }, data)));
  const wrong = { size: 1000, sha256: '0'.repeat(64), parts: [{ stream: 'p4.w0', first: 0, last: 0 }] };
  const message = encodeFrame(FrameType.MESSAGE, 1, encodeMessagePayload({ id, ts: Date.now(), channel: 'c', priority: 4, to: ['b'], from: 'a', streamed: wrong }, Buffer.alloc(0)));
  const body = Buffer.concat(encodeBatch({ node: 'sender', name: 'a', destination: 'b', frames: [{ stream: 'p4.w0', frame: chunk }, { stream: 'p4.w0', frame: message }] }));
  const response = await postBatch(daemon.url, body);
  assert.equal(response.status, 400);
  assert.equal((response.json as { code: string; frame: number }).code, 'ERR_BODY_DIGEST_MISMATCH');
  assert.equal((response.json as { code: string; frame: number }).frame, 1);
  const dumped = jsonLines((await mqlog(['dump', dir, '--json'])).stdout);
  assert.equal(dumped.filter((r) => r.id === id).length, 0, 'the message never became visible');
});

test('ERR_BODY_INCOMPLETE: a streamed message that overtakes its last chunk (pipelined requests) is answered 503 without a frame, and accepted once the chunk is in', async (t) => {
  const dir = await tempDir(t);
  await writeFile(join(dir, 'mqlog.json'), JSON.stringify({ name: 'b', listen: '127.0.0.1:0' }));
  const daemon = await Daemon.start({ data: dir, logger: silentLogger() });
  defer(t, () => daemon.stop());
  const id = newId();
  const halves = [Buffer.alloc(1000, 7), Buffer.alloc(1000, 8)];
  const sha256 = createHash('sha256').update(Buffer.concat(halves)).digest('hex');
  const chunk = (position: number, data: Buffer, offset: number) => ({ stream: 'p4.w0', frame: encodeFrame(FrameType.BODY_CHUNK, offset, Buffer.concat(encodeChunk({ id, position, ts: Date.now(), channel: 'c', priority: 4, to: ['b'] }, data))) });
  const message = { stream: 'p4.w0', frame: encodeFrame(FrameType.MESSAGE, 2, encodeMessagePayload({ id, ts: Date.now(), channel: 'c', priority: 4, to: ['b'], from: 'a', streamed: { size: 2000, sha256, parts: [] } }, Buffer.alloc(0))) };
  const batch = (frames: ReturnType<typeof chunk>[], from: number, to: number): Buffer => Buffer.concat(encodeBatch({ node: 'sender', name: 'a', destination: 'b', frames, covers: { 'p4.w0': [from, to] } }));
  assert.equal((await postBatch(daemon.url, batch([chunk(0, halves[0]!, 0)], 0, 1))).status, 200);
  // The message's request arrives before the one with the last chunk.
  const early = await postBatch(daemon.url, batch([message], 2, 3));
  assert.equal(early.status, 503, JSON.stringify(early.json));
  assert.equal((early.json as { code: string }).code, 'ERR_BODY_INCOMPLETE');
  assert.equal((early.json as { frame?: number }).frame, undefined, 'no frame named: the sender keeps the message and sends it again');
  assert.equal((await postBatch(daemon.url, batch([chunk(1000, halves[1]!, 1)], 1, 2))).status, 200);
  const again = await postBatch(daemon.url, batch([message], 2, 3));
  assert.equal(again.status, 200, JSON.stringify(again.json));
  const dumped = jsonLines<{ id: string; size: number }>((await mqlog(['dump', dir, '--json'])).stdout).filter((r) => r.id === id);
  assert.deepEqual(dumped.map((r) => r.size), [2000], 'delivered once, whole');
});

test('ERR_PEER_REJECTED: a frame the peer refuses for good goes to outbox-dead with the reason, and the rest is delivered', async (t) => {
  const root = await tempDir(t);
  const b = join(root, 'b');
  await mkdir(b);
  await writeFile(join(b, 'mqlog.json'), JSON.stringify({ name: 'b', listen: '127.0.0.1:0', limits: { maxChannelBytes: 8 } }));
  const receiver = await Daemon.start({ data: b, logger: silentLogger() });
  defer(t, () => receiver.stop());
  const a = join(root, 'a');
  await mkdir(a);
  await writeFile(join(a, 'mqlog.json'), JSON.stringify({ name: 'a', listen: '127.0.0.1:0', peers: { b: { url: receiver.url } } }));
  const node = await openNode({ data: a });
  const refused = await node.send('b', 'too long a channel', { channel: 'a-channel-name-longer-than-eight' });
  const fine = await node.send('b', 'fine', { channel: 'short' });
  await node.close();
  const sender = await Daemon.start({ data: a, logger: silentLogger() });
  defer(t, () => sender.stop());
  await waitFor(async () => jsonLines((await mqlog(['dump', b, '--json'])).stdout).some((r) => r.id === fine), { message: 'the fine message at B' });
  const dead = await waitFor(async () => jsonLines((await mqlog(['dump', join(a, 'outbox-dead'), '--json'])).stdout).find((r) => r.id === refused), { message: 'the refused message in outbox-dead' });
  assert.equal(dead.state, 'dead');
  assert.match(String((dead.headers as Record<string, string>)['mqlog-dead-reason']), /ERR_INVALID_NAME/);
  const outbox = jsonLines((await mqlog(['dump', join(a, 'outbox'), '--json'])).stdout);
  assert.equal(outbox.find((r) => r.id === refused)?.state ?? 'dead', 'dead');
});
