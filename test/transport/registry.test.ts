/**
 * The transport registry (spec/transports.md §1.2): one place decides what a destination URL is, and an
 * application plugs in a transport of its own. In-process: a scheme registered here is resolved when a
 * message is appended and forwarded by a daemon in the same process, configured peer or not.
 */
import assert from 'node:assert/strict';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { Daemon } from '../../src/daemon/daemon.js';
import { silentLogger } from '../../src/daemon/logger.js';
import { openNode } from '../../src/daemon/node.js';
import { MqlogError } from '../../src/errors.js';
import { TransportRegistry, transports, type TransportContext, type TransportFactory } from '../../src/transport/registry.js';
import type { OutgoingBatch, Transport } from '../../src/transport/transport.js';
import { defer, tempDir, waitFor } from '../helpers/index.js';

/** A transport that keeps what it is handed: per destination, the bodies and the context it was made with. */
function memoryFactory(): { factory: TransportFactory; contexts: TransportContext[]; bodies: Map<string, string[]> } {
  const contexts: TransportContext[] = [];
  const bodies = new Map<string, string[]>();
  const factory: TransportFactory = {
    canonical(url) {
      if (url.pathname.length < 2) throw new MqlogError('ERR_INVALID_ARG', 'memq://HOST/BOX needs a box');
      return `memq://${url.host.toLowerCase()}${url.pathname}`;
    },
    create(context) {
      contexts.push(context);
      const transport: Transport = {
        send(batch: OutgoingBatch) {
          for (const frame of batch.frames) {
            const c = context.unpack(frame);
            if (c.type !== 'message') continue;
            const list = bodies.get(context.destination) ?? [];
            list.push(c.body.toString());
            bodies.set(context.destination, list);
          }
          return Promise.resolve({ stored: batch.frames.length, duplicates: 0 });
        },
        close: () => Promise.resolve(),
      };
      return transport;
    },
  };
  return { factory, contexts, bodies };
}

test('a registry resolves, shows and builds by scheme; a child registry falls back to its parent', async () => {
  const { factory, contexts } = memoryFactory();
  const registry = new TransportRegistry(transports).register('memq', factory);
  assert.equal(registry.canonical('MEMQ://Box.Example/one', true), 'memq://box.example/one');
  assert.equal(registry.canonical('nats://127.0.0.1:4222/S', true), 'nats://127.0.0.1:4222/S', 'built-in schemes through the parent');
  assert.equal(registry.canonical('ftp://x/y', true), undefined, 'no transport: not a URL destination');
  assert.throws(() => registry.canonical('memq://box/', true), { code: 'ERR_INVALID_ARG', message: /needs a box/ });
  assert.equal(transports.factory('memq'), undefined, 'the parent is left as it was');
  assert.ok(registry.schemes().includes('memq') && registry.schemes().includes('https'));
  assert.throws(() => registry.register('Not A Scheme', factory), { code: 'ERR_INVALID_ARG' });
  // Shown without secrets, never throwing; a URL without credentials as written.
  assert.equal(registry.display('http://127.0.0.1:7999'), 'http://127.0.0.1:7999');
  assert.equal(registry.display('nats://mq:s3cret@127.0.0.1:4222/S'), 'nats://mq:***@127.0.0.1:4222/S');
  assert.equal(registry.display('nats://t0ken@127.0.0.1:4222/S'), 'nats://***@127.0.0.1:4222/S');
  assert.equal(registry.display('http://user:pa ss@[bad'), 'http://***@[bad');
  await registry.create({ destination: 'memq://box/one', url: 'memq://box/one', node: { id: 'n', name: 'a' }, settings: {}, unpack: () => ({ type: 'other', offset: 0 }), log: () => undefined });
  assert.equal(contexts.length, 1);
  await assert.rejects(registry.create({ ...contexts[0]!, url: 'ftp://x/y' }), { code: 'ERR_INVALID_ARG', message: /no transport for ftp:\/\/x\/y \(registered: .*memq/ });
});

test("a scheme an application registers: its URLs resolve when appended and a daemon forwards to them, a peer's options reach the factory", async (t) => {
  const { factory, contexts, bodies } = memoryFactory();
  transports.register('memq', factory);
  const root = await tempDir(t);
  const dir = join(root, 'a');
  await mkdir(dir);
  await writeFile(join(dir, 'mqlog.json'), JSON.stringify({ name: 'a', listen: '127.0.0.1:0', peers: { box: { url: 'memq://Host/configured', options: { partitions: 3 } } } }));
  const node = await openNode({ data: dir });
  await node.send('MEMQ://host/adhoc', 'to a URL');
  await node.send('memq://host/configured', 'to the peer by its URL');
  await node.send('box', 'to the peer by name');
  await assert.rejects(node.send('memq://host/', 'nowhere'), { code: 'ERR_UNKNOWN_PEER', message: /needs a box/ });
  await node.close();
  const daemon = await Daemon.start({ data: dir, logger: silentLogger() });
  defer(t, () => daemon.stop());
  await waitFor(() => (bodies.get('memq://host/adhoc')?.length ?? 0) + (bodies.get('box')?.length ?? 0) >= 3, { message: 'three messages through the registered transport' });
  assert.deepEqual(bodies.get('memq://host/adhoc'), ['to a URL'], 'a URL with no peer, in its canonical form');
  assert.deepEqual(bodies.get('box')?.sort(), ['to the peer by its URL', 'to the peer by name']);
  const peer = contexts.find((c) => c.destination === 'box');
  assert.deepEqual(peer?.settings, { partitions: 3 });
  assert.equal(peer?.url, 'memq://host/configured');
  assert.equal(peer?.node.name, 'a');
  assert.deepEqual(contexts.find((c) => c.destination === 'memq://host/adhoc')?.settings, {});
});
