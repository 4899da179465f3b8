/**
 * The daemon running on a node directory, as the commands that talk to it without HTTP (`reload`,
 * `retry`, `peers`) find it: the holder of `DIR/daemon.lock` on this host, and the peers' state it
 * published in `DIR/peers.json` (trusted only when that daemon wrote it: a killed one leaves it behind).
 */
import { join } from 'node:path';
import { DAEMON_LOCK } from '../daemon/daemon.js';
import { readPeersFile, type PeersFileContent } from '../daemon/peers-file.js';
import { Lock } from '../log/lock.js';

export interface RunningDaemon {
  readonly pid: number;
  /** Undefined until the daemon published its peers' state (it does so before it reports listening). */
  readonly peers: PeersFileContent | undefined;
}

/** The daemon running on `dir`, or undefined when none does. @throws ERR_CORRUPT_STATE, ERR_IO */
export async function runningDaemon(dir: string): Promise<RunningDaemon | undefined> {
  const pid = await Lock.holderPid(join(dir, DAEMON_LOCK));
  if (pid === undefined) return undefined;
  const file = await readPeersFile(dir);
  return { pid, peers: file?.pid === pid ? file : undefined };
}
