/**
 * JetStream clustered (spec/transports.md §3.5): three nats-servers on loopback, a stream mqlog creates
 * with three replicas (`nats.stream.replicas`), reached through the URL's server and the configured seed
 * servers. A forwards 3,000 messages while the server it talks to is SIGKILLed, then restarts while that server
 * is still down (it connects through the seed servers) and forwards 100 more; the stream and B, which
 * takes the stream as an inbox source through the cluster, end with every message exactly once.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { connect } from '@nats-io/transport-node';
import { jetstreamManager } from '@nats-io/jetstream';
import { mqlog, tempDir, waitFor } from '../helpers/index.js';
import { allInbox, daemons, makeNodes } from '../helpers/daemon.js';
import { NatsCluster } from '../helpers/nats.js';

const STREAM = 'R3';
const FIRST = 3000;
const LATER = 100;
const TOTAL = FIRST + LATER;

test('3,000 messages into an R3 stream on a 3-server cluster while the server A talks to is SIGKILLed: all arrive exactly once, in the stream and in B (A restarted meanwhile reaches the cluster through its seed servers)', async (t) => {
  const cluster = await NatsCluster.start(t);
  const [first, second, third] = cluster.servers as [NatsCluster['servers'][number], NatsCluster['servers'][number], NatsCluster['servers'][number]];
  const root = await tempDir(t);
  const nats = { servers: [second.url, third.url], stream: { replicas: 3 } };
  const { a } = await makeNodes(root, ['a'], { peers: { hub: { url: first.streamUrl(STREAM), nats } } });
  const { b } = await makeNodes(root, ['b'], { sources: [{ url: third.streamUrl(STREAM), durable: 'b', nats: { servers: [first.url, second.url] } }] });
  const [da, db] = daemons(t, [a!, b!]);
  // The kill comes as the 300th publish passes through the cluster (a subscriber on another server sees
  // it). The messages are appended in ten runs of 300 while A forwards, so that most of them are
  // forwarded after the kill however fast A is.
  const watcher = await connect({ servers: `127.0.0.1:${third.port}` });
  const published = watcher.subscribe(`${STREAM}.>`, { max: 300 });
  await watcher.flush();
  await da!.start();
  const sentIds: string[] = [];
  const sending = (async () => {
    for (let run = 0; run < FIRST / 300; run++) {
      const lines = Array.from({ length: 300 }, (_, i) => `replicated ${run * 300 + i}`);
      const sent = await mqlog(['send', '--data', a!.dir, '--to', 'hub', '--lines'], { input: `${lines.join('\n')}\n` });
      assert.equal(sent.code, 0, sent.stderr);
      sentIds.push(...sent.stdout.trim().split('\n'));
    }
    return sentIds;
  })();
  let seen = 0;
  let sentAtKill = 0;
  for await (const _ of published) {
    if (++seen < 300) continue;
    // What was not yet appended when the server died can only have been forwarded after its death.
    sentAtKill = sentIds.length;
    await first.stop('SIGKILL');
  }
  await watcher.close();
  const ids = await sending;
  assert.equal(ids.length, FIRST);
  // A restarts while its URL's server is still down: it connects through the seed servers.
  await da!.kill();
  const later = await mqlog(['send', '--data', a!.dir, '--to', 'hub', '--lines'], { input: `${Array.from({ length: LATER }, (_, i) => `later ${i}`).join('\n')}\n` });
  assert.equal(later.code, 0, later.stderr);
  ids.push(...later.stdout.trim().split('\n'));
  await da!.start();
  await db!.start();
  await waitFor(async () => (await second.streamCount(STREAM).catch(() => 0)) >= TOTAL, { timeoutMs: 120_000, intervalMs: 200, message: `${TOTAL} messages in the stream` });
  // With a server down, the cluster may still be electing leaders: JetStream requests are retried.
  const info = await waitFor(() => second.withConnection(async (nc) => (await jetstreamManager(nc)).streams.info(STREAM)), { message: 'the stream info' });
  assert.equal(info.config.num_replicas, 3, 'mqlog created the stream with three replicas');
  t.diagnostic(`${sentAtKill} messages were appended on A when ${first.name} was killed; the stream holds ${info.state.messages} now`);
  assert.ok(sentAtKill < FIRST, 'the server went down while messages were still being appended and forwarded');
  const messages = await waitFor(() => second.readStream(STREAM), { message: 'the stream read through' });
  assert.equal(messages.length, TOTAL, 'each message once in the stream');
  assert.deepEqual(messages.map((m) => m.headers.get('Mqlog-Id')).sort(), [...ids].sort());
  // The killed server comes back and catches up; B has everything once.
  await first.start();
  await waitFor(async () => (await allInbox(b!.dir)).length >= TOTAL, { timeoutMs: 120_000, intervalMs: 500, message: `${TOTAL} messages in B's inbox` });
  await db!.stop();
  const inbox = await allInbox(b!.dir);
  assert.equal(inbox.length, TOTAL);
  assert.deepEqual(inbox.map((m) => m.id).sort(), [...ids].sort());
});
