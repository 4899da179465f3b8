#!/usr/bin/env node
/**
 * The `mqlog` command: dispatches to one module per command and maps errors to exit codes
 * (0 success, 1 the command ran and found a problem, 2 usage error). Every error is one stderr line
 * `mqlog: ERR_CODE: message`.
 */
import { MqlogError, isErrorCode } from '../errors.js';
import { parse, type Command } from './args.js';
/**
 * Commands in help order, each loaded only when used: `mqlog send` need not load the HTTP server, the
 * metrics client or the NATS client, which keeps every short command quick to start.
 */
const COMMANDS: readonly { readonly name: string; readonly hidden?: boolean; load(): Promise<Command> }[] = [
  { name: 'send', load: async () => (await import('./send.js')).sendCommand },
  { name: 'tail', load: async () => (await import('./tail.js')).tailCommand },
  { name: 'receipt', load: async () => (await import('./receipt.js')).receiptCommand },
  { name: 'daemon', load: async () => (await import('./daemon.js')).daemonCommand },
  { name: 'start', load: async () => (await import('./start.js')).startCommand },
  { name: 'stop', load: async () => (await import('./start.js')).stopCommand },
  { name: 'status', load: async () => (await import('./start.js')).statusCommand },
  { name: 'dump', load: async () => (await import('./dump.js')).dumpCommand },
  { name: 'verify', load: async () => (await import('./verify.js')).verifyCommand },
  { name: 'stat', load: async () => (await import('./stat.js')).statCommand },
  { name: 'redrive', load: async () => (await import('./redrive.js')).redriveCommand },
  { name: 'purge', load: async () => (await import('./purge.js')).purgeCommand },
  { name: 'compact', load: async () => (await import('./compact.js')).compactCommand },
  { name: 'demo', load: async () => (await import('./demo.js')).demoCommand },
  { name: '__angel', hidden: true, load: async () => (await import('./start.js')).angelCommand },
];

/** Errors that mean the command line itself was wrong. */
const USAGE_CODES = new Set(['ERR_USAGE', 'ERR_UNKNOWN_PEER', 'ERR_INVALID_NAME', 'ERR_INVALID_ARG']);

async function help(): Promise<string> {
  const visible = await Promise.all(COMMANDS.filter((c) => c.hidden !== true).map((c) => c.load()));
  const width = Math.max(...visible.map((c) => c.name.length));
  return [
    'mqlog — durable store-and-forward message queue',
    '',
    'usage: mqlog <command> [options]',
    '',
    'commands:',
    ...visible.map((c) => `  ${c.name.padEnd(width)}  ${c.summary}`),
    '',
    'Every command that touches a node takes --data DIR (default $MQLOG_DATA, else ./var/node).',
    'Run mqlog <command> --help for its options.',
  ].join('\n');
}

function commandHelp(command: Command): string {
  return `usage: mqlog ${command.name} ${command.usage}\n\n${command.summary}`;
}

export async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (name === undefined || name === '--help' || name === '-h' || name === 'help') {
    process.stdout.write(`${await help()}\n`);
    return name === undefined ? 2 : 0;
  }
  const entry = COMMANDS.find((c) => c.name === name);
  if (entry === undefined) {
    return fail(new MqlogError('ERR_USAGE', `unknown command ${JSON.stringify(name)} (see mqlog --help)`));
  }
  try {
    const command = await entry.load();
    const args = parse(command, rest);
    if (args.values.help === true) {
      process.stdout.write(`${commandHelp(command)}\n`);
      return 0;
    }
    return await command.run(args);
  } catch (err) {
    return fail(err);
  }
}

function fail(err: unknown): number {
  if (err instanceof MqlogError) {
    process.stderr.write(`mqlog: ${err.code}: ${err.message}\n`);
    return USAGE_CODES.has(err.code) ? 2 : 1;
  }
  const code = (err as { code?: unknown } | undefined)?.code;
  if (code === 'EPIPE') return 0;
  const message = err instanceof Error ? err.message : String(err);
  process.stderr.write(`mqlog: ${isErrorCode(code) ? code : 'ERR_IO'}: ${message}\n`);
  if (process.env.MQLOG_DEBUG !== undefined && err instanceof Error) process.stderr.write(`${err.stack ?? ''}\n`);
  return 1;
}

process.stdout.on('error', (err: NodeJS.ErrnoException) => {
  // A closed pipe (mqlog dump | head) ends the command quietly.
  if (err.code === 'EPIPE') process.exit(0);
});

// Everything a node writes is its owner's alone (files 0600, directories 0700), whatever the shell's umask.
process.umask(0o077);

const exitCode = await main(process.argv.slice(2));
process.exitCode = exitCode;
