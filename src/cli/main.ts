#!/usr/bin/env node
/**
 * The `mqlog` command: dispatches to one module per command and maps errors to exit codes
 * (0 success, 1 the command ran and found a problem, 2 usage error). Every error is one stderr line
 * `mqlog: ERR_CODE: message`.
 */
import { MqlogError, isErrorCode } from '../errors.js';
import { packageVersion } from '../util/version.js';
import { parse, type Command } from './args.js';
import { COMMANDS } from './commands.js';
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
    'Run mqlog <command> --help (or mqlog help <command>) for its options; mqlog --version for the version.',
  ].join('\n');
}

function commandHelp(command: Command): string {
  return `usage: mqlog ${command.name} ${command.usage}\n\n${command.summary}`;
}


export async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (name === '--version' || name === '-V' || name === 'version') {
    process.stdout.write(`mqlog ${packageVersion()}\n`);
    return 0;
  }
  // `mqlog help send` is `mqlog send --help`.
  if (name === 'help' && rest[0] !== undefined) return main([rest[0], '--help']);
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
