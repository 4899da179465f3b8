/**
 * `mqlog retry --data DIR [--peer NAME]`: ends the backoff of a peer's forwarder (or of every peer's)
 * that waits to retry, so that it sends now. It needs no HTTP (it works whatever the daemon's listeners,
 * TLS or admin token): it files a request in `DIR/control/`, sends SIGUSR2 to the daemon (the holder of
 * `DIR/daemon.lock`), waits until the daemon took the request, and prints the daemon's answer
 * (spec/log-format.md §1.3).
 */
import { loadConfig } from '../daemon/config.js';
import { alive } from '../daemon/angel.js';
import { RetryRequests, replyError, type RetryRequest } from '../daemon/retry-requests.js';
import { MqlogError } from '../errors.js';
import { boolFlag, dataDir, jsonLine, stringFlag, writeLine, type Command, type ParsedArgs } from './args.js';
import { runningDaemon } from './running-daemon.js';
import { requireNode } from './targets.js';

/** How long the daemon may take to take the request: generous, a loaded machine is slow. */
const TAKE_TIMEOUT_MS = 10_000;
const POLL_MS = 20;

export const retryCommand: Command = {
  name: 'retry',
  summary: 'make the running daemon try a peer waiting to retry (or every such peer) now (SIGUSR2)',
  usage: `--data DIR [--peer NAME] [--json]
  --peer NAME   the peer (as mqlog peers lists it); without it, every peer waiting to retry
  --json        {"woken":[peer…]}: the peers that were waiting and now send
a peer that is not waiting (idle or sending) is left as it is; exit 1 (ERR_NOT_FOUND) when no daemon
runs on DIR or the node has no such peer`,
  options: { data: { type: 'string' }, peer: { type: 'string' }, json: { type: 'boolean' } },
  allowPositionals: false,
  run,
};

async function run(args: ParsedArgs): Promise<number> {
  const dir = dataDir(args);
  const peer = stringFlag(args, 'peer') ?? null;
  await requireNode(dir);
  const daemon = await runningDaemon(dir);
  if (peer !== null) {
    // Checked before the daemon is disturbed; the daemon checks again (its configuration may be older).
    const config = await loadConfig(dir);
    const known = [...new Set([...Object.keys(config.peers), ...(daemon?.peers?.peers ?? []).map((p) => p.peer)])].sort();
    if (!known.includes(peer)) {
      throw new MqlogError('ERR_NOT_FOUND', `no peer ${JSON.stringify(peer)} on the node at ${dir} (${known.length === 0 ? 'it has none' : `its peers: ${known.join(', ')}`})`, { details: { peer, peers: known } });
    }
  }
  if (daemon === undefined) throw new MqlogError('ERR_NOT_FOUND', `no daemon is running on ${dir}`, { details: { path: dir } });
  const requests = new RetryRequests(dir);
  const request = await requests.file(peer);
  try {
    process.kill(daemon.pid, 'SIGUSR2');
  } catch (err) {
    await requests.withdraw(peer);
    throw new MqlogError('ERR_NOT_FOUND', `no daemon is running on ${dir} (pid ${daemon.pid} is gone)`, { details: { path: dir }, cause: err });
  }
  await taken(requests, request, daemon.pid, dir);
  const reply = await requests.reply(request);
  const error = reply === undefined ? undefined : replyError(reply);
  if (error !== undefined) throw error;
  const woken = reply?.woken;
  if (boolFlag(args, 'json')) await jsonLine({ woken: woken ?? null });
  else if (woken === undefined) await writeLine(`retry requested: daemon pid ${daemon.pid} took it`);
  else if (woken.length > 0) for (const name of woken) await writeLine(`${name}: retrying now`);
  else await writeLine(peer === null ? 'no peer was waiting to retry' : `${peer} was not waiting to retry (see mqlog peers)`);
  return 0;
}

/** Waits until the daemon took the request. @throws ERR_NOT_FOUND when the daemon died, ERR_TIMEOUT */
async function taken(requests: RetryRequests, request: RetryRequest, pid: number, dir: string): Promise<void> {
  const deadline = Date.now() + TAKE_TIMEOUT_MS;
  while (await requests.pending(request.peer)) {
    if (!alive(pid)) {
      await requests.withdraw(request.peer);
      throw new MqlogError('ERR_NOT_FOUND', `the daemon on ${dir} (pid ${pid}) is gone; nothing was retried`, { details: { path: dir } });
    }
    if (Date.now() > deadline) {
      // Withdrawn: a command that failed must not take effect later.
      await requests.withdraw(request.peer);
      throw new MqlogError('ERR_TIMEOUT', `the daemon (pid ${pid}) did not take the request within ${TAKE_TIMEOUT_MS / 1000} s`, { details: { path: dir } });
    }
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  }
}
