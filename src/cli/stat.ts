/**
 * `mqlog stat --data DIR [--json]`: per queue, how many messages it holds, how many are pending, and
 * its size on disk; per peer, the backlog waiting for it, its last error and last successful send.
 * Read-only; streams through the queues, so memory stays flat.
 */
import { join } from 'node:path';
import { loadConfig } from '../daemon/config.js';
import { FileLogStore } from '../log/log-store.js';
import { SegmentSet } from '../log/segment-set.js';
import { listQueues, type QueueInfo } from '../queue/layout.js';
import { listDestinations } from '../queue/outbox.js';
import { readAllCursors } from '../queue/cursors.js';
import { deadLetteredKeys } from '../queue/outbox-dead.js';
import type { MessageMeta } from '../queue/codec.js';
import { scanQueue } from '../queue/scan.js';
import { openStateView } from '../queue/state-view.js';
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

export interface QueueStat {
  queue: string;
  kind: string;
  channel: string | null;
  messages: number;
  pending: number;
  bytes: number;
  segments: number;
}

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
  const config = await loadConfig(dir);
  const cursors = new Map((await readAllCursors(dir)).map((c) => [c.destination, c]));
  const dead = await deadLetteredKeys(dir);
  const backlog = new Map<string, number>();
  const now = Date.now();
  for (const info of await listQueues(dir)) {
    const s = await queueStat(info, dir, (stream, offset, message) => {
      if (info.kind !== 'outbox' || dead.has(`${stream}@${offset}`)) return;
      if (message.expiresAt !== undefined && message.expiresAt <= now) return;
      for (const to of message.to) {
        if ((cursors.get(to)?.streams[stream]?.offset ?? 0) <= offset) backlog.set(to, (backlog.get(to) ?? 0) + 1);
      }
    });
    await (json ? jsonLine(s) : writeLine(`${s.queue.padEnd(24)} ${s.kind.padEnd(7)} ${String(s.channel ?? '-').padEnd(16)} messages=${s.messages} pending=${s.pending} bytes=${s.bytes} segments=${s.segments}`));
  }
  const peers = new Set([...Object.keys(config.peers), ...(await listDestinations(dir)), ...cursors.keys()]);
  for (const peer of [...peers].sort()) {
    const cursor = cursors.get(peer);
    const p: PeerStat = {
      peer,
      url: config.peers[peer]?.url ?? (peer.includes('://') ? peer : null),
      backlog: backlog.get(peer) ?? 0,
      lastError: cursor?.lastError ?? null,
      lastSentAt: cursor?.lastSentAt ?? null,
    };
    await (json ? jsonLine(p) : writeLine(`peer ${p.peer.padEnd(18)} ${String(p.url ?? '-').padEnd(28)} backlog=${p.backlog} lastError=${p.lastError ?? '-'} lastSentAt=${p.lastSentAt === null ? '-' : new Date(p.lastSentAt).toISOString()}`));
  }
  return 0;
}

/**
 * Counts one queue by streaming through it: messages, pending ones, bytes of frames, segment files.
 * `each` sees every message (the outbox backlog per destination is counted with it).
 */
export async function queueStat(info: QueueInfo, dataDir: string, each?: (stream: string, offset: number, message: MessageMeta) => void): Promise<QueueStat> {
  const states = await openStateView(info, dataDir);
  let messages = 0;
  let pending = 0;
  let bytes = 0;
  for await (const event of scanQueue(info)) {
    if (event.kind === 'frame') bytes += event.frame.bytes;
    if (event.kind !== 'message') continue;
    bytes += event.frame.bytes;
    messages++;
    if (states.stateOf(event.stream, event.frame.offset, event.message) === 'pending') pending++;
    each?.(event.stream, event.frame.offset, event.message);
  }
  let segments = 0;
  for (const stream of await new FileLogStore(info.dir).streams()) segments += (await new SegmentSet(join(info.dir, stream.name)).list()).length;
  return { queue: info.queue, kind: info.kind, channel: info.channel, messages, pending, bytes, segments };
}
