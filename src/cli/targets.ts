/**
 * What a PATH argument of dump/verify names: one segment file, one stream, one queue, a node's data
 * directory, or a directory holding several node directories (like var/demo).
 */
import { readdir, stat } from 'node:fs/promises';
import { basename, join, relative, resolve } from 'node:path';
import { MqlogError } from '../errors.js';
import { parseStreamName } from '../log/log-store.js';
import { parseSegmentFileName } from '../log/segment.js';
import { listQueues, readQueueInfo, type QueueInfo } from '../queue/layout.js';
import { locateSegment } from '../queue/scan.js';

export interface Target {
  readonly info: QueueInfo;
  /** The node directory the queue belongs to, when known. */
  readonly dataDir: string | undefined;
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
  if (isFile) {
    const base = parseSegmentFileName(basename(full));
    const place = locateSegment(full);
    if (base === undefined || place === undefined) {
      throw new MqlogError('ERR_NOT_FOUND', `${path} is not a segment file inside a stream directory`, { details: { path } });
    }
    const info = (await readQueueInfo(place.queueDir, basename(place.queueDir))) ?? looseQueue(place.queueDir);
    return [{ info, dataDir: undefined, stream: place.stream, segment: base }];
  }
  const stream = parseStreamName(basename(full));
  if (stream !== undefined) {
    const queueDir = resolve(full, '..');
    const info = (await readQueueInfo(queueDir, basename(queueDir))) ?? looseQueue(queueDir);
    return [{ info, dataDir: undefined, stream: stream.name }];
  }
  const single = await readQueueInfo(full, basename(full));
  if (single !== undefined) return [{ info: single, dataDir: undefined }];
  const found = await findNodes(full, full, 0);
  if (found.length === 0) throw new MqlogError('ERR_NOT_FOUND', `${path} holds no mqlog queues`, { details: { path } });
  return found;
}

async function findNodes(root: string, dir: string, depth: number): Promise<Target[]> {
  const queues = await listQueues(dir);
  if (queues.length > 0) {
    const prefix = relative(root, dir);
    return queues.map((info) => ({
      info: prefix === '' ? info : { ...info, queue: `${prefix.split('\\').join('/')}/${info.queue}` },
      dataDir: dir,
    }));
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

function looseQueue(dir: string): QueueInfo {
  return { queue: basename(dir), kind: 'outbox', channel: null, dir };
}
