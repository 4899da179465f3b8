/**
 * The angel: a small supervisor that keeps a node's daemon alive. It runs the daemon as its child, sends
 * the daemon's output to DIR/logs/daemon.log (rotated), restarts it when it exits abnormally (with a
 * capped backoff), and gives up — saying so in DIR/logs/angel.log — after repeated fast crashes.
 * SIGTERM/SIGINT stop the daemon gracefully, then the angel. SIGHUP (reload) and SIGUSR2 (take the retry
 * requests) are passed on to the daemon.
 *
 * A daemon that cannot work as configured is not restarted: when it exits after printing
 * `mqlog: ERR_CONFIG: …` (or `ERR_ADDRESS_IN_USE` before it ever listened), the angel records that error
 * as `lastError` and stops with state `failed` at once, so that `mqlog start` reports the daemon's own cause.
 *
 * It publishes its state in DIR/angel.json (replaced atomically), which `mqlog status` and `mqlog stop`
 * read; its `listen` follows every `listening on` line of the daemon (a reload that moved the address
 * prints one again). One angel per directory (DIR/angel.lock).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { MqlogError } from '../errors.js';
import { Lock } from '../log/lock.js';
import { rm } from 'node:fs/promises';
import { isErrorCode, type ErrorCode } from '../errors.js';
import { ensureDir, readFileIfExists, writeFileAtomic } from '../util/fs.js';
import { RotatingFile } from '../util/rotating-file.js';
import { DAEMON_LOCK } from './daemon.js';
import { createLogger, type Logger } from './logger.js';

export const ANGEL_LOCK = 'angel.lock';
export const ANGEL_STATE = 'angel.json';
export const LOGS_DIR = 'logs';

export interface AngelState {
  readonly angelPid: number;
  readonly daemonPid: number | null;
  readonly restarts: number;
  /** `HOST:PORT` the daemon listens on, once it does. */
  readonly listen: string | null;
  readonly state: 'starting' | 'running' | 'restarting' | 'stopping' | 'stopped' | 'failed';
  readonly startedAt: string;
  readonly lastExit: string | null;
  /** The error the daemon last exited with (its `mqlog: ERR_…: message` line), if it printed one. */
  readonly lastError?: { readonly code: ErrorCode; readonly message: string } | null;
}

/** Daemon errors that a restart cannot fix: the angel gives up at once. */
const NEVER_RETRIED: ReadonlySet<ErrorCode> = new Set(['ERR_CONFIG']);
/** Daemon errors not retried while the daemon has never come up under this angel (a fresh `mqlog start`). */
const NOT_RETRIED_AT_BOOT: ReadonlySet<ErrorCode> = new Set(['ERR_CONFIG', 'ERR_ADDRESS_IN_USE']);

export interface AngelOptions {
  readonly dataDir: string;
  /** Path of the mqlog CLI entry (to run `mqlog daemon`). */
  readonly cli: string;
  /** Extra arguments for `mqlog daemon` (--listen, --handler). */
  readonly daemonArgs: readonly string[];
  /** First restart delay; doubles per fast crash, capped at 30 s. */
  readonly restartDelayMs?: number;
  /** Give up after this many crashes that each came within `fastCrashMs` of their start. */
  readonly maxFastCrashes?: number;
  readonly fastCrashMs?: number;
}

export async function readAngelState(dataDir: string): Promise<AngelState | undefined> {
  const raw = await readFileIfExists(join(dataDir, ANGEL_STATE));
  if (raw === undefined) return undefined;
  try {
    return JSON.parse(raw.toString('utf8')) as AngelState;
  } catch (err) {
    throw new MqlogError('ERR_CORRUPT_STATE', `${join(dataDir, ANGEL_STATE)} is not valid JSON`, { cause: err });
  }
}

/**
 * Removes the state a previous angel left (call only when no angel runs on `dataDir`), so that a new
 * start never reports an old failure and `status` never shows an old angel's state as the new one's.
 */
export async function clearAngelState(dataDir: string): Promise<void> {
  await rm(join(dataDir, ANGEL_STATE), { force: true });
}

/** True when a process with this pid exists. */
export function alive(pid: number | null | undefined): boolean {
  if (pid === null || pid === undefined || pid <= 0) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Runs the angel until it is told to stop or gives up. Resolves with the process exit code. */
export async function runAngel(options: AngelOptions): Promise<number> {
  const { dataDir } = options;
  await ensureDir(join(dataDir, LOGS_DIR));
  const lock = await Lock.acquire(join(dataDir, ANGEL_LOCK), { waitForDeadHolder: true });
  const logFile = new RotatingFile(join(dataDir, LOGS_DIR, 'angel.log'));
  const logger = createLogger({ name: 'angel', destination: { write: (line: string) => logFile.write(line) } });
  const daemonLog = new RotatingFile(join(dataDir, LOGS_DIR, 'daemon.log'));
  const supervisor = new Supervisor(options, logger, daemonLog);
  try {
    return await supervisor.run();
  } finally {
    await daemonLog.close();
    await logFile.close();
    await lock.release();
  }
}

class Supervisor {
  private readonly options: AngelOptions;
  private readonly logger: Logger;
  private readonly daemonLog: RotatingFile;
  private state: AngelState;
  private child: ChildProcess | undefined;
  private stopping = false;
  private wake: (() => void) | undefined;
  private publishing: Promise<void> = Promise.resolve();
  private lastDaemonPid: number | undefined;
  /** True once a daemon of this angel has listened. */
  private cameUp = false;
  /** The `mqlog: ERR_…: message` line the current daemon printed on stderr, if any. */
  private daemonError: { code: ErrorCode; message: string } | null = null;

  constructor(options: AngelOptions, logger: Logger, daemonLog: RotatingFile) {
    this.options = options;
    this.logger = logger;
    this.daemonLog = daemonLog;
    this.state = { angelPid: process.pid, daemonPid: null, restarts: 0, listen: null, state: 'starting', startedAt: new Date().toISOString(), lastExit: null, lastError: null };
  }

  async run(): Promise<number> {
    const onSignal = (signal: NodeJS.Signals): void => {
      this.logger.info({ event: 'signal', signal }, 'stopping the daemon');
      this.stopping = true;
      this.child?.kill('SIGTERM');
      this.wake?.();
    };
    // SIGHUP is for the daemon (a reload), not a reason for the angel to die.
    const onHangup = (): void => {
      this.logger.info({ event: 'signal', signal: 'SIGHUP' }, 'passing SIGHUP (reload) to the daemon');
      this.child?.kill('SIGHUP');
    };
    // SIGUSR2 too (mqlog retry signals the daemon itself; one sent to the angel must not kill it).
    const onRetry = (): void => {
      this.logger.info({ event: 'signal', signal: 'SIGUSR2' }, 'passing SIGUSR2 (retry requests) to the daemon');
      this.child?.kill('SIGUSR2');
    };
    process.on('SIGTERM', onSignal);
    process.on('SIGINT', onSignal);
    process.on('SIGHUP', onHangup);
    process.on('SIGUSR2', onRetry);
    const fastCrashes: number[] = [];
    try {
      for (;;) {
        await this.publish({ state: this.state.restarts === 0 ? 'starting' : 'restarting' });
        const startedAt = Date.now();
        const { code, signal } = await this.runDaemon();
        const lastExit = signal !== null ? `killed by ${signal}` : `exit code ${code}`;
        const lastError = this.daemonError;
        await this.publish({ daemonPid: null, listen: null, lastExit, lastError });
        if (this.stopping || (code === 0 && signal === null)) {
          this.logger.info({ event: 'daemon_stopped', code, signal }, 'daemon stopped');
          await this.publish({ state: 'stopped' });
          return 0;
        }
        if (lastError !== null && (NEVER_RETRIED.has(lastError.code) || (!this.cameUp && NOT_RETRIED_AT_BOOT.has(lastError.code)))) {
          this.logger.error({ event: 'giving_up', crashes: 1, lastExit, code: lastError.code, error: lastError.message }, `giving up: the daemon cannot run as configured (${lastError.code}: ${lastError.message}); a restart would fail the same way`);
          await this.publish({ state: 'failed' });
          return 1;
        }
        // The daemon was our child and is gone: its lock need not go stale before the restart.
        if (this.lastDaemonPid !== undefined) await Lock.breakIfHolderDied(join(this.options.dataDir, DAEMON_LOCK), this.lastDaemonPid).catch(() => false);
        const ranMs = Date.now() - startedAt;
        if (ranMs < (this.options.fastCrashMs ?? 10_000)) fastCrashes.push(Date.now());
        else fastCrashes.length = 0;
        const maxFast = this.options.maxFastCrashes ?? 5;
        if (fastCrashes.length >= maxFast) {
          this.logger.error({ event: 'giving_up', crashes: fastCrashes.length, lastExit }, `giving up: the daemon crashed ${fastCrashes.length} times in a row within seconds of starting (last: ${lastExit}); see ${join(this.options.dataDir, LOGS_DIR, 'daemon.log')}`);
          await this.publish({ state: 'failed' });
          return 1;
        }
        const delayMs = Math.min(30_000, (this.options.restartDelayMs ?? 500) * 2 ** Math.max(0, fastCrashes.length - 1));
        this.logger.warn({ event: 'daemon_died', lastExit, ranMs, restartInMs: delayMs }, 'daemon died; restarting');
        await this.sleep(delayMs);
        if (this.stopping) {
          await this.publish({ state: 'stopped' });
          return 0;
        }
        this.state = { ...this.state, restarts: this.state.restarts + 1 };
      }
    } finally {
      process.off('SIGTERM', onSignal);
      process.off('SIGINT', onSignal);
      process.off('SIGHUP', onHangup);
      process.off('SIGUSR2', onRetry);
    }
  }

  private runDaemon(): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    const child = spawn(process.execPath, [this.options.cli, 'daemon', '--data', this.options.dataDir, ...this.options.daemonArgs], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, MQLOG_RESTARTS: String(this.state.restarts) },
    });
    this.child = child;
    this.lastDaemonPid = child.pid;
    this.daemonError = null;
    this.logger.info({ event: 'daemon_started', daemonPid: child.pid, restarts: this.state.restarts }, 'daemon started');
    void this.publish({ daemonPid: child.pid ?? null });
    let pending = '';
    child.stdout.on('data', (chunk: Buffer) => {
      this.daemonLog.write(chunk);
      // Every `listening on` line counts: the daemon prints one again when a reload moved its address.
      const lines = (pending + chunk.toString('utf8')).split('\n');
      pending = (lines.pop() ?? '').slice(-65536);
      for (const line of lines) {
        const match = /^listening on https?:\/\/(\S+)$/.exec(line);
        if (match === null) continue;
        const listen = match[1] ?? null;
        if (this.state.listen === null) {
          this.cameUp = true;
          void this.publish({ listen, state: 'running' });
        } else if (listen !== this.state.listen) {
          void this.publish({ listen });
        }
      }
    });
    let errText = '';
    child.stderr.on('data', (chunk: Buffer) => {
      this.daemonLog.write(chunk);
      // The CLI ends a failed daemon with one line `mqlog: ERR_CODE: message` (the last such line counts).
      errText = (errText + chunk.toString('utf8')).slice(-65536);
      for (const match of errText.matchAll(/^mqlog: (ERR_[A-Z_]+): (.*)$/gm)) {
        if (isErrorCode(match[1])) this.daemonError = { code: match[1], message: match[2] ?? '' };
      }
    });
    return new Promise((resolve) => {
      child.once('exit', (code, signal) => {
        this.child = undefined;
        resolve({ code, signal });
      });
    });
  }

  /** Updates angel.json; writes are chained so that the file always ends with the latest state. */
  private publish(change: Partial<AngelState>): Promise<void> {
    this.state = { ...this.state, ...change };
    const snapshot = `${JSON.stringify(this.state)}\n`;
    this.publishing = this.publishing.then(() =>
      writeFileAtomic(join(this.options.dataDir, ANGEL_STATE), snapshot).catch((err: unknown) => this.logger.error({ event: 'state', err }, 'cannot write angel.json')),
    );
    return this.publishing;
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(done, ms);
      const wake = (): void => done();
      this.wake = wake;
      function done(): void {
        clearTimeout(timer);
        resolve();
      }
    });
  }
}
