/**
 * `mqlog tail`: prints inbox messages that are ready, most urgent first. Without --ack they stay pending
 * (leased for the visibility timeout, then handed out again); with --ack each is acked only after it was
 * printed and stdout flushed. --follow waits for more until --limit messages or --timeout without one.
 * --peek only looks: nothing is leased and no delivery is counted.
 */
import { createWriteStream } from 'node:fs';
import { open } from 'node:fs/promises';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { join, resolve } from 'node:path';
import { openNode } from '../daemon/node.js';
import { DEFAULT_CHANNEL } from '../queue/codec.js';
import type { Delivery, PeekedMessage } from '../queue/consumer.js';
import { ensureDir } from '../util/fs.js';
import { boolFlag, dataDir, durationFlag, flushStdout, intFlag, jsonLine, stringFlag, usageError, type Command, type ParsedArgs } from './args.js';
import { missingChannel, nodeChannels, requireNode } from './targets.js';
import { bodyField } from './dump.js';

const ACK_WINDOW = 256;

export const tailCommand: Command = {
  name: 'tail',
  summary: 'print inbox messages that are ready, most urgent first (and ack them with --ack)',
  usage: `--data DIR [--channel NAME] [--follow] [--ack] [--peek] [--json] [--limit N] [--timeout DUR] [--body-to DIR2]
  --channel NAME   the inbox to read (default "common")
  --peek           list the ready messages without leasing them or counting a delivery (not with --ack, --follow)
  --follow         wait for new messages
  --ack            ack each message once printed and flushed (otherwise it comes back after the visibility timeout)
  --json           one JSON object per message
  --limit N        stop after N messages
  --timeout DUR    with --follow: stop after DUR without a new message
  --body-to DIR2   write each body to DIR2/<id> instead of printing it`,
  options: {
    data: { type: 'string' },
    channel: { type: 'string' },
    follow: { type: 'boolean' },
    ack: { type: 'boolean' },
    peek: { type: 'boolean' },
    json: { type: 'boolean' },
    limit: { type: 'string' },
    timeout: { type: 'string' },
    'body-to': { type: 'string' },
  },
  allowPositionals: false,
  run,
};

async function run(args: ParsedArgs): Promise<number> {
  const dir = dataDir(args);
  const channel = stringFlag(args, 'channel') ?? DEFAULT_CHANNEL;
  if (channel.length === 0) throw usageError('--channel must not be empty');
  const limit = intFlag(args, 'limit', 0, Number.MAX_SAFE_INTEGER);
  const timeout = durationFlag(args, 'timeout');
  const json = boolFlag(args, 'json');
  const ack = boolFlag(args, 'ack');
  const peek = boolFlag(args, 'peek');
  if (peek && (ack || boolFlag(args, 'follow'))) throw usageError('--peek only looks: it cannot be combined with --ack or --follow');
  const bodyTo = stringFlag(args, 'body-to');
  if (bodyTo !== undefined) await ensureDir(resolve(bodyTo));
  await requireNode(dir);
  const channels = await nodeChannels(dir);
  if (!channels.includes(channel)) {
    // A follower may well start before its channel's first message; anything else names a typo.
    if (!boolFlag(args, 'follow')) throw missingChannel(dir, channel, channels);
    process.stderr.write(`mqlog: warning: ${missingChannel(dir, channel, channels).message}; waiting for its first message\n`);
  }
  // Through the node, so that acks of messages asking for a receipt report back to their sender.
  const node = await openNode({ data: dir, onWarning: (message) => process.stderr.write(`mqlog: warning: ${message}\n`) });
  const inbox = await node.inbox(channel);

  const stop = new AbortController();
  const onSignal = (): void => stop.abort();
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  const acks: Promise<void>[] = [];
  let problems = 0;
  try {
    if (peek) {
      for await (const message of inbox.peek(limit === undefined ? {} : { limit })) await print(message, json, bodyTo);
      return 0;
    }
    const messages = inbox.consume({
      follow: boolFlag(args, 'follow'),
      ...(limit === undefined ? {} : { limit }),
      ...(timeout === undefined ? {} : { idleTimeoutMs: timeout }),
      signal: stop.signal,
    });
    try {
      for await (const message of messages) {
        await print(message, json, bodyTo);
        if (ack) {
          await flushStdout();
          acks.push(
            message.ack().catch((err: unknown) => {
              problems++;
              process.stderr.write(`mqlog: ${(err as { code?: string }).code ?? 'ERR_IO'}: ack of ${message.id} failed: ${(err as Error).message}\n`);
            }),
          );
          if (acks.length >= ACK_WINDOW) await Promise.all(acks.splice(0));
        }
      }
    } catch (err) {
      if (!stop.signal.aborted) throw err;
    }
    await Promise.all(acks);
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    await node.close();
  }
  return problems === 0 ? 0 : 1;
}

async function print(message: Delivery | PeekedMessage, json: boolean, bodyTo: string | undefined): Promise<void> {
  if (bodyTo !== undefined) {
    // Streamed to the file chunk by chunk, then fsync'd: a large body is never held whole.
    const path = join(resolve(bodyTo), message.id);
    await pipeline(Readable.from(message.bodyStream()), createWriteStream(path, { mode: 0o600 }));
    const handle = await open(path, 'r');
    await handle.datasync().finally(() => handle.close());
  }
  if (json) {
    const size = message.streamed?.size ?? message.body.length;
    await jsonLine({
      id: message.id,
      from: message.from,
      channel: message.channel,
      priority: message.priority,
      ts: message.ts,
      headers: message.headers ?? {},
      deliveries: message.deliveries,
      ...(message.streamed === undefined ? {} : { size, sha256: message.streamed.sha256 }),
      ...(bodyTo === undefined && message.streamed === undefined ? bodyField(message.body) : {}),
    });
    return;
  }
  if (bodyTo !== undefined) {
    await writeLineRaw(`${message.id} ${join(resolve(bodyTo), message.id)}`);
    return;
  }
  for await (const data of message.bodyStream()) {
    await new Promise<void>((resolvePromise, reject) => process.stdout.write(data, (err) => (err ? reject(err) : resolvePromise())));
  }
  await writeLineRaw('');
}

async function writeLineRaw(line: string): Promise<void> {
  await new Promise<void>((resolvePromise, reject) => process.stdout.write(`${line}\n`, (err) => (err ? reject(err) : resolvePromise())));
}
