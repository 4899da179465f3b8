/**
 * The daemon's metrics (prom-client), served at GET /metrics in the Prometheus text format. One registry
 * per daemon, so several daemons can share a process (the demo). Every name starts with `mqlog_`.
 * Labels are channel and peer names only: never message contents or secrets.
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { packageVersion } from '../util/version.js';

export class Metrics {
  readonly registry = new Registry();
  readonly appended: Counter<'channel'>;
  readonly received: Counter<'channel'>;
  readonly duplicates: Counter;
  readonly forwarded: Counter<'peer'>;
  readonly forwardedBytes: Counter<'peer'>;
  readonly forwardErrors: Counter<'peer' | 'code'>;
  readonly acked: Counter<'channel'>;
  readonly dead: Counter<'channel'>;
  readonly expired: Counter<'channel'>;
  readonly refused: Counter<'peer'>;
  readonly expiredUnsent: Counter<'peer'>;
  readonly receipts: Counter<'state'>;
  readonly tornTails: Counter;
  readonly damagedRanges: Counter;
  readonly dedupGaps: Counter;
  readonly handled: Counter<'channel' | 'outcome'>;
  readonly backlog: Gauge<'peer'>;
  readonly pending: Gauge<'channel'>;
  readonly deadLetters: Gauge<'channel'>;
  readonly restarts: Gauge;
  readonly fsyncSeconds: Histogram;
  readonly batchSeconds: Histogram<'peer'>;
  readonly compactedBytes: Counter;
  readonly compactionSeconds: Histogram;

  constructor(restarts = 0) {
    const registers = [this.registry];
    this.appended = new Counter({ name: 'mqlog_appended_messages_total', help: 'Messages appended to the outbox, per channel (seen by the daemon since it started).', labelNames: ['channel'], registers });
    this.received = new Counter({ name: 'mqlog_received_messages_total', help: 'Messages stored in an inbox from peers, per channel.', labelNames: ['channel'], registers });
    this.duplicates = new Counter({ name: 'mqlog_duplicate_messages_total', help: 'Frames peers sent again that were already stored (acknowledged, not stored twice).', registers });
    this.forwarded = new Counter({ name: 'mqlog_forwarded_messages_total', help: 'Messages a peer acknowledged, per peer.', labelNames: ['peer'], registers });
    this.forwardedBytes = new Counter({ name: 'mqlog_forwarded_bytes_total', help: 'Frame bytes a peer acknowledged, per peer.', labelNames: ['peer'], registers });
    this.forwardErrors = new Counter({ name: 'mqlog_forward_errors_total', help: 'Failed forwarding attempts, per peer and error code.', labelNames: ['peer', 'code'], registers });
    this.acked = new Counter({ name: 'mqlog_acked_messages_total', help: 'Inbox messages acknowledged by consumers or the handler, per channel.', labelNames: ['channel'], registers });
    this.dead = new Counter({ name: 'mqlog_dead_messages_total', help: 'Inbox messages moved to dead letters, per channel.', labelNames: ['channel'], registers });
    this.expired = new Counter({ name: 'mqlog_expired_messages_total', help: 'Inbox messages whose time to live passed before a consumer took them, per channel.', labelNames: ['channel'], registers });
    this.refused = new Counter({ name: 'mqlog_refused_messages_total', help: "Outbox messages a peer refused for good, moved to the outbox's dead letters, per peer.", labelNames: ['peer'], registers });
    this.expiredUnsent = new Counter({ name: 'mqlog_unsent_expired_messages_total', help: 'Outbox messages whose time to live passed before they were forwarded, per peer.', labelNames: ['peer'], registers });
    this.receipts = new Counter({ name: 'mqlog_receipts_total', help: 'Receipt reports received from peers, per state.', labelNames: ['state'], registers });
    this.tornTails = new Counter({ name: 'mqlog_torn_tails_total', help: 'Torn final frames cut off by recovery.', registers });
    this.dedupGaps = new Counter({ name: 'mqlog_dedup_gap_total', help: "Frames stored although their sender offset was already received: the sender's offsets went back (a lost outbox, a restored backup).", registers });
    this.damagedRanges = new Counter({ name: 'mqlog_damaged_ranges_total', help: 'Damaged byte ranges the daemon\'s log readers passed over, resynchronising after each (see mqlog verify).', registers });
    this.handled = new Counter({ name: 'mqlog_handler_calls_total', help: 'Handler calls, per channel and outcome.', labelNames: ['channel', 'outcome'], registers });
    this.backlog = new Gauge({ name: 'mqlog_backlog_messages', help: 'Outbox messages waiting for a peer.', labelNames: ['peer'], registers });
    this.pending = new Gauge({ name: 'mqlog_inbox_pending_messages', help: 'Inbox messages not yet acked, dead-lettered or expired, per channel.', labelNames: ['channel'], registers });
    this.deadLetters = new Gauge({ name: 'mqlog_dead_letter_messages', help: 'Messages in the dead letters of a channel, not redriven.', labelNames: ['channel'], registers });
    this.restarts = new Gauge({ name: 'mqlog_restarts', help: 'Times the angel restarted this daemon.', registers });
    this.fsyncSeconds = new Histogram({
      name: 'mqlog_fsync_duration_seconds',
      help: "Write plus fdatasync of one group commit made by this daemon (inbox, dead letters, receipts). Appends of library processes to the outbox are made and timed there: a daemon that only forwards observes none.",
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1],
      registers,
    });
    this.batchSeconds = new Histogram({
      name: 'mqlog_forward_batch_duration_seconds',
      help: 'Time from sending a batch to the peer until its ok, per peer.',
      labelNames: ['peer'],
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5],
      registers,
    });
    this.compactedBytes = new Counter({ name: 'mqlog_compacted_bytes_total', help: 'Bytes of segments reclaimed by compaction.', registers });
    this.compactionSeconds = new Histogram({
      name: 'mqlog_compaction_duration_seconds',
      help: 'Duration of one background compaction round over all queues.',
      buckets: [0.001, 0.01, 0.05, 0.1, 0.5, 1, 5, 30],
      registers,
    });
    this.restarts.set(restarts);
    const buildInfo = new Gauge({ name: 'mqlog_build_info', help: 'Always 1; the labels say which mqlog and which Node.js run this daemon.', labelNames: ['version', 'nodejs'], registers });
    buildInfo.set({ version: packageVersion(), nodejs: process.versions.node }, 1);
    // process_cpu_seconds_total and the like become mqlog_process_cpu_seconds_total, mqlog_nodejs_heap_size_total_bytes, …
    collectDefaultMetrics({ register: this.registry, prefix: 'mqlog_' });
    // Gauges named like counters (the format's linter refuses them); their per-type siblings stay.
    for (const name of ['active_handles_total', 'active_requests_total', 'active_resources_total']) this.registry.removeSingleMetric(`mqlog_nodejs_${name}`);
  }

  text(): Promise<string> {
    return this.registry.metrics();
  }

  get contentType(): string {
    return this.registry.contentType;
  }
}
