/**
 * What compaction does with a segment before reading it (spec/log-format.md §13): from the log's
 * summary of the segment (its runs of frames per type) and the queue's state — the consumer state of an
 * inbox, the outbox summaries and cursors of the outbox — a segment whose messages are all removable is
 * dropped unread, one with nothing removable is kept unread, and the others are read frame by frame.
 *
 * Each verdict comes with a fingerprint of the state it depends on: while it is the same, reading the
 * segment again would decide the same (frames only ever leave a segment), so a compactor that read it
 * once need not read it again (compaction.ts).
 *
 * Pure functions.
 */
import { FrameType } from '../log/frame.js';
import type { SegmentDecision, SegmentSummary } from '../log/log-store.js';
import type { ConsumerState } from './consumer-state.js';
import { segmentTotal, type SegmentMessages } from './message-blocks.js';
import type { OutboxState } from './outbox-state.js';

export interface SegmentVerdict {
  readonly decision: SegmentDecision;
  /** What the decision depends on besides the segment's frames; undefined: read it every round. */
  readonly fingerprint: string | undefined;
}

const READ_ALWAYS: SegmentVerdict = { decision: 'read', fingerprint: undefined };
const UNTIL = Number.MAX_SAFE_INTEGER;

/**
 * A segment of an inbox (`dead`: of a channel's dead letters, whose messages are done when redriven,
 * that is acked). Done offsets are only ever message offsets, so a run of messages is all done when the
 * consumer state counts as many done offsets in it.
 */
export function inboxVerdict(summary: SegmentSummary, state: Pick<ConsumerState, 'doneCount'>, kind: 'inbox' | 'dead', retainDoneMs: number): SegmentVerdict {
  const chunks = hasChunks(summary);
  if (!summary.complete) {
    // The last segment: what it holds past its summary is not known, but nothing in it is removable
    // while nothing from its base on is done (and no chunk may be an orphan), and nothing changes while it
    // neither grows nor more is done.
    const done = state.doneCount(summary.stream, summary.base, UNTIL);
    if (done === 0 && !chunks) return { decision: 'keep', fingerprint: undefined };
    return { decision: 'read', fingerprint: `${summary.bytes}|${done}|${chunks ? state.doneCount(summary.stream, 0, UNTIL) : ''}` };
  }
  let messages = 0;
  let done = 0;
  for (const run of summary.runs) {
    if (run.type !== FrameType.MESSAGE) continue;
    messages += run.to - run.from;
    done += state.doneCount(summary.stream, run.from, run.to);
  }
  const fingerprint = String(done);
  // Frames of other types go only with a removed message, or as orphans (chunks whose message never
  // came, once old enough): with none done and no chunk, none go. Chunks are judged again when the
  // stream's messages move on (their owner may be elsewhere in it) or an orphan comes of age.
  if (done === 0 && !chunks) return { decision: 'keep', fingerprint };
  if (chunks) return { decision: 'read', fingerprint: `${fingerprint}|${state.doneCount(summary.stream, 0, UNTIL)}` };
  // Done means acked in the dead letters, and the count does not tell acked from other ends there; a
  // kept done message may become old enough: read.
  const allGone = kind === 'inbox' && retainDoneMs === 0 && done === messages && messages === summary.frames;
  return { decision: allGone ? 'drop' : 'read', fingerprint };
}

/**
 * A segment of the outbox, from its outbox summary (message-blocks.ts) and the cursors: a message is
 * done once every destination it names passed it (and its receipt, if it asked for one, settled).
 */
export function outboxVerdict(summary: SegmentSummary, messages: SegmentMessages | undefined, state: OutboxState, retainDoneMs: number, now: number): SegmentVerdict {
  if (!summary.complete) {
    // The last segment: the same while it does not grow and no cursor of its stream moves.
    const cursors = state.destinations().map((d) => state.cursor(d).offsetOf(summary.stream));
    return { decision: 'read', fingerprint: `${summary.bytes}|${cursors.join(',')}` };
  }
  if (messages === undefined || messages.id !== summary.id) return READ_ALWAYS;
  const end = (summary.lastOffset ?? summary.base) + 1;
  const destinations = new Set<string>();
  let anyDone = false;
  let allDone = true;
  let receipts = 0;
  let maxTs = 0;
  for (const block of messages.blocks) {
    receipts += block.receipts;
    maxTs = Math.max(maxTs, block.maxTs);
    for (const group of block.groups) {
      let passedAll = true;
      let passedNone = false;
      for (const d of group.to) {
        destinations.add(d);
        const passed = state.cursor(d).offsetOf(summary.stream);
        if (passed < block.to) passedAll = false;
        if (passed <= block.from) passedNone = true;
      }
      if (!passedAll) allDone = false;
      // Unless some destination has passed none of them, some may be done.
      if (!passedNone) anyDone = true;
    }
  }
  const fingerprint = [...destinations].sort().map((d) => Math.min(state.cursor(d).offsetOf(summary.stream), end)).join(',');
  // Chunks and frames that do not decode go only with a removed message, or are kept, and chunks also as
  // orphans: with no message done and no chunk, nothing goes. Chunks are judged again when a cursor of
  // the stream moves (their owner may be elsewhere in it) or an orphan comes of age.
  if (hasChunks(summary)) {
    const cursors = state.destinations().map((d) => state.cursor(d).offsetOf(summary.stream));
    return { decision: 'read', fingerprint: `${fingerprint}|${cursors.join(',')}` };
  }
  if (!anyDone) return { decision: 'keep', fingerprint };
  const wholeSegment = (segmentTotal(messages)?.messages ?? 0) === summary.frames;
  if (allDone && receipts === 0 && maxTs + retainDoneMs <= now && wholeSegment) return { decision: 'drop', fingerprint };
  return { decision: 'read', fingerprint };
}

function hasChunks(summary: SegmentSummary): boolean {
  return (summary.types.get(FrameType.BODY_CHUNK)?.frames ?? 0) > 0;
}
