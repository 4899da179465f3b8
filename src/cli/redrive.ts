/**
 * `mqlog redrive --data DIR [--channel NAME]`: puts dead letters back into their inbox, as new
 * deliveries (the hand-out count starts again). Each is marked done in the dead letters only after it was
 * appended to the inbox, so a crash can redrive a message twice, never lose it.
 */
import { openNode } from '../daemon/node.js';
import { DEAD_REASON_HEADER } from '../queue/codec.js';
import { dataDir, stringFlag, usageError, writeLine, type Command, type ParsedArgs } from './args.js';
import { requireChannel, requireNode } from './targets.js';

export const redriveCommand: Command = {
  name: 'redrive',
  summary: 'put dead letters back into their inbox',
  usage: `--data DIR [--channel NAME]
  --channel NAME   only this channel's dead letters (default: every channel)`,
  options: { data: { type: 'string' }, channel: { type: 'string' } },
  allowPositionals: false,
  run,
};

async function run(args: ParsedArgs): Promise<number> {
  const dir = dataDir(args);
  const only = stringFlag(args, 'channel');
  if (only !== undefined && only.length === 0) throw usageError('--channel must not be empty');
  await requireNode(dir);
  if (only !== undefined) await requireChannel(dir, only);
  const node = await openNode({ data: dir });
  let total = 0;
  try {
    const channels = only !== undefined ? [only] : (await node.queues()).filter((q) => q.kind === 'dead' && q.channel !== null).map((q) => q.channel as string);
    for (const channel of channels) {
      const inbox = await node.inbox(channel);
      const dead = await inbox.deadLetters();
      let count = 0;
      try {
        for await (const letter of dead.consume({ prefetch: 64 })) {
          const { body, headers, ...meta } = letter;
          const rest = Object.fromEntries(Object.entries(headers ?? {}).filter(([k]) => k !== DEAD_REASON_HEADER));
          await inbox.append({ ...stripDelivery(meta), headers: rest }, body);
          await letter.ack();
          count++;
        }
      } finally {
        await dead.close();
      }
      total += count;
      await writeLine(`${channel}: ${count} message(s) redriven`);
    }
  } finally {
    await node.close();
  }
  if (total === 0 && only === undefined) await writeLine('no dead letters');
  return 0;
}

/** The message fields of a delivery, without the delivery's own ones. */
function stripDelivery<T extends { stream: string; offset: number; deliveries: number; leaseUntil: number; ack: unknown; nack: unknown; extend: unknown }>(
  delivery: T,
): Omit<T, 'stream' | 'offset' | 'deliveries' | 'leaseUntil' | 'ack' | 'nack' | 'extend'> {
  const { stream: _s, offset: _o, deliveries: _d, leaseUntil: _l, ack: _a, nack: _n, extend: _e, ...meta } = delivery;
  return meta;
}
