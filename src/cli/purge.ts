/**
 * `mqlog purge --data DIR --channel NAME [--dead] [--json]`: empties a channel's inbox (or, with --dead,
 * its dead letters): every message stored now that is not done becomes done, durably, in one transaction
 * of the consumer state; compaction then reclaims the space. Messages that asked for a receipt are
 * reported `dead` ("purged") to their sender. Prints how many messages went.
 */
import { openNode } from '../daemon/node.js';
import { boolFlag, dataDir, jsonLine, stringFlag, usageError, writeLine, type Command, type ParsedArgs } from './args.js';
import { requireChannel, requireNode } from './targets.js';

export const purgeCommand: Command = {
  name: 'purge',
  summary: "empty a channel's inbox or its dead letters; prints how many messages went",
  usage: `--data DIR --channel NAME [--dead] [--json]
  --channel NAME   the channel to empty
  --dead           empty its dead letters instead of its inbox
  --json           {"queue","purged"}`,
  options: { data: { type: 'string' }, channel: { type: 'string' }, dead: { type: 'boolean' }, json: { type: 'boolean' } },
  allowPositionals: false,
  run,
};

async function run(args: ParsedArgs): Promise<number> {
  const dir = dataDir(args);
  const channel = stringFlag(args, 'channel');
  if (channel === undefined || channel.length === 0) throw usageError('--channel NAME is required');
  await requireNode(dir);
  await requireChannel(dir, channel);
  // Through the node, so that purged messages asking for a receipt are reported to their sender.
  const node = await openNode({ data: dir, onWarning: (message) => process.stderr.write(`mqlog: warning: ${message}\n`) });
  try {
    const inbox = await node.inbox(channel);
    const queue = boolFlag(args, 'dead') ? await inbox.deadLetters() : inbox;
    const purged = await queue.purge();
    const name = queue.info.queue;
    await (boolFlag(args, 'json') ? jsonLine({ queue: name, purged }) : writeLine(`${name}: ${purged} message(s) purged`));
  } finally {
    await node.close();
  }
  return 0;
}
