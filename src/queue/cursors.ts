/**
 * Per-destination cursors of the outbox (spec/log-format.md §10): for each destination, how far each
 * outbox stream has been delivered, plus the forwarder's last error and last success for `stat`.
 *
 *   DIR/outbox/cursors/<encodeName(destination)>.json
 *   {"version":1, "destination": "...", "streams": {"p4.w0": {"offset": n, "hint": {...}}},
 *    "lastSentAt": ms|null, "lastError": string|null, "lastErrorAt": ms|null}
 *
 * A cursor only moves after the peer acknowledged everything below it. Files are replaced atomically;
 * a cursor that lags behind after a crash only causes a resend, which the receiver recognises.
 */
import { join } from 'node:path';
import { MqlogError } from '../errors.js';
import type { StreamPosition } from '../log/stream-reader.js';
import { ensureDir, readFileIfExists, readdirIfExists, writeFileAtomic } from '../util/fs.js';
import { encodeName } from '../util/names.js';
import { outboxInfo } from './layout.js';

export interface DestinationCursor {
  readonly version: 1;
  readonly destination: string;
  readonly streams: Record<string, StreamPosition>;
  readonly lastSentAt: number | null;
  readonly lastError: string | null;
  readonly lastErrorAt: number | null;
}

export function cursorsDir(dataDir: string): string {
  return join(outboxInfo(dataDir).dir, 'cursors');
}

export function emptyCursor(destination: string): DestinationCursor {
  return { version: 1, destination, streams: {}, lastSentAt: null, lastError: null, lastErrorAt: null };
}

export async function readCursor(dataDir: string, destination: string): Promise<DestinationCursor> {
  const path = join(cursorsDir(dataDir), `${encodeName(destination)}.json`);
  const raw = await readFileIfExists(path);
  if (raw === undefined) return emptyCursor(destination);
  return parseCursor(raw, path);
}

export async function writeCursor(dataDir: string, cursor: DestinationCursor): Promise<void> {
  const dir = cursorsDir(dataDir);
  await ensureDir(dir);
  await writeFileAtomic(join(dir, `${encodeName(cursor.destination)}.json`), JSON.stringify(cursor));
}

/** Every destination cursor of an outbox. */
export async function readAllCursors(dataDir: string): Promise<DestinationCursor[]> {
  const dir = cursorsDir(dataDir);
  const out: DestinationCursor[] = [];
  for (const name of await readdirIfExists(dir)) {
    if (!name.endsWith('.json')) continue;
    const raw = await readFileIfExists(join(dir, name));
    if (raw !== undefined) out.push(parseCursor(raw, join(dir, name)));
  }
  return out;
}

function parseCursor(raw: Buffer, path: string): DestinationCursor {
  let parsed: DestinationCursor;
  try {
    parsed = JSON.parse(raw.toString('utf8')) as DestinationCursor;
  } catch (err) {
    throw new MqlogError('ERR_CORRUPT_STATE', `${path} is not valid JSON`, { details: { path }, cause: err });
  }
  if (parsed.version !== 1 || typeof parsed.destination !== 'string' || typeof parsed.streams !== 'object' || parsed.streams === null) {
    throw new MqlogError('ERR_CORRUPT_STATE', `${path} is not a cursor file`, { details: { path } });
  }
  return parsed;
}
