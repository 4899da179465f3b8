/**
 * A node's permanent identity: a UUID created the first time the data directory is used, stored in
 * `DIR/node.json`. Receivers key duplicate detection by it, so it must never change for a directory.
 */
import { randomUUID } from 'node:crypto';
import { link, open, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { MqlogError, ioError } from '../errors.js';
import { FILE_MODE, ensureDir, fsyncDir, readFileIfExists } from '../util/fs.js';

export const NODE_FILE = 'node.json';

/** Reads the node id of `dataDir`, creating it (durably) on first use. Safe when processes race. */
export async function loadNodeId(dataDir: string): Promise<string> {
  const existing = await readNodeId(dataDir);
  if (existing !== undefined) return existing;
  await ensureDir(dataDir);
  const path = join(dataDir, NODE_FILE);
  const tmp = `${path}.${randomUUID()}.tmp`;
  try {
    const handle = await open(tmp, 'wx', FILE_MODE);
    try {
      await handle.writeFile(`${JSON.stringify({ id: randomUUID(), createdAt: new Date().toISOString() })}\n`);
      await handle.datasync();
    } finally {
      await handle.close();
    }
    // link() creates the name only if it does not exist: the first process to get here wins.
    await link(tmp, path).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'EEXIST') throw err;
    });
    await fsyncDir(dataDir);
  } catch (err) {
    throw ioError(err, `cannot create ${path}`, { path });
  } finally {
    await rm(tmp, { force: true });
  }
  const id = await readNodeId(dataDir);
  if (id === undefined) throw new MqlogError('ERR_CORRUPT_STATE', `${path} vanished after creation`, { details: { path } });
  return id;
}

export async function readNodeId(dataDir: string): Promise<string | undefined> {
  const path = join(dataDir, NODE_FILE);
  const raw = await readFileIfExists(path);
  if (raw === undefined) return undefined;
  try {
    const { id } = JSON.parse(raw.toString('utf8')) as { id?: unknown };
    if (typeof id === 'string' && id.length > 0 && id.length <= 64) return id;
  } catch {
    // reported below
  }
  throw new MqlogError('ERR_CORRUPT_STATE', `${path} does not hold a node id`, { details: { path } });
}
