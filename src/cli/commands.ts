/**
 * The commands of `mqlog`, in help order, each loaded only when used: `mqlog send` need not load the HTTP
 * server, the metrics client or the NATS client, which keeps every short command quick to start.
 */
import type { Command } from './args.js';

export const COMMANDS: readonly { readonly name: string; readonly hidden?: boolean; load(): Promise<Command> }[] = [
  { name: 'send', load: async () => (await import('./send.js')).sendCommand },
  { name: 'tail', load: async () => (await import('./tail.js')).tailCommand },
  { name: 'receipt', load: async () => (await import('./receipt.js')).receiptCommand },
  { name: 'daemon', load: async () => (await import('./daemon.js')).daemonCommand },
  { name: 'start', load: async () => (await import('./start.js')).startCommand },
  { name: 'stop', load: async () => (await import('./start.js')).stopCommand },
  { name: 'status', load: async () => (await import('./start.js')).statusCommand },
  { name: 'restart', load: async () => (await import('./start.js')).restartCommand },
  { name: 'reload', load: async () => (await import('./start.js')).reloadCommand },
  { name: 'peers', load: async () => (await import('./peers.js')).peersCommand },
  { name: 'retry', load: async () => (await import('./retry.js')).retryCommand },
  { name: 'dump', load: async () => (await import('./dump.js')).dumpCommand },
  { name: 'verify', load: async () => (await import('./verify.js')).verifyCommand },
  { name: 'repair', load: async () => (await import('./repair.js')).repairCommand },
  { name: 'stat', load: async () => (await import('./stat.js')).statCommand },
  { name: 'redrive', load: async () => (await import('./redrive.js')).redriveCommand },
  { name: 'purge', load: async () => (await import('./purge.js')).purgeCommand },
  { name: 'config', load: async () => (await import('./config.js')).configCommand },
  { name: 'compact', load: async () => (await import('./compact.js')).compactCommand },
  { name: 'demo', load: async () => (await import('./demo.js')).demoCommand },
  { name: 'completion', load: async () => (await import('./completion.js')).completionCommand },
  { name: '__angel', hidden: true, load: async () => (await import('./start.js')).angelCommand },
];
