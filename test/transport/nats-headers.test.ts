/**
 * A sourcing node reads a JetStream message's headers from the header block the client received
 * (spec/transports.md §3.2, §3.7): exactly as the client's own parser reads them, and with the client
 * installed here, without that parser.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { jetstream } from '@nats-io/jetstream';
import { MsgHdrsImpl } from '@nats-io/transport-node';
import { H, messageHeaders, readHeaderBlock, readHeaders, readMessageHeaders } from '../../src/transport/nats-headers.js';
import { newId } from '../../src/util/ids.js';
import { NatsServer } from '../helpers/nats.js';

const NODE = '00000000-0000-4000-8000-000000000001';

function block(lines: string[]): Buffer {
  return Buffer.from(`${lines.join('\r\n')}\r\n\r\n`);
}

test('a header block reads as the client parses it: names as sent, values trimmed, the first value of each name, every Mqlog-Header', () => {
  const blocks = [
    block(['NATS/1.0']),
    block(['NATS/1.0', 'X-Trace: abc def', 'x-trace: other case', 'X-Trace: second value', 'X-Padded:   spaced  ', 'X-Empty:', 'X-Colon: a:b:c']),
    block(['NATS/1.0', 'Mqlog-Header: a=1', 'Mqlog-Header: b%3D=2', 'Mqlog-Id: x', 'not a header line', 'X-Unicode: é ü 漢']),
    block(['NATS/1.0 503', 'Status: no responders']),
    Buffer.from((messageHeaders({ id: newId(), ts: 1, channel: 'c h', priority: 4, from: 'a', headers: { 'X-A': 'x', 'weird key': 'v', 'other key': 'w' } }, { node: NODE, stream: 'p4.w0', offset: 3, coversFrom: 1 }) as MsgHdrsImpl).encode()),
  ];
  for (const b of blocks) assert.deepEqual(readHeaderBlock(b), readHeaders(MsgHdrsImpl.decode(b)), b.toString());
  const read = readHeaderBlock(blocks[2] as Buffer);
  assert.deepEqual(read.encoded, ['a=1', 'b%3D=2']);
  assert.equal(read.first.get(H.id), 'x');
});

test('a JetStream message from the installed client has its headers read from its header block, the same as through the client', async (t) => {
  const nats = await NatsServer.start(t);
  await nats.addStream('H');
  await nats.withConnection(async (nc) => {
    const js = jetstream(nc);
    const headers = messageHeaders({ id: newId(), ts: 1_700_000_000_000, channel: 'jobs', priority: 7, from: 'a', headers: { 'X-Trace': ' abc ', 'odd key': 'v' } }, { node: NODE, stream: 'p7.w0', offset: 12 });
    await js.publish('H.jobs', Buffer.from('body'), { headers });
    const consumer = await js.consumers.get('H');
    const m = await consumer.next({ expires: 10_000 });
    assert.ok(m !== null);
    const expected = readHeaders(m.headers);
    assert.equal(expected.first.get(H.offset), '12');
    // The client's parsed headers made unreachable: what is read comes from the block.
    const blockOnly = Object.create(m, { headers: { get: () => assert.fail('read through the client, not from the header block') } }) as typeof m;
    assert.deepEqual(readMessageHeaders(blockOnly), expected);
  });
});
