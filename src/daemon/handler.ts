/**
 * Direct invocation (`mqlog daemon --handler MODULE`): the daemon calls an application function for every
 * inbox message. `true` acks it; `false` or a throw puts it back with a growing delay, counting
 * deliveries, until it goes to the dead letters after `maxDeliveries`. The message's lease is renewed while
 * the call runs; a call that runs past `handlerTimeoutMs` is aborted (the signal it was given fires), counts
 * as a failure, and whatever it returns later is ignored.
 *
 * Concurrency: at most `concurrency` calls run at once across all channels; a message is taken from the
 * inbox only when a slot is free, so none waits leased behind busy calls.
 */
import { pathToFileURL } from 'node:url';
import { resolve } from 'node:path';
import { MqlogError, isMqlogError } from '../errors.js';
import type { Delivery } from '../queue/consumer.js';
import type { Inbox } from '../queue/inbox.js';
import type { Logger } from './logger.js';

/** What a handler receives: the message without the means to ack it (the daemon does that). */
export interface HandlerMessage {
  readonly id: string;
  readonly from: string;
  readonly channel: string;
  readonly priority: number;
  readonly ts: number;
  readonly headers: Readonly<Record<string, string>>;
  readonly deliveries: number;
  readonly body: Buffer;
}

/** What else a handler call gets: `signal` fires when the call runs past `handlerTimeoutMs`. */
export interface HandlerContext {
  readonly signal: AbortSignal;
}

export type Handler = (message: HandlerMessage, context: HandlerContext) => boolean | Promise<boolean>;

/**
 * Loads a handler module: its default export, or its `handle` export, must be a function.
 * @throws ERR_INVALID_ARG when the module cannot be loaded or exports no function.
 */
export async function loadHandler(modulePath: string): Promise<Handler> {
  let mod: { default?: unknown; handle?: unknown };
  try {
    mod = (await import(pathToFileURL(resolve(modulePath)).href)) as typeof mod;
  } catch (err) {
    throw new MqlogError('ERR_INVALID_ARG', `cannot load handler module ${modulePath}: ${(err as Error).message}`, { cause: err });
  }
  const fn = typeof mod.default === 'function' ? mod.default : mod.handle;
  if (typeof fn !== 'function') throw new MqlogError('ERR_INVALID_ARG', `handler module ${modulePath} exports no function (default or handle)`);
  return fn as Handler;
}

export interface HandlerRunnerOptions {
  readonly handler: Handler;
  readonly concurrency: number;
  /** A call running longer is aborted and counts as a failure. */
  readonly timeoutMs: number;
  /** First retry delay after a failure; doubles per delivery, capped at 60 s. */
  readonly retryDelayMs: number;
  readonly logger: Logger;
  readonly events?: { handled?(channel: string, ok: boolean, durationMs: number): void };
}

export class HandlerRunner {
  private readonly options: HandlerRunnerOptions;
  private readonly loops = new Map<string, Promise<void>>();
  private readonly stop = new AbortController();
  private readonly running = new Set<Promise<void>>();
  private slots: number;
  private waiters: (() => void)[] = [];

  constructor(options: HandlerRunnerOptions) {
    this.options = options;
    this.slots = options.concurrency;
  }

  /** Starts consuming a channel's inbox (once per channel). */
  consume(inbox: Inbox): void {
    if (this.stop.signal.aborted || this.loops.has(inbox.channel)) return;
    this.loops.set(
      inbox.channel,
      this.loop(inbox).catch((err: unknown) => {
        if (!this.stop.signal.aborted) this.options.logger.error({ event: 'handler_loop', channel: inbox.channel, err }, 'handler loop failed');
        this.loops.delete(inbox.channel);
      }),
    );
  }

  /** Stops taking messages and waits for running calls (up to `graceMs`). */
  async close(graceMs = 10_000): Promise<void> {
    this.stop.abort();
    await Promise.allSettled(this.loops.values());
    const timer = new Promise((r) => setTimeout(r, graceMs).unref());
    await Promise.race([Promise.allSettled(this.running), timer]);
  }

  private async loop(inbox: Inbox): Promise<void> {
    const messages = inbox.consume({ follow: true, prefetch: Math.max(1, this.options.concurrency), signal: this.stop.signal });
    try {
      for (;;) {
        // A slot first, then the message: it is handed out (its lease full) only when a call can start.
        await this.acquire();
        const next = await messages.next().catch((err: unknown) => {
          this.release();
          throw err;
        });
        if (next.done === true) {
          this.release();
          return;
        }
        const run = this.run(inbox.channel, next.value).finally(() => {
          this.running.delete(run);
          this.release();
        });
        this.running.add(run);
      }
    } catch (err) {
      if (!this.stop.signal.aborted) throw err;
    } finally {
      await messages.return(undefined);
    }
  }

  private async run(channel: string, delivery: Delivery): Promise<void> {
    const started = performance.now();
    let ok = false;
    let reason = 'handler returned false';
    const timeoutMs = this.options.timeoutMs;
    const call = new AbortController();
    const timer = setTimeout(() => call.abort(new MqlogError('ERR_TIMEOUT', `handler did not return within handlerTimeoutMs (${timeoutMs} ms)`)), timeoutMs);
    try {
      const message: HandlerMessage = Object.freeze({
        id: delivery.id,
        from: delivery.from,
        channel: delivery.channel,
        priority: delivery.priority,
        ts: delivery.ts,
        headers: delivery.headers ?? {},
        deliveries: delivery.deliveries,
        body: delivery.body,
      });
      // The call's result counts only if it comes before the signal fires; a late one is ignored.
      const aborted = new Promise<never>((_, reject) => call.signal.addEventListener('abort', () => reject(call.signal.reason as Error), { once: true }));
      aborted.catch(() => undefined);
      ok = (await Promise.race([Promise.resolve().then(() => this.options.handler(message, { signal: call.signal })), aborted])) === true;
    } catch (err) {
      reason = call.signal.aborted ? (call.signal.reason as Error).message : `handler threw: ${err instanceof Error ? err.message : String(err)}`;
    } finally {
      clearTimeout(timer);
    }
    this.options.events?.handled?.(channel, ok, performance.now() - started);
    try {
      if (ok) {
        await delivery.ack();
      } else {
        const delayMs = Math.min(60_000, this.options.retryDelayMs * 2 ** Math.max(0, delivery.deliveries - 1));
        this.options.logger.warn({ event: 'handler_failed', channel, id: delivery.id, deliveries: delivery.deliveries, reason, retryInMs: delayMs }, 'handler did not process the message');
        await delivery.nack({ delayMs, reason });
      }
    } catch (err) {
      // The lease lapsed and someone else has the message now: it is theirs to settle.
      if (!isMqlogError(err, 'ERR_LEASE_EXPIRED')) throw err;
      this.options.logger.warn({ event: 'lease_lost', channel, id: delivery.id }, 'the lease lapsed before the handler finished');
    }
  }

  private async acquire(): Promise<void> {
    while (this.slots === 0) await new Promise<void>((r) => this.waiters.push(r));
    this.slots--;
  }

  private release(): void {
    this.slots++;
    this.waiters.shift()?.();
  }
}
