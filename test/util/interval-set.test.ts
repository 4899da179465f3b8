/**
 * IntervalSet against a plain Set of numbers: whatever sequence of operations, both hold the same members;
 * counting within a range (by binary search), covering a range, and dropping everything below a value.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { IntervalSet } from '../../src/util/interval-set.ts';
import { fuzzRuns } from '../helpers/security.ts';

type Op =
  | { readonly op: 'add'; readonly start: number; readonly length: number }
  | { readonly op: 'remove'; readonly start: number; readonly length: number }
  | { readonly op: 'take'; readonly count: number };

const op: fc.Arbitrary<Op> = fc.oneof(
  fc.record({ op: fc.constant('add' as const), start: fc.nat(60), length: fc.nat(12) }),
  fc.record({ op: fc.constant('remove' as const), start: fc.nat(60), length: fc.nat(12) }),
  fc.record({ op: fc.constant('take' as const), count: fc.nat(10) }),
);

function members(set: IntervalSet): number[] {
  return [...set.values()];
}

test('add, removeRange and takeFirst keep the members a plain set would have, as disjoint sorted runs', () => {
  fc.assert(
    fc.property(fc.array(op, { maxLength: 40 }), (ops) => {
      const set = new IntervalSet();
      const model = new Set<number>();
      for (const o of ops) {
        if (o.op === 'add') {
          set.addRange(o.start, o.start + o.length);
          for (let v = o.start; v < o.start + o.length; v++) model.add(v);
        } else if (o.op === 'remove') {
          set.removeRange(o.start, o.start + o.length);
          for (let v = o.start; v < o.start + o.length; v++) model.delete(v);
        } else {
          const sorted = [...model].sort((a, b) => a - b);
          const taken = sorted.slice(0, o.count);
          assert.deepEqual(members(set.takeFirst(o.count)), taken);
          for (const v of taken) model.delete(v);
        }
        const expected = [...model].sort((a, b) => a - b);
        assert.deepEqual(members(set), expected);
        assert.equal(set.size, expected.length);
        assert.equal(set.first, expected[0]);
        assert.equal(set.last, expected[expected.length - 1]);
        const flat = set.toFlat();
        for (let i = 2; i < flat.length; i += 2) assert.ok((flat[i] as number) > (flat[i - 1] as number), 'runs never touch');
      }
    }),
  );
});

test('intersection, addAll, removeAll and fromFlat agree with plain sets', () => {
  const runs = fc.array(fc.tuple(fc.nat(50), fc.nat(8)), { maxLength: 8 });
  fc.assert(
    fc.property(runs, runs, (a, b) => {
      const flat = (pairs: [number, number][]): number[] => pairs.flatMap(([s, n]) => [s, s + n]);
      const setA = IntervalSet.fromFlat(flat(a));
      const setB = IntervalSet.fromFlat(flat(b));
      const modelA = new Set(members(setA));
      const modelB = new Set(members(setB));
      for (const [s, n] of a) for (let v = s; v < s + n; v++) assert.ok(modelA.has(v));
      assert.deepEqual(members(setA.intersection(setB)), [...modelA].filter((v) => modelB.has(v)).sort((x, y) => x - y));
      const union = setA.clone();
      union.addAll(setB);
      assert.deepEqual(members(union), [...new Set([...modelA, ...modelB])].sort((x, y) => x - y));
      const difference = setA.clone();
      difference.removeAll(setB);
      assert.deepEqual(members(difference), [...modelA].filter((v) => !modelB.has(v)).sort((x, y) => x - y));
      assert.deepEqual(members(setA), [...modelA].sort((x, y) => x - y), 'clone left the original alone');
    }),
  );
});

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
