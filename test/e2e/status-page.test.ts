/**
 * The status page (GET /) in a real headless browser (Chromium driven by playwright-core): it must show
 * the node's real numbers — the same as /status.json and `mqlog stat` — and a banner that tells a stuck
 * peer at a glance. Chromium is a system package (/usr/bin/chromium; .ci/run installs it): without it
 * this test fails, it does not skip.
 */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { inflateSync } from 'node:zlib';
import { test } from 'node:test';
import { chromium, type Page } from 'playwright-core';
import { openNode } from '../../src/daemon/node.js';
import { DEAD_REASON_HEADER } from '../../src/queue/codec.js';
import { newId } from '../../src/util/ids.js';
import { CHROMIUM, CHROMIUM_ARGS } from '../helpers/browser.js';
import { defer, jsonLines, mqlog, tempDir, waitFor } from '../helpers/index.js';
import { daemons, makeNodes, type NodeSpec } from '../helpers/daemon.js';

const VIEWPORT = { width: 1280, height: 800 };
const SECRET = '0123456789abcdef-secret';

interface StatusJson {
  readonly node: { readonly name: string; readonly restarts: number };
  readonly peers: readonly { readonly peer: string; readonly backlog: number; readonly forwarded: number; readonly lastError: string | null; readonly lastSentAt: number | null }[];
  readonly channels: readonly { readonly channel: string; readonly pending: number; readonly received: number; readonly acked: number; readonly dead: number }[];
}

async function statusJson(node: NodeSpec): Promise<StatusJson> {
  const response = await fetch(`${node.url}/status.json`);
  assert.equal(response.status, 200);
  return (await response.json()) as StatusJson;
}

async function send(from: NodeSpec, to: string, lines: string[]): Promise<void> {
  const result = await mqlog(['send', '--data', from.dir, '--to', to, '--lines'], { input: `${lines.join('\n')}\n` });
  assert.equal(result.code, 0, result.stderr);
  assert.equal(result.stdout.trim().split('\n').length, lines.length);
}

/** Waits until `read` (text or attribute of one element on the page) gives `expected`. */
async function waitForValue(what: string, read: () => Promise<string | null>, expected: string): Promise<void> {
  let actual: string | null = null;
  try {
    await waitFor(
      async () => {
        actual = await read();
        return actual === expected;
      },
      { timeoutMs: 30_000, intervalMs: 100, message: what },
    );
  } catch (err) {
    throw new Error(`${what}: expected ${JSON.stringify(expected)}, the page shows ${JSON.stringify(actual)}`, { cause: err });
  }
}

function waitForText(page: Page, selector: string, expected: string): Promise<void> {
  return waitForValue(selector, () => page.locator(selector).textContent({ timeout: 1000 }).catch(() => null), expected);
}

function waitForAttribute(page: Page, selector: string, name: string, expected: string): Promise<void> {
  return waitForValue(`${selector}[${name}]`, () => page.locator(selector).getAttribute(name, { timeout: 1000 }).catch(() => null), expected);
}

/** Decodes an 8-bit, non-interlaced RGB or RGBA PNG: its size and the number of distinct colours. */
function decodePng(png: Buffer): { width: number; height: number; colors: number } {
  assert.deepEqual([...png.subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a], 'PNG signature');
  let offset = 8;
  let header: { width: number; height: number; bitDepth: number; colorType: number; interlace: number } | undefined;
  const idat: Buffer[] = [];
  for (;;) {
    const length = png.readUInt32BE(offset);
    const type = png.toString('latin1', offset + 4, offset + 8);
    const data = png.subarray(offset + 8, offset + 8 + length);
    if (type === 'IHDR') header = { width: data.readUInt32BE(0), height: data.readUInt32BE(4), bitDepth: data[8]!, colorType: data[9]!, interlace: data[12]! };
    else if (type === 'IDAT') idat.push(data);
    else if (type === 'IEND') break;
    offset += 12 + length;
  }
  assert.ok(header !== undefined, 'IHDR first');
  assert.equal(header.bitDepth, 8);
  assert.equal(header.interlace, 0);
  assert.ok(header.colorType === 2 || header.colorType === 6, `RGB or RGBA, not colour type ${header.colorType}`);
  const bpp = header.colorType === 6 ? 4 : 3;
  const stride = header.width * bpp;
  const raw = inflateSync(Buffer.concat(idat));
  assert.equal(raw.length, header.height * (stride + 1), 'image data size');
  const colors = new Set<number>();
  let previous = Buffer.alloc(stride);
  for (let y = 0; y < header.height; y++) {
    const filter = raw[y * (stride + 1)]!;
    const line = Buffer.from(raw.subarray(y * (stride + 1) + 1, (y + 1) * (stride + 1)));
    for (let x = 0; x < stride; x++) {
      const left = x >= bpp ? line[x - bpp]! : 0;
      const up = previous[x]!;
      const upLeft = x >= bpp ? previous[x - bpp]! : 0;
      let add: number;
      if (filter === 0) add = 0;
      else if (filter === 1) add = left;
      else if (filter === 2) add = up;
      else if (filter === 3) add = (left + up) >> 1;
      else if (filter === 4) {
        const p = left + up - upLeft;
        const [pa, pb, pc] = [Math.abs(p - left), Math.abs(p - up), Math.abs(p - upLeft)];
        add = pa <= pb && pa <= pc ? left : pb <= pc ? up : upLeft;
      } else throw new Error(`bad PNG filter ${filter} on row ${y}`);
      line[x] = (line[x]! + add) & 0xff;
    }
    for (let x = 0; x < stride; x += bpp) colors.add((line[x]! << 16) | (line[x + 1]! << 8) | line[x + 2]!);
    previous = line;
  }
  return { width: header.width, height: header.height, colors: colors.size };
}

test('the status page in a real browser shows each node\'s real numbers and says that A is stuck on its down peer C', async (t) => {
  assert.ok(existsSync(CHROMIUM), `Chromium is not installed at ${CHROMIUM}: this test needs it (apt-get install chromium; .ci/run installs it)`);

  const root = await tempDir(t);
  const { a, b, c } = await makeNodes(root, ['a', 'b', 'c']);
  // A knows a key for C: the page must never show it.
  const configA = JSON.parse(await readFile(join(a!.dir, 'mqlog.json'), 'utf8')) as { peers: Record<string, { url: string; key?: string }> };
  configA.peers.c = { url: c!.url, key: SECRET };
  await writeFile(join(a!.dir, 'mqlog.json'), JSON.stringify(configA));
  const [da, db] = daemons(t, [a!, b!]); // C stays down
  await Promise.all([da!.start(), db!.start()]);

  // Traffic: 20 messages A -> B acked on B, 3 more left pending on B, 5 for C waiting in A.
  const marker = 'page-body-7f3a';
  await send(a!, 'b', Array.from({ length: 20 }, (_, i) => `${marker} acked ${i}`));
  const tail = await mqlog(['tail', '--data', b!.dir, '--follow', '--ack', '--json', '--limit', '20', '--timeout', '30s']);
  assert.equal(tail.code, 0, tail.stderr);
  assert.equal(jsonLines(tail.stdout).length, 20);
  await send(a!, 'b', Array.from({ length: 3 }, (_, i) => `${marker} pending ${i}`));
  await send(a!, 'c', Array.from({ length: 5 }, (_, i) => `${marker} for c ${i}`));

  // The final numbers, as the nodes report them (B re-reads its inbox state every 2 s).
  const stateA = await waitFor(
    async () => {
      const s = await statusJson(a!);
      const peerB = s.peers.find((p) => p.peer === 'b');
      const peerC = s.peers.find((p) => p.peer === 'c');
      return peerB?.backlog === 0 && peerB.forwarded === 23 && peerC?.backlog === 5 && peerC.lastError !== null ? s : undefined;
    },
    { timeoutMs: 30_000, intervalMs: 100, message: "A's status.json: b drained, 5 waiting for c with an error" },
  );
  const stateB = await waitFor(
    async () => {
      const s = await statusJson(b!);
      const common = s.channels.find((ch) => ch.channel === 'common');
      return common?.pending === 3 && common.received === 23 && common.acked === 20 ? s : undefined;
    },
    { timeoutMs: 30_000, intervalMs: 100, message: "B's status.json: 23 received, 20 acked, 3 pending" },
  );
  const stat = await mqlog(['stat', '--data', a!.dir, '--json']);
  assert.equal(stat.code, 0, stat.stderr);
  const statC = jsonLines<{ peer?: string; backlog?: number }>(stat.stdout).find((r) => r.peer === 'c');
  const backlogC = stateA.peers.find((p) => p.peer === 'c')!.backlog;
  assert.equal(statC?.backlog, backlogC, 'mqlog stat and /status.json agree on the backlog for c');

  const browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS, timeout: 60_000 });
  defer(t, () => browser.close());
  const context = await browser.newContext({ viewport: VIEWPORT });

  // A: peer c is stuck with its backlog; peer b drained.
  const pageA = await context.newPage();
  const response = await pageA.goto(`${a!.url}/`);
  assert.equal(response?.status(), 200);
  assert.match(response.headers()['content-type'] ?? '', /^text\/html/);
  await waitForText(pageA, 'tr[data-peer="c"] td[data-field="backlog"]', String(backlogC));
  await waitForAttribute(pageA, '#banner', 'data-state', 'stuck');
  await waitForText(pageA, '#node-name', 'a');
  await waitForText(pageA, 'tr[data-peer="b"] td[data-field="backlog"]', '0');
  await waitForText(pageA, 'tr[data-peer="b"] td[data-field="forwarded"]', String(stateA.peers.find((p) => p.peer === 'b')!.forwarded));
  const banner = (await pageA.textContent('#banner')) ?? '';
  assert.match(banner, /\bc\b/, `the banner names c: ${banner}`);
  assert.match(banner, new RegExp(`\\b${backlogC}\\b`), `the banner counts the waiting messages: ${banner}`);
  assert.equal(await pageA.getAttribute('tr[data-peer="c"] td[data-field="lastError"]', 'class'), 'err');
  assert.notEqual(await pageA.textContent('tr[data-peer="c"] td[data-field="lastError"]'), 'none');
  assert.equal(await pageA.textContent('tr[data-peer="b"] td[data-field="lastError"]'), 'none');
  const shot = join(root, 'status-a.png');
  await pageA.screenshot({ path: shot });
  const htmlA = await pageA.content();

  // B: the channel's pending and received numbers; nothing stuck.
  const pageB = await context.newPage();
  await pageB.goto(`${b!.url}/`);
  const common = stateB.channels.find((ch) => ch.channel === 'common')!;
  await waitForText(pageB, 'tr[data-channel="common"] td[data-field="pending"]', String(common.pending));
  await waitForText(pageB, 'tr[data-channel="common"] td[data-field="received"]', String(common.received));
  await waitForText(pageB, 'tr[data-channel="common"] td[data-field="acked"]', String(common.acked));
  await waitForText(pageB, 'tr[data-channel="common"] td[data-field="dead"]', '0');
  await waitForText(pageB, '#node-name', 'b');
  await waitForAttribute(pageB, '#banner', 'data-state', 'idle');
  const htmlB = await pageB.content();

  // No message body and no secret on either page.
  for (const [name, html] of [['a', htmlA], ['b', htmlB]] as const) {
    assert.ok(!html.includes(marker), `${name}: the page shows a message body`);
    assert.ok(!html.includes(SECRET), `${name}: the page shows a peer key`);
  }

  // The screenshot is a real picture of the viewport.
  const png = await readFile(shot);
  assert.ok(png.length > 10_000, `screenshot of ${png.length} bytes`);
  const image = decodePng(png);
  assert.equal(image.width, VIEWPORT.width);
  assert.equal(image.height, VIEWPORT.height);
  assert.ok(image.colors > 8, `the screenshot has ${image.colors} distinct colours`);
});

test('the status page, /status.json and mqlog stat say "never" for the last send to a peer that never received a message, even after other peers\' messages went by', async (t) => {
  assert.ok(existsSync(CHROMIUM), `Chromium is not installed at ${CHROMIUM}: this test needs it (apt-get install chromium; .ci/run installs it)`);
  const root = await tempDir(t);
  const { a, b } = await makeNodes(root, ['a', 'b', 'c']); // c is a configured peer that never runs
  const [da, db] = daemons(t, [a!, b!]); // C stays down
  await Promise.all([da!.start(), db!.start()]);

  // Messages for b pass through the outbox that c's forwarder reads too (it skips them), then some for c.
  await send(a!, 'b', ['for b 1', 'for b 2', 'for b 3']);
  await waitFor(async () => (await statusJson(a!)).peers.find((p) => p.peer === 'b')?.forwarded === 3, { timeoutMs: 30_000, intervalMs: 100, message: 'A to forward to b' });
  await send(a!, 'c', ['for c 1', 'for c 2']);
  const state = await waitFor(
    async () => {
      const s = await statusJson(a!);
      const peerC = s.peers.find((p) => p.peer === 'c');
      return peerC?.backlog === 2 && peerC.lastError !== null ? s : undefined;
    },
    { timeoutMs: 30_000, intervalMs: 100, message: "A's status.json: 2 waiting for c with an error" },
  );
  const stat = await mqlog(['stat', '--data', a!.dir, '--json']);
  assert.equal(stat.code, 0, stat.stderr);
  const statC = jsonLines<{ peer?: string; lastSentAt?: number | null }>(stat.stdout).find((r) => r.peer === 'c');

  const browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS, timeout: 60_000 });
  defer(t, () => browser.close());
  const page = await browser.newPage({ viewport: VIEWPORT });
  await page.goto(`${a!.url}/`);
  await waitForText(page, 'tr[data-peer="c"] td[data-field="backlog"]', '2');
  const lastSentCell = await page.textContent('tr[data-peer="c"] td:nth-child(6)');

  assert.deepEqual(
    { statusJson: state.peers.find((p) => p.peer === 'c')!.lastSentAt, stat: statC?.lastSentAt, page: lastSentCell },
    { statusJson: null, stat: null, page: 'never' },
    'nothing was ever sent to c',
  );
});

test("behind admin.token the page redrives and purges a channel's dead letters; the endpoints need the token and a channel there, and without a token they are not served", async (t) => {
  assert.ok(existsSync(CHROMIUM), `Chromium is not installed at ${CHROMIUM}: this test needs it (apt-get install chromium; .ci/run installs it)`);
  const root = await tempDir(t);
  const { a, b } = await makeNodes(root, ['a', 'b'], { admin: { token: SECRET } });
  const bearer = { authorization: `Bearer ${SECRET}` };
  const deadLetters = async (count: number, tag: string): Promise<void> => {
    const node = await openNode({ data: b!.dir });
    try {
      const inbox = await node.inbox('jobs');
      // The channel exists by a message of its own (dead letters come from an inbox).
      if (tag === 'first') await inbox.append({ id: newId(), ts: Date.now(), channel: 'jobs', priority: 4, to: ['b'], from: 'a' }, Buffer.from('live'));
      const dead = await inbox.deadLetters();
      for (let i = 0; i < count; i++) await dead.append({ id: newId(), ts: Date.now(), channel: 'jobs', priority: 4, to: ['b'], from: 'a', headers: { [DEAD_REASON_HEADER]: 'failed in a test' } }, Buffer.from(`${tag} ${i}`));
    } finally {
      await node.close();
    }
  };
  await deadLetters(3, 'first');
  const [db] = daemons(t, [b!]);
  await db!.start();
  const jobs = async (): Promise<{ pending: number; dead: number } | undefined> => {
    const response = await fetch(`${b!.url}/status.json`, { headers: bearer });
    return ((await response.json()) as StatusJson).channels.find((c) => c.channel === 'jobs');
  };
  const post = (path: string, headers: Record<string, string> = {}): Promise<Response> => fetch(`${b!.url}${path}`, { method: 'POST', headers });
  assert.equal((await post('/channels/jobs/redrive')).status, 401);
  assert.equal((await post('/channels/jobs/dead/purge')).status, 401);
  const unknown = await post('/channels/nosuch/redrive', bearer);
  assert.deepEqual([unknown.status, ((await unknown.json()) as { code?: string }).code], [404, 'ERR_NOT_FOUND']);
  await waitFor(async () => (await jobs())?.dead === 3, { timeoutMs: 30_000, message: 'three dead letters counted' });

  const browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS, timeout: 60_000 });
  defer(t, () => browser.close());
  const page = await browser.newPage({ viewport: VIEWPORT });
  page.on('dialog', (dialog) => void dialog.accept());
  await page.goto(`${b!.url}/?token=${SECRET}`);
  await page.click('tr[data-channel="jobs"] button[data-action="redrive"]', { timeout: 30_000 });
  await waitFor(async () => {
    const c = await jobs();
    return c?.dead === 0 && c.pending === 4;
  }, { timeoutMs: 30_000, message: 'the three dead letters back in the inbox' });
  const tail = await mqlog(['tail', '--data', b!.dir, '--channel', 'jobs', '--json', '--limit', '4']);
  assert.deepEqual(jsonLines<{ body: string; headers: Record<string, string> }>(tail.stdout).map((m) => [m.body, m.headers[DEAD_REASON_HEADER]]).sort(), [['first 0', undefined], ['first 1', undefined], ['first 2', undefined], ['live', undefined]]);

  await deadLetters(2, 'second');
  await waitFor(async () => (await jobs())?.dead === 2, { timeoutMs: 30_000, message: 'two new dead letters counted' });
  await page.click('tr[data-channel="jobs"] button[data-action="purge"]', { timeout: 30_000 });
  await waitFor(async () => {
    const c = await jobs();
    return c?.dead === 0 && c.pending === 4;
  }, { timeoutMs: 30_000, message: 'the two new dead letters purged, the inbox untouched' });
  await waitFor(() => /"event":"dead_letters_purged","channel":"jobs","count":2/.test(db!.output), { timeoutMs: 30_000, message: 'the purge logged' });

  // A node without admin.token does not serve them at all.
  const [da] = daemons(t, [a!]);
  await writeFile(join(a!.dir, 'mqlog.json'), JSON.stringify({ ...JSON.parse(await readFile(join(a!.dir, 'mqlog.json'), 'utf8')), admin: {} }));
  await da!.start();
  assert.equal((await fetch(`${a!.url}/channels/jobs/redrive`, { method: 'POST' })).status, 404);
});
