/**
 * Property test of the receipt state machine against a model: after any sequence of reports (some for
 * destinations the message never named, some sent at the same time), each destination holds the most
 * advanced state reported for it (processed > dead = expired > sent > queued; between dead and expired
 * the first one stays), `update` says whether it changed anything, and the message's state is the
 * aggregate of its destinations' (processed when all are; else dead, else expired if any is; else sent
 * when all were sent; else queued). On real files.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { ReceiptStore, aggregate, type ReceiptState } from '../../src/queue/receipts.ts';
import { newId } from '../../src/util/ids.ts';
import { tempDir } from '../helpers/index.ts';

const RANK: Record<ReceiptState, number> = { queued: 0, sent: 1, dead: 2, expired: 2, processed: 3 };
const DESTINATIONS = ['b', 'c', 'd', 'e'];
const REPORTED: readonly ReceiptState[] = ['sent', 'processed', 'dead', 'expired'];

interface Report {
  readonly destination: string;
  readonly state: ReceiptState;
  /** Sent together with the previous report (both in flight at once). */
  readonly together: boolean;
}

const report: fc.Arbitrary<Report> = fc.record({
  // 'x' is a destination the message never named: its reports change nothing.
  destination: fc.constantFrom(...DESTINATIONS, 'x'),
  state: fc.constantFrom(...REPORTED),
  together: fc.boolean(),
});

test('receipts hold the most advanced state reported per destination, and the aggregate of those', async (t) => {
  const dir = await tempDir(t);
  await fc.assert(
    fc.asyncProperty(fc.integer({ min: 1, max: DESTINATIONS.length }), fc.array(report, { maxLength: 20 }), async (count, reports) => {
      const store = new ReceiptStore(dir);
      const id = newId();
      const named = DESTINATIONS.slice(0, count);
      await store.create(id, named, 1);
      const model = new Map<string, ReceiptState>(named.map((d) => [d, 'queued']));
      // Reports sent together are in flight at once; the store applies them in the order they were made.
      const groups: Report[][] = [];
      for (const r of reports) {
        if (r.together && groups.length > 0) (groups.at(-1) as Report[]).push(r);
        else groups.push([r]);
      }
      let at = 2;
      for (const group of groups) {
        const changed = await Promise.all(group.map((r) => store.update(id, r.destination, r.state, at++)));
        group.forEach((r, i) => {
          const current = model.get(r.destination);
          const expected = current !== undefined && RANK[r.state] > RANK[current];
          if (expected) model.set(r.destination, r.state);
          assert.equal(changed[i], expected, `update(${r.destination}, ${r.state}) over ${String(current)}`);
        });
      }
      const status = await store.status(id);
      assert.ok(status !== undefined);
      assert.deepEqual(Object.fromEntries(Object.entries(status.peers).map(([d, p]) => [d, p.state])), Object.fromEntries(model));
      assert.equal(status.state, aggregate([...model.values()]));
      // The aggregate's rules, spelled out.
      const states = [...model.values()];
      const expected = states.every((s) => s === 'processed') ? 'processed' : states.includes('dead') ? 'dead' : states.includes('expired') ? 'expired' : states.every((s) => s === 'sent' || s === 'processed') ? 'sent' : 'queued';
      assert.equal(status.state, expected);
    }),
    { numRuns: 60 },
  );
});
