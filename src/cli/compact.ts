/**
 * `mqlog compact --data DIR`: reclaims the segments of messages that are done (sent, acked, dead-lettered,
 * expired) and prints what it reclaimed. `--older-than DUR` keeps done messages younger than DUR (like the
 * original `wipe`: remove what was sent or processed more than DUR ago). Safe while a daemon runs.
 */
import { MqlogNode } from '../daemon/node.js';
import { compactNode } from '../queue/compaction.js';
import { boolFlag, dataDir, durationFlag, jsonLine, writeLine, type Command, type ParsedArgs } from './args.js';
import { progress } from './progress.js';

export const compactCommand: Command = {
  name: 'compact',
  summary: 'reclaim the disk space of messages that are done; prints bytes reclaimed',
  usage: `--data DIR [--older-than DUR] [--json]
  --older-than DUR   only remove done messages sent more than DUR ago (default: retainDoneMs of mqlog.json, 0)
  --json             {"bytesReclaimed","segmentsDeleted","segmentsRewritten","framesRemoved","receiptsPruned"}`,
  options: { data: { type: 'string' }, 'older-than': { type: 'string' }, json: { type: 'boolean' } },
  allowPositionals: false,
  run,
};

async function run(args: ParsedArgs): Promise<number> {
  const dir = dataDir(args);
  const node = await MqlogNode.inspect(dir);
  const olderThan = durationFlag(args, 'older-than');
  const line = progress();
  let segments = 0;
  let result;
  try {
    result = await compactNode({
      store: node.store,
      dataDir: node.dataDir,
      retainDoneMs: olderThan ?? node.config.retainDoneMs,
      retainReceiptsMs: olderThan ?? node.config.retainReceiptsMs,
      orphanChunkMs: node.config.orphanChunkMs,
      onSegment: (queue) => line.update(`compacting ${queue}: ${++segments} segment(s) looked at`),
    });
  } finally {
    await node.close();
  }
  line.done();
  const totals = {
    bytesReclaimed: result.bytesReclaimed,
    segmentsDeleted: result.queues.reduce((n, q) => n + q.segmentsDeleted, 0),
    segmentsRewritten: result.queues.reduce((n, q) => n + q.segmentsRewritten, 0),
    framesRemoved: result.queues.reduce((n, q) => n + q.framesRemoved, 0),
    receiptsPruned: result.receiptsPruned,
  };
  if (boolFlag(args, 'json')) await jsonLine(totals);
  else {
    for (const q of result.queues) {
      if (q.skipped === true) await writeLine(`${q.queue}: skipped, another compactor is working on it`);
      if (q.bytesReclaimed > 0) await writeLine(`${q.queue}: ${q.bytesReclaimed} bytes reclaimed (${q.segmentsDeleted} segment(s) deleted, ${q.segmentsRewritten} rewritten, ${q.framesRemoved} message(s) removed)`);
    }
    await writeLine(`reclaimed ${totals.bytesReclaimed} bytes${totals.receiptsPruned > 0 ? `, pruned ${totals.receiptsPruned} receipt(s)` : ''}`);
  }
  return 0;
}
