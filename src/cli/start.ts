/**
 * `mqlog start` / `mqlog stop` / `mqlog status`: the node in the background, supervised by the angel.
 * `start` returns once the daemon listens; `stop` returns once both processes are gone.
 */
import { spawn } from 'node:child_process';
import { openSync, closeSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ANGEL_STATE, LOGS_DIR, alive, clearAngelState, readAngelState, runAngel, type AngelState } from '../daemon/angel.js';
import { checkListen, loadConfig } from '../daemon/config.js';
import { DAEMON_LOCK } from '../daemon/daemon.js';
import { Lock } from '../log/lock.js';
import { MqlogError } from '../errors.js';
import { ensureDir } from '../util/fs.js';
import { boolFlag, dataDir, jsonLine, listenFlag, stringFlag, writeLine, type Command, type ParsedArgs } from './args.js';

const CLI = fileURLToPath(new URL('./main.js', import.meta.url));
const START_TIMEOUT_MS = 60_000;
const STOP_TIMEOUT_MS = 60_000;

function daemonArgs(args: ParsedArgs): string[] {
  const out: string[] = [];
  const listen = listenFlag(args, checkListen);
  if (listen !== undefined) out.push('--listen', listen);
  const handler = stringFlag(args, 'handler');
  if (handler !== undefined) out.push('--handler', handler);
  return out;
}

export const startCommand: Command = {
  name: 'start',
  summary: 'start the node in the background, supervised (restarted if it dies)',
  usage: `--data DIR [--listen HOST:PORT] [--handler MODULE]
  (same flags as mqlog daemon; logs go to DIR/logs/)`,
  options: { data: { type: 'string' }, listen: { type: 'string' }, handler: { type: 'string' } },
  allowPositionals: false,
  async run(args) {
    const dir = dataDir(args);
    const extra = daemonArgs(args);
    await ensureDir(join(dir, LOGS_DIR));
    const before = await readAngelState(dir);
    if (before !== undefined && alive(before.angelPid) && before.state !== 'stopped' && before.state !== 'failed') {
      throw new MqlogError('ERR_LOCKED', `mqlog is already running on ${dir} (angel pid ${before.angelPid})`);
    }
    // A daemon in the foreground (or a stuck one) holds the daemon lock: refuse now rather than let the
    // angel retry. A lock left by a killed daemon is waited out.
    const probe = await Lock.acquire(join(dir, DAEMON_LOCK), { waitForDeadHolder: true });
    await probe.release();
    // No angel runs here: what angel.json says is a previous angel's, and must not pass for the new one's.
    await clearAngelState(dir);
    const bootLog = openSync(join(dir, LOGS_DIR, 'angel-boot.log'), 'a', 0o600);
    const child = spawn(process.execPath, [CLI, '__angel', '--data', dir, ...extra], { detached: true, stdio: ['ignore', bootLog, bootLog] });
    closeSync(bootLog);
    const angelPid = child.pid ?? 0;
    child.unref();
    const deadline = Date.now() + START_TIMEOUT_MS;
    for (;;) {
      const read = await readAngelState(dir).catch(() => undefined);
      // Only the state of the angel started here counts.
      const state = read?.angelPid === angelPid ? read : undefined;
      if (state?.state === 'running' && state.listen !== null) {
        await writeLine(`started: angel pid ${state.angelPid}, daemon pid ${state.daemonPid ?? '-'}, listening on http://${state.listen}`);
        return 0;
      }
      if (!alive(angelPid) || state?.state === 'failed') {
        const logs = `see ${join(dir, LOGS_DIR)}/angel-boot.log, angel.log and daemon.log`;
        // The daemon's own error when it printed one; otherwise the angel could not run (another one holds its lock).
        // Exit 1 whatever the code: the command ran and the node failed (a daemon's ERR_INVALID_ARG is no usage error of start).
        if (state?.lastError != null) {
          process.stderr.write(`mqlog: ${state.lastError.code}: the node did not start: ${state.lastError.message} (${logs})\n`);
          return 1;
        }
        throw new MqlogError(state === undefined ? 'ERR_LOCKED' : 'ERR_IO', `the node did not start; ${logs}`);
      }
      if (Date.now() > deadline) throw new MqlogError('ERR_TIMEOUT', `the daemon did not listen within ${START_TIMEOUT_MS / 1000} s; see ${join(dir, LOGS_DIR)}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  },
};

export const stopCommand: Command = {
  name: 'stop',
  summary: 'stop the background node (daemon and angel) and wait until both are gone',
  usage: '--data DIR',
  options: { data: { type: 'string' } },
  allowPositionals: false,
  async run(args) {
    const dir = dataDir(args);
    const state = await readAngelState(dir);
    if (state === undefined || (!alive(state.angelPid) && !alive(state.daemonPid))) {
      await writeLine('not running');
      return 0;
    }
    if (alive(state.angelPid)) process.kill(state.angelPid, 'SIGTERM');
    else if (state.daemonPid !== null) process.kill(state.daemonPid, 'SIGTERM');
    const deadline = Date.now() + STOP_TIMEOUT_MS;
    while (alive(state.angelPid) || alive(state.daemonPid) || alive((await readAngelState(dir))?.daemonPid)) {
      if (Date.now() > deadline) throw new MqlogError('ERR_TIMEOUT', `the node did not stop within ${STOP_TIMEOUT_MS / 1000} s`);
      await new Promise((r) => setTimeout(r, 50));
    }
    await writeLine('stopped');
    return 0;
  },
};

export const restartCommand: Command = {
  name: 'restart',
  summary: 'stop the background node (if it runs) and start it again, with the same flags as start',
  usage: `--data DIR [--listen HOST:PORT] [--handler MODULE]`,
  options: startCommand.options,
  allowPositionals: false,
  async run(args) {
    const stopped = await stopCommand.run(args);
    if (stopped !== 0) return stopped;
    return startCommand.run(args);
  },
};

export const reloadCommand: Command = {
  name: 'reload',
  summary: 'make the running daemon re-read mqlog.json (peers, keys, limits, listen, tls, admin) without a restart (SIGHUP)',
  usage: `--data DIR
  works for a node under mqlog start and for a foreground mqlog daemon; the daemon logs a "reloaded"
  event naming the peers and servers' settings it applied and any key that needs mqlog restart instead,
  or "reload_failed" with the code (a new address that cannot listen leaves everything as it was)`,
  options: { data: { type: 'string' } },
  allowPositionals: false,
  async run(args) {
    const dir = dataDir(args);
    // Check the file first: a reload of an invalid file would only be refused in the daemon's log.
    await loadConfig(dir);
    const pid = await Lock.holderPid(join(dir, DAEMON_LOCK));
    if (pid === undefined) throw new MqlogError('ERR_NOT_FOUND', `no daemon is running on ${dir}`, { details: { path: dir } });
    process.kill(pid, 'SIGHUP');
    await writeLine(`reload requested: daemon pid ${pid}`);
    return 0;
  },
};

/** `mqlog status` when the node is not running: the LSB init-script status code for "not running". */
const NOT_RUNNING = 3;

export const statusCommand: Command = {
  name: 'status',
  summary: 'show whether the background node runs, its pids, restarts and address (exit 0 running, 3 not)',
  usage: `--data DIR [--json]
  --json   {"running","angelPid","daemonPid","restarts","listen","state"}
exit code (as LSB init scripts): 0 running, 3 not running`,
  options: { data: { type: 'string' }, json: { type: 'boolean' } },
  allowPositionals: false,
  async run(args) {
    const state = await readAngelState(dataDir(args));
    const report = statusReport(state);
    if (boolFlag(args, 'json')) await jsonLine(report);
    else {
      await writeLine(
        report.running
          ? `running: angel pid ${report.angelPid}, daemon pid ${report.daemonPid}, ${report.restarts} restart(s), listening on ${report.listen}`
          : `not running${state === undefined ? '' : ` (last state: ${state.state}${state.lastExit === null ? '' : `, ${state.lastExit}`})`}`,
      );
    }
    return report.running ? 0 : NOT_RUNNING;
  },
};

export function statusReport(state: AngelState | undefined): { running: boolean; angelPid: number | null; daemonPid: number | null; restarts: number; listen: string | null; state: string } {
  const angelUp = alive(state?.angelPid);
  const daemonUp = angelUp && alive(state?.daemonPid);
  return {
    running: angelUp && daemonUp,
    angelPid: angelUp ? (state?.angelPid ?? null) : null,
    daemonPid: daemonUp ? (state?.daemonPid ?? null) : null,
    restarts: state?.restarts ?? 0,
    listen: daemonUp ? (state?.listen ?? null) : null,
    state: angelUp ? (state?.state ?? 'unknown') : 'stopped',
  };
}

/** The hidden command the detached angel process runs. */
export const angelCommand: Command = {
  name: '__angel',
  summary: 'internal: the supervisor process started by mqlog start',
  usage: '--data DIR [daemon flags]',
  options: { data: { type: 'string' }, listen: { type: 'string' }, handler: { type: 'string' } },
  allowPositionals: false,
  async run(args) {
    return runAngel({ dataDir: dataDir(args), cli: CLI, daemonArgs: daemonArgs(args) });
  },
};

export { ANGEL_STATE };
