/**
 * Property tests of IntervalSet against a plain Set model: any sequence of adds, range adds and
 * deletions below a value leaves the same members, and the ranges stay sorted, disjoint and non-touching.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { IntervalSet } from '../../src/util/interval-set.ts';

type Op = { kind: 'add'; value: number } | { kind: 'range'; start: number; end: number } | { kind: 'below'; value: number };

const MAX = 40;
const op: fc.Arbitrary<Op> = fc.oneof(
  fc.record({ kind: fc.constant('add' as const), value: fc.nat(MAX) }),
  fc.record({ kind: fc.constant('range' as const), start: fc.nat(MAX), end: fc.nat(MAX) }),
  fc.record({ kind: fc.constant('below' as const), value: fc.nat(MAX) }),
);

function apply(set: IntervalSet, model: Set<number>, o: Op): void {
  if (o.kind === 'add') {
    set.add(o.value);
    model.add(o.value);
  } else if (o.kind === 'range') {
    set.addRange(o.start, o.end);
    for (let v = o.start; v < o.end; v++) model.add(v);
  } else {
    set.deleteBelow(o.value);
    for (const v of [...model]) if (v < o.value) model.delete(v);
  }
}

test('an IntervalSet holds exactly the members a plain set would, in sorted, disjoint, non-touching ranges', () => {
  fc.assert(
    fc.property(fc.array(op, { maxLength: 60 }), fc.nat(MAX), fc.nat(MAX), (ops, a, b) => {
      const set = new IntervalSet();
      const model = new Set<number>();
      for (const o of ops) apply(set, model, o);
      for (let v = 0; v <= MAX + 1; v++) assert.equal(set.has(v), model.has(v), `has(${v})`);
      assert.equal(set.size, model.size);
      const pairs = set.toPairs();
      for (const [i, [start, end]] of pairs.entries()) {
        assert.ok(start < end, 'no empty range');
        if (i > 0) assert.ok(start > (pairs[i - 1] as [number, number])[1], 'sorted, and never touching the previous range');
      }
      assert.equal(set.rangeCount, pairs.length);
      const [lo, hi] = a <= b ? [a, b] : [b, a];
      let inRange = 0;
      for (let v = lo; v < hi; v++) if (model.has(v)) inRange++;
      assert.equal(set.countIn(lo, hi), inRange, `countIn(${lo}, ${hi})`);
      assert.equal(set.covers(lo, hi), inRange === hi - lo, `covers(${lo}, ${hi})`);
      let missing = lo;
      while (model.has(missing)) missing++;
      assert.equal(set.nextMissing(lo), missing, `nextMissing(${lo})`);
      assert.deepEqual(IntervalSet.from(pairs).toPairs(), pairs, 'from(toPairs()) round-trips');
    }),
    { numRuns: 300 },
  );
});
