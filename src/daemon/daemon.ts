/**
 * The daemon: one per node directory (held by `DIR/daemon.lock`). It runs the HTTP receiver, one
 * forwarder per destination, and the periodic work (dedup checkpoints). `stop()` stops taking requests,
 * lets in-flight batches finish in both directions, saves state and releases the lock. `reload()`
 * re-reads mqlog.json and applies it while running: a changed or removed peer's forwarder finishes its
 * batch in flight and stops, a new one starts; the receiver checks signatures against the new keys from
 * the next request on. A change of the servers' settings (limits, listen, advertise, tls — the files'
 * contents included, a certificate renewed in place — and admin) builds new servers: on the same address
 * they take the next connections while the old ones finish what they serve (Listener); a new address
 * listens before the old one closes, and when it cannot listen nothing of the servers' settings changes.
 * What still needs a restart is reported.
 *
 * While it runs it publishes its peers' live state in `DIR/peers.json` (PeersFile) and takes the
 * requests of `DIR/control/` (RetryRequests) when told to (`takeRetryRequests`, on SIGUSR2 in the CLI).
 */
import { join, resolve } from 'node:path';
import { MqlogError, isMqlogError } from '../errors.js';
import { Lock, type ChangeFeed, type LogStore } from '../log/index.js';
import { ChannelCounts } from '../queue/channel-counts.js';
import { decodeMessage } from '../queue/codec.js';
import { BACKGROUND_BUSY_SHARE, Compactor } from '../queue/compaction.js';
import type { Intake } from '../queue/intake.js';
import { deadInfo, inboxInfo } from '../queue/layout.js';
import { OutboxBacklog } from '../queue/outbox-backlog.js';
import type { ReceiptState } from '../queue/receipts.js';
import { parseNatsUrl } from '../transport/nats-address.js';
import { mergeNatsSettings } from '../transport/nats-settings.js';
import type { NatsSource } from '../transport/nats-source.js';
import { transports } from '../transport/registry.js';
import type { Transport } from '../transport/transport.js';
import { ensureDir } from '../util/fs.js';
import { destinationUrl, loadConfig, type Config } from './config.js';
import { unpackFrame } from './frame-codec.js';
import { Forwarder } from './forwarder.js';
import { HandlerRunner, loadHandler } from './handler.js';
import { createServers, loadTls, scheme, sameTls, type Servers, type TlsMaterial } from './http-server.js';
import { Listener } from './listener.js';
import { Metrics } from './metrics.js';
import { MqlogNode } from './node.js';
import { PeersFile, type PeerEntry } from './peers-file.js';
import { RetryRequests } from './retry-requests.js';
import { IntakeSink } from './receiver.js';
import { STATUS_PAGE, type StatusSnapshot } from './status-page.js';
import { createLogger, silentLogger, type Logger } from './logger.js';
import { maxFrameBytesFor } from '../queue/body.js';
import type { IntakeLimits } from '../queue/intake.js';

export const DAEMON_LOCK = 'daemon.lock';
const DEDUP_CHECKPOINT_MS = 1000;
const OBSERVE_MS = 2000;
/**
 * The outbox's destinations are listed again at most this often while it changes: a message to a new
 * destination waits this long at worst for its forwarder, and a busy outbox is not listed at every append.
 */
const DESTINATIONS_LOOK_MS = 100;

export interface DaemonOptions {
  readonly data: string;
  /** Where the node's queues keep their logs (default: segment files under `data`). */
  readonly store?: LogStore;
  /** Overrides `listen` of mqlog.json. */
  readonly listen?: string;
  /** Path of an ES module whose default (or `handle`) export processes inbox messages. */
  readonly handler?: string;
  /**
   * Where the daemon logs: a pino logger, or `'stdout'` for JSON lines on stdout named after the node (what
   * `mqlog daemon` does). Default: nothing is logged (a daemon inside an application stays quiet).
   */
  readonly logger?: Logger | 'stdout';
  /**
   * Called when the daemon lost its lock (`DIR/daemon.lock` could not be kept fresh or was removed):
   * the daemon has begun to stop, and another daemon may now run on the directory. Default: nothing more.
   */
  readonly onLockLost?: (err: MqlogError) => void;
}

const DAEMON_OPTIONS: ReadonlySet<string> = new Set(['data', 'store', 'listen', 'handler', 'logger', 'onLockLost']);

export class Daemon {
  readonly dataDir: string;
  /** The configuration in force: the one loaded at start, with the peers of the last reload. */
  config: Config;
  readonly nodeId: string;
  readonly logger: Logger;
  /** `http://HOST:PORT` the receiver listens on (the real port when 0 was asked for). */
  url = '';
  readonly node: MqlogNode;
  readonly metrics: Metrics;
  private readonly startedAt = Date.now();
  private readonly lock: Lock;
  private backlog: OutboxBacklog | undefined;
  private readonly channels = new Map<string, ChannelCounts>();
  private countedOnce = false;
  private counting: Promise<void> | undefined;
  private readonly handlerPath: string | undefined;
  private handler: HandlerRunner | undefined;
  private peerListener: Listener | undefined;
  private adminListener: Listener | undefined;
  private tls: TlsMaterial = {};
  /** Where /metrics, /status.json and / are served when they have their own address. */
  adminUrl: string | undefined;
  private intake: Intake | undefined;
  private feed: ChangeFeed | undefined;
  private readonly compactStop = new AbortController();
  private readonly forwarders = new Map<string, { forwarder: Forwarder; sender: Transport }>();
  private readonly sources: NatsSource[] = [];
  /** Destinations already reported as unknown. */
  private readonly unknown = new Set<string>();
  private syncing: Promise<void> | undefined;
  /** When the outbox's destinations were last looked at for new ones (performance.now()), and the look waiting. */
  private destinationsLookedAt = Number.NEGATIVE_INFINITY;
  private destinationsLook: NodeJS.Timeout | undefined;
  private timers: NodeJS.Timeout[] = [];
  private compacting: Promise<void> | undefined;
  /** Keeps what it learnt from round to round: each round does work in proportion to what changed. */
  private compactor: Compactor | undefined;
  private stopping: Promise<void> | undefined;
  /** Listeners of addresses given up by a reload, closing once what they serve is answered. */
  private readonly closingListeners = new Set<Promise<void>>();
  /** The peers' keys the receiver checks signatures with; reload() updates it in place. */
  private readonly peerKeys = new Map<string, string>();
  private readonly listenOverride: string | undefined;
  private reloading: Promise<ReloadResult> | undefined;
  /** True once the peer server listens (for /readyz). */
  private listening = false;
  /** True once start-up is over: forwarders made from then on run at once (those made before, at its end). */
  private booted = false;
  private peersFile: PeersFile | undefined;
  private readonly retryRequests: RetryRequests;
  /** The round of retry requests being taken; the next round waits for it. */
  private takingRequests: Promise<void> = Promise.resolve();

  private constructor(node: MqlogNode, lock: Lock, logger: Logger, handlerPath: string | undefined, metrics: Metrics, listenOverride: string | undefined) {
    this.listenOverride = listenOverride;
    this.node = node;
    this.metrics = metrics;
    this.dataDir = node.dataDir;
    this.config = node.config;
    this.nodeId = node.nodeId;
    this.lock = lock;
    this.logger = logger;
    this.handlerPath = handlerPath;
    this.retryRequests = new RetryRequests(this.dataDir);
  }

  /**
   * Starts a daemon on `data`.
   * @throws ERR_LOCKED when another daemon runs on the same directory, ERR_CONFIG, ERR_ADDRESS_IN_USE, ERR_IO.
   */
  static async start(options: DaemonOptions): Promise<Daemon> {
    // An option this version does not know would be ignored silently: a typo, or a setting that belongs in mqlog.json.
    const unknown = Object.keys(options).filter((key) => !DAEMON_OPTIONS.has(key));
    if (unknown.length > 0) {
      throw new MqlogError('ERR_INVALID_ARG', `unknown option${unknown.length === 1 ? '' : 's'} of Daemon.start: ${unknown.join(', ')} (options: ${[...DAEMON_OPTIONS].join(', ')}; everything else goes in mqlog.json)`);
    }
    const dataDir = resolve(options.data);
    const config = await loadConfig(dataDir, options.listen === undefined ? {} : { listen: options.listen });
    await ensureDir(dataDir);
    let lock: Lock;
    // Set once the daemon exists; a lock lost before that fails the start through the lock's own checks.
    const lockLost: { handle?: (err: MqlogError) => void } = {};
    try {
      lock = await Lock.acquire(join(dataDir, DAEMON_LOCK), { waitForDeadHolder: true, onCompromised: (err) => lockLost.handle?.(err) });
    } catch (err) {
      if (err instanceof MqlogError && err.code === 'ERR_LOCKED') {
        throw new MqlogError('ERR_LOCKED', `another daemon is running on ${dataDir}`, { details: { path: dataDir }, cause: err });
      }
      throw err;
    }
    const logger = options.logger === 'stdout' ? createLogger({ name: config.name }) : (options.logger ?? silentLogger());
    const metrics = new Metrics(Number(process.env.MQLOG_RESTARTS ?? 0) || 0);
    let node: MqlogNode;
    try {
      node = await MqlogNode.open({
        data: dataDir,
        ...(options.store === undefined ? {} : { store: options.store }),
        config: options.listen === undefined ? {} : { listen: options.listen },
        onWarning: (message) => logger.warn({ event: 'warning' }, message),
        onFlush: (_frames, _bytes, durationMs) => metrics.fsyncSeconds.observe(durationMs / 1000),
        onTruncated: (stream, tail) => {
          metrics.tornTails.inc();
          logger.warn({ event: 'torn_tail', stream, path: tail.path, position: tail.position, bytes: tail.bytes, reason: tail.reason, savedAs: tail.savedAs ?? null }, 'cut off a torn tail (a write that never completed its fsync)');
        },
        onDamaged: (queue, range) => {
          metrics.damagedRanges.inc();
          logger.warn({ event: 'damaged_range', queue, stream: range.stream, path: range.path, position: range.position, bytes: range.bytes, reason: range.reason }, 'passed over damaged bytes; reading went on after them');
        },
      });
    } catch (err) {
      await lock.release();
      throw err;
    }
    const daemon = new Daemon(node, lock, logger, options.handler, metrics, options.listen);
    lockLost.handle = (err) => {
      // Stop taking requests and forwarding at once: another daemon may own the directory now.
      logger.error({ event: 'lock_lost', err }, 'lost the daemon lock; stopping');
      daemon.stop().catch((stopErr: unknown) => logger.error({ event: 'stop_failed', err: stopErr }, 'cannot stop cleanly after losing the lock'));
      options.onLockLost?.(err);
    };
    try {
      await daemon.boot();
    } catch (err) {
      await daemon.stop().catch(() => undefined);
      throw err;
    }
    return daemon;
  }

  private async boot(): Promise<void> {
    const { config, dataDir, logger, node } = this;
    const receipts = node.outbox.receipts;
    if (this.handlerPath !== undefined) {
      this.handler = new HandlerRunner({
        handler: await loadHandler(this.handlerPath),
        concurrency: config.handlerConcurrency,
        timeoutMs: config.handlerTimeoutMs,
        retryDelayMs: config.handlerRetryDelayMs,
        logger,
        events: { handled: (channel, ok) => this.metrics.handled.inc({ channel, outcome: ok ? 'done' : 'retry' }) },
      });
      for (const info of await node.queues()) {
        if (info.kind === 'inbox' && info.channel !== null) this.handler.consume(await node.inbox(info.channel));
      }
    }
    this.intake = await node.openIntake(
      intakeLimits(config),
      {
        onReceipt: async (report, from, authenticated) => {
          // An authenticated peer reports only on messages sent to it, not on those of another peer.
          if (authenticated && Object.hasOwn(this.config.peers, report.destination) && report.destination !== from) {
            logger.warn({ event: 'receipt_refused', id: report.id, peer: report.destination, from }, 'a peer reported on a message sent to another peer');
            return false;
          }
          const changed = await receipts.update(report.id, report.destination, report.state, report.at, report.reason);
          this.metrics.receipts.inc({ state: report.state });
          logger.info({ event: 'receipt', id: report.id, peer: report.destination, from, state: report.state, changed }, 'receipt');
          return changed;
        },
        onBatch: (result) => this.metrics.duplicates.inc(result.duplicates),
        onDedupGap: (gap) => {
          this.metrics.dedupGaps.inc();
          logger.warn({ event: 'dedup_gap', node: gap.node, sender: gap.name, stream: gap.stream, offset: gap.offset, id: gap.id }, "a sender's offsets went back (a lost outbox or a restored backup): a new message at an offset already received was stored, not dropped");
        },
        onStored: (channel, count, from) => {
          logger.debug({ event: 'received', channel, count, from }, 'received');
          this.metrics.received.inc({ channel }, count);
          if (this.handler !== undefined) {
            const handler = this.handler;
            node.inbox(channel).then((inbox) => handler.consume(inbox), (err: unknown) => logger.error({ event: 'handler', channel, err }, 'cannot open inbox'));
          }
        },
      },
    );
    this.tls = await loadTls(config.tls);
    for (const [name, peer] of Object.entries(config.peers)) if (peer.key !== undefined) this.peerKeys.set(name, peer.key);
    const servers = this.createServers(config, this.tls);
    if (servers.mode === 'loopback') logger.warn({ event: 'auth', mode: servers.mode }, 'no peer keys configured: accepting unauthenticated requests from loopback only');
    else if (servers.mode === 'open') logger.warn({ event: 'auth', mode: servers.mode }, 'allowUnauthenticated: accepting unauthenticated requests from any address');
    else logger.info({ event: 'auth', mode: servers.mode }, 'peers must sign their requests');

    this.feed = node.outbox.changes();
    await this.feed.whenReady();
    const recorded = await node.outbox.destinations();
    this.backlog = new OutboxBacklog(node.store, node.outbox.info, await node.outbox.state(), () => [...Object.keys(this.config.peers), ...recorded], {
      appended: (channel, count) => this.metrics.appended.inc({ channel }, count),
      changed: (peer, backlog) => this.metrics.backlog.set({ peer }, backlog),
    });
    await this.startSources();
    this.feed.onChange(() => {
      this.backlog?.poke();
      this.lookForDestinations();
    });
    this.syncForwardersSoon();

    try {
      this.peerListener = await Listener.open(servers.peer, config.listen, scheme(this.tls), graceMs(config));
    } catch (err) {
      await closeApps(servers);
      throw err;
    }
    this.url = this.peerListener.url;
    this.listening = true;
    if (servers.admin !== undefined && config.admin.listen !== undefined) {
      this.adminListener = await Listener.open(servers.admin, config.admin.listen, adminScheme(config), graceMs(config));
      this.adminUrl = this.adminListener.url;
      logger.info({ event: 'admin', url: this.adminUrl }, 'read-only endpoints on their own address');
    }
    if (config.compactIntervalMs > 0) {
      this.timers.push(setInterval(() => this.compactInBackground(), config.compactIntervalMs).unref());
    }
    this.timers.push(
      setInterval(() => {
        this.countInBackground();
        // The file watcher may fold changes close together into one event: look at the outbox anyway.
        this.backlog?.poke();
      }, OBSERVE_MS).unref(),
    );
    this.timers.push(
      setInterval(() => {
        this.intake?.dedup.checkpoint().catch((err: unknown) => logger.error({ event: 'dedup_checkpoint', err }, 'cannot write the dedup checkpoint'));
      }, DEDUP_CHECKPOINT_MS).unref(),
    );
    // The peers' state is published once their forwarders run; requests made while no daemon took them are taken now.
    await this.syncing;
    this.peersFile = new PeersFile(dataDir, () => this.peerEntries(), (err) => logger.error({ event: 'peers_file', err }, 'cannot write the peers\' state file'));
    await this.peersFile.start();
    await this.retryRequests.clearReplies();
    await this.takeRetryRequests();
    // The forwarders made above run from now on: the first batch of a large backlog is tens of ms of
    // reading and decoding in steps on this thread, which the steps of starting up would each wait for.
    this.booted = true;
    for (const { forwarder } of this.forwarders.values()) forwarder.start();
    // The backlog and the inboxes are counted from their summaries in the background: with a large
    // backlog that is a few hundred ms of work on this thread, which neither the receiver nor the
    // forwarders wait for (a /metrics request counts first, caughtUp()).
    this.backlog.start().catch((err: unknown) => logger.error({ event: 'backlog', err }, 'cannot count the backlog'));
    this.countInBackground();
    logger.info({ event: 'started', url: this.url, nodeId: this.nodeId, data: dataDir }, 'daemon started');
  }

  /** The peer server and the admin server (when it has its own address) of a configuration. @throws ERR_CONFIG */
  private createServers(config: Config, tls: TlsMaterial): Servers {
    const intake = this.intake;
    if (intake === undefined) throw new MqlogError('ERR_CLOSED', 'the intake is not open');
    return createServers({
      config,
      peerKeys: this.peerKeys,
      logger: this.logger,
      tls,
      sink: new IntakeSink(intake, intakeLimits(config)),
      healthy: () => this.stopping === undefined,
      notReady: () => [
        ...(this.listening ? [] : ['the receiver is not listening yet']),
        ...(this.intake === undefined || this.backlog === undefined ? ['the queues are not open yet'] : []),
        ...(this.stopping === undefined ? [] : ['the daemon is shutting down']),
      ],
      readOnly: {
        // Counted up to the request: what was appended before it shows.
        metrics: async () => {
          await this.backlog?.caughtUp();
          return { contentType: this.metrics.contentType, text: await this.metrics.text() };
        },
        status: async () => {
          await this.backlog?.caughtUp();
          return this.statusSnapshot();
        },
        retry: async (peer) => this.retry(peer),
        redrive: (channel) => this.redrive(channel),
        purgeDeadLetters: (channel) => this.purgeDeadLetters(channel),
        page: STATUS_PAGE,
      },
    });
  }

  /** What the status page shows (no message contents, no secrets). */
  statusSnapshot(): StatusSnapshot {
    return {
      node: { name: this.config.name, id: this.nodeId, url: this.url, startedAt: this.startedAt, restarts: Number(process.env.MQLOG_RESTARTS ?? 0) || 0 },
      now: Date.now(),
      peers: this.peerEntries(),
      // Received and acked come from the queues: they go on from where they were across restarts.
      channels: [...this.channels.values()].map((c) => c.status()),
      // Actions that change data are offered only behind the admin token.
      actions: this.config.admin.token !== undefined,
    };
  }

  /**
   * Follows every channel's counts for the metrics and the status page: new channels as they appear,
   * each channel's new messages and consumer records. One round at a time, in the background.
   */
  private countInBackground(): void {
    if (this.counting !== undefined || this.stopping !== undefined) return;
    this.counting = (async () => {
      for (const info of await this.node.queues()) {
        if (info.kind !== 'inbox' || info.channel === null || this.channels.has(info.channel)) continue;
        const channel = info.channel;
        this.channels.set(channel, new ChannelCounts(this.node.store, inboxInfo(this.dataDir, channel), deadInfo(this.dataDir, channel), (kind, count) => {
          if (kind === 'acked') this.metrics.acked.inc({ channel }, count);
          else if (kind === 'dead') this.metrics.dead.inc({ channel }, count);
          else this.metrics.expired.inc({ channel }, count);
        }));
      }
      // Records already in the journal of a channel that existed when the daemon started happened before it.
      const counting = this.countedOnce;
      for (const counts of this.channels.values()) {
        await counts.refresh(counting);
        const status = counts.status();
        this.metrics.pending.set({ channel: counts.channel }, status.pending);
        this.metrics.deadLetters.set({ channel: counts.channel }, status.dead);
      }
      this.countedOnce = true;
    })()
      .catch((err: unknown) => this.logger.error({ event: 'counts', err }, 'cannot read the inboxes\' counts'))
      .finally(() => (this.counting = undefined));
  }

  /**
   * The transport to a destination, from the transport registry (spec/transports.md §1.2): the settings
   * a built-in transport needs (a peer's key and the node's TLS material for http(s), the merged `nats`
   * settings for nats and tls), a peer's `options` for an application's.
   */
  private transportFor(destination: string, url: string): Promise<Transport> {
    const peer = Object.hasOwn(this.config.peers, destination) ? this.config.peers[destination] : undefined;
    const scheme = url.slice(0, url.indexOf(':')).toLowerCase();
    const settings =
      scheme === 'http' || scheme === 'https' ? { key: peer?.key, tls: this.tls } : scheme === 'nats' || scheme === 'tls' ? mergeNatsSettings(this.config.nats, peer?.nats) : (peer?.options ?? {});
    return transports.create({
      destination,
      url,
      node: { id: this.nodeId, name: this.config.name },
      settings,
      unpack: unpackFrame,
      log: (level, event, fields, message) => this.logger[level]({ event, peer: destination, ...fields }, message),
    });
  }

  /**
   * Starts a JetStream consumer per configured source, feeding the inbox through the receiver's checks.
   * The NATS client is loaded only then: a node without sources starts without it.
   */
  private async startSources(): Promise<void> {
    const intake = this.intake;
    if (intake === undefined || this.config.sources.length === 0) return;
    const [{ NatsSource }, { sourceCodec }] = await Promise.all([import('../transport/nats-source.js'), import('./source-codec.js')]);
    const sink = new IntakeSink(intake);
    for (const source of this.config.sources) {
      const address = parseNatsUrl(source.url);
      const shown = transports.display(source.url);
      const natsSource = new NatsSource({
        url: source.url,
        settings: mergeNatsSettings(this.config.nats, source.nats),
        durable: source.durable,
        ...(source.subject === undefined ? {} : { subject: source.subject }),
        sink,
        codec: sourceCodec(this.config.name, address.stream, source.channel),
        onError: (error) => this.logger.warn({ event: 'source_failed', source: shown, durable: source.durable, code: error.code, error: error.message }, 'cannot take messages from the source'),
        onRefused: (sequence, error) => this.logger.error({ event: 'source_refused', source: shown, sequence, code: error.code, error: error.message }, 'refused a message from the source for good; terminated it in JetStream'),
      });
      natsSource.start();
      this.sources.push(natsSource);
      this.logger.info({ event: 'source_started', source: shown, durable: source.durable }, 'taking messages from a JetStream stream');
    }
  }

  /** Every configured peer and every destination with a forwarder, as the status page and `DIR/peers.json` show them. */
  peerEntries(): PeerEntry[] {
    const forwarders = new Map(this.forwarderStatus().map((f) => [f.destination, f]));
    return [...new Set([...Object.keys(this.config.peers), ...forwarders.keys()])].sort().map((peer) => {
      const f = forwarders.get(peer);
      return {
        peer,
        url: f?.url ?? transports.display(this.config.peers[peer]?.url ?? peer),
        state: f?.state ?? 'stopped',
        backlog: this.backlog?.of(peer) ?? 0,
        lastError: f?.lastError ?? null,
        lastErrorAt: f?.lastErrorAt ?? null,
        lastSentAt: f?.lastSentAt ?? null,
        nextAttemptAt: f?.nextAttemptAt ?? null,
        forwarded: f?.sentMessages ?? 0,
      };
    });
  }

  /**
   * Cuts short the backoff of one peer's forwarder (or of every forwarder) that is waiting to retry, so
   * that it sends now. Returns the peers woken (none when the peer was not waiting).
   * @throws ERR_NOT_FOUND when `peer` is neither a configured peer nor a destination with a forwarder
   * (the error lists the known peers).
   */
  /**
   * Puts a channel's dead letters back into its inbox (as `mqlog redrive --channel`); returns how many.
   * @throws ERR_NOT_FOUND for a channel this node has no inbox of.
   */
  async redrive(channel: string): Promise<number> {
    const inbox = await this.knownInbox(channel);
    const count = await inbox.redrive(this.compactStop.signal);
    this.logger.info({ event: 'redriven', channel, count }, 'dead letters put back into the inbox');
    return count;
  }

  /**
   * Empties a channel's dead letters (as `mqlog purge --dead`); returns how many went.
   * @throws ERR_NOT_FOUND for a channel this node has no inbox of.
   */
  async purgeDeadLetters(channel: string): Promise<number> {
    const inbox = await this.knownInbox(channel);
    const count = await (await inbox.deadLetters()).purge(this.compactStop.signal);
    this.logger.info({ event: 'dead_letters_purged', channel, count }, 'dead letters purged');
    return count;
  }

  private async knownInbox(channel: string): Promise<Awaited<ReturnType<MqlogNode['inbox']>>> {
    const channels = (await this.node.queues()).filter((q) => q.kind === 'inbox' && q.channel !== null).map((q) => q.channel as string);
    if (!channels.includes(channel)) {
      throw new MqlogError('ERR_NOT_FOUND', `no channel ${JSON.stringify(channel)} on this node (${channels.length === 0 ? 'it has none' : `its channels: ${channels.join(', ')}`})`, { details: { channel, channels } });
    }
    return this.node.inbox(channel);
  }

  retry(peer?: string): string[] {
    let woken: string[];
    if (peer === undefined) {
      woken = [...this.forwarders.values()].filter(({ forwarder }) => forwarder.retryNow()).map(({ forwarder }) => forwarder.destination);
    } else {
      const entry = this.forwarders.get(peer);
      if (entry === undefined && !Object.hasOwn(this.config.peers, peer)) {
        const known = this.peerEntries().map((p) => p.peer);
        throw new MqlogError('ERR_NOT_FOUND', `no peer ${JSON.stringify(peer)} on this node (${known.length === 0 ? 'it has none' : `its peers: ${known.join(', ')}`})`, { details: { peer, peers: known } });
      }
      woken = entry?.forwarder.retryNow() === true ? [peer] : [];
    }
    this.logger.info({ event: 'retry_now', peer: peer ?? null, woken }, woken.length === 0 ? 'retry asked: no forwarder was waiting' : 'retry asked: sending now');
    return woken;
  }

  /**
   * Takes the retry requests waiting in `DIR/control/` (spec/log-format.md §1.3) and answers them; one
   * round at a time. Never rejects: failures are logged.
   */
  takeRetryRequests(): Promise<void> {
    this.takingRequests = this.takingRequests
      .then(async () => {
        if (this.stopping !== undefined) return;
        await this.retryRequests.take((peer) => this.retry(peer ?? undefined));
      })
      .catch((err: unknown) => this.logger.error({ event: 'retry_requests', err }, 'cannot take the retry requests'));
    return this.takingRequests;
  }

  /** Forwarder statuses, for stat and the status page. */
  forwarderStatus(): ReturnType<Forwarder['status']>[] {
    return [...this.forwarders.values()].map(({ forwarder }) => forwarder.status());
  }

  /** After an outbox change: new destinations are looked for, once per DESTINATIONS_LOOK_MS at most. */
  private lookForDestinations(): void {
    if (this.destinationsLook !== undefined || this.stopping !== undefined) return;
    const look = (): void => {
      this.destinationsLook = undefined;
      this.destinationsLookedAt = performance.now();
      this.syncForwardersSoon();
    };
    const wait = this.destinationsLookedAt + DESTINATIONS_LOOK_MS - performance.now();
    if (wait <= 0) look();
    else this.destinationsLook = setTimeout(look, wait).unref();
  }

  /** Starts the forwarders that are missing (one sync at a time). */
  private syncForwardersSoon(): void {
    this.syncing ??= this.syncForwarders()
      .catch((err: unknown) => this.logger.error({ event: 'forwarders', err }, 'cannot start forwarders'))
      .finally(() => (this.syncing = undefined));
  }

  /** Starts a forwarder for every destination that has none yet (configured peers and recorded URLs). */
  private async syncForwarders(): Promise<void> {
    if (this.stopping !== undefined || this.feed === undefined) return;
    const outbox = this.node.outbox;
    const destinations = new Set([...Object.keys(this.config.peers), ...(await outbox.destinations())]);
    for (const destination of destinations) {
      if (this.forwarders.has(destination)) continue;
      const url = destinationUrl(this.config, destination);
      if (url === undefined) {
        if (!this.unknown.has(destination)) this.logger.warn({ event: 'unknown_destination', destination }, 'messages name a destination that is neither a peer nor a URL of a known transport');
        this.unknown.add(destination);
        continue;
      }
      let sender: Transport;
      try {
        sender = await this.transportFor(destination, url);
      } catch (err) {
        this.logger.error({ event: 'transport', peer: destination, err }, 'cannot make the transport of a destination');
        continue;
      }
      if (this.stopping !== undefined) {
        await sender.close();
        return;
      }
      const queue = await outbox.destinationQueue(destination, {
        onUndecodable: (stream, offset, reason) =>
          this.logger.error({ event: 'undecodable', peer: destination, stream, offset, reason }, 'an outbox frame holds no valid message: it can never be forwarded'),
        // The backlog's counter goes on from what the forwarder read rather than reading it again.
        onRead: (frame, address) => this.backlog?.counter.observe(frame, address),
      });
      const forwarder = new Forwarder({
        destination,
        url: transports.display(url),
        nodeId: this.nodeId,
        nodeName: this.config.name,
        queue,
        feed: this.feed,
        transport: sender,
        initialBackoffMs: this.config.forwardRetryDelayMs,
        maxBackoffMs: this.config.forwardMaxRetryDelayMs,
        // The address this daemon really listens on (a --listen flag included), or the one it advertises.
        replyTo: () => this.config.advertise ?? this.url,
        deadLetter: async (item, reason) => {
          let message;
          try {
            message = decodeMessage(item.frame.payload);
          } catch (err) {
            // Forwarded by its address alone (decodeAddress), a message whose other fields are bad can only
            // be refused: there is no message to keep as a dead letter. Said, not skipped silently.
            if (!isMqlogError(err, 'ERR_INVALID_MESSAGE')) throw err;
            this.logger.error({ event: 'dead_letter_unreadable', peer: destination, stream: item.frame.stream, offset: item.frame.offset, error: err.message, reason }, 'a message the peer refused has fields that do not decode: not kept as a dead letter');
            return;
          }
          await outbox.deadLetters.append(message, { stream: item.frame.stream, offset: item.frame.offset, destination, node: this.nodeId }, reason);
        },
        events: {
          sent: (peer, messages, bytes, durationMs, duplicates) => {
            this.metrics.forwarded.inc({ peer }, messages.length);
            this.metrics.forwardedBytes.inc({ peer }, bytes);
            this.metrics.batchSeconds.observe({ peer }, durationMs / 1000);
            for (const { meta } of messages) if (meta?.receipt === true) this.receipt(meta.id, peer, 'sent');
            this.logger.debug({ event: 'forwarded', peer, frames: messages.length, bytes, durationMs, duplicates }, 'forwarded');
          },
          failed: (peer, error, retryInMs) => {
            this.metrics.forwardErrors.inc({ peer, code: error.code });
            this.logger.warn({ event: 'forward_failed', peer, code: error.code, error: error.message, retryInMs }, 'forwarding failed');
          },
          // A failure and a recovery are published at once; other changes with the next periodic write.
          stateChanged: (_peer, state, previous) => {
            if (state === 'retrying' || previous === 'retrying') this.peersFile?.publish();
          },
          deadLettered: (peer, { meta }, reason) => {
            this.metrics.refused.inc({ peer });
            this.logger.error({ event: 'dead_lettered', peer, id: meta.id, reason }, 'peer refused a message for good');
            if (meta.receipt === true) this.receipt(meta.id, peer, 'dead', reason);
          },
          expired: (peer, { meta }) => {
            this.metrics.expiredUnsent.inc({ peer });
            this.logger.info({ event: 'expired', peer, id: meta.id }, 'message expired before it could be forwarded');
            if (meta.receipt === true) this.receipt(meta.id, peer, 'expired', 'time to live passed before it was forwarded');
          },
        },
      });
      this.forwarders.set(destination, { forwarder, sender });
      if (this.booted) forwarder.start();
      this.logger.info({ event: 'forwarder_started', peer: destination, url: transports.display(url) }, 'forwarding');
    }
  }

  /**
   * Re-reads mqlog.json and applies it without a restart (one reload at a time; spec/http-protocol.md
   * §11). A forwarder whose peer changed (URL or key) or went away — or every HTTP forwarder, when the
   * node's TLS material changed — lets its batch in flight finish, then stops; forwarders for new or
   * changed peers start, including for messages already waiting for a destination that was unknown until
   * now. A change of the servers' settings (`limits`, `listen`, `tls` and the contents of its files,
   * `admin`, `allowUnauthenticated`, peers gaining or losing keys) builds new servers: requests that start
   * after the reload meet them, requests in flight finish where they started. A new address listens
   * before the old one closes. `advertise` applies to the next batch sent. Other changed keys need a
   * restart: they are returned (and logged), not applied.
   * @throws ERR_CONFIG when the file (or a TLS file) is invalid, ERR_ADDRESS_IN_USE or ERR_IO when a new
   * address cannot listen: the running configuration is then kept unchanged, whole.
   */
  reload(): Promise<ReloadResult> {
    const previous = this.reloading ?? Promise.resolve(undefined);
    const next = previous.catch(() => undefined).then(() => this.applyReload());
    this.reloading = next;
    return next;
  }

  private async applyReload(): Promise<ReloadResult> {
    if (this.stopping !== undefined) throw new MqlogError('ERR_CLOSED', 'the daemon is stopping');
    const next = await loadConfig(this.dataDir, this.listenOverride === undefined ? {} : { listen: this.listenOverride });
    // A certificate renewed in place changes no key of the file: the files are read again and compared.
    const tls = await loadTls(next.tls);
    const old = this.config;
    const changed = (Object.keys(next) as (keyof Config)[]).filter((key) => JSON.stringify(next[key]) !== JSON.stringify(old[key]));
    const tlsChanged = !sameTls(this.tls, tls);
    const hadKeys = Object.values(old.peers).some((p) => p.key !== undefined);
    const hasKeys = Object.values(next.peers).some((p) => p.key !== undefined);
    const needsRestart = changed.filter((key) => !RELOADED_KEYS.has(key));
    const peersChanged = Object.keys({ ...old.peers, ...next.peers }).filter((name) => JSON.stringify(old.peers[name]) !== JSON.stringify(next.peers[name]));
    const serversChanged = tlsChanged || hadKeys !== hasKeys || changed.some((key) => SERVER_KEYS.has(key));
    const applied: Config = { ...old, ...Object.fromEntries([...RELOADED_KEYS].map((key) => [key, next[key]])) };
    // When the new servers cannot be put in place, nothing of the file applies (the caller logs why).
    if (serversChanged) await this.replaceServers(applied, tls);
    this.config = applied;
    this.intake?.setLimits(intakeLimits(applied));
    this.tls = tls;
    this.peerKeys.clear();
    for (const [name, peer] of Object.entries(next.peers)) if (peer.key !== undefined) this.peerKeys.set(name, peer.key);
    await this.syncing;
    // Stopped while still in the map, so that no sync starts a second forwarder on the same queue meanwhile.
    const stale = [...this.forwarders].filter(([name]) => peersChanged.includes(name) || (tlsChanged && /^https?:/i.test(destinationUrl(old, name) ?? '')));
    await Promise.all(stale.map(async ([, { forwarder, sender }]) => {
      await forwarder.stop();
      await sender.close();
    }));
    for (const [name] of stale) this.forwarders.delete(name);
    await this.syncing;
    this.syncForwardersSoon();
    await this.syncing;
    const servers = serversChanged ? changed.filter((key) => SERVER_KEYS.has(key)).concat(tlsChanged && !changed.includes('tls') ? ['tls'] : []) : [];
    this.logger.info(
      { event: 'reloaded', peers: peersChanged, servers, url: this.url, adminUrl: this.adminUrl ?? null, needsRestart },
      needsRestart.length === 0 ? 'configuration reloaded' : `configuration reloaded; a restart applies ${needsRestart.join(', ')}`,
    );
    return { peers: peersChanged, servers, url: this.url, needsRestart };
  }

  /**
   * Builds the servers of `config` and puts them in place of the running ones: on an unchanged address
   * they take the next connections (Listener.use); a new address is listened on before the old one
   * closes. When a new address cannot listen, everything new is closed and the running servers stay.
   */
  private async replaceServers(config: Config, tls: TlsMaterial): Promise<void> {
    const peerListener = this.peerListener;
    if (peerListener === undefined) throw new MqlogError('ERR_CLOSED', 'the daemon is not listening');
    const servers = this.createServers(config, tls);
    const adminAddress = servers.admin === undefined ? undefined : config.admin.listen;
    const opened: Listener[] = [];
    try {
      if (peerListener.address !== config.listen) opened.push(await Listener.open(servers.peer, config.listen, scheme(tls), graceMs(config)));
      if (servers.admin !== undefined && adminAddress !== undefined && this.adminListener?.address !== adminAddress) {
        opened.push(await Listener.open(servers.admin, adminAddress, adminScheme(config), graceMs(config)));
      }
    } catch (err) {
      await Promise.all(opened.map((listener) => listener.close()));
      await closeApps(servers);
      throw err;
    }
    // From here on nothing fails: the new servers take over.
    const closing: Listener[] = [];
    const newPeer = opened.find((listener) => listener.app === servers.peer);
    if (newPeer === undefined) await peerListener.use(servers.peer, scheme(tls));
    else {
      this.peerListener = newPeer;
      closing.push(peerListener);
    }
    this.url = (newPeer ?? peerListener).url;
    const oldAdmin = this.adminListener;
    if (servers.admin === undefined) {
      this.adminListener = undefined;
      if (oldAdmin !== undefined) closing.push(oldAdmin);
    } else {
      const newAdmin = opened.find((listener) => listener.app === servers.admin);
      if (newAdmin === undefined) await oldAdmin?.use(servers.admin, adminScheme(config));
      else {
        this.adminListener = newAdmin;
        if (oldAdmin !== undefined) closing.push(oldAdmin);
      }
    }
    this.adminUrl = this.adminListener?.url;
    // The old addresses close once what they serve is answered; stop() waits for them.
    for (const listener of closing) {
      const closed = listener.close().finally(() => this.closingListeners.delete(closed));
      this.closingListeners.add(closed);
    }
    this.logger.info({ event: 'servers_replaced', url: this.url, adminUrl: this.adminUrl ?? null, closing: closing.map((listener) => listener.url) }, 'new servers in place');
  }

  /** One background compaction round at a time; appends and reads never wait for it. */
  private compactInBackground(): void {
    if (this.compacting !== undefined || this.stopping !== undefined) return;
    this.compactor ??= new Compactor({
      store: this.node.store,
      dataDir: this.dataDir,
      retainDoneMs: this.config.retainDoneMs,
      retainReceiptsMs: this.config.retainReceiptsMs,
      orphanChunkMs: this.config.orphanChunkMs,
      busyShare: BACKGROUND_BUSY_SHARE,
      ...(this.backlog === undefined ? {} : { outboxCounter: this.backlog.counter }),
    });
    this.compacting = this.compactor
      .round(this.compactStop.signal)
      .then((result) => {
        this.metrics.compactedBytes.inc(result.bytesReclaimed);
        this.metrics.compactionSeconds.observe(result.durationMs / 1000);
        if (result.bytesReclaimed > 0 || result.receiptsPruned > 0) {
          this.logger.info({ event: 'compacted', bytes: result.bytesReclaimed, receipts: result.receiptsPruned, durationMs: Math.round(result.durationMs) }, 'compacted');
        }
      })
      .catch((err: unknown) => this.logger.error({ event: 'compaction', err }, 'compaction failed'))
      .finally(() => (this.compacting = undefined));
  }

  /** Records a receipt state change of a message this node sent; failures are logged, not thrown. */
  private receipt(id: string, peer: string, state: ReceiptState, reason?: string): void {
    this.node.outbox.receipts.update(id, peer, state, Date.now(), reason).catch((err: unknown) => this.logger.error({ event: 'receipt', id, peer, err }, 'cannot record a receipt state'));
  }

  /** Graceful stop; idempotent. */
  stop(): Promise<void> {
    this.stopping ??= (async () => {
      await this.reloading?.catch(() => undefined);
      for (const timer of this.timers) clearInterval(timer);
      clearTimeout(this.destinationsLook);
      // A compaction round stops at once (inside a segment too): a shutdown does not wait for it.
      this.compactStop.abort();
      await Promise.all([this.peerListener?.close(), this.adminListener?.close(), ...this.closingListeners]);
      await this.compacting;
      await this.compactor?.close();
      await this.handler?.close();
      await Promise.all(this.sources.map((source) => source.close()));
      await this.syncing;
      await Promise.all([...this.forwarders.values()].map(({ forwarder }) => forwarder.stop()));
      await Promise.all([...this.forwarders.values()].map(({ sender }) => sender.close()));
      await this.takingRequests;
      // No daemon, no live state: mqlog peers reads the queues' state instead.
      await this.peersFile?.close();
      await this.intake?.close();
      await this.counting;
      for (const counts of this.channels.values()) await counts.close();
      await this.backlog?.close();
      await this.feed?.close();
      await this.node.close();
      this.logger.info({ event: 'stopped' }, 'daemon stopped');
      await this.lock.release();
    })();
    return this.stopping;
  }
}

/** What a reload applied. */
export interface ReloadResult {
  /** Peers added, changed (URL or key) or removed. */
  readonly peers: readonly string[];
  /** The servers' settings that changed and were applied with new servers (`tls` also for files renewed in place). */
  readonly servers: readonly string[];
  /** Where the peer server listens after the reload. */
  readonly url: string;
  /** Changed top-level keys that take effect only after a restart. */
  readonly needsRestart: readonly string[];
}

/** Keys of mqlog.json that a reload applies. */
const RELOADED_KEYS: ReadonlySet<keyof Config> = new Set(['peers', 'advertise', 'limits', 'listen', 'tls', 'admin', 'allowUnauthenticated']);
/** Keys whose change needs new servers. */
const SERVER_KEYS: ReadonlySet<keyof Config> = new Set(['limits', 'listen', 'tls', 'admin', 'allowUnauthenticated']);

function intakeLimits(config: Config): IntakeLimits {
  const limits = config.limits;
  return {
    maxBodyBytes: limits.maxBodyBytes,
    maxStreamedBodyBytes: limits.maxStreamedBodyBytes,
    maxFrameBytes: maxFrameBytesFor(limits.maxBodyBytes),
    maxHeaders: limits.maxHeaders,
    maxHeaderBytes: limits.maxHeaderBytes,
    maxChannelBytes: limits.maxChannelBytes,
  };
}

/** How long a closing server waits for the requests it serves before it ends their connections. */
function graceMs(config: Config): number {
  return config.limits.requestTimeoutMs + 10_000;
}

function adminScheme(config: Config): 'http' | 'https' {
  return config.admin.tls === true ? 'https' : 'http';
}

async function closeApps(servers: Servers): Promise<void> {
  await servers.peer.close();
  await servers.admin?.close();
}
