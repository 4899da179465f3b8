/**
 * `mqlog config check --data DIR [--listen HOST:PORT]`: validates DIR/mqlog.json (with the flags that
 * override it, as `mqlog daemon` would) and prints the effective configuration — every key, defaults
 * included — as one JSON object, with secrets (peer keys, the admin token) masked. An invalid configuration
 * is one `ERR_CONFIG` line naming every unknown or invalid key (exit 1). It reads, never writes.
 */
import { stat } from 'node:fs/promises';
import { MqlogError } from '../errors.js';
import { checkListen, loadConfig, type Config } from '../daemon/config.js';
import { dataDir, jsonLine, listenFlag, usageError, type Command, type ParsedArgs } from './args.js';

/** What a masked secret reads as. */
export const MASKED = '********';

export const configCommand: Command = {
  name: 'config',
  summary: 'check a node\'s mqlog.json and print the effective configuration (secrets masked)',
  usage: `check --data DIR [--listen HOST:PORT]
  check   validate DIR/mqlog.json (plus the flags, as mqlog daemon applies them) and print the
          effective configuration as JSON; exit 1 with ERR_CONFIG naming every bad key otherwise`,
  options: { data: { type: 'string' }, listen: { type: 'string' } },
  allowPositionals: true,
  run,
};

async function run(args: ParsedArgs): Promise<number> {
  if (args.positionals.length !== 1 || args.positionals[0] !== 'check') throw usageError('config needs one action: check');
  const dir = dataDir(args);
  // Like every reading command: a mistyped --data is an error, not an empty node with defaults.
  const found = await stat(dir).catch(() => undefined);
  if (found?.isDirectory() !== true) throw new MqlogError('ERR_NOT_FOUND', `no node directory at ${dir}`, { details: { path: dir } });
  const listen = listenFlag(args, checkListen);
  const config = await loadConfig(dir, listen === undefined ? {} : { listen });
  await jsonLine(maskSecrets(config));
  return 0;
}

/** The configuration with every secret replaced by MASKED (whether a secret is set still shows). */
export function maskSecrets(config: Config): Config {
  return {
    ...config,
    peers: Object.fromEntries(Object.entries(config.peers).map(([name, peer]) => [name, peer.key === undefined ? peer : { ...peer, key: MASKED }])),
    admin: config.admin.token === undefined ? config.admin : { ...config.admin, token: MASKED },
  };
}
