/**
 * `mqlog receipt --data DIR ID`: the "job done" state of a message this node sent with --receipt:
 * queued, sent, processed, dead or expired (for a multicast the aggregate; --json adds each peer).
 * `--wait STATE` blocks until that state (exit 0), or until the timeout or a settled other state (exit 1).
 */
import { openNode } from '../daemon/node.js';
import { MqlogError } from '../errors.js';
import { RECEIPT_STATES, type ReceiptState, type ReceiptStatus } from '../queue/receipts.js';
import { boolFlag, dataDir, durationFlag, jsonLine, stringFlag, usageError, writeLine, type Command, type ParsedArgs } from './args.js';
import { requireNode } from './targets.js';

export const receiptCommand: Command = {
  name: 'receipt',
  summary: 'show (or wait for) the "job done" state of a message sent with --receipt',
  usage: `--data DIR ID [--wait STATE] [--timeout DUR] [--json]
  --wait STATE    block until the message reaches STATE (queued, sent, processed, dead, expired)
  --timeout DUR   give up waiting after DUR (exit 1)
  --json          {"id","state","peers":{peer:{"state","at"}}}`,
  options: { data: { type: 'string' }, wait: { type: 'string' }, timeout: { type: 'string' }, json: { type: 'boolean' } },
  allowPositionals: true,
  run,
};

async function run(args: ParsedArgs): Promise<number> {
  if (args.positionals.length !== 1) throw usageError('receipt needs exactly one message ID');
  const id = args.positionals[0] as string;
  const wait = stringFlag(args, 'wait');
  if (wait !== undefined && !(RECEIPT_STATES as readonly string[]).includes(wait)) {
    throw usageError(`--wait must be one of ${RECEIPT_STATES.join(', ')}, got ${JSON.stringify(wait)}`);
  }
  const timeoutMs = durationFlag(args, 'timeout');
  await requireNode(dataDir(args));
  const node = await openNode({ data: dataDir(args) });
  try {
    let status: ReceiptStatus | undefined;
    if (wait === undefined) {
      status = await node.status(id);
      if (status === undefined) throw new MqlogError('ERR_NOT_FOUND', `no receipt for ${id} on this node (sent without --receipt, or from another node)`);
    } else {
      try {
        status = await node.waitFor(id, wait as ReceiptState, timeoutMs === undefined ? {} : { signal: AbortSignal.timeout(timeoutMs) });
      } catch (err) {
        if (err instanceof MqlogError && err.code === 'ERR_TIMEOUT') {
          const now = await node.status(id);
          await print(now, boolFlag(args, 'json'));
          process.stderr.write(`mqlog: ERR_TIMEOUT: ${id} did not reach ${wait} within ${stringFlag(args, 'timeout') ?? ''}\n`);
          return 1;
        }
        throw err;
      }
    }
    await print(status, boolFlag(args, 'json'));
    return wait === undefined || status.state === wait ? 0 : 1;
  } finally {
    await node.close();
  }
}

async function print(status: ReceiptStatus | undefined, json: boolean): Promise<void> {
  if (status === undefined) return;
  if (json) await jsonLine({ id: status.id, state: status.state, peers: status.peers });
  else await writeLine(status.state);
}
