/**
 * What a PATH argument of dump/verify names: one segment file, one stream, one queue, a node's data
 * directory, or a directory holding several node directories (like var/demo).
 */
import { readdir, stat } from 'node:fs/promises';
import { basename, join, relative, resolve } from 'node:path';
import { MqlogError } from '../errors.js';
import { FileLogStore } from '../log/index.js';
import { CONFIG_FILE } from '../daemon/config.js';
import { listQueues, readQueueInfo, type QueueInfo } from '../queue/layout.js';
import { NODE_FILE } from '../queue/node-identity.js';

export interface Target {
  readonly info: QueueInfo;
  /** The queue as dump and verify show it: its name, under the node directory's name when PATH holds several. */
  readonly label: string;
  readonly stream?: string;
  readonly segment?: number;
}

const MAX_DEPTH = 4;

/** @throws ERR_NOT_FOUND when PATH does not exist or holds nothing mqlog knows. */
export async function resolveTargets(path: string): Promise<Target[]> {
  const full = resolve(path);
  let isFile: boolean;
  try {
    isFile = (await stat(full)).isFile();
  } catch (err) {
    throw new MqlogError('ERR_NOT_FOUND', `${path} does not exist`, { details: { path }, cause: err });
  }
  const place = FileLogStore.locate(full);
  if (place !== undefined && (place.segment !== undefined || !isFile)) {
    const info = (await readQueueInfo(place.queueDir, basename(place.queueDir))) ?? looseQueue(place.queueDir);
    return [{ info, label: info.queue, stream: place.stream, ...(place.segment === undefined ? {} : { segment: place.segment }) }];
  }
  if (isFile) throw new MqlogError('ERR_NOT_FOUND', `${path} is not a segment file inside a stream directory`, { details: { path } });
  const single = await readQueueInfo(full, basename(full));
  if (single !== undefined) return [{ info: single, label: single.queue }];
  const found = await findNodes(full, full, 0);
  // A node directory whose queues were never written holds no message: nothing to show, nothing wrong.
  if (found.length === 0 && !(await isNodeDir(full))) throw new MqlogError('ERR_NOT_FOUND', `${path} holds no mqlog queues`, { details: { path } });
  return found;
}

async function findNodes(root: string, dir: string, depth: number): Promise<Target[]> {
  const queues = await listQueues(dir);
  if (queues.length > 0) {
    const prefix = relative(root, dir);
    return queues.map((info) => ({ info, label: prefix === '' ? info.queue : `${prefix.split('\\').join('/')}/${info.queue}` }));
  }
  if (depth >= MAX_DEPTH) return [];
  let entries;
  try {
    entries = await readdir(dir, { withFileTypes: true });
  } catch {
    return [];
  }
  const out: Target[] = [];
  for (const entry of entries.sort((a, b) => (a.name < b.name ? -1 : 1))) {
    if (entry.isDirectory() && !entry.name.startsWith('.')) out.push(...(await findNodes(root, join(dir, entry.name), depth + 1)));
  }
  return out;
}

/**
 * For commands that only read or act on what a node holds: DIR must be a node's data directory (one
 * that `send`, `daemon` or `start` made), so that a mistyped `--data` is an error, not a new empty node.
 * @throws ERR_NOT_FOUND
 */
export async function requireNode(dir: string): Promise<void> {
  if (await isNodeDir(dir)) return;
  const exists = await stat(dir).then(() => true, () => false);
  throw new MqlogError('ERR_NOT_FOUND', exists ? `${dir} is not an mqlog node (it has no ${NODE_FILE} or ${CONFIG_FILE}); check --data or MQLOG_DATA` : `no mqlog node at ${dir} (it does not exist); check --data or MQLOG_DATA`, { details: { path: dir } });
}

/**
 * The channels whose inbox exists on a node, sorted; and an error naming them when CHANNEL is not one of
 * them (a mistyped `--channel` must not create a queue).
 * @throws ERR_NOT_FOUND
 */
export async function requireChannel(dir: string, channel: string): Promise<void> {
  const channels = await nodeChannels(dir);
  if (channels.includes(channel)) return;
  throw missingChannel(dir, channel, channels);
}

export async function nodeChannels(dir: string): Promise<string[]> {
  const found = new Set<string>();
  for (const info of await listQueues(dir)) if (info.channel !== null) found.add(info.channel);
  return [...found].sort();
}

export function missingChannel(dir: string, channel: string, channels: readonly string[]): MqlogError {
  const here = channels.length === 0 ? 'it has none yet' : `its channels: ${channels.join(', ')}`;
  return new MqlogError('ERR_NOT_FOUND', `no channel ${JSON.stringify(channel)} on the node at ${dir} (${here})`, { details: { channel, channels } });
}

async function isNodeDir(dir: string): Promise<boolean> {
  for (const name of [NODE_FILE, CONFIG_FILE]) if (await stat(join(dir, name)).then(() => true, () => false)) return true;
  return false;
}

function looseQueue(dir: string): QueueInfo {
  return { queue: basename(dir), kind: 'outbox', channel: null, dir };
}
