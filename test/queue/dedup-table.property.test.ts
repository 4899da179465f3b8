/**
 * Property test of the receiver's dedup table against a model: after any sequence of covered ranges,
 * single stored offsets and stored message ids, `seen` answers as a plain set would, a stored id is
 * never taken for a gap, an id above every stored one is, and a checkpoint reopened answers the same.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { MemoryLogStore } from '../../src/log/memory-log-store.ts';
import { DedupTable } from '../../src/queue/dedup-table.ts';
import { tempDir } from '../helpers/index.ts';

type Op = { kind: 'cover'; key: number; from: number; to: number } | { kind: 'stored'; key: number; offset: number } | { kind: 'id'; key: number; id: number };

const KEYS = 3;
const MAX = 60;
const op: fc.Arbitrary<Op> = fc.oneof(
  fc.record({ kind: fc.constant('cover' as const), key: fc.nat(KEYS - 1), from: fc.nat(MAX), to: fc.nat(MAX) }),
  fc.record({ kind: fc.constant('stored' as const), key: fc.nat(KEYS - 1), offset: fc.nat(MAX) }),
  fc.record({ kind: fc.constant('id' as const), key: fc.nat(KEYS - 1), id: fc.nat(999) }),
);

const keyOf = (k: number): string => `key-${k}`;
/** Time-ordered ids compare as strings: fixed-width numbers do too. */
const idOf = (n: number): string => `01${String(n).padStart(6, '0')}`;

test('the dedup table answers seen and gap questions as a model would, before and after a checkpoint', async (t) => {
  const store = new MemoryLogStore();
  t.after(() => store.close());
  await fc.assert(
    fc.asyncProperty(fc.array(op, { maxLength: 40 }), async (ops) => {
      const dir = await tempDir(t);
      const table = await DedupTable.open(dir, store, []);
      const covered = Array.from({ length: KEYS }, () => new Set<number>());
      const greatest: (number | undefined)[] = Array.from({ length: KEYS }, () => undefined);
      for (const o of ops) {
        if (o.kind === 'cover') {
          table.cover(keyOf(o.key), o.from, o.to);
          for (let v = o.from; v < o.to; v++) covered[o.key]?.add(v);
        } else if (o.kind === 'stored') {
          table.stored(keyOf(o.key), o.offset);
          covered[o.key]?.add(o.offset);
        } else {
          table.storedId(keyOf(o.key), idOf(o.id));
          greatest[o.key] = Math.max(greatest[o.key] ?? -1, o.id);
        }
      }
      const check = (t2: DedupTable, when: string): void => {
        for (let k = 0; k < KEYS; k++) {
          for (let v = 0; v <= MAX + 1; v++) assert.equal(t2.seen(keyOf(k), v), covered[k]?.has(v) === true, `${when}: seen(${k}, ${v})`);
          const top = greatest[k];
          for (let id = 0; id < 1000; id += 37) {
            // No stored id yet: nothing can be told apart, nothing is a gap. Else only ids above the greatest are.
            assert.equal(t2.isGap(keyOf(k), idOf(id)), top !== undefined && id > top, `${when}: isGap(${k}, ${id}) with greatest ${top}`);
          }
          if (top !== undefined) assert.equal(t2.isGap(keyOf(k), idOf(top)), false, `${when}: the greatest stored id itself is no gap`);
        }
      };
      check(table, 'live');
      await table.checkpoint();
      check(await DedupTable.open(dir, store, []), 'reopened');
    }),
    { numRuns: 60 },
  );
});
