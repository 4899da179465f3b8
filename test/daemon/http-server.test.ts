/**
 * The daemon's HTTP servers as built: what they load at start, and that what they skip still works
 * when asked for.
 */
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { test } from 'node:test';
import Fastify from 'fastify';
import { parseConfig } from '../../src/daemon/config.js';
import { createServers, lazySchemaCompilers } from '../../src/daemon/http-server.js';
import { silentLogger } from '../../src/daemon/logger.js';
import { defer } from '../helpers/index.js';

const loaded = (name: string): boolean => Object.keys(createRequire(import.meta.url).cache).some((path) => path.includes(`/node_modules/${name}/`));

test('the servers start without fastify\'s schema compilers, and a route with a schema still gets them', async (t) => {
  const servers = createServers({
    config: parseConfig({}),
    logger: silentLogger(),
    tls: {},
    sink: { accept: () => Promise.reject(new Error('must not be reached')) },
    healthy: () => true,
    readOnly: { metrics: async () => ({ contentType: 'text/plain', text: '' }), status: async () => ({}), page: '' },
  });
  defer(t, () => servers.peer.close());
  await servers.peer.ready();
  assert.equal((await servers.peer.inject({ method: 'GET', url: '/healthz' })).statusCode, 200);
  assert.equal(loaded('@fastify/ajv-compiler'), false, 'ajv compiler loaded by a server whose routes have no schema');
  assert.equal(loaded('@fastify/fast-json-stringify-compiler'), false, 'serializer compiler loaded by a server whose routes have no schema');

  const app = Fastify({ schemaController: { compilersFactory: lazySchemaCompilers } });
  defer(t, () => app.close());
  app.post('/echo', {
    schema: {
      body: { type: 'object', required: ['n'], properties: { n: { type: 'integer' } } },
      response: { 200: { type: 'object', properties: { n: { type: 'integer' } } } },
    },
  }, async (request) => ({ n: (request.body as { n: number }).n, secret: 'not in the response schema' }));
  const refused = await app.inject({ method: 'POST', url: '/echo', payload: { m: 1 } });
  assert.equal(refused.statusCode, 400);
  const answered = await app.inject({ method: 'POST', url: '/echo', payload: { n: 7 } });
  assert.equal(answered.statusCode, 200);
  assert.deepEqual(answered.json(), { n: 7 });
  assert.equal(loaded('@fastify/ajv-compiler'), true);
});
