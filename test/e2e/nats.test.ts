/**
 * The JetStream transport end to end (spec/transports.md §3), against a real nats-server:
 * forwarding into a stream through server crashes, a stream as an inbox source through node crashes,
 * and how plain (non-mqlog) JetStream messages land in an inbox.
 *
 * Needs nats-server (CI installs it; see test/helpers/nats.ts): without it every test here fails
 * saying so. No other test file needs a NATS server.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { test } from 'node:test';
import { headers as natsHeaders } from '@nats-io/transport-node';
import { AckPolicy, DeliverPolicy, jetstream, jetstreamManager } from '@nats-io/jetstream';
import { defer, jsonLines, mqlog, tempDir, waitFor } from '../helpers/index.js';
import { allInbox, daemons, makeNodes } from '../helpers/daemon.js';
import { NatsServer, natsServerMissing } from '../helpers/nats.js';

const STREAM = 'JOBS';

test('nats-server is installed (the JetStream tests below need it)', () => {
  const missing = natsServerMissing();
  assert.ok(missing === undefined, missing);
});

async function backlogOf(dir: string, peer: string): Promise<number | undefined> {
  const stat = await mqlog(['stat', '--data', dir, '--json']);
  if (stat.code !== 0) throw new Error(`stat failed: ${stat.stderr}`);
  const row = jsonLines(stat.stdout).find((r) => r.peer === peer);
  return typeof row?.backlog === 'number' ? row.backlog : undefined;
}

async function sendLines(dir: string, to: string, lines: string[]): Promise<string[]> {
  const sent = await mqlog(['send', '--data', dir, '--to', to, '--lines'], { input: `${lines.join('\n')}\n` });
  assert.equal(sent.code, 0, sent.stderr);
  const ids = sent.stdout.trim().split('\n');
  assert.equal(ids.length, lines.length);
  return ids;
}

test('A forwards 10 000 messages into a stream while the NATS server is stopped and restarted twice; the stream ends with each message exactly once; A\'s backlog drains', async (t) => {
  const nats = await NatsServer.start(t);
  const root = await tempDir(t);
  const { a } = await makeNodes(root, ['a'], { peers: { hub: { url: nats.streamUrl(STREAM) } } });
  const [da] = daemons(t, [a!]);
  await da!.start();
  const chunk = (from: number, n: number): string[] => Array.from({ length: n }, (_, i) => `job ${from + i} ${'x'.repeat((from + i) % 100)}`);
  const ids: string[] = [];

  // 1. A first chunk while the server is up; it crashes (SIGKILL) once part of it is in the stream (the send
  //    may still be running: it only writes A's outbox).
  const first = sendLines(a!.dir, 'hub', chunk(0, 4000));
  first.catch(() => undefined); // awaited below; not an unhandled rejection meanwhile
  const atFirstCrash = await waitFor(async () => {
    const n = await nats.streamCount(STREAM);
    return n >= 500 ? n : undefined;
  }, { intervalMs: 5, message: 'the first messages in the stream' });
  await nats.stop('SIGKILL');
  ids.push(...(await first));
  // 2. More while it is down: they wait in A's outbox.
  ids.push(...(await sendLines(a!.dir, 'hub', chunk(4000, 3000))));
  await nats.start();
  // 3. Once forwarding has resumed, a clean shutdown (SIGTERM) mid-way, and more sent meanwhile.
  const atSecondStop = await waitFor(async () => {
    const n = await nats.streamCount(STREAM);
    return n >= atFirstCrash + 500 ? n : undefined;
  }, { intervalMs: 5, message: 'forwarding to resume after the first restart' });
  await nats.stop('SIGTERM');
  ids.push(...(await sendLines(a!.dir, 'hub', chunk(7000, 2000))));
  await nats.start();
  ids.push(...(await sendLines(a!.dir, 'hub', chunk(9000, 1000))));
  t.diagnostic(`stream held ${atFirstCrash} at the crash, ${atSecondStop} at the stop`);
  assert.ok(atFirstCrash < 4000 && atSecondStop < 7000, 'both stops came while messages were still being forwarded');

  await waitFor(async () => (await backlogOf(a!.dir, 'hub')) === 0, { timeoutMs: 90_000, intervalMs: 100, message: "A's backlog for hub to drain" });
  const messages = await nats.readStream(STREAM);
  assert.equal(messages.length, 10_000, 'the stream holds every message exactly once');
  const msgIds = messages.map((m) => m.headers.get('Nats-Msg-Id'));
  assert.equal(new Set(msgIds).size, msgIds.length, 'no Nats-Msg-Id twice');
  const mqlogIds = messages.map((m) => m.headers.get('Mqlog-Id'));
  assert.deepEqual([...mqlogIds].sort(), [...ids].sort(), 'the Mqlog-Ids are the ids send printed');
  const bodies = new Map(ids.map((id, i) => [id, chunk(0, 10_000)[i]]));
  for (const m of messages) {
    assert.equal(m.subject, `${STREAM}.common`);
    assert.equal(m.data.toString(), bodies.get(m.headers.get('Mqlog-Id') ?? ''), 'the body is the payload');
  }
  assert.equal(await backlogOf(a!.dir, 'hub'), 0);
  assert.equal(await nats.streamCount(STREAM), 10_000);
});

async function inboxCount(dir: string): Promise<number> {
  const stat = await mqlog(['stat', '--data', dir, '--json']);
  if (stat.code !== 0) throw new Error(`stat failed: ${stat.stderr}`);
  return jsonLines(stat.stdout)
    .filter((r) => r.kind === 'inbox')
    .reduce((n, r) => n + (r.messages as number), 0);
}

/** Publishes plain (non-mqlog) messages with the nats library, a few hundred acks in flight at a time. */
async function publishPlain(nats: NatsServer, subject: string, bodies: string[]): Promise<void> {
  await nats.withConnection(async (nc) => {
    const js = jetstream(nc);
    for (let i = 0; i < bodies.length; i += 500) {
      await Promise.all(bodies.slice(i, i + 500).map((body) => js.publish(subject, Buffer.from(body))));
    }
  });
}

test("a JetStream source feeds B's inbox while B is SIGKILLed and restarted: every message in B's inbox exactly once", async (t) => {
  const nats = await NatsServer.start(t);
  await nats.addStream(STREAM);
  const root = await tempDir(t);
  const { a } = await makeNodes(root, ['a'], { peers: { hub: { url: nats.streamUrl(STREAM) } } });
  const { b } = await makeNodes(root, ['b'], { sources: [{ url: nats.streamUrl(STREAM), durable: 'b' }] });
  const [da, db] = daemons(t, [a!, b!]);

  // The stream gets mqlog frames (A forwarding, channel "common") and plain bodies (subject JOBS.plain), interleaved.
  await da!.start();
  const framed = Array.from({ length: 3000 }, (_, i) => `framed ${i}`);
  const plain = Array.from({ length: 3000 }, (_, i) => `plain ${i}`);
  const [ids] = await Promise.all([sendLines(a!.dir, 'hub', framed), publishPlain(nats, `${STREAM}.plain`, plain)]);
  const total = framed.length + plain.length;
  await waitFor(async () => (await nats.streamCount(STREAM)) === total, { intervalMs: 50, message: `${total} messages in the stream` });
  await da!.stop();

  // B's durable consumer made here as the source would make it, but with a 5 s ack wait instead of 30 s:
  // messages a killed B fetched and did not ack come back sooner, and the test takes 25 s less.
  await nats.withConnection(async (nc) => {
    await (await jetstreamManager(nc)).consumers.add(STREAM, { durable_name: 'b', ack_policy: AckPolicy.Explicit, deliver_policy: DeliverPolicy.All, ack_wait: 5 * 1_000_000_000 });
  });
  // B logs each batch it stored (debug level); the kills come right after one, before B acked it in JetStream
  // if the test is quick enough, so that JetStream redelivers messages B already stored.
  const logLevel = process.env.MQLOG_LOG_LEVEL;
  process.env.MQLOG_LOG_LEVEL = 'debug';
  defer(t, () => {
    if (logLevel === undefined) delete process.env.MQLOG_LOG_LEVEL;
    else process.env.MQLOG_LOG_LEVEL = logLevel;
  });
  // B takes them, and is killed three times along the way (each time some, but not all, are in its inbox).
  await db!.start();
  const atKills: number[] = [];
  for (const threshold of [1000, 2500, 4000]) {
    // The last sequence JetStream handed B (the ack floor would stall behind the killed daemons' unacked messages).
    await waitFor(async () => ((await nats.consumerInfo(STREAM, 'b'))?.delivered.stream_seq ?? 0) >= threshold, { intervalMs: 5, message: `B to have fetched ${threshold}` });
    const seen = db!.output.length;
    await waitFor(() => db!.output.includes('"event":"received"', seen), { intervalMs: 1, message: 'B to store a batch' });
    await db!.kill();
    const stored = await inboxCount(b!.dir);
    atKills.push(stored);
    assert.ok(stored > (atKills.at(-2) ?? 0) && stored < total, `killed mid-way: ${stored} of ${total} in B's inbox (${atKills.join(', ')} at the kills)`);
    await db!.start();
  }
  // Messages the killed daemons had fetched but not acked come back after the consumer's ack wait.
  const consumer = await waitFor(async () => {
    const info = await nats.consumerInfo(STREAM, 'b');
    return info !== undefined && info.num_pending === 0 && info.num_ack_pending === 0 ? info : undefined;
  }, { timeoutMs: 90_000, intervalMs: 100, message: 'B to have acked every message' });
  const metrics = await (await fetch(`${b!.url}/metrics`)).text();
  const recognised = /^mqlog_duplicate_messages_total (\d+)/m.exec(metrics)?.[1];
  t.diagnostic(`B's inbox held ${atKills.join(', ')} at the kills; JetStream delivered ${consumer.delivered.consumer_seq} times for ${total} messages; the last B recognised ${recognised} redelivered frames as stored`);
  await db!.stop();

  const inbox = await allInbox(b!.dir);
  assert.equal(inbox.length, total, 'no message missing, none twice');
  const common = inbox.filter((m) => m.channel === 'common');
  assert.deepEqual(common.map((m) => m.id).sort(), [...ids].sort(), 'every mqlog message once, by id');
  assert.deepEqual(common.map((m) => m.body).sort(), [...framed].sort());
  for (const m of common) assert.equal(m.from, `nats:${STREAM}`);
  const plainIn = inbox.filter((m) => m.channel === 'plain');
  assert.equal(plainIn.length, plain.length);
  assert.deepEqual(plainIn.map((m) => m.body).sort(), [...plain].sort(), 'every plain message once, by body');
  assert.equal(new Set(inbox.map((m) => m.id)).size, total, 'no id twice');

  const verify = await mqlog(['verify', b!.dir]);
  assert.equal(verify.code, 0, `${verify.stdout}${verify.stderr}`);
});

test("a plain JetStream message with headers lands in B's inbox in the channel named by its subject's last token (or the source's channel), its data as body", async (t) => {
  const nats = await NatsServer.start(t);
  await nats.addStream(STREAM);
  await nats.addStream('OTHER');
  const root = await tempDir(t);
  const { b } = await makeNodes(root, ['b'], {
    sources: [
      { url: nats.streamUrl(STREAM), durable: 'b' },
      { url: nats.streamUrl('OTHER'), durable: 'b-other', channel: 'fixed' },
    ],
  });
  const [db] = daemons(t, [b!]);
  const givenId = randomUUID();
  const binary = Buffer.from([0, 1, 2, 0xff, 0xfe]);
  await nats.withConnection(async (nc) => {
    const js = jetstream(nc);
    const h = (entries: Record<string, string>) => {
      const out = natsHeaders();
      for (const [k, v] of Object.entries(entries)) out.set(k, v);
      return out;
    };
    await js.publish(`${STREAM}.orders`, Buffer.from('order 1'), { headers: h({ 'X-Trace': 'abc', 'Content-Type': 'text/plain' }), msgID: givenId });
    await js.publish(`${STREAM}.jobs%2Fhigh%3F`, Buffer.from('encoded token'), { headers: h({ 'Mqlog-Priority': '7' }) });
    await js.publish(`${STREAM}.ignored`, Buffer.from('channel from header'), { headers: h({ 'Mqlog-Channel': 'from-header' }) });
    await js.publish(`${STREAM}.bin`, binary, { headers: h({ 'Mqlog-Frame': '1' }) }); // claims to be a frame, is not
    await js.publish('OTHER.anything', Buffer.from('for the configured channel'), { headers: h({ 'X-Trace': 'def' }) });
  });
  await db!.start();
  const inbox = await waitFor(async () => {
    const messages = await allInbox(b!.dir);
    return messages.length >= 5 ? messages : undefined;
  }, { message: "five messages in B's inbox" });
  assert.equal(inbox.length, 5);
  const byChannel = new Map(inbox.map((m) => [m.channel as string, m]));
  assert.deepEqual([...byChannel.keys()].sort(), ['bin', 'fixed', 'from-header', 'jobs/high?', 'orders']);

  const order = byChannel.get('orders')!;
  assert.equal(order.body, 'order 1');
  assert.equal(order.id, givenId, 'a UUID Nats-Msg-Id becomes the message id');
  assert.equal(order.from, `nats:${STREAM}`);
  assert.equal(order.priority, 4);
  assert.deepEqual(order.to, ['b']);
  assert.equal(byChannel.get('jobs/high?')!.body, 'encoded token');
  assert.equal(byChannel.get('jobs/high?')!.priority, 7);
  assert.equal(byChannel.get('from-header')!.body, 'channel from header');
  assert.equal(byChannel.get('bin')!.bodyBase64, binary.toString('base64'));
  assert.equal(byChannel.get('fixed')!.body, 'for the configured channel');
  assert.equal(byChannel.get('fixed')!.from, 'nats:OTHER');
  const tailed = await mqlog(['tail', '--data', b!.dir, '--channel', 'orders', '--json', '--ack']);
  assert.deepEqual(jsonLines(tailed.stdout).map((m) => m.body), ['order 1']);
});

// A message the receiver refuses for good (here ERR_INVALID_NAME, a channel longer than
// limits.maxChannelBytes; ERR_INVALID_MESSAGE, mqlog headers whose id is not a UUID) is terminated in
// JetStream and logged; the rest of its batch is stored.
test('a JetStream message B refuses does not hold up the messages behind it, and is logged', async (t) => {
  const nats = await NatsServer.start(t);
  await nats.addStream(STREAM);
  const root = await tempDir(t);
  const { b } = await makeNodes(root, ['b'], { limits: { maxChannelBytes: 16 }, sources: [{ url: nats.streamUrl(STREAM), durable: 'b' }] });
  const [db] = daemons(t, [b!]);
  // Format `headers` as another node's forwarder publishes it (spec/transports.md §3.2).
  const mqlogHeaders = (id: string, offset: number) => {
    const h = natsHeaders();
    const fields: Record<string, string> = { 'Mqlog-Id': id, 'Mqlog-Channel': 'short', 'Mqlog-Priority': '4', 'Mqlog-Ts': String(Date.now()), 'Mqlog-From': 'a', 'Mqlog-Node': 'n0de', 'Mqlog-Stream': 'p4.w0', 'Mqlog-Offset': String(offset) };
    for (const [k, v] of Object.entries(fields)) h.set(k, v);
    return h;
  };
  await nats.withConnection(async (nc) => {
    const js = jetstream(nc);
    await js.publish(`${STREAM}.short`, Buffer.from('before'));
    await js.publish(`${STREAM}.${'c'.repeat(40)}`, Buffer.from('channel longer than B takes'));
    await js.publish(`${STREAM}.short`, Buffer.from('after'));
    await js.publish(`${STREAM}.short`, Buffer.from('mqlog 0'), { headers: mqlogHeaders(randomUUID(), 0) });
    await js.publish(`${STREAM}.short`, Buffer.from('mqlog id not a UUID'), { headers: mqlogHeaders('not-a-uuid', 1) });
    await js.publish(`${STREAM}.short`, Buffer.from('mqlog 2'), { headers: mqlogHeaders(randomUUID(), 2) });
  });
  await db!.start();
  const inbox = await waitFor(async () => {
    const messages = await allInbox(b!.dir);
    return messages.length >= 4 ? messages : undefined;
  }, { timeoutMs: 20_000, message: "the four acceptable messages in B's inbox (B's log: source_failed, retried forever)" });
  assert.deepEqual(inbox.filter((m) => m.channel === 'short').map((m) => m.body).sort(), ['after', 'before', 'mqlog 0', 'mqlog 2']);
  const refused = await waitFor(() => {
    const lines = jsonLines(db!.output.split('\n').filter((l) => l.startsWith('{')).join('\n')).filter((l) => l.event === 'source_refused');
    return lines.length >= 2 ? lines : undefined;
  }, { message: 'both refusals logged' });
  assert.deepEqual(refused.map((l) => [l.sequence, l.code]), [[2, 'ERR_INVALID_NAME'], [5, 'ERR_INVALID_MESSAGE']]);
});
