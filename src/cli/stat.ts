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
import { formatTable } from './table.js';
import { requireNode } from './targets.js';

export const statCommand: Command = {
  name: 'stat',
  summary: 'show the queues of a node and the backlog per peer',
  usage: `--data DIR [--json]
  --json   one JSON object per line: queues first ("type": "queue"), then peers ("type": "peer")`,
  options: { data: { type: 'string' }, json: { type: 'boolean' } },
  allowPositionals: false,
  run,
};

/** The queue as users name it: its kind's folder and the channel as typed, not its encoded directory name. */
function shownQueue(q: QueueStat): string {
  if (q.channel === null) return q.queue;
  const slash = q.queue.indexOf('/');
  return slash < 0 ? q.queue : `${q.queue.slice(0, slash)}/${q.channel}`;
}

export interface PeerStat {
  peer: string;
  url: string | null;
  backlog: number;
  lastError: string | null;
  lastSentAt: number | null;
}

/**
 * One row per peer, sorted: every configured peer and every destination messages name or the outbox
 * state records, with its backlog and what its cursor file says (last error, last send). `outbox` is
 * what `node.outbox.stat()` returned.
 */
export async function peerStats(node: MqlogNode, outbox: Awaited<ReturnType<Outbox['stat']>>): Promise<PeerStat[]> {
  const peers: PeerStat[] = [];
  for (const peer of [...new Set([...Object.keys(node.config.peers), ...(await node.outbox.destinations()), ...outbox.state.destinations()])].sort()) {
    const status = outbox.state.cursor(peer).status();
    const url = transports.display(node.config.peers[peer]?.url ?? (peer.includes('://') ? peer : '')) || null;
    const backlog = outbox.backlog.get(peer) ?? 0;
    peers.push({
      peer,
      url,
      backlog,
      // Messages name it, but no daemon can forward to it: said here, not only in the daemon's log.
      lastError: url === null && backlog > 0 ? `unknown destination: ${peer} is not a peer in mqlog.json (add it, then mqlog reload); ${backlog} message(s) wait for it` : status.lastError,
      lastSentAt: status.lastSentAt,
    });
  }
  return peers;
}

async function run(args: ParsedArgs): Promise<number> {
  const dir = dataDir(args);
  const json = boolFlag(args, 'json');
  await requireNode(dir);
  const node = await MqlogNode.inspect(dir);
  try {
    const outbox = await node.outbox.stat();
    const queues: QueueStat[] = [];
    for (const info of await node.queues()) {
      if (info.kind === 'outbox') queues.push(outbox.queue);
      else {
        const queue = await inspectQueue(info);
        queues.push(queue instanceof Outbox ? (await queue.stat()).queue : await queue.stat());
      }
    }
    const peers = await peerStats(node, outbox);
    if (json) {
      for (const q of queues) await jsonLine({ type: 'queue', ...q });
      for (const p of peers) await jsonLine({ type: 'peer', ...p });
    } else {
      const queueRows = queues.map((q) => [shownQueue(q), q.kind, q.channel ?? '-', String(q.messages), String(q.pending), String(q.bytes), String(q.segments)]);
      for (const line of await formatTable(['QUEUE', 'KIND', 'CHANNEL', 'MESSAGES', 'PENDING', 'BYTES', 'SEGMENTS'], queueRows)) await writeLine(line);
      if (peers.length > 0) {
        await writeLine('');
        const peerRows = peers.map((p) => [p.peer, p.url ?? '-', String(p.backlog), p.lastSentAt === null ? '-' : new Date(p.lastSentAt).toISOString(), p.lastError ?? '-']);
        for (const line of await formatTable(['PEER', 'URL', 'BACKLOG', 'LAST SENT', 'LAST ERROR'], peerRows)) await writeLine(line);
      }
    }
  } finally {
    await node.close();
  }
  return 0;
}
