/**
 * Property test of the consumer state machine (spec/log-format.md §11.3) against a model: after any
 * sequence of claims, acks, settles, takeovers, dead-letterings and expiries, every offset is done or
 * not, and of which kind, as the model says; a done message is never claimed again; acks of a claim no
 * longer held change nothing; and the state read back from its checkpoint answers the same.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { ConsumerState, type StateRecord } from '../../src/queue/consumer-state.ts';

const S = 'p4.w0';
const MAX = 40;

type Op =
  | { kind: 'claim'; from: number; to: number }
  | { kind: 'ack'; claim: number; from: number; to: number }
  | { kind: 'settle'; claim: number }
  | { kind: 'takeover'; claim: number; acked: number[] }
  | { kind: 'dead'; offset: number }
  | { kind: 'expired'; offset: number };

const op: fc.Arbitrary<Op> = fc.oneof(
  { weight: 3, arbitrary: fc.record({ kind: fc.constant('claim' as const), from: fc.nat(MAX - 1), to: fc.nat(MAX) }) },
  { weight: 3, arbitrary: fc.record({ kind: fc.constant('ack' as const), claim: fc.nat(9), from: fc.nat(MAX - 1), to: fc.nat(MAX) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('settle' as const), claim: fc.nat(9) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('takeover' as const), claim: fc.nat(9), acked: fc.array(fc.nat(MAX - 1), { maxLength: 6 }) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('dead' as const), offset: fc.nat(MAX - 1) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('expired' as const), offset: fc.nat(MAX - 1) }) },
);

/** Flat runs `[from0, to0, …]` of a sorted list of offsets. */
function runsOf(offsets: readonly number[]): number[] {
  const runs: number[] = [];
  for (const o of offsets) {
    if (runs.length > 0 && runs[runs.length - 1] === o) runs[runs.length - 1] = o + 1;
    else runs.push(o, o + 1);
  }
  return runs;
}

test('the consumer state agrees with a model of claims and acks on every sequence, and survives its checkpoint', () => {
  fc.assert(
    fc.property(fc.array(op, { maxLength: 40 }), (ops) => {
      const state = new ConsumerState();
      const done = new Map<number, 'acked' | 'dead' | 'expired'>();
      /** Claims by number: their members not yet done, and whether a holder still holds them. */
      const claims: { members: Set<number>; held: boolean }[] = [];
      const heldBy = (offset: number): boolean => claims.some((c) => c.held && c.members.has(offset));
      const apply = (record: StateRecord): void => state.apply(record);
      for (const o of ops) {
        if (o.kind === 'claim') {
          // The chooser claims messages that are neither done nor held by another consumer.
          const members = [];
          for (let i = o.from; i < Math.max(o.from + 1, o.to); i++) if (!done.has(i) && !heldBy(i)) members.push(i);
          if (members.length === 0) continue;
          for (const c of claims) if (!c.held) for (const m of members) c.members.delete(m);
          claims.push({ members: new Set(members), held: true });
          apply({ k: 'C', t: `t${claims.length - 1}`, s: S, j: '00000000000000aa', u: 1000, n: 1, p: 4, r: runsOf(members) });
          continue;
        }
        if (o.kind === 'dead' || o.kind === 'expired') {
          apply(o.kind === 'dead' ? { k: 'D', s: S, o: o.offset, r: 'test' } : { k: 'X', s: S, o: o.offset });
          if (!done.has(o.offset)) done.set(o.offset, o.kind);
          for (const c of claims) c.members.delete(o.offset);
          continue;
        }
        const c = claims[o.claim];
        const t = `t${o.claim}`;
        if (o.kind === 'ack') {
          const e = Math.max(o.from + 1, o.to);
          apply({ k: 'A', s: S, o: o.from, t, e });
          if (c?.held === true) for (const m of [...c.members]) if (m >= o.from && m < e) {
            done.set(m, 'acked');
            c.members.delete(m);
          }
        } else if (o.kind === 'settle') {
          apply({ k: 'S', t });
          if (c?.held === true) {
            for (const m of c.members) done.set(m, 'acked');
            c.members.clear();
            c.held = false;
          }
        } else {
          const acked = [...new Set(o.acked)].sort((x, y) => x - y);
          apply({ k: 'T', t, a: runsOf(acked) });
          if (c?.held === true) {
            for (const m of acked) if (c.members.delete(m)) done.set(m, 'acked');
            c.held = false; // the rest wait as a range without holder
          }
        }
      }
      const again = ConsumerState.fromCheckpoint(JSON.parse(JSON.stringify(state.toCheckpoint(1))) as ReturnType<ConsumerState['toCheckpoint']>);
      for (const s of [state, again]) {
        for (let i = 0; i < MAX; i++) assert.equal(s.doneKind(S, i), done.get(i), `offset ${i}`);
        assert.equal(s.doneCount(S, 0, MAX), done.size);
        assert.equal(s.firstNotDone(S, 0), Array.from({ length: MAX + 1 }, (_, i) => i).find((i) => !done.has(i)));
      }
      // What a held claim still holds is exactly its members not done.
      for (const [n, c] of claims.entries()) {
        if (!c.held) continue;
        for (const m of c.members) assert.equal(state.rangeOf(S, m)?.id, `t${n}`, `t${n} holds ${m}`);
      }
    }),
    { numRuns: 500 },
  );
});
