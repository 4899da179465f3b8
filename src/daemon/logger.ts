/**
 * Logging: pino, one JSON line per event. The daemon logs to stdout; under the angel, to a file in
 * DIR/logs/. Secrets (peer keys, authorization headers) are redacted wherever they appear.
 */
import { pino, type Logger, type DestinationStream } from 'pino';

export type { Logger } from 'pino';

export const REDACT_PATHS = ['key', '*.key', 'peers.*.key', 'config.peers.*.key', 'headers.authorization', 'req.headers.authorization', '*.headers["x-mqlog-signature"]'];

export function createLogger(options: { level?: string; destination?: DestinationStream; name?: string } = {}): Logger {
  return pino(
    {
      level: options.level ?? process.env.MQLOG_LOG_LEVEL ?? 'info',
      base: { pid: process.pid, ...(options.name === undefined ? {} : { node: options.name }) },
      redact: { paths: REDACT_PATHS, censor: '[redacted]' },
      timestamp: pino.stdTimeFunctions.isoTime,
    },
    options.destination ?? pino.destination({ dest: 1, sync: false }),
  );
}

/** A logger that writes nothing (library use, tests). */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
