/**
 * `mqlog stat --data DIR [--json]`: per queue, how many messages it holds, how many are pending, and
 * its size on disk; per peer, the backlog waiting for it, its last error and last successful send.
 * Asks each queue object of the node, which counts from the log's segment summaries and its state files
 * without reading the queue (and may write the summaries' cache files for the next caller).
 */
import { MqlogNode, inspectQueue } from '../daemon/node.js';
import { Outbox } from '../queue/outbox.js';
import { transports } from '../transport/registry.js';
import type { QueueStat } from '../queue/queue-scan.js';
import { boolFlag, dataDir, jsonLine, writeLine, type Command, type ParsedArgs } from './args.js';

export const statCommand: Command = {
  name: 'stat',
  summary: 'show the queues of a node and the backlog per peer',
  usage: `--data DIR [--json]
  --json   one JSON object per line: queues first, then peers`,
  options: { data: { type: 'string' }, json: { type: 'boolean' } },
  allowPositionals: false,
  run,
};

export interface PeerStat {
  peer: string;
  url: string | null;
  backlog: number;
  lastError: string | null;
  lastSentAt: number | null;
}

async function run(args: ParsedArgs): Promise<number> {
  const dir = dataDir(args);
  const json = boolFlag(args, 'json');
  const node = await MqlogNode.inspect(dir);
  try {
    const outbox = await node.outbox.stat();
    const show = (s: QueueStat): Promise<void> =>
      json ? jsonLine(s) : writeLine(`${s.queue.padEnd(24)} ${s.kind.padEnd(7)} ${String(s.channel ?? '-').padEnd(16)} messages=${s.messages} pending=${s.pending} bytes=${s.bytes} segments=${s.segments}`);
    for (const info of await node.queues()) {
      if (info.kind === 'outbox') await show(outbox.queue);
      else {
        const queue = await inspectQueue(info);
        await show(queue instanceof Outbox ? (await queue.stat()).queue : await queue.stat());
      }
    }
    const peers = new Set([...Object.keys(node.config.peers), ...(await node.outbox.destinations()), ...outbox.state.destinations()]);
    for (const peer of [...peers].sort()) {
      const status = outbox.state.cursor(peer).status();
      const p: PeerStat = {
        peer,
        url: transports.display(node.config.peers[peer]?.url ?? (peer.includes('://') ? peer : '')) || null,
        backlog: outbox.backlog.get(peer) ?? 0,
        lastError: status.lastError,
        lastSentAt: status.lastSentAt,
      };
      await (json ? jsonLine(p) : writeLine(`peer ${p.peer.padEnd(18)} ${String(p.url ?? '-').padEnd(28)} backlog=${p.backlog} lastError=${p.lastError ?? '-'} lastSentAt=${p.lastSentAt === null ? '-' : new Date(p.lastSentAt).toISOString()}`));
    }
  } finally {
    await node.close();
  }
  return 0;
}
