/**
 * Exactly once end to end through JetStream (spec/transports.md §3.4): A forwards into a stream, B takes
 * the stream as an inbox source, and every message is in B's inbox once — across SIGKILLs of both
 * daemons and a crash of the nats-server mid-run, across A sending a large body again after the
 * stream's duplicate window, and across every message being published again after that window (the
 * stream then holds each twice). The streams are made with a short duplicate window for that.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { test } from 'node:test';
import { connect, headers as natsHeaders } from '@nats-io/transport-node';
import { AckPolicy, DeliverPolicy, jetstream, jetstreamManager } from '@nats-io/jetstream';
import { Objm } from '@nats-io/obj';
import { jsonLines, mqlog, tempDir, waitFor } from '../helpers/index.js';
import { allInbox, daemons, makeNodes } from '../helpers/daemon.js';
import { MiB, sha256File, writeRandomFile } from '../helpers/large.js';
import { NatsServer } from '../helpers/nats.js';

const DUPLICATE_WINDOW_MS = 1000;

async function sendLines(dir: string, lines: string[]): Promise<string[]> {
  const sent = await mqlog(['send', '--data', dir, '--to', 'hub', '--lines'], { input: `${lines.join('\n')}\n` });
  assert.equal(sent.code, 0, sent.stderr);
  return sent.stdout.trim().split('\n');
}

async function sendFile(dir: string, path: string): Promise<string> {
  const sent = await mqlog(['send', '--data', dir, '--to', 'hub', '--file', path]);
  assert.equal(sent.code, 0, sent.stderr);
  return sent.stdout.trim();
}

/** B's durable consumer made by hand with a 5 s ack wait, so that what a killed B fetched comes back soon. */
async function addConsumer(nats: NatsServer, stream: string): Promise<void> {
  await nats.withConnection(async (nc) => {
    await (await jetstreamManager(nc)).consumers.add(stream, { durable_name: 'b', ack_policy: AckPolicy.Explicit, deliver_policy: DeliverPolicy.All, ack_wait: 5 * 1_000_000_000 });
  });
}

async function bucketPieces(nats: NatsServer, bucket: string): Promise<number> {
  return nats.streamCount(`OBJ_${bucket}`);
}

async function drained(nats: NatsServer, stream: string): Promise<void> {
  await waitFor(async () => {
    const info = await nats.consumerInfo(stream, 'b').catch(() => undefined);
    return info !== undefined && info.num_pending === 0 && info.num_ack_pending === 0;
  }, { timeoutMs: 180_000, intervalMs: 200, message: 'B to have acked every message of the stream' });
}

test('every message in B\'s inbox exactly once across SIGKILLs of both daemons and a nats-server crash, a 32 MiB body sent again after the duplicate window included', async (t) => {
  const nats = await NatsServer.start(t);
  const stream = 'EO';
  const root = await tempDir(t);
  const settings = { stream: { duplicateWindowMs: DUPLICATE_WINDOW_MS } };
  const { a } = await makeNodes(root, ['a'], { peers: { hub: { url: nats.streamUrl(stream), nats: settings } } });
  const { b } = await makeNodes(root, ['b'], { sources: [{ url: nats.streamUrl(stream), durable: 'b', nats: settings }] });
  const [da, db] = daemons(t, [a!, b!]);
  const lines = (from: number, n: number): string[] => Array.from({ length: n }, (_, i) => `message ${from + i}`);
  const bigPath = join(root, 'big.bin');
  const bigSha = await writeRandomFile(bigPath, 32 * MiB);

  const ids = await sendLines(a!.dir, lines(0, 500));
  const bigId = await sendFile(a!.dir, bigPath);
  ids.push(...(await sendLines(a!.dir, lines(500, 500))));
  // 1. A is killed as the body's first piece reaches the bucket, and comes back after the duplicate
  //    window: it sends again pieces JetStream no longer recognises by Nats-Msg-Id.
  const watcher = await connect({ servers: `127.0.0.1:${nats.port}` });
  const pieces = watcher.subscribe(`$O.mqlog-${stream}.C.>`, { max: 1 });
  await watcher.flush();
  await da!.start();
  for await (const _ of pieces) await da!.kill();
  await watcher.close();
  const piecesAtKill = await bucketPieces(nats, `mqlog-${stream}`);
  assert.ok(piecesAtKill < 65, `A was killed before the whole body was in the bucket (${piecesAtKill} pieces)`);
  await sleep(DUPLICATE_WINDOW_MS + 500);
  await da!.start();
  // 2. B starts, and is killed once it stored some.
  await addConsumer(nats, stream);
  await db!.start();
  await waitFor(() => db!.output.includes('"event":"source_started"'), { message: 'B to start its source' });
  await waitFor(async () => ((await nats.consumerInfo(stream, 'b'))?.delivered.stream_seq ?? 0) >= 300, { intervalMs: 5, message: 'B to fetch 300' });
  await db!.kill();
  // 3. The server crashes while A forwards more; both daemons are killed while it is down.
  const more = sendLines(a!.dir, lines(1000, 1000));
  more.catch(() => undefined);
  await db!.start();
  await waitFor(async () => (await nats.streamCount(stream)) >= 1100, { intervalMs: 5, message: 'forwarding of the second part under way' });
  await nats.stop('SIGKILL');
  ids.push(...(await more));
  await da!.kill();
  await db!.kill();
  await nats.start();
  await sleep(DUPLICATE_WINDOW_MS + 200);
  await da!.start();
  await db!.start();
  ids.push(...(await sendLines(a!.dir, lines(2000, 500))));
  // 4. Once more, both killed mid-way, back after the duplicate window.
  await waitFor(async () => ((await nats.consumerInfo(stream, 'b'))?.delivered.stream_seq ?? 0) >= 2000, { intervalMs: 5, timeoutMs: 60_000, message: 'B to fetch 2000' });
  await Promise.all([da!.kill(), db!.kill()]);
  await sleep(DUPLICATE_WINDOW_MS + 200);
  await da!.start();
  await db!.start();

  const total = ids.length + 1;
  await waitFor(async () => (await allInbox(b!.dir)).length >= total, { timeoutMs: 180_000, intervalMs: 500, message: `${total} messages in B's inbox` });
  await drained(nats, stream);
  await sleep(500);
  await db!.stop();
  const inbox = await allInbox(b!.dir);
  t.diagnostic(`${piecesAtKill} pieces of the body were in the bucket when A was killed; the stream holds ${await nats.streamCount(stream)} messages for ${total}`);
  assert.equal(inbox.length, total, 'no message missing, none twice');
  assert.deepEqual(inbox.map((m) => m.id).sort(), [...ids, bigId].sort());
  const out = join(root, 'out');
  const tailed = await mqlog(['tail', '--data', b!.dir, '--channel', 'common', '--json', '--ack', '--body-to', out, '--limit', String(total)]);
  assert.equal(tailed.code, 0, tailed.stderr);
  assert.equal((await sha256File(join(out, bigId))).sha256, bigSha, 'the body arrived intact');
  assert.equal((await readFile(join(out, ids[1234]!))).toString(), 'message 1234');
  // The bucket holds the body once, in order: an object store client reads it and checks its digest.
  await nats.withConnection(async (nc) => {
    const blob = await (await new Objm(nc).open(`mqlog-${stream}`)).getBlob(bigId);
    assert.equal(createHash('sha256').update(blob!).digest('hex'), bigSha);
  });
  const verify = await mqlog(['verify', b!.dir]);
  assert.equal(verify.code, 0, `${verify.stdout}${verify.stderr}`);
});

test('messages published again after the duplicate window (the stream holds each twice) are stored once by a sourcing node, also after it was SIGKILLed', async (t) => {
  const nats = await NatsServer.start(t);
  const stream = 'AGAIN';
  const root = await tempDir(t);
  const settings = { stream: { duplicateWindowMs: DUPLICATE_WINDOW_MS } };
  const { a } = await makeNodes(root, ['a'], { peers: { hub: { url: nats.streamUrl(stream), nats: settings } } });
  const { b } = await makeNodes(root, ['b'], { sources: [{ url: nats.streamUrl(stream), durable: 'b', nats: settings }] });
  const [da, db] = daemons(t, [a!, b!]);
  const bigPath = join(root, 'big.bin');
  await writeRandomFile(bigPath, 3 * MiB);
  await da!.start();
  const ids = await sendLines(a!.dir, Array.from({ length: 300 }, (_, i) => `message ${i}`));
  ids.push(await sendFile(a!.dir, bigPath));
  await waitFor(async () => (await nats.streamCount(stream)) === ids.length, { message: 'every message in the stream' });
  await addConsumer(nats, stream);
  await db!.start();
  await drained(nats, stream);
  await db!.kill();
  assert.equal((await allInbox(b!.dir)).length, ids.length);

  // What a sender whose acks were lost would do after the window: publish every message again, as it was.
  const first = await nats.readStream(stream);
  await sleep(DUPLICATE_WINDOW_MS + 200);
  await nats.withConnection(async (nc) => {
    const js = jetstream(nc);
    for (const m of first) {
      const h = natsHeaders();
      for (const [k, v] of m.headers) h.set(k, v);
      const ack = await js.publish(m.subject, m.data, { headers: h });
      assert.equal(ack.duplicate, false, 'JetStream takes it again: the window has passed');
    }
  });
  assert.equal(await nats.streamCount(stream), 2 * ids.length, 'the stream holds every message twice');
  await db!.start();
  await drained(nats, stream);
  await db!.stop();
  const inbox = await allInbox(b!.dir);
  assert.equal(inbox.length, ids.length, 'each message once in B');
  assert.deepEqual(inbox.map((m) => m.id).sort(), [...ids].sort());
  const metrics = jsonLines((await mqlog(['stat', '--data', b!.dir, '--json'])).stdout);
  assert.equal(metrics.filter((r) => r.kind === 'inbox').reduce((n, r) => n + (r.messages as number), 0), ids.length);
});
