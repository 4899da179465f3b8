/**
 * `mqlog repair --data DIR [--channel NAME] [--json]`: moves every damaged byte range of a node's logs
 * (or of one channel's inbox and dead letters) out of its segment into a `.bad` file beside it
 * (spec/log-format.md §3.4): nothing is deleted, offsets do not change, each move is recorded in the
 * stream's `repairs.log`, and readers then go on without meeting the damage. Prints one
 * `REPAIRED <file> <byte offset> <bytes> <.bad file>` line per range moved, `LEFT <file> <byte offset>
 * <why>` per range it had to leave (the last segment of a stream whose writer is running), and exits 0
 * when no damage is left.
 */
import { MqlogNode } from '../daemon/node.js';
import { boolFlag, dataDir, jsonLine, stringFlag, usageError, writeLine, type Command, type ParsedArgs } from './args.js';

export const repairCommand: Command = {
  name: 'repair',
  summary: 'move damaged byte ranges of the logs into .bad files beside their segments, so reading goes on',
  usage: `--data DIR [--channel NAME] [--json]
  --channel NAME   only this channel's inbox and dead letters (default: every queue of the node)
  --json           one JSON object per range: {"action":"repaired"|"left","path","position","bytes","reason","savedAs"|"why"}`,
  options: { data: { type: 'string' }, channel: { type: 'string' }, json: { type: 'boolean' } },
  allowPositionals: false,
  run,
};

async function run(args: ParsedArgs): Promise<number> {
  const dir = dataDir(args);
  const channel = stringFlag(args, 'channel');
  if (channel !== undefined && channel.length === 0) throw usageError('--channel must not be empty');
  const json = boolFlag(args, 'json');
  const node = await MqlogNode.inspect(dir);
  let repaired = 0;
  let left = 0;
  try {
    for (const info of await node.queues()) {
      if (channel !== undefined && info.channel !== channel) continue;
      for (const stream of await node.store.streams(info.queue)) {
        const result = await node.store.repair(info.queue, stream.name);
        for (const r of result.repaired) {
          repaired++;
          await (json
            ? jsonLine({ action: 'repaired', path: r.path, position: r.position, bytes: r.bytes, reason: r.reason, savedAs: r.savedAs })
            : writeLine(`REPAIRED ${r.path} ${r.position} ${r.bytes} ${r.savedAs}`));
        }
        for (const { range: r, why } of result.left) {
          left++;
          await (json ? jsonLine({ action: 'left', path: r.path, position: r.position, bytes: r.bytes, reason: r.reason, why }) : writeLine(`LEFT ${r.path} ${r.position} ${why}`));
        }
      }
    }
  } finally {
    await node.close();
  }
  if (!json) process.stderr.write(`mqlog: ${repaired} damaged range(s) moved aside${left > 0 ? `, ${left} left in place (stop the daemon and repair again)` : ''}\n`);
  return left === 0 ? 0 : 1;
}
