/**
 * A message handed to a consumer (Delivery), and what the consumer knows of the claim it came in
 * (HeldClaim): spec/log-format.md §11.2. The settling itself (acks, nacks, renewals) is held-claims.ts.
 */
import type { FrameHint, PositionHint } from './consumer-state.js';
import type { MessageMeta, MessageRecord } from './codec.js';
import type { IntervalSet } from '../util/interval-set.js';

/** A message handed to a consumer. Ack it when done; nack it to have it back later. */
export interface Delivery extends MessageRecord {
  /** The message's headers; `{}` when it has none (the same shape as `mqlog tail --json`). */
  readonly headers: Readonly<Record<string, string>>;
  readonly stream: string;
  readonly offset: number;
  /** How many times the message was handed out, this time included. */
  readonly deliveries: number;
  /**
   * The lease lapses at this time (ms since epoch) unless acked, nacked or renewed before. The consumer
   * renews the lease of every message it handed out until it is acked or nacked (see ConsumerOptions.renewLeases).
   */
  readonly leaseUntil: number;
  /**
   * Marks the message done, durably (fsync'd) before resolving.
   * @throws ERR_LEASE_EXPIRED if the lease lapsed and the message was handed to someone else;
   *   ERR_ALREADY_ACKED if it was acked already.
   */
  ack(): Promise<void>;
  /**
   * Renews the lease: it now lapses `ms` from now (default: the visibility timeout), or later.
   * @throws ERR_LEASE_EXPIRED if the lease lapsed already and the message was handed out again.
   */
  extend(ms?: number): Promise<void>;
  /** Gives the message back: ready again after `delayMs` (default 0). `reason` is kept for the dead letters. */
  nack(options?: { delayMs?: number; reason?: string }): Promise<void>;
  /**
   * The body as a stream of buffers. For a streamed (large) body — `streamed` is set and `body` is
   * empty — this is the only way to read it; memory stays flat whatever its size.
   */
  bodyStream(): AsyncIterable<Buffer>;
}

/** A claim this consumer made: its members go out under one lease, renewed as one. */
export class HeldClaim {
  readonly token: string;
  readonly stream: string;
  readonly priority: number;
  /** Hand-outs of each member, this one included. */
  readonly deliveries: number;
  /** The ack journal its acks go to. */
  readonly journal: string;
  readonly hint: PositionHint | undefined;
  /** Until when it is held, as far as this consumer made sure (its own renewals). */
  until: number;
  /** Taken over after it lapsed: acks are checked against what the taker found (`lostAcked`). */
  lost = false;
  lostAcked: IntervalSet | undefined;
  /** Members not settled yet (reserved, handed out, being acked, or ended but not yet recorded). */
  unsettled = 0;
  /** Members acked durably through the ack journal. */
  ackedInJournal = 0;

  constructor(init: { token: string; stream: string; priority: number; deliveries: number; journal: string; hint: PositionHint | undefined; until: number }) {
    this.token = init.token;
    this.stream = init.stream;
    this.priority = init.priority;
    this.deliveries = init.deliveries;
    this.journal = init.journal;
    this.hint = init.hint;
    this.until = init.until;
  }
}

export type DeliveryState = 'reserved' | 'out' | 'acking' | 'acked' | 'nacked' | 'returned' | 'ended' | 'lost';

/** What a ClaimDelivery asks of the consumer that made it. */
export interface DeliveryOwner {
  ack(delivery: ClaimDelivery): Promise<void>;
  nack(delivery: ClaimDelivery, options: { delayMs?: number; reason?: string }): Promise<void>;
  extend(delivery: ClaimDelivery, ms: number | undefined): Promise<void>;
  bodyStream(delivery: ClaimDelivery): AsyncIterable<Buffer>;
}

/** A Delivery of a claimed message: the message's fields, where it lies, and its place in the claim. */
// The message's fields are the meta's it is made from (Object.assign in the constructor): declared once,
// by MessageMeta, through declaration merging rather than listed again here.
// eslint-disable-next-line @typescript-eslint/no-empty-object-type, @typescript-eslint/no-unsafe-declaration-merging
export interface ClaimDelivery extends MessageMeta {}
// eslint-disable-next-line @typescript-eslint/no-unsafe-declaration-merging
export class ClaimDelivery implements Delivery {
  readonly headers: Readonly<Record<string, string>>;
  readonly body: Buffer;
  readonly stream: string;
  readonly offset: number;
  readonly deliveries: number;
  /** @internal */
  readonly claim: HeldClaim;
  /** @internal where its frame lies */
  readonly frame: FrameHint;
  /** @internal */
  state: DeliveryState = 'reserved';
  readonly #owner: DeliveryOwner;

  constructor(owner: DeliveryOwner, claim: HeldClaim, meta: MessageMeta, body: Buffer, offset: number, frame: FrameHint) {
    Object.assign(this, meta);
    this.headers = meta.headers ?? {};
    this.#owner = owner;
    this.body = body;
    this.stream = claim.stream;
    this.offset = offset;
    this.deliveries = claim.deliveries;
    this.claim = claim;
    this.frame = frame;
  }

  get leaseUntil(): number {
    return this.claim.until;
  }

  /** The message's fields without the body (what a receipt or a dead letter needs). */
  meta(): MessageMeta {
    const { body: _body, stream: _stream, offset: _offset, deliveries: _deliveries, claim: _claim, frame: _frame, state: _state, ...meta } = this;
    return meta;
  }

  ack(): Promise<void> {
    return this.#owner.ack(this);
  }

  nack(options: { delayMs?: number; reason?: string } = {}): Promise<void> {
    return this.#owner.nack(this, options);
  }

  extend(ms?: number): Promise<void> {
    return this.#owner.extend(this, ms);
  }

  bodyStream(): AsyncIterable<Buffer> {
    return this.#owner.bodyStream(this);
  }
}
