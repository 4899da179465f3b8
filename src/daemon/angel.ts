/**
 * The angel: a small supervisor that keeps a node's daemon alive. It runs the daemon as its child, sends
 * the daemon's output to DIR/logs/daemon.log (rotated), restarts it when it exits abnormally (with a
 * capped backoff), and gives up — saying so in DIR/logs/angel.log — after repeated fast crashes.
 * SIGTERM/SIGINT stop the daemon gracefully, then the angel.
 *
 * It publishes its state in DIR/angel.json (replaced atomically), which `mqlog status` and `mqlog stop`
 * read. One angel per directory (DIR/angel.lock).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { MqlogError } from '../errors.js';
import { Lock } from '../log/lock.js';
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
}

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

  constructor(options: AngelOptions, logger: Logger, daemonLog: RotatingFile) {
    this.options = options;
    this.logger = logger;
    this.daemonLog = daemonLog;
    this.state = { angelPid: process.pid, daemonPid: null, restarts: 0, listen: null, state: 'starting', startedAt: new Date().toISOString(), lastExit: null };
  }

  async run(): Promise<number> {
    const onSignal = (signal: NodeJS.Signals): void => {
      this.logger.info({ event: 'signal', signal }, 'stopping the daemon');
      this.stopping = true;
      this.child?.kill('SIGTERM');
      this.wake?.();
    };
    process.on('SIGTERM', onSignal);
    process.on('SIGINT', onSignal);
    const fastCrashes: number[] = [];
    try {
      for (;;) {
        await this.publish({ state: this.state.restarts === 0 ? 'starting' : 'restarting' });
        const startedAt = Date.now();
        const { code, signal } = await this.runDaemon();
        const lastExit = signal !== null ? `killed by ${signal}` : `exit code ${code}`;
        await this.publish({ daemonPid: null, listen: null, lastExit });
        if (this.stopping || (code === 0 && signal === null)) {
          this.logger.info({ event: 'daemon_stopped', code, signal }, 'daemon stopped');
          await this.publish({ state: 'stopped' });
          return 0;
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
    }
  }

  private runDaemon(): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    const child = spawn(process.execPath, [this.options.cli, 'daemon', '--data', this.options.dataDir, ...this.options.daemonArgs], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, MQLOG_RESTARTS: String(this.state.restarts) },
    });
    this.child = child;
    this.lastDaemonPid = child.pid;
    this.logger.info({ event: 'daemon_started', daemonPid: child.pid, restarts: this.state.restarts }, 'daemon started');
    void this.publish({ daemonPid: child.pid ?? null });
    let pending = '';
    child.stdout.on('data', (chunk: Buffer) => {
      this.daemonLog.write(chunk);
      if (this.state.listen !== null) return;
      pending += chunk.toString('utf8');
      const match = /listening on https?:\/\/(\S+)/.exec(pending);
      if (match !== null) {
        pending = '';
        void this.publish({ listen: match[1] ?? null, state: 'running' });
      } else if (pending.length > 65536) {
        pending = pending.slice(-1024);
      }
    });
    child.stderr.on('data', (chunk: Buffer) => this.daemonLog.write(chunk));
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
