/**
 * JetStream as a destination as a user meets it (spec/transports.md §3), against real nats-servers with
 * their default limits: a `nats://` URL named by `send --to` with no peer configured, what a plain NATS
 * client sees of a message, bodies of 2 MiB and 200 MiB (beyond the server's 1 MiB max_payload) reaching
 * a sourcing node intact with flat memory, and a body the destination can never take ending in the
 * sender's dead letters without holding up the messages behind it.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { Objm } from '@nats-io/obj';
import { DEAD_REASON_HEADER } from '../../src/queue/codec.js';
import { jsonLines, mqlog, tempDir, waitFor } from '../helpers/index.js';
import { allInbox, daemons, makeNodes } from '../helpers/daemon.js';
import { MiB, PeakRss, sha256File, writeRandomFile } from '../helpers/large.js';
import { NatsServer } from '../helpers/nats.js';

async function stat(dir: string): Promise<Record<string, unknown>[]> {
  const result = await mqlog(['stat', '--data', dir, '--json']);
  assert.equal(result.code, 0, result.stderr);
  return jsonLines(result.stdout);
}

async function send(dir: string, args: string[]): Promise<string> {
  const result = await mqlog(['send', '--data', dir, ...args]);
  assert.equal(result.code, 0, result.stderr);
  return result.stdout.trim();
}

test('a nats:// URL named by send --to, with no peer configured, is forwarded; a plain NATS client reads the body as payload and the fields as headers', async (t) => {
  const nats = await NatsServer.start(t);
  const root = await tempDir(t);
  const { a } = await makeNodes(root, ['a']);
  const [da] = daemons(t, [a!]);
  const to = nats.streamUrl('URLS');
  const first = await send(a!.dir, ['--to', to, '--channel', 'jobs/high?', '--priority', '7', '--header', 'Content-Type=text/plain', '--header', 'trace id= x%y ', 'hello NATS']);
  await da!.start();
  const second = await send(a!.dir, ['--to', to, 'sent while the daemon runs']);
  await waitFor(async () => (await nats.streamCount('URLS')) === 2, { message: 'both messages in stream URLS' });
  const messages = await nats.readStream('URLS');
  const byId = new Map(messages.map((m) => [m.headers.get('Mqlog-Id'), m]));
  const one = byId.get(first)!;
  assert.equal(one.data.toString(), 'hello NATS', 'the payload is the body');
  assert.equal(one.subject, 'URLS.jobs%2Fhigh%3F');
  assert.equal(one.headers.get('Mqlog-Channel'), 'jobs/high?');
  assert.equal(one.headers.get('Mqlog-Priority'), '7');
  assert.equal(one.headers.get('Mqlog-From'), 'a');
  assert.equal(one.headers.get('Content-Type'), 'text/plain', 'an application header under its own name');
  assert.equal(one.headers.get('Mqlog-Header'), `${encodeURIComponent('trace id')}=${encodeURIComponent(' x%y ')}`, 'one that cannot be a NATS header, encoded');
  assert.match(one.headers.get('Nats-Msg-Id') ?? '', /^[0-9a-f-]{36}:p7\.w\d+:\d+$/);
  assert.equal(byId.get(second)!.data.toString(), 'sent while the daemon runs');
  const peers = await stat(a!.dir);
  await waitFor(async () => (await stat(a!.dir)).find((r) => r.peer === 'nats://127.0.0.1:' + String(nats.port) + '/URLS')?.backlog === 0, { message: 'the URL destination in stat with its backlog drained' });
  assert.ok(peers.some((r) => r.peer === to && r.url === to), JSON.stringify(peers));
});

test('bodies of 2 MiB and 200 MiB go through a server with the default max_payload into a sourcing node, intact, with flat memory; a plain object store client reads them', async (t) => {
  const nats = await NatsServer.start(t);
  const root = await tempDir(t);
  const small = join(root, 'two.bin');
  const large = join(root, 'two-hundred.bin');
  const smallSha = await writeRandomFile(small, 2 * MiB);
  const largeSha = await writeRandomFile(large, 200 * MiB);
  const { a } = await makeNodes(root, ['a'], { peers: { hub: { url: nats.streamUrl('BIG') } } });
  const { b } = await makeNodes(root, ['b'], { sources: [{ url: nats.streamUrl('BIG'), durable: 'b' }] });
  const [da, db] = daemons(t, [a!, b!]);
  const smallId = await send(a!.dir, ['--to', 'hub', '--file', small]);
  const largeId = await send(a!.dir, ['--to', 'hub', '--file', large]);
  const after = await send(a!.dir, ['--to', 'hub', 'behind the large ones']);
  const rss = new PeakRss();
  t.after(() => rss.stop());
  await da!.start();
  rss.watch('a', da!.child?.pid);
  await db!.start();
  rss.watch('b', db!.child?.pid);
  const inbox = await waitFor(async () => {
    const all = await allInbox(b!.dir);
    return all.length === 3 ? all : undefined;
  }, { timeoutMs: 240_000, intervalMs: 250, message: "the three messages in B's inbox" });
  rss.sample();
  assert.deepEqual(inbox.map((m) => m.id).sort(), [smallId, largeId, after].sort());
  const out = join(root, 'out');
  const tailed = await mqlog(['tail', '--data', b!.dir, '--json', '--ack', '--body-to', out, '--limit', '3']);
  assert.equal(tailed.code, 0, tailed.stderr);
  assert.equal((await sha256File(join(out, smallId))).sha256, smallSha, 'the 2 MiB body arrived intact');
  assert.deepEqual(await sha256File(join(out, largeId)), { sha256: largeSha, size: 200 * MiB }, 'the 200 MiB body arrived intact');
  assert.equal((await readFile(join(out, after))).toString(), 'behind the large ones');
  const peaks = rss.results();
  t.diagnostic(`peak RSS: A ${((peaks.get('a') ?? 0) / MiB).toFixed(0)} MiB, B ${((peaks.get('b') ?? 0) / MiB).toFixed(0)} MiB`);
  for (const [name, bytes] of peaks) assert.ok(bytes < 180 * MiB, `${name}'s memory stays flat: peak RSS ${(bytes / MiB).toFixed(0)} MiB for a 200 MiB body`);
  // Any object store client reads the body from the bucket, checking its digest.
  const manifest = (await nats.readStream('BIG')).find((m) => m.headers.get('Mqlog-Id') === smallId)!;
  assert.equal(manifest.headers.get('Mqlog-Object'), `mqlog-BIG/${smallId}`);
  assert.equal(manifest.data.length, 0);
  await nats.withConnection(async (nc) => {
    const os = await new Objm(nc).open('mqlog-BIG');
    const blob = await os.getBlob(smallId);
    assert.equal(createHash('sha256').update(blob!).digest('hex'), smallSha);
  });
});

test('a body the destination can never take is dead-lettered with its reason within seconds, and the 5 messages behind it arrive', async (t) => {
  const nats = await NatsServer.start(t);
  const root = await tempDir(t);
  // mqlog creates the stream and its bucket with these limits: a 2 MiB body can never fit.
  const { a } = await makeNodes(root, ['a'], { peers: { hub: { url: nats.streamUrl('TIGHT'), nats: { stream: { maxBytes: MiB } } } } });
  const [da] = daemons(t, [a!]);
  await da!.start();
  const big = join(root, 'big.bin');
  await writeRandomFile(big, 2 * MiB);
  const doomed = await send(a!.dir, ['--to', 'hub', '--file', big]);
  const started = Date.now();
  const behind: string[] = [];
  for (let i = 0; i < 5; i++) behind.push(await send(a!.dir, ['--to', 'hub', `behind ${i}`]));
  const dead = await waitFor(async () => {
    const result = await mqlog(['dump', a!.dir, '--json']);
    return jsonLines(result.stdout).find((r) => r.queue === 'outbox-dead' && r.id === doomed);
  }, { timeoutMs: 20_000, message: 'the 2 MiB message in the outbox dead letters' });
  t.diagnostic(`dead-lettered after ${Date.now() - started} ms`);
  assert.match(String((dead.headers as Record<string, string>)[DEAD_REASON_HEADER]), /larger than bucket mqlog-TIGHT can hold/);
  await waitFor(async () => (await nats.streamCount('TIGHT')) === 5, { message: 'the five small messages in the stream' });
  assert.deepEqual((await nats.readStream('TIGHT')).map((m) => m.headers.get('Mqlog-Id')).sort(), [...behind].sort());
  const outbox = (await mqlog(['dump', a!.dir, '--json'])).stdout;
  assert.equal(jsonLines(outbox).find((r) => r.queue === 'outbox' && r.id === doomed)?.state, 'dead', 'dump shows the message dead');
  const rows = await stat(a!.dir);
  assert.equal(rows.find((r) => r.queue === 'outbox-dead')?.messages, 1, JSON.stringify(rows));
  await waitFor(async () => (await stat(a!.dir)).find((r) => r.peer === 'hub')?.backlog === 0, { message: "hub's backlog to drain" });
});
