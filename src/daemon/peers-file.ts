/**
 * `DIR/peers.json`: the running daemon's view of its peers (state, backlog, last error, next attempt),
 * published for `mqlog peers`, which cannot ask the daemon over HTTP (its listeners, TLS and admin token
 * are the operator's choice). Layout in spec/log-format.md §1.3.
 *
 * The daemon writes it (replaced atomically, not fsync'd: after a power cut no daemon runs, and the next
 * one replaces it as it starts) at most about once a second when something in it changed,
 * at once when a peer's state enters or leaves `retrying` (a failure, a recovery), and removes it when it
 * stops. One write at a time; changes that come during a write are written after it. A reader trusts the
 * file only while its `pid` holds the daemon lock: a daemon that was killed leaves a stale one.
 */
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { MqlogError } from '../errors.js';
import { readFileIfExists, writeCacheFileSync } from '../util/fs.js';
import type { ForwarderState } from './forwarder.js';

export const PEERS_FILE = 'peers.json';
/** How often the file is rewritten at most while only counts change. */
const PUBLISH_MS = 1000;

/** One peer (configured, or a destination URL messages name) as the daemon sees it. */
export interface PeerEntry {
  readonly peer: string;
  readonly url: string;
  /** The forwarder's state; `stopped` when no forwarder runs for the peer (its transport cannot be made). */
  readonly state: ForwarderState | 'stopped';
  readonly backlog: number;
  readonly lastError: string | null;
  readonly lastErrorAt: number | null;
  readonly lastSentAt: number | null;
  /** When a `retrying` forwarder tries again (ms since the epoch); null in any other state. */
  readonly nextAttemptAt: number | null;
  /** Messages forwarded by this daemon since it started. */
  readonly forwarded: number;
}

export interface PeersFileContent {
  /** The daemon that wrote it. */
  readonly pid: number;
  readonly updatedAt: number;
  readonly peers: readonly PeerEntry[];
}

/**
 * Reads `DIR/peers.json`; undefined when there is none.
 * @throws ERR_CORRUPT_STATE when it is not what a daemon writes, ERR_IO.
 */
export async function readPeersFile(dataDir: string): Promise<PeersFileContent | undefined> {
  const path = join(dataDir, PEERS_FILE);
  const raw = await readFileIfExists(path);
  if (raw === undefined) return undefined;
  let parsed: unknown;
  try {
    parsed = JSON.parse(raw.toString('utf8'));
  } catch (err) {
    throw new MqlogError('ERR_CORRUPT_STATE', `${path} is not valid JSON`, { details: { path }, cause: err });
  }
  const content = parsed as Partial<PeersFileContent> | null;
  if (content === null || typeof content !== 'object' || typeof content.pid !== 'number' || !Array.isArray(content.peers)) {
    throw new MqlogError('ERR_CORRUPT_STATE', `${path} is not a peers file`, { details: { path } });
  }
  return content as PeersFileContent;
}

/** The writer of `DIR/peers.json`, owned by the daemon. */
export class PeersFile {
  private readonly path: string;
  private readonly snapshot: () => readonly PeerEntry[];
  private readonly onError: (err: unknown) => void;
  private timer: NodeJS.Timeout | undefined;
  private writing: Promise<void> | undefined;
  /** A write was asked for while one ran. */
  private again = false;
  /** The peers as last written (JSON), to skip writes that would change nothing but the time. */
  private written: string | undefined;
  private closing: Promise<void> | undefined;

  constructor(dataDir: string, snapshot: () => readonly PeerEntry[], onError: (err: unknown) => void) {
    this.path = join(dataDir, PEERS_FILE);
    this.snapshot = snapshot;
    this.onError = onError;
  }

  /** Writes the file now and then whenever it changed, at most every PUBLISH_MS. Resolves after the first write. */
  async start(): Promise<void> {
    this.timer ??= setInterval(() => this.publish(), PUBLISH_MS).unref();
    this.publish();
    await this.writing;
  }

  /** Writes the file as soon as the write in progress (if any) is done, when its content changed. */
  publish(): void {
    if (this.closing !== undefined) return;
    if (this.writing !== undefined) {
      this.again = true;
      return;
    }
    this.writing = this.write()
      .catch((err: unknown) => this.onError(err))
      .finally(() => {
        this.writing = undefined;
        if (this.again) {
          this.again = false;
          this.publish();
        }
      });
  }

  private async write(): Promise<void> {
    const peers = JSON.stringify(this.snapshot());
    if (peers === this.written) return;
    const content = `{"pid":${process.pid},"updatedAt":${Date.now()},"peers":${peers}}\n`;
    writeCacheFileSync(this.path, content);
    this.written = peers;
  }

  /** Stops publishing and removes the file (no daemon: no live state). Idempotent. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      clearInterval(this.timer);
      while (this.writing !== undefined) await this.writing;
      await rm(this.path, { force: true }).catch((err: unknown) => this.onError(err));
    })();
    return this.closing;
  }
}
