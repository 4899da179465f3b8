/**
 * `mqlog daemon`: runs the node in the foreground (receiver, forwarders) until SIGTERM/SIGINT, then
 * finishes in-flight work and exits 0. Prints `listening on http://HOST:PORT` once it accepts connections.
 * SIGHUP reloads the configuration (Daemon.reload: peers, keys and the servers' settings) and keeps running. SIGUSR2 takes
 * the retry requests of DIR/control/ (`mqlog retry`); its handler is in place before the daemon takes
 * the lock, so that a signal sent to a daemon still starting never kills it (SIGUSR2's default action).
 */
import { Daemon } from '../daemon/daemon.js';
import { MqlogError } from '../errors.js';
import { checkListen } from '../daemon/config.js';
import { dataDir, listenFlag, stringFlag, writeLine, type Command, type ParsedArgs } from './args.js';

export const daemonCommand: Command = {
  name: 'daemon',
  summary: 'run the node (receiver and forwarders) in the foreground',
  usage: `--data DIR [--listen HOST:PORT] [--handler MODULE]
  --listen HOST:PORT   where the receiver listens (default: listen of mqlog.json, else 127.0.0.1:7420)
  --handler MODULE     ES module whose default (or handle) export, async (message) => boolean, processes
                       every inbox message: true acks it, false or a throw retries it later`,
  options: { data: { type: 'string' }, listen: { type: 'string' }, handler: { type: 'string' } },
  allowPositionals: false,
  run,
};

async function run(args: ParsedArgs): Promise<number> {
  const listen = listenFlag(args, checkListen);
  const handler = stringFlag(args, 'handler');
  let lockLost: (() => void) | undefined;
  let lostLock = false;
  // Requests made before the daemon is up are taken at the end of its start; one signalled during the
  // last moments of the start is taken just after.
  const retrying: { daemon?: Daemon; asked?: boolean } = {};
  const retry = (): void => {
    if (retrying.daemon === undefined) retrying.asked = true;
    else void retrying.daemon.takeRetryRequests();
  };
  process.on('SIGUSR2', retry);
  const daemon = await Daemon.start({
    data: dataDir(args),
    logger: 'stdout',
    ...(listen === undefined ? {} : { listen }),
    ...(handler === undefined ? {} : { handler }),
    onLockLost: () => {
      lostLock = true;
      lockLost?.();
    },
  }).catch((err: unknown) => {
    process.off('SIGUSR2', retry);
    throw err;
  });
  retrying.daemon = daemon;
  if (retrying.asked === true) void daemon.takeRetryRequests();
  await writeLine(`listening on ${daemon.url}`);
  // SIGHUP re-reads mqlog.json without stopping: what `mqlog reload` sends.
  const reload = (): void => {
    daemon.logger.info({ event: 'signal', signal: 'SIGHUP' }, 'reloading the configuration');
    const before = daemon.url;
    daemon.reload().then(
      // A new address is announced as the first one was (the angel's `mqlog status` shows it).
      async (result) => {
        if (result.url !== before) await writeLine(`listening on ${result.url}`);
      },
      (err: unknown) => {
      // The code (ERR_ADDRESS_IN_USE, ERR_CONFIG, …) and the system's (EADDRINUSE) say why at a glance.
      const code = err instanceof MqlogError ? err.code : null;
      const errno = err instanceof MqlogError ? (err.details?.errno ?? null) : null;
      daemon.logger.error({ event: 'reload_failed', code, errno, err }, `cannot reload the configuration (${[code, errno].filter((c) => c !== null).map(String).join(', ')}); the running one stays`);
      },
    ).catch((err: unknown) => daemon.logger.error({ event: 'reload_failed', err }, 'cannot announce the new address'));
  };
  process.on('SIGHUP', reload);
  await new Promise<void>((resolve) => {
    const stop = (signal: NodeJS.Signals): void => {
      daemon.logger.info({ event: 'signal', signal }, 'stopping');
      process.off('SIGTERM', stop);
      process.off('SIGINT', stop);
      resolve();
    };
    process.on('SIGTERM', stop);
    process.on('SIGINT', stop);
    lockLost = () => {
      process.off('SIGTERM', stop);
      process.off('SIGINT', stop);
      resolve();
    };
    if (lostLock) lockLost();
  });
  process.off('SIGHUP', reload);
  process.off('SIGUSR2', retry);
  await daemon.stop();
  daemon.logger.flush();
  if (lostLock) {
    process.stderr.write(`mqlog: ERR_LOCKED: lost the lock of ${daemon.dataDir}; stopped\n`);
    return 1;
  }
  return 0;
}
