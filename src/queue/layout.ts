/**
 * Where each queue of a node lives under its data directory (spec/log-format.md §1), and the small
 * `queue.json` that names a queue's kind and channel. Channel names reach paths only through
 * encodeName, never raw.
 *
 *   DIR/outbox/               the outbox (kind outbox)
 *   DIR/outbox-dead/          frames a peer rejected, with the reason (kind dead)
 *   DIR/inbox/<channel>/      one inbox per channel (kind inbox)
 *   DIR/dead/<channel>/       dead letters of that inbox (kind dead)
 */
import { join } from 'node:path';
import { MqlogError } from '../errors.js';
import { ensureDir, readFileIfExists, readdirIfExists, writeFileAtomic } from '../util/fs.js';
import { encodeName } from '../util/names.js';

export type QueueKind = 'outbox' | 'inbox' | 'dead';

export interface QueueInfo {
  /** Path relative to the data directory, `/`-separated: the `queue` field of dump and stat. */
  readonly queue: string;
  readonly kind: QueueKind;
  /** The channel of an inbox or its dead letters; null for the outbox, whose messages carry their own. */
  readonly channel: string | null;
  readonly dir: string;
}

export const QUEUE_META_FILE = 'queue.json';

export function outboxInfo(dataDir: string): QueueInfo {
  return { queue: 'outbox', kind: 'outbox', channel: null, dir: join(dataDir, 'outbox') };
}

export function outboxDeadInfo(dataDir: string): QueueInfo {
  return { queue: 'outbox-dead', kind: 'dead', channel: null, dir: join(dataDir, 'outbox-dead') };
}

export function inboxInfo(dataDir: string, channel: string): QueueInfo {
  const name = encodeName(channel);
  return { queue: `inbox/${name}`, kind: 'inbox', channel, dir: join(dataDir, 'inbox', name) };
}

export function deadInfo(dataDir: string, channel: string): QueueInfo {
  const name = encodeName(channel);
  return { queue: `dead/${name}`, kind: 'dead', channel, dir: join(dataDir, 'dead', name) };
}

/** Creates the queue directory and its queue.json (durably) if they do not exist yet. */
export async function ensureQueue(info: QueueInfo): Promise<void> {
  const metaPath = join(info.dir, QUEUE_META_FILE);
  if ((await readFileIfExists(metaPath)) !== undefined) return;
  await ensureDir(info.dir);
  await writeFileAtomic(metaPath, `${JSON.stringify({ kind: info.kind, channel: info.channel })}\n`);
}

/** Reads queue.json of a queue directory; undefined when the directory is not a queue. */
export async function readQueueInfo(dir: string, queue: string): Promise<QueueInfo | undefined> {
  const raw = await readFileIfExists(join(dir, QUEUE_META_FILE));
  if (raw === undefined) return undefined;
  let parsed: unknown;
  try {
    parsed = JSON.parse(raw.toString('utf8'));
  } catch (err) {
    throw new MqlogError('ERR_CORRUPT_STATE', `${join(dir, QUEUE_META_FILE)} is not JSON`, { details: { path: dir }, cause: err });
  }
  const { kind, channel } = (parsed ?? {}) as { kind?: unknown; channel?: unknown };
  if ((kind !== 'outbox' && kind !== 'inbox' && kind !== 'dead') || (channel !== null && typeof channel !== 'string')) {
    throw new MqlogError('ERR_CORRUPT_STATE', `${join(dir, QUEUE_META_FILE)} has no valid kind/channel`, { details: { path: dir } });
  }
  return { queue, kind, channel, dir };
}

/** Every queue under a data directory, outbox first, then inboxes and dead letters by channel. */
export async function listQueues(dataDir: string): Promise<QueueInfo[]> {
  const found: QueueInfo[] = [];
  for (const single of ['outbox', 'outbox-dead']) {
    const info = await readQueueInfo(join(dataDir, single), single);
    if (info !== undefined) found.push(info);
  }
  for (const parent of ['inbox', 'dead']) {
    for (const name of await readdirIfExists(join(dataDir, parent))) {
      const info = await readQueueInfo(join(dataDir, parent, name), `${parent}/${name}`);
      if (info !== undefined) found.push(info);
    }
  }
  return found;
}
