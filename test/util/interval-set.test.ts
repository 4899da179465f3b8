/**
 * IntervalSet against a plain set of numbers: counting within a range (by binary search), covering a
 * range, and dropping everything below a value, after random additions.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { IntervalSet } from '../../src/util/interval-set.ts';
import { fuzzRuns } from '../helpers/security.ts';

const ranges = fc.array(fc.tuple(fc.integer({ min: 0, max: 200 }), fc.integer({ min: 0, max: 12 })), { maxLength: 30 });
const range = fc.tuple(fc.integer({ min: 0, max: 220 }), fc.integer({ min: 0, max: 220 }));

function build(pairs: readonly (readonly [number, number])[]): { set: IntervalSet; members: Set<number> } {
  const set = new IntervalSet();
  const members = new Set<number>();
  for (const [start, length] of pairs) {
    set.addRange(start, start + length);
    for (let v = start; v < start + length; v++) members.add(v);
  }
  return { set, members };
}

test('countIn and covers agree with the members of the set, for any range', () => {
  fc.assert(
    fc.property(ranges, range, (pairs, [start, end]) => {
      const { set, members } = build(pairs);
      let count = 0;
      for (let v = start; v < end; v++) if (members.has(v)) count++;
      assert.equal(set.countIn(start, end), count);
      assert.equal(set.covers(start, end), end <= start || count === end - start);
    }),
    { numRuns: fuzzRuns(500) },
  );
});

test('deleteBelow drops exactly the members below the value', () => {
  fc.assert(
    fc.property(ranges, fc.integer({ min: 0, max: 220 }), (pairs, below) => {
      const { set, members } = build(pairs);
      set.deleteBelow(below);
      for (let v = 0; v < 230; v++) assert.equal(set.has(v), members.has(v) && v >= below, `member ${v}`);
      assert.equal(set.size, [...members].filter((v) => v >= below).length);
    }),
    { numRuns: fuzzRuns(500) },
  );
});
