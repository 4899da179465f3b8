/**
 * Emptying a consumed queue (`mqlog purge`): every message stored now that is not done — ready, claimed,
 * delayed or waiting for a retry — is done (as acked), in one durable transaction of `P` records, one per
 * run of consecutive message offsets (spec/log-format.md §11.3). Messages appended meanwhile stay.
 */
import { FrameType } from '../log/frame.js';
import type { LogStore } from '../log/log-store.js';
import { scanStream } from '../log/stream-scan.js';
import type { MessageMeta } from './codec.js';
import { ConsumerJournal } from './consumer-journal.js';
import type { StateRecord } from './consumer-state.js';
import type { QueueInfo } from './layout.js';
import { priorityOfKey } from './priority.js';
import { CHUNK_TYPES, decodeFrameMeta } from './queue-peek.js';

/**
 * Purges the queue; messages that asked for a receipt are reported `dead` ("purged") first. Returns how
 * many messages went.
 * @throws ERR_ABORTED/ERR_TIMEOUT while waiting for the lock; ERR_CORRUPT_STATE, ERR_IO.
 */
export async function purgeMessages(store: LogStore, info: QueueInfo, journal: ConsumerJournal, onSettled: ((meta: MessageMeta, outcome: 'dead', reason: string) => Promise<void>) | undefined, signal?: AbortSignal): Promise<number> {
  // Acks of claims in force count as done too: read them (the lock keeps new claims out meanwhile).
  const view = await ConsumerJournal.open(info.dir);
  try {
    return await journal.transact(async (state) => {
      await view.refresh();
      const acked = view.state;
      const records: StateRecord[] = [];
      let purged = 0;
      for (const id of await store.streams(info.queue)) {
        if (priorityOfKey(id.key) === undefined) continue;
        // Runs of consecutive message offsets not done: a chunk or a done message ends a run.
        let run: { from: number; to: number } | undefined;
        const close = (): void => {
          if (run !== undefined) records.push({ k: 'P', s: id.name, o: run.from, e: run.to });
          run = undefined;
        };
        for await (const event of scanStream(store, info.queue, id.name, { from: { offset: state.firstNotDone(id.name, 0) }, skipTypes: CHUNK_TYPES })) {
          if (event.kind !== 'frame') break;
          const { frame } = event;
          if (frame.type !== FrameType.MESSAGE || state.isDone(frame.stream, frame.offset) || acked.isDone(frame.stream, frame.offset)) {
            close();
            continue;
          }
          if (run !== undefined && run.to !== frame.offset) close();
          run = run === undefined ? { from: frame.offset, to: frame.offset + 1 } : { from: run.from, to: frame.offset + 1 };
          purged++;
          const decoded = decodeFrameMeta(frame);
          if (decoded !== undefined && 'meta' in decoded && decoded.meta.receipt === true) await onSettled?.(decoded.meta, 'dead', 'purged');
        }
        close();
      }
      return { records, result: purged };
    }, signal);
  } finally {
    await view.close();
  }
}
