/**
 * The node's BatchSink (spec/http-protocol.md §4, §5): hands what a transport received to the node's
 * Intake (queue/intake.ts), which checks every frame, recognises what was stored before, stores the new
 * frames durably and only then lets the transport answer.
 */
import type { Intake, IntakeLimits } from '../queue/intake.js';
import type { BatchResult, BatchSink, IncomingBatch } from '../transport/transport.js';

export class IntakeSink implements BatchSink {
  private readonly intake: Intake;
  private readonly limits: IntakeLimits | undefined;

  /** `limits`: what every batch taken here is checked against (default: the intake's own). */
  constructor(intake: Intake, limits?: IntakeLimits) {
    this.intake = intake;
    this.limits = limits;
  }

  accept(batch: IncomingBatch): Promise<BatchResult> {
    return this.intake.accept({
      node: batch.node,
      name: batch.name,
      destination: batch.destination,
      peer: batch.peer,
      frames: batch.frames,
      covers: batch.covers === undefined ? undefined : new Map(Object.entries(batch.covers).map(([stream, [from, to]]) => [stream, { from, to }])),
      unordered: batch.unordered,
      replyTo: batch.replyTo,
      limits: this.limits,
    });
  }
}
