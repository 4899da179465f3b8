import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { test, type TestContext } from 'node:test';
import { openNode } from '../../src/daemon/node.js';
import { jsonLines, mqlog, tempDir, waitFor, type RunResult } from '../helpers/index.js';
import { DaemonProcess, allInbox, daemons, makeNodes, type NodeSpec } from '../helpers/daemon.js';
import { envelope, frame, messagePayload, postBatch, uuidV7, type RawFrame } from '../helpers/wire.js';

// The daemons log at debug level here: their `forwarded` (A) and `received` (B) events say, the moment
// it happens, that a batch went through, which is when these tests pull the trigger. (Each test file
// runs in its own process, so this setting reaches only the daemons started here.)
process.env.MQLOG_LOG_LEVEL = 'debug';

/** How many log events named `event` the daemon printed since it last started. */
function events(d: DaemonProcess, event: string): number {
  let n = 0;
  for (const line of d.output.split('\n')) if (line.includes(`"event":"${event}"`)) n++;
  return n;
}

/**
 * Starts a daemon that may have just been SIGKILLed: its lock (DIR/daemon.lock) goes stale only ~5 s
 * after the dead holder last refreshed it, so a start that exits with ERR_LOCKED is tried again.
 */
async function restart(d: DaemonProcess): Promise<void> {
  let fatal: Error | undefined;
  await waitFor(
    async () => {
      try {
        await d.start();
        return true;
      } catch (err) {
        if (err instanceof Error && err.message.includes('ERR_LOCKED')) return false;
        fatal = err instanceof Error ? err : new Error(String(err));
        return true;
      }
    },
    { timeoutMs: 90_000, intervalMs: 200, message: `daemon ${d.node.name} to start again` },
  );
  if (fatal !== undefined) throw fatal;
}

/** Starts `send --lines` for `lines`; resolves with the result (the ids on stdout). */
function sendLines(from: NodeSpec, to: string, lines: readonly string[]): Promise<RunResult> {
  return mqlog(['send', '--data', from.dir, '--to', to, '--lines'], { input: `${lines.join('\n')}\n` });
}

function sentIds(result: RunResult, count: number): string[] {
  assert.equal(result.code, 0, result.stderr);
  const ids = result.stdout.trim().split('\n');
  assert.equal(ids.length, count, 'one id per line');
  return ids;
}

test('B and A are each SIGKILLed and restarted several times mid-forwarding: B ends with every message exactly once and both verify clean', async (t) => {
  const root = await tempDir(t);
  const { a, b } = await makeNodes(root, ['a', 'b']);
  const [da, db] = daemons(t, [a!, b!]);
  await Promise.all([da!.start(), db!.start()]);

  const CHUNK = 700;
  const expected = new Map<string, string>();
  let chunk = 0;
  const kills = { a: 0, b: 0 };
  /** Log output of the daemons' earlier lives (DaemonProcess.output starts afresh on every start). */
  const history = { a: '', b: '' };
  const kill = async (d: DaemonProcess): Promise<void> => {
    await d.kill();
    const name = d.node.name as 'a' | 'b';
    kills[name]++;
    history[name] += d.output;
  };
  /** Sends the next chunk; remembers its ids and bodies once `send` is done. */
  const sendChunk = (): Promise<void> => {
    const n = chunk++;
    const lines = Array.from({ length: CHUNK }, (_, i) => `chunk ${n} line ${i} ${'x'.repeat((n * 7 + i) % 61)}`);
    return sendLines(a!, 'b', lines).then((result) => {
      sentIds(result, CHUNK).forEach((id, i) => expected.set(id, lines[i]!));
    });
  };

  /**
   * One round: send a chunk while both daemons run; as soon as `watch`'s log shows `event` twice
   * (forwarding is in full swing; once is enough if the whole chunk went out in one batch), SIGKILL the
   * victims, while the chunk may still be being appended. Then start them again.
   */
  const round = async (victims: DaemonProcess[], watch: DaemonProcess, event: string): Promise<void> => {
    const before = events(watch, event);
    let sent = false;
    const sending = sendChunk().then(() => (sent = true));
    await waitFor(() => events(watch, event) >= before + 2 || (sent && events(watch, event) >= before + 1), {
      timeoutMs: 90_000,
      message: `${watch.node.name} to log ${event} (chunk ${chunk - 1})`,
    });
    for (const v of victims) await kill(v);
    await sending;
    await Promise.all(victims.map((v) => restart(v)));
  };

  // B dies right after storing a batch, with more on the way.
  await round([db!], db!, 'received');
  // A dies right after a batch was acked, its cursor maybe not yet saved: it resends what B has.
  await round([da!], da!, 'forwarded');
  // B dies while A is sending.
  await round([db!], da!, 'forwarded');
  // Both die at once; then B dies again as soon as it is back, before A's retry of the batch that was
  // in flight could complete (what B stored of it must be remembered across two restarts).
  await round([da!, db!], db!, 'received');
  await kill(db!);
  await sendChunk();
  await restart(db!);
  // A dies once more mid-forwarding.
  await round([da!], da!, 'forwarded');
  // The last chunk, with everything running.
  await sendChunk();
  assert.ok(kills.a >= 3 && kills.b >= 3, `kills: ${JSON.stringify(kills)}`);

  const total = chunk * CHUNK;
  assert.equal(expected.size, total);
  const inbox = await waitFor(
    async () => {
      const messages = await allInbox(b!.dir);
      return new Set(messages.map((m) => m.id)).size >= total ? messages : undefined;
    },
    { timeoutMs: 90_000, intervalMs: 500, message: `all ${total} messages in B's inbox` },
  );
  const counts = new Map<string, number>();
  for (const m of inbox) counts.set(m.id as string, (counts.get(m.id as string) ?? 0) + 1);
  const duplicated = [...counts].filter(([, n]) => n > 1);
  assert.deepEqual(duplicated.slice(0, 10), [], `${duplicated.length} ids stored more than once`);
  const unknown = inbox.filter((m) => !expected.has(m.id as string));
  assert.deepEqual(unknown.slice(0, 5), [], 'only messages A sent');
  for (const m of inbox) {
    assert.equal(m.body, expected.get(m.id as string), `body of ${m.id as string}`);
    assert.equal(m.from, 'a');
    assert.equal(m.state, 'pending');
  }
  assert.equal(inbox.length, total);

  await waitFor(async () => {
    const stat = jsonLines((await mqlog(['stat', '--data', a!.dir, '--json'])).stdout);
    return stat.find((r) => r.peer === 'b')?.backlog === 0;
  }, { timeoutMs: 30_000, intervalMs: 250, message: "A's backlog for b to reach 0" });

  // What the kills exercised (varies from run to run; the assertions above hold regardless).
  const logA = history.a + da!.output;
  const logB = history.b + db!.output;
  let resent = 0;
  for (const line of logA.split('\n')) if (line.includes('"event":"forwarded"')) resent += (JSON.parse(line) as { duplicates?: number }).duplicates ?? 0;
  t.diagnostic(`kills: A ${kills.a}, B ${kills.b}; ${total} messages; ${resent} frames resent that B already had; ${logB.split('"event":"torn_tail"').length - 1} torn tails cut in B`);

  // verify while both still run (readers never need the writer to stop), and again after a clean stop.
  for (const node of [a!, b!]) {
    const verify = await mqlog(['verify', node.dir]);
    assert.equal(verify.code, 0, `verify ${node.name}: ${verify.stdout}${verify.stderr}`);
  }
  assert.equal(await da!.stop(), 0);
  assert.equal(await db!.stop(), 0);
  for (const node of [a!, b!]) {
    const verify = await mqlog(['verify', node.dir]);
    assert.equal(verify.code, 0, `verify ${node.name} after stop: ${verify.stdout}${verify.stderr}`);
  }
});

// ---------------------------------------------------------------------------------------------------
// A batch that B stored only in part before it died. What B had stored is written here with the
// library, exactly as the receiver writes it (inbox frames carrying their origin), while B is stopped:
// the state a SIGKILL between B's first and last fsync of a batch leaves, without depending on luck.

interface PartialBatch {
  readonly b: NodeSpec;
  readonly db: DaemonProcess;
  readonly ids: string[];
  /** The retried batch (frames 4..7), as the sender sends it again. */
  readonly retry: Buffer;
}

async function partiallyStoredBatch(t: TestContext): Promise<PartialBatch> {
  const root = await tempDir(t);
  const { b } = await makeNodes(root, ['a', 'b']);
  const [db] = daemons(t, [b!]);
  await db!.start();
  const node = randomUUID();
  const ids = Array.from({ length: 8 }, () => uuidV7());
  const frames: RawFrame[] = ids.map((id, offset) => ({ stream: 'p4.w0', frame: frame(messagePayload({ id, body: `message ${offset}` }), offset) }));
  // Frames 0..3 arrive and are answered.
  const first = await postBatch(b!.url, envelope(frames.slice(0, 4), { node, name: 'a', to: 'b' }));
  assert.deepEqual([first.status, first.json], [200, { stored: 4, duplicates: 0 }]);
  assert.equal(await db!.stop(), 0);
  // Frames 4..7 were sent next; B stored 4 and 5 and died before answering.
  const opened = await openNode({ data: b!.dir });
  const inbox = await opened.inbox('common');
  for (const offset of [4, 5]) {
    await inbox.append(
      { id: ids[offset]!, ts: Date.now(), channel: 'common', priority: 4, to: ['b'], from: 'a', origin: { node, stream: 'p4.w0', offset, destination: 'b' } },
      Buffer.from(`message ${offset}`),
    );
  }
  await opened.close();
  return { b: b!, db: db!, ids, retry: envelope(frames.slice(4), { node, name: 'a', to: 'b' }) };
}

async function assertEachOnce(b: NodeSpec, ids: string[]): Promise<void> {
  const inbox = await allInbox(b.dir);
  assert.deepEqual(inbox.map((m) => m.id).sort(), [...ids].sort(), 'every message exactly once');
  const verify = await mqlog(['verify', b.dir]);
  assert.equal(verify.code, 0, verify.stderr);
}

test('a batch stored in part before the receiver died is completed, not stored twice, when the sender retries', async (t) => {
  const { b, db, ids, retry } = await partiallyStoredBatch(t);
  await db.start();
  const response = await postBatch(b.url, retry);
  assert.deepEqual([response.status, response.json], [200, { stored: 2, duplicates: 2 }]);
  await assertEachOnce(b, ids);
});

test('a batch stored in part is still recognised when the receiver restarts twice before the retry comes', async (t) => {
  const { b, db, ids, retry } = await partiallyStoredBatch(t);
  await db.start(); // recovery finds frames 4 and 5 and checkpoints
  await db.kill(); // and B dies again before the sender's retry arrives
  await restart(db);
  const response = await postBatch(b.url, retry);
  assert.deepEqual([response.status, response.json], [200, { stored: 2, duplicates: 2 }]);
  await assertEachOnce(b, ids);
});
