/**
 * `mqlog peers --data DIR [--json]`: one row per peer (every configured peer and every destination
 * messages name, as `stat` lists them) with its forwarder's state, backlog, last error and next attempt.
 * While a daemon runs, the live fields come from what it publishes in `DIR/peers.json`; when none runs,
 * every peer is `stopped` and the rest is what the outbox state says (computed as `stat` does).
 * Reads only; works while a daemon runs.
 */
import { MqlogNode } from '../daemon/node.js';
import type { PeerEntry } from '../daemon/peers-file.js';
import { boolFlag, dataDir, jsonLine, writeLine, type Command, type ParsedArgs } from './args.js';
import { runningDaemon } from './running-daemon.js';
import { peerStats } from './stat.js';
import { formatTable } from './table.js';
import { requireNode } from './targets.js';

export const peersCommand: Command = {
  name: 'peers',
  summary: "show each peer's forwarding state: idle, sending, retrying (and when next), stopped",
  usage: `--data DIR [--json]
  --json   one JSON object per line: {"type":"peer","peer","url","state","backlog","lastError","lastSentAt","nextAttemptAt"}
state: idle (all sent), sending, retrying (the last attempt failed; nextAttemptAt says when the next is
due; mqlog retry makes it now), stopped (no daemon runs, or it runs no forwarder for the peer), unknown
(the daemon is starting and has not published its peers' state yet)`,
  options: { data: { type: 'string' }, json: { type: 'boolean' } },
  allowPositionals: false,
  run,
};

export interface PeerRow {
  readonly peer: string;
  readonly url: string | null;
  readonly state: PeerEntry['state'] | 'unknown';
  readonly backlog: number;
  readonly lastError: string | null;
  readonly lastSentAt: number | null;
  readonly nextAttemptAt: number | null;
}

async function run(args: ParsedArgs): Promise<number> {
  const dir = dataDir(args);
  await requireNode(dir);
  const daemon = await runningDaemon(dir);
  const node = await MqlogNode.inspect(dir);
  let rows: PeerRow[];
  try {
    const stats = await peerStats(node, await node.outbox.stat());
    const live = new Map((daemon?.peers?.peers ?? []).map((p) => [p.peer, p]));
    const names = [...new Set([...stats.map((p) => p.peer), ...live.keys()])].sort();
    rows = names.map((peer) => {
      const entry = live.get(peer);
      if (entry !== undefined) {
        const { url, state, backlog, lastError, lastSentAt, nextAttemptAt } = entry;
        return { peer, url, state, backlog, lastError, lastSentAt, nextAttemptAt };
      }
      const stat = stats.find((p) => p.peer === peer);
      // A running daemon that published its peers runs no forwarder for one it does not list.
      const state = daemon === undefined || daemon.peers !== undefined ? 'stopped' : 'unknown';
      return { peer, url: stat?.url ?? null, state, backlog: stat?.backlog ?? 0, lastError: stat?.lastError ?? null, lastSentAt: stat?.lastSentAt ?? null, nextAttemptAt: null };
    });
  } finally {
    await node.close();
  }
  if (boolFlag(args, 'json')) {
    for (const row of rows) await jsonLine({ type: 'peer', ...row });
    return 0;
  }
  const now = Date.now();
  const table = rows.map((p) => [
    p.peer,
    p.url ?? '-',
    p.state,
    String(p.backlog),
    p.nextAttemptAt === null ? '-' : `in ${Math.max(0, Math.round((p.nextAttemptAt - now) / 1000))} s`,
    p.lastSentAt === null ? '-' : new Date(p.lastSentAt).toISOString(),
    p.lastError ?? '-',
  ]);
  for (const line of await formatTable(['PEER', 'URL', 'STATE', 'BACKLOG', 'NEXT ATTEMPT', 'LAST SENT', 'LAST ERROR'], table)) await writeLine(line);
  return 0;
}
