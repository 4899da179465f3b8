/**
 * GET /metrics of two running daemons: valid Prometheus text (checked by a strict parser below), names
 * prefixed `mqlog_`, and counters and gauges that match the traffic the test made. GET /healthz too.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { CLI, exited, jsonLines, mqlog, spawnChild, tempDir, waitFor } from '../helpers/index.js';
import { daemons, makeNodes, type NodeSpec } from '../helpers/daemon.js';

const packageVersion = String((JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: unknown }).version);

interface Sample {
  readonly name: string;
  readonly labels: Readonly<Record<string, string>>;
  readonly value: number;
}

interface Exposition {
  readonly types: ReadonlyMap<string, string>;
  readonly help: ReadonlyMap<string, string>;
  readonly samples: readonly Sample[];
}

const NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*$/;
const TYPES = new Set(['counter', 'gauge', 'histogram', 'summary', 'untyped']);

/**
 * Parses the Prometheus text format (0.0.4) strictly: only `# HELP`, `# TYPE` and sample lines; each
 * metric family has at most one HELP and one TYPE, the TYPE before its samples; every sample's name is
 * a declared family (histogram/summary samples with their `_bucket`, `_sum`, `_count` suffixes); no
 * sample twice. Throws on anything else.
 */
function parsePrometheus(text: string): Exposition {
  const types = new Map<string, string>();
  const help = new Map<string, string>();
  const samples: Sample[] = [];
  const seen = new Set<string>();
  assert.ok(text.endsWith('\n'), 'the exposition ends with a newline');
  const lines = text.slice(0, -1).split('\n');
  lines.forEach((line, index) => {
    const where = `line ${index + 1}: ${JSON.stringify(line)}`;
    if (line === '') return;
    if (line.startsWith('#')) {
      const m = /^# (HELP|TYPE) (\S+) (.*)$/.exec(line);
      assert.ok(m !== null, `only HELP and TYPE comments: ${where}`);
      const [, kind, name, rest] = m as unknown as [string, string, string, string];
      assert.match(name, NAME, where);
      if (kind === 'HELP') {
        assert.ok(!help.has(name), `HELP twice: ${where}`);
        assert.ok(!/\\[^\\n]/.test(rest.replaceAll('\\\\', '')), `bad escape in HELP: ${where}`);
        help.set(name, rest);
      } else {
        assert.ok(!types.has(name), `TYPE twice: ${where}`);
        assert.ok(TYPES.has(rest), `unknown type: ${where}`);
        assert.ok(!samples.some((s) => familyOf(s.name, types) === name), `TYPE after samples of ${name}: ${where}`);
        types.set(name, rest);
      }
      return;
    }
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})? (\S+)(?: (-?\d+))?$/.exec(line);
    assert.ok(m !== null, `a sample line: ${where}`);
    const [, name, rawLabels, rawValue] = m as unknown as [string, string, string | undefined, string];
    const labels = rawLabels === undefined ? {} : parseLabels(rawLabels, where);
    // Values are what Go's strconv.ParseFloat reads (Prometheus parses them so): NaN and Inf in any case.
    assert.match(rawValue, /^(?:[+-]?(?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?|[+-]?inf(?:inity)?|nan)$/i, `a number: ${where}`);
    const special = rawValue.toLowerCase().replace(/^\+/, '');
    const value = special === 'nan' ? NaN : special.startsWith('inf') ? Infinity : special.startsWith('-inf') ? -Infinity : Number(rawValue);
    const family = familyOf(name, types);
    assert.ok(family !== undefined, `sample of an undeclared metric (no TYPE line): ${where}`);
    if (name.endsWith('_bucket') && types.get(family) === 'histogram') assert.ok('le' in labels, `bucket without le: ${where}`);
    const key = `${name}${JSON.stringify(Object.entries(labels).sort())}`;
    assert.ok(!seen.has(key), `sample twice: ${where}`);
    seen.add(key);
    samples.push({ name, labels, value });
  });
  return { types, help, samples };
}

/** The declared family a sample name belongs to, if any. */
function familyOf(name: string, types: ReadonlyMap<string, string>): string | undefined {
  if (types.has(name)) return name;
  const m = /^(.*)_(bucket|sum|count)$/.exec(name);
  if (m === null) return undefined;
  const base = m[1]!;
  const type = types.get(base);
  if (type === 'histogram' || (type === 'summary' && m[2] !== 'bucket')) return base;
  return undefined;
}

/** `{a="x",b="y\"z"}` → { a: 'x', b: 'y"z' } (escapes: \\, \", \n). */
function parseLabels(raw: string, where: string): Record<string, string> {
  const labels: Record<string, string> = {};
  let i = 1;
  const end = raw.length - 1;
  while (i < end) {
    const eq = raw.indexOf('=', i);
    assert.ok(eq > i, `label name: ${where}`);
    const name = raw.slice(i, eq);
    assert.match(name, LABEL_NAME, where);
    assert.equal(raw[eq + 1], '"', `quoted label value: ${where}`);
    let value = '';
    let j = eq + 2;
    for (; j < end && raw[j] !== '"'; j++) {
      if (raw[j] === '\\') {
        const next = raw[++j];
        assert.ok(next === '\\' || next === '"' || next === 'n', `bad escape in a label value: ${where}`);
        value += next === 'n' ? '\n' : next;
      } else value += raw[j];
    }
    assert.equal(raw[j], '"', `closed label value: ${where}`);
    assert.ok(!(name in labels), `label twice: ${where}`);
    labels[name] = value;
    i = j + 1;
    if (raw[i] === ',') i++;
    else assert.equal(i, end, `labels separated by commas: ${where}`);
  }
  return labels;
}

/** The value of one sample (labels must match exactly), or undefined when there is none. */
function sample(exposition: Exposition, name: string, labels: Record<string, string> = {}): number | undefined {
  const want = JSON.stringify(Object.entries(labels).sort());
  return exposition.samples.find((s) => s.name === name && JSON.stringify(Object.entries(s.labels).sort()) === want)?.value;
}

async function metrics(node: NodeSpec): Promise<{ text: string; exposition: Exposition }> {
  const response = await fetch(`${node.url}/metrics`);
  assert.equal(response.status, 200);
  assert.match(response.headers.get('content-type') ?? '', /^text\/plain; version=0\.0\.4/);
  const text = await response.text();
  return { text, exposition: parsePrometheus(text) };
}

/** Polls /metrics until `check` accepts it; returns that exposition. */
async function metricsWhen(node: NodeSpec, what: string, check: (e: Exposition) => boolean, { timeoutMs = 30_000, intervalMs = 100 } = {}): Promise<Exposition> {
  let last: Exposition | undefined;
  try {
    return await waitFor(
      async () => {
        last = (await metrics(node)).exposition;
        return check(last) ? last : undefined;
      },
      { timeoutMs, intervalMs, message: `${node.name}'s metrics: ${what}` },
    );
  } catch (err) {
    const mqlogSamples = last?.samples.filter((s) => !s.name.startsWith('mqlog_process_') && !s.name.startsWith('mqlog_nodejs_')) ?? [];
    throw new Error(`${(err as Error).message}\nlast samples: ${JSON.stringify(mqlogSamples)}`, { cause: err });
  }
}

test('the Prometheus parser of this test refuses what the format does not allow', () => {
  assert.doesNotThrow(() => parsePrometheus('# HELP m_x help\n# TYPE m_x counter\nm_x{a="1",b="q\\"\\n\\\\"} 3\n# TYPE m_h histogram\nm_h_bucket{le="+Inf"} 1\nm_h_sum 0.5\nm_h_count 1\n'));
  for (const bad of ['m_x 1\n', '# TYPE m_x counter\nm_x 1', '# TYPE m_x counter\nm_x{a="1"} one\n', '# TYPE m_x counter\nm_x 1 2 3\n', '# TYPE m_x counter\nm_x{a=1} 1\n', '# comment\n', '# TYPE m_x counter\n# TYPE m_x gauge\n', '# TYPE m_x counter\nm_x 1\nm_x 2\n', '# TYPE m_x counter\nm_x_sum 1\n']) {
    assert.throws(() => parsePrometheus(bad), assert.AssertionError, JSON.stringify(bad));
  }
});

test('GET /metrics on two daemons is valid Prometheus text whose counters and gauges match the messages sent, received and acked, and never shows a body', async (t) => {
  const root = await tempDir(t);
  const { a, b } = await makeNodes(root, ['a', 'b']);
  const [da, db] = daemons(t, [a!, b!]);
  await Promise.all([da!.start(), db!.start()]);

  for (const node of [a!, b!]) {
    const response = await fetch(`${node.url}/healthz`);
    assert.equal(response.status, 200);
    assert.deepEqual(await response.json(), { ok: true });
  }

  // Bodies carry a marker that must never show up in the metrics.
  const marker = `body-${randomUUID()}`;
  const counts = { x: 30, y: 20 };
  const bodies = new Set<string>();
  for (const [channel, count] of Object.entries(counts)) {
    const lines = Array.from({ length: count }, (_, i) => `${marker} ${channel} ${i}`);
    lines.forEach((l) => bodies.add(l));
    const sent = await mqlog(['send', '--data', a!.dir, '--to', 'b', '--channel', channel, '--lines'], { input: `${lines.join('\n')}\n` });
    assert.equal(sent.code, 0, sent.stderr);
    assert.equal(sent.stdout.trim().split('\n').length, count);
  }
  const total = counts.x + counts.y;

  // A: everything forwarded to b, nothing left in its backlog.
  const onA = await metricsWhen(a!, `forwarded ${total} to b, backlog 0`, (e) => sample(e, 'mqlog_forwarded_messages_total', { peer: 'b' }) === total && sample(e, 'mqlog_backlog_messages', { peer: 'b' }) === 0);
  assert.equal(sample(onA, 'mqlog_appended_messages_total', { channel: 'x' }), counts.x);
  assert.equal(sample(onA, 'mqlog_appended_messages_total', { channel: 'y' }), counts.y);
  assert.ok((sample(onA, 'mqlog_forwarded_bytes_total', { peer: 'b' }) ?? 0) > 0);

  // B: received per channel; then some acked by consumers.
  await metricsWhen(b!, 'received per channel', (e) => sample(e, 'mqlog_received_messages_total', { channel: 'x' }) === counts.x && sample(e, 'mqlog_received_messages_total', { channel: 'y' }) === counts.y);
  const acks = { x: 12, y: 5 };
  for (const [channel, count] of Object.entries(acks)) {
    const tail = await mqlog(['tail', '--data', b!.dir, '--channel', channel, '--ack', '--json', '--limit', String(count)]);
    assert.equal(tail.code, 0, tail.stderr);
    assert.equal(jsonLines(tail.stdout).length, count, `acked ${count} on ${channel}`);
  }
  // B refreshes its inbox gauges every 2 s: wait for them.
  const onB = await metricsWhen(
    b!,
    'acks and pending per channel',
    (e) =>
      sample(e, 'mqlog_acked_messages_total', { channel: 'x' }) === acks.x &&
      sample(e, 'mqlog_acked_messages_total', { channel: 'y' }) === acks.y &&
      sample(e, 'mqlog_inbox_pending_messages', { channel: 'x' }) === counts.x - acks.x &&
      sample(e, 'mqlog_inbox_pending_messages', { channel: 'y' }) === counts.y - acks.y,
  );
  assert.equal(sample(onB, 'mqlog_received_messages_total', { channel: 'x' }), counts.x);
  assert.equal(sample(onB, 'mqlog_received_messages_total', { channel: 'y' }), counts.y);
  assert.equal(sample(onB, 'mqlog_duplicate_messages_total') ?? 0, 0, 'nothing was sent twice');
  assert.equal(sample(onB, 'mqlog_restarts'), 0);

  // Both: only mqlog_ names, and no body anywhere (neither as a label value nor in the text).
  const finalA = await metrics(a!);
  const finalB = await metrics(b!);
  for (const [name, { text, exposition }] of [['a', finalA], ['b', finalB]] as const) {
    const names = [...exposition.types.keys(), ...exposition.samples.map((s) => s.name)];
    assert.deepEqual(names.filter((n) => !n.startsWith('mqlog_')), [], `${name}: every metric name starts with mqlog_`);
    for (const s of exposition.samples) {
      for (const value of Object.values(s.labels)) assert.ok(!bodies.has(value) && !value.includes(marker), `${name}: label ${value} of ${s.name}`);
    }
    assert.ok(!text.includes(marker), `${name}: a message body appears in /metrics`);
    for (const family of exposition.types.keys()) assert.ok(exposition.help.has(family), `${name}: ${family} has a HELP line`);
    // Process metrics carry the prefix once; no label is empty; the build is named.
    assert.deepEqual(names.filter((n) => /^mqlog_(process|nodejs)_(process|nodejs)_/.test(n)), [], `${name}: a doubled prefix`);
    assert.ok(exposition.types.has('mqlog_process_cpu_seconds_total'), `${name}: process metrics are there`);
    for (const s of exposition.samples) for (const [label, value] of Object.entries(s.labels)) assert.notEqual(value, '', `${name}: ${s.name} has an empty ${label} label`);
    assert.equal(sample(exposition, 'mqlog_build_info', { version: packageVersion, nodejs: process.versions.node }), 1, `${name}: mqlog_build_info`);
    // The reference linter of the format agrees (Debian package prometheus; .ci/run installs it).
    const lint = spawnSync('promtool', ['check', 'metrics'], { input: text, encoding: 'utf8' });
    assert.equal(lint.error, undefined, 'promtool is needed to check the metrics (Debian package prometheus; .ci/run installs it)');
    assert.equal(lint.status, 0, `${name}: promtool check metrics: ${lint.stdout}${lint.stderr}`);
  }
  // The final scrape still agrees (counters do not move without traffic).
  assert.equal(sample(finalA.exposition, 'mqlog_forwarded_messages_total', { peer: 'b' }), total);
  assert.equal(sample(finalB.exposition, 'mqlog_acked_messages_total', { channel: 'x' }), acks.x);
});

test('the backlog gauge of a down peer counts every message, also one appended to the outbox milliseconds after the previous one', async (t) => {
  const root = await tempDir(t);
  const { a } = await makeNodes(root, ['a', 'b']); // b is a configured peer that stays down
  const [da] = daemons(t, [a!]);
  await da!.start();

  // One `send --lines` process, fed a line at a time: the next line goes in as soon as the daemon's
  // metrics show the previous one, so consecutive appends to the outbox come milliseconds apart, as
  // from a busy application. Each must show up in the backlog (within a generous deadline).
  const count = 12;
  const sender = spawnChild(t, process.execPath, [CLI, 'send', '--data', a!.dir, '--to', 'b', '--lines']);
  let out = '';
  sender.stdout!.on('data', (chunk: Buffer) => (out += chunk.toString()));
  for (let i = 0; i < count; i++) {
    sender.stdin!.write(`quick ${i}\n`);
    await waitFor(() => out.split('\n').length > i + 1, { timeoutMs: 30_000, intervalMs: 1, message: `the id of line ${i}` });
    await metricsWhen(
      a!,
      `backlog ${i + 1} for b after ${i + 1} message(s) were appended`,
      (e) => sample(e, 'mqlog_backlog_messages', { peer: 'b' }) === i + 1 && sample(e, 'mqlog_appended_messages_total', { channel: 'common' }) === i + 1,
      { timeoutMs: 10_000, intervalMs: 1 },
    );
  }
  sender.stdin!.end();
  assert.equal((await exited(sender)).code, 0);

  const stat = await mqlog(['stat', '--data', a!.dir, '--json']);
  assert.equal(stat.code, 0, stat.stderr);
  assert.equal(jsonLines<{ peer?: string; backlog?: number }>(stat.stdout).find((r) => r.peer === 'b')?.backlog, count, 'mqlog stat counts them all');
});

test('a message that expires before its peer is reached is counted per peer, with no empty label', async (t) => {
  const root = await tempDir(t);
  const { a } = await makeNodes(root, ['a', 'b']); // b is a configured peer that stays down
  const [da] = daemons(t, [a!]);
  await da!.start();
  const sent = await mqlog(['send', '--data', a!.dir, '--to', 'b', '--ttl', '300ms', 'short-lived']);
  assert.equal(sent.code, 0, sent.stderr);
  const e = await metricsWhen(a!, 'one message expired unsent for b', (x) => sample(x, 'mqlog_unsent_expired_messages_total', { peer: 'b' }) === 1);
  assert.equal(sample(e, 'mqlog_backlog_messages', { peer: 'b' }), 0);
  for (const s of e.samples) for (const [label, value] of Object.entries(s.labels)) assert.notEqual(value, '', `${s.name} has an empty ${label} label`);
  assert.equal(e.samples.filter((s) => s.name === 'mqlog_expired_messages_total').length, 0, 'the inbox counter counts inbox messages only');
});
