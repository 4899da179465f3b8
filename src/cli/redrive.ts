/**
 * `mqlog redrive --data DIR [--channel NAME]`: puts dead letters back into their inbox, as new
 * deliveries (the hand-out count starts again). Each is marked done in the dead letters only after it was
 * appended to the inbox, so a crash can redrive a message twice, never lose it.
 */
import { openNode } from '../daemon/node.js';
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
      const count = await (await node.inbox(channel)).redrive();
      total += count;
      await writeLine(`${channel}: ${count} message(s) redriven`);
    }
  } finally {
    await node.close();
  }
  if (total === 0 && only === undefined) await writeLine('no dead letters');
  return 0;
}

