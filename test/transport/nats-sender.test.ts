/**
 * How the JetStream sender classifies failures (spec/transports.md §3.6), one test per class, each
 * against a real nats-server in the situation that produces it:
 *
 * - ERR_PEER_UNREACHABLE (retry): nothing listens; JetStream is not enabled (no responders); a publish
 *   nobody answers (timeout); a stream deleted meanwhile (no responders, then made again);
 * - ERR_PEER_FAILED (retry, nothing dropped): the stream is full (discard new: 10077), the user is not
 *   authorized;
 * - ERR_PEER_REJECTED with `details.frame` (dead letter): the stream's max_msg_size is below what the
 *   message needs (10054), a body larger than the bucket can ever hold;
 * - ERR_STREAM_CONFLICT: an existing stream with other settings.
 *
 * And what each batch result says when it goes through: stored, then recognised as duplicates; what a
 * message looks like in the stream in either format.
 */
import assert from 'node:assert/strict';
import { test, type TestContext } from 'node:test';
import { DiscardPolicy, jetstreamManager } from '@nats-io/jetstream';
import { connect } from '@nats-io/transport-node';
import { unpackFrame } from '../../src/daemon/frame-codec.js';
import { FrameType, encodeFrame } from '../../src/log/frame.js';
import { encodeMessagePayload } from '../../src/queue/codec.js';
import { NatsSender } from '../../src/transport/nats-sender.js';
import { natsError } from '../../src/transport/nats-errors.js';
import { messageHeaders, readFields, readHeaders } from '../../src/transport/nats-headers.js';
import type { NatsSettings } from '../../src/transport/nats-settings.js';
import type { OutgoingBatch } from '../../src/transport/transport.js';
import { newId } from '../../src/util/ids.js';
import { defer } from '../helpers/index.js';
import { freePort } from '../helpers/daemon.js';
import { NatsServer } from '../helpers/nats.js';

const NODE = '00000000-0000-4000-8000-000000000001';

function batch(bodies: (string | Buffer)[], from = 0): OutgoingBatch {
  return {
    node: NODE,
    name: 'a',
    destination: 'hub',
    frames: bodies.map((body, i) => {
      const id = newId();
      const payload = encodeMessagePayload({ id, ts: Date.now(), channel: 'common', priority: 4, to: ['hub'], from: 'a', node: NODE }, Buffer.from(body));
      return { stream: 'p4.w0', frame: encodeFrame(FrameType.MESSAGE, from + i, payload), about: { id, channel: 'common', priority: 4 } };
    }),
  };
}

function sender(t: TestContext, url: string, settings: NatsSettings = {}): NatsSender {
  const s = new NatsSender({ url, settings, node: NODE, unpack: unpackFrame, publishTimeoutMs: 3000 });
  defer(t, () => s.close());
  return s;
}

test('a batch goes through: stored, and recognised by Nats-Msg-Id when sent again', async (t) => {
  const nats = await NatsServer.start(t);
  const s = sender(t, nats.streamUrl('OK'));
  const b = batch(['one', 'two', 'three']);
  assert.deepEqual(await s.send(b), { stored: 3, duplicates: 0 });
  assert.deepEqual(await s.send(b), { stored: 0, duplicates: 3 });
  assert.equal(await nats.streamCount('OK'), 3);
});

test('ERR_PEER_UNREACHABLE: nothing listens, or the server has no JetStream', async (t) => {
  const nobody = sender(t, `nats://127.0.0.1:${await freePort()}/S`);
  await assert.rejects(nobody.send(batch(['x'])), { code: 'ERR_PEER_UNREACHABLE' });
  const plain = await NatsServer.start(t, { jetstream: false });
  const noJetStream = sender(t, plain.streamUrl('S'));
  await assert.rejects(noJetStream.send(batch(['x'])), (err: Error & { code?: string }) => {
    assert.equal(err.code, 'ERR_PEER_UNREACHABLE', err.message);
    return true;
  });
});

test('ERR_PEER_UNREACHABLE: a publish nobody answers times out, and no responders for a stream deleted meanwhile; the stream is made again on the next try', async (t) => {
  const nats = await NatsServer.start(t);
  const s = new NatsSender({ url: nats.streamUrl('GONE'), node: NODE, unpack: unpackFrame, publishTimeoutMs: 500 });
  defer(t, () => s.close());
  assert.deepEqual(await s.send(batch(['one'])), { stored: 1, duplicates: 0 });
  const deleteStream = (): Promise<unknown> => nats.withConnection(async (nc) => (await jetstreamManager(nc)).streams.delete('GONE'));
  await deleteStream();
  // Something that takes the subject and never answers: the publishes get no ack.
  const silent = await connect({ servers: `127.0.0.1:${nats.port}` });
  defer(t, () => silent.close());
  const listening = silent.subscribe('GONE.>');
  await silent.flush();
  await assert.rejects(s.send(batch(['two', 'three'], 1)), (err: Error & { code?: string }) => {
    assert.equal(err.code, 'ERR_PEER_UNREACHABLE', err.message);
    assert.match(err.message, /timeout/);
    return true;
  });
  // Gone once the server answered the PING after the UNSUB (its interest is updated in order).
  listening.unsubscribe();
  await silent.flush();
  await assert.rejects(s.send(batch(['two', 'three'], 1)), (err: Error & { code?: string }) => {
    assert.equal(err.code, 'ERR_PEER_UNREACHABLE', err.message);
    assert.match(err.message, /no responders/);
    return true;
  });
  assert.deepEqual(await s.send(batch(['two', 'three'], 1)), { stored: 2, duplicates: 0 });
  assert.equal(await nats.streamCount('GONE'), 2);
});

test('ERR_PEER_FAILED: a full stream (discard new) and a refused user are retried, naming no frame', async (t) => {
  const nats = await NatsServer.start(t);
  await nats.addStream('FULL', { max_bytes: 4096, discard: DiscardPolicy.New });
  const full = sender(t, nats.streamUrl('FULL'));
  await assert.rejects(
    (async () => {
      for (let i = 0; i < 10; i++) await full.send(batch(['x'.repeat(1000)], i));
    })(),
    (err: Error & { code?: string; details?: Record<string, unknown> }) => {
      assert.equal(err.code, 'ERR_PEER_FAILED', err.message);
      assert.equal(err.details?.natsCode, 10077);
      assert.equal(err.details?.frame, undefined, 'no frame named: nothing is dead-lettered');
      return true;
    },
  );
  const guarded = await NatsServer.start(t, { config: 'authorization { users: [ { user: mq, password: right-one } ] }', client: { user: 'mq', pass: 'right-one' } });
  const refused = sender(t, guarded.streamUrl('S'), { user: 'mq', pass: 'wrong-one' });
  await assert.rejects(refused.send(batch(['x'])), (err: Error & { code?: string }) => {
    assert.equal(err.code, 'ERR_PEER_FAILED', err.message);
    assert.match(err.message, /authori[sz]ation/i);
    assert.doesNotMatch(err.message, /wrong-one/);
    return true;
  });
});

test('ERR_PEER_REJECTED names the frame: a stream max_msg_size below the message, a body larger than the bucket can hold', async (t) => {
  const nats = await NatsServer.start(t);
  await nats.addStream('TINY', { max_msg_size: 200 });
  const tiny = sender(t, nats.streamUrl('TINY'));
  await assert.rejects(tiny.send(batch(['fits the payload, not the stream'])), (err: Error & { code?: string; details?: Record<string, unknown> }) => {
    assert.equal(err.code, 'ERR_PEER_REJECTED', err.message);
    assert.equal(err.details?.frame, 0);
    return true;
  });
  const small = sender(t, nats.streamUrl('SMALL'), { stream: { maxBytes: 64 * 1024 } });
  const b = batch(['small', Buffer.alloc(2 * 1024 * 1024, 7), 'after']);
  await assert.rejects(small.send(b), (err: Error & { code?: string; details?: Record<string, unknown> }) => {
    assert.equal(err.code, 'ERR_PEER_REJECTED', err.message);
    assert.equal(err.details?.frame, 1, 'the large body, not its neighbours');
    assert.match(err.message, /larger than bucket mqlog-SMALL can hold/);
    return true;
  });
  // The forwarder sends the rest again: it went through the first time (JetStream recognises both).
  assert.deepEqual(await small.send({ ...b, frames: [b.frames[0]!, b.frames[2]!] }), { stored: 0, duplicates: 2 });
});

test('ERR_STREAM_CONFLICT: an existing stream with other settings is named, and left as it is', async (t) => {
  const nats = await NatsServer.start(t);
  await nats.addStream('MADE', { duplicate_window: 60 * 1_000_000_000 });
  const s = sender(t, nats.streamUrl('MADE'), { stream: { duplicateWindowMs: 5000 } });
  await assert.rejects(s.send(batch(['x'])), { code: 'ERR_STREAM_CONFLICT', message: /duplicateWindowMs 5000 \(the stream has 60000\)/ });
  const other = sender(t, nats.streamUrl('OTHER'));
  await nats.withConnection(async (nc) => {
    const { jetstreamManager } = await import('@nats-io/jetstream');
    await (await jetstreamManager(nc)).streams.add({ name: 'OTHER', subjects: ['elsewhere.>'] });
  });
  await assert.rejects(other.send(batch(['x'])), { code: 'ERR_STREAM_CONFLICT', message: /must take OTHER\.>/ });
});

test('client errors without a server map to the three answers on purpose', () => {
  const named = (name: string, extra: Record<string, unknown> = {}): Error => Object.assign(new Error(name), { name, ...extra });
  assert.equal(natsError(named('TimeoutError'), 'w', 'x').code, 'ERR_PEER_UNREACHABLE');
  assert.equal(natsError(named('ConnectionError'), 'w', 'x').code, 'ERR_PEER_UNREACHABLE');
  assert.equal(natsError(named('NoResponders'), 'w', 'x').code, 'ERR_PEER_UNREACHABLE');
  assert.equal(natsError(Object.assign(new Error('refused'), { code: 'ECONNREFUSED' }), 'w', 'x').code, 'ERR_PEER_UNREACHABLE');
  assert.equal(natsError(named('PermissionViolationError'), 'w', 'x').code, 'ERR_PEER_FAILED');
  assert.equal(natsError(named('AuthorizationError'), 'w', 'x').code, 'ERR_PEER_FAILED');
  const api = (code: number): Error => Object.assign(new Error(`api ${code}`), { name: 'JetStreamApiError', code, apiError: () => ({ err_code: code }) });
  assert.equal(natsError(api(10054), 'w', 'x').code, 'ERR_PEER_REJECTED');
  assert.equal(natsError(api(10077), 'w', 'x').code, 'ERR_PEER_FAILED');
  assert.equal(natsError(api(10059), 'w', 'x').code, 'ERR_PEER_FAILED');
  assert.equal(natsError(new Error('anything else'), 'w', 'x').code, 'ERR_PEER_FAILED');
});

test('format headers: the body is the payload, the fields are headers (spec/transports.md §3.2), and they read back to the same fields', async (t) => {
  const nats = await NatsServer.start(t);
  const id = newId();
  const fields = {
    id,
    ts: 1_700_000_000_123,
    channel: 'jobs/high ?',
    priority: 7,
    to: ['hub'],
    from: ' edge%1 ',
    node: NODE,
    expiresAt: 1_800_000_000_000,
    receipt: true,
    replyTo: 'http://10.0.0.1:7420',
    headers: { 'X-Trace': 'abc def', 'weird key': 'v=1', 'Nats-Expected-Stream': 'no', 'X-Padded': ' x ', 'X-Empty': '' },
  };
  const body = Buffer.from('the body, byte for byte \u0000\u00ff');
  const frame = encodeFrame(FrameType.MESSAGE, 5, encodeMessagePayload(fields, body));
  const b: OutgoingBatch = { node: NODE, name: 'a', destination: 'hub', frames: [{ stream: 'p7.w0', frame, about: { id, channel: fields.channel, priority: 7 } }] };
  assert.deepEqual(await sender(t, nats.streamUrl('H')).send(b), { stored: 1, duplicates: 0 });
  const [m] = await nats.readStream('H');
  assert.ok(m !== undefined);
  assert.equal(m.subject, 'H.jobs%2Fhigh%20%3F');
  assert.deepEqual(m.data, body);
  const h = Object.fromEntries(m.headers);
  assert.equal(h['Nats-Msg-Id'], `${NODE}:p7.w0:5`);
  assert.equal(h['Mqlog-Id'], id);
  assert.equal(h['Mqlog-Channel'], 'jobs/high ?');
  assert.equal(h['Mqlog-Priority'], '7');
  assert.equal(h['Mqlog-Ts'], '1700000000123');
  assert.equal(h['Mqlog-From'], '%20edge%251%20');
  assert.equal(h['Mqlog-Node'], NODE);
  assert.equal(h['Mqlog-Stream'], 'p7.w0');
  assert.equal(h['Mqlog-Offset'], '5');
  assert.equal(h['Mqlog-Expires-At'], '1800000000000');
  assert.equal(h['Mqlog-Receipt'], '1');
  assert.equal(h['Mqlog-Reply-To'], 'http://10.0.0.1:7420');
  assert.equal(h['X-Trace'], 'abc def', 'a header a NATS client can read under its own name');
  assert.equal(h['X-Empty'], '');
  assert.equal(h['Nats-Expected-Stream'], undefined, 'never a Nats- header of the application');
  assert.equal(h['X-Padded'], undefined);
  // Read back as a sourcing node does: the same fields, every application header included.
  const back = readFields(readHeaders(messageHeaders({ ...fields, headers: fields.headers }, { node: NODE, stream: 'p7.w0', offset: 5 })));
  const { to: _to, from: _from, node: _node, ...expected } = fields;
  assert.deepEqual(back, expected);
});

test('format frame: the payload is the frame as stored, marked Mqlog-Frame: 1', async (t) => {
  const nats = await NatsServer.start(t);
  const b = batch(['framed']);
  await sender(t, nats.streamUrl('F'), { format: 'frame' }).send(b);
  const [m] = await nats.readStream('F');
  assert.ok(m !== undefined);
  assert.deepEqual(m.data, b.frames[0]!.frame);
  assert.equal(m.headers.get('Mqlog-Frame'), '1');
  assert.equal(m.headers.get('Nats-Msg-Id'), `${NODE}:p4.w0:0`);
  assert.equal(m.headers.get('Mqlog-Ts'), undefined, 'the fields are in the frame');
});
