/**
 * Command-line plumbing shared by every command: flag parsing (node:util parseArgs, strict), usage
 * errors, durations, the data directory default, and line output that respects back-pressure.
 */
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { resolve } from 'node:path';
import { MqlogError } from '../errors.js';

export type OptionSpec = NonNullable<ParseArgsConfig['options']>;

export interface Command {
  readonly name: string;
  readonly summary: string;
  /** Usage text after `mqlog <name>`, with one line per option. */
  readonly usage: string;
  readonly options: OptionSpec;
  readonly allowPositionals: boolean;
  run(args: ParsedArgs): Promise<number>;
}

export interface ParsedArgs {
  readonly values: Record<string, string | boolean | (string | boolean)[] | undefined>;
  readonly positionals: string[];
}

export function usageError(message: string): MqlogError {
  return new MqlogError('ERR_USAGE', message);
}

export function parse(command: Command, argv: string[]): ParsedArgs {
  try {
    const { values, positionals } = parseArgs({
      args: withNegativeValues(command.options, argv),
      options: { ...command.options, help: { type: 'boolean', short: 'h' } },
      allowPositionals: command.allowPositionals,
      strict: true,
    });
    return { values, positionals };
  } catch (err) {
    throw usageError(`${(err as Error).message.split('\n')[0] ?? 'bad arguments'} (see mqlog ${command.name} --help)`);
  }
}

/**
 * `--priority -1` as `--priority=-1`: a value that looks like a negative number goes with the option
 * before it (parseArgs would call it ambiguous), so that the option's own check can say what is wrong.
 */
function withNegativeValues(options: OptionSpec, argv: readonly string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i] as string;
    const next = argv[i + 1];
    const name = arg.startsWith('--') ? arg.slice(2) : undefined;
    if (name !== undefined && options[name]?.type === 'string' && next !== undefined && /^-\d/.test(next)) {
      out.push(`${arg}=${next}`);
      i++;
      continue;
    }
    out.push(arg);
  }
  return out;
}

/** The node directory: --data, else $MQLOG_DATA, else ./var/node. */
export function dataDir(args: ParsedArgs): string {
  const flag = args.values.data;
  if (typeof flag === 'string' && flag.length > 0) return resolve(flag);
  const env = process.env.MQLOG_DATA;
  if (env !== undefined && env.length > 0) return resolve(env);
  return resolve('var', 'node');
}

export function stringFlag(args: ParsedArgs, name: string): string | undefined {
  const value = args.values[name];
  if (value === undefined) return undefined;
  if (typeof value !== 'string') throw usageError(`--${name} needs a value`);
  return value;
}

export function stringList(args: ParsedArgs, name: string): string[] {
  const value = args.values[name];
  if (value === undefined) return [];
  return (Array.isArray(value) ? value : [value]).map((v) => {
    if (typeof v !== 'string') throw usageError(`--${name} needs a value`);
    return v;
  });
}

export function boolFlag(args: ParsedArgs, name: string): boolean {
  return args.values[name] === true;
}

export function intFlag(args: ParsedArgs, name: string, min: number, max: number): number | undefined {
  const raw = stringFlag(args, name);
  if (raw === undefined) return undefined;
  if (!/^-?\d+$/.test(raw)) throw usageError(`--${name} must be an integer from ${min} to ${max}, got ${JSON.stringify(raw)}`);
  const value = Number(raw);
  if (value < min || value > max) throw usageError(`--${name} must be an integer from ${min} to ${max}, got ${raw}`);
  return value;
}

const UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/** Parses `500ms`, `10s`, `5m`, `2h`, `1d` (or a bare number of milliseconds) into milliseconds. */
export function parseDuration(text: string): number | undefined {
  const match = /^(\d+(?:\.\d+)?)(ms|s|m|h|d)?$/.exec(text.trim());
  if (match === null) return undefined;
  const ms = Number(match[1]) * (UNITS[match[2] ?? 'ms'] ?? 1);
  return Number.isFinite(ms) && ms <= Number.MAX_SAFE_INTEGER ? Math.round(ms) : undefined;
}

export function durationFlag(args: ParsedArgs, name: string): number | undefined {
  const raw = stringFlag(args, name);
  if (raw === undefined) return undefined;
  const ms = parseDuration(raw);
  if (ms === undefined) throw usageError(`--${name} must be a duration like 500ms, 10s, 5m or 2h, got ${JSON.stringify(raw)}`);
  return ms;
}

/** Writes one line to stdout and waits when the pipe is full, so memory stays bounded. */
export async function writeLine(line: string): Promise<void> {
  if (!process.stdout.write(`${line}\n`)) {
    await new Promise<void>((resolve, reject) => {
      const onDrain = (): void => {
        process.stdout.off('error', onError);
        resolve();
      };
      const onError = (err: Error): void => {
        process.stdout.off('drain', onDrain);
        reject(err);
      };
      process.stdout.once('drain', onDrain);
      process.stdout.once('error', onError);
    });
  }
}

/** Resolves once everything written to stdout has been handed to the OS. */
export function flushStdout(): Promise<void> {
  return new Promise((resolve) => {
    if (process.stdout.writableLength === 0) resolve();
    else process.stdout.write('', () => resolve());
  });
}

/** One JSON Lines record. */
export function jsonLine(record: unknown): Promise<void> {
  return writeLine(JSON.stringify(record));
}

/** `--listen HOST:PORT`, checked (a bad value is a usage error). */
export function listenFlag(args: ParsedArgs, check: (value: string, key: string) => string): string | undefined {
  const listen = stringFlag(args, 'listen');
  if (listen === undefined) return undefined;
  try {
    return check(listen, '--listen');
  } catch (err) {
    throw usageError((err as Error).message);
  }
}
