/**
 * A set of non-negative integers stored as sorted, disjoint, non-adjacent half-open ranges [start, end).
 * Acks mostly arrive in order, so a set of millions of acked offsets is usually a handful of ranges:
 * memory follows the number of gaps, not the number of members.
 */
export class IntervalSet {
  /** Flat [start0, end0, start1, end1, …], sorted; ranges never touch. */
  private ranges: number[] = [];

  static from(pairs: readonly (readonly [number, number])[]): IntervalSet {
    const set = new IntervalSet();
    for (const [start, end] of pairs) set.addRange(start, end);
    return set;
  }

  /** From flat runs `[start0, end0, start1, end1, …]` (any order, may overlap). */
  static fromFlat(flat: readonly number[]): IntervalSet {
    const set = new IntervalSet();
    for (let i = 0; i + 1 < flat.length; i += 2) set.addRange(flat[i] as number, flat[i + 1] as number);
    return set;
  }

  /** Flat runs `[start0, end0, start1, end1, …]`, sorted (a copy). */
  toFlat(): number[] {
    return this.ranges.slice();
  }

  clone(): IntervalSet {
    const copy = new IntervalSet();
    copy.ranges = this.ranges.slice();
    return copy;
  }

  get isEmpty(): boolean {
    return this.ranges.length === 0;
  }

  /** The smallest member, if any. */
  get first(): number | undefined {
    return this.ranges[0];
  }

  /** The largest member, if any. */
  get last(): number | undefined {
    const end = this.ranges[this.ranges.length - 1];
    return end === undefined ? undefined : end - 1;
  }

  /** Every member, in order. */
  *values(): Generator<number> {
    for (let i = 0; i < this.ranges.length; i += 2) {
      for (let v = this.ranges[i] as number; v < (this.ranges[i + 1] as number); v++) yield v;
    }
  }

  /** Removes [start, end). */
  removeRange(start: number, end: number): void {
    if (end <= start || this.ranges.length === 0) return;
    const out: number[] = [];
    const r = this.ranges;
    for (let i = 0; i < r.length; i += 2) {
      const s = r[i] as number;
      const e = r[i + 1] as number;
      if (e <= start || s >= end) {
        out.push(s, e);
        continue;
      }
      if (s < start) out.push(s, start);
      if (e > end) out.push(end, e);
    }
    this.ranges = out;
  }

  /** Adds every member of `other`. */
  addAll(other: IntervalSet): void {
    for (let i = 0; i < other.ranges.length; i += 2) this.addRange(other.ranges[i] as number, other.ranges[i + 1] as number);
  }

  /** Removes every member of `other`. */
  removeAll(other: IntervalSet): void {
    for (let i = 0; i < other.ranges.length && !this.isEmpty; i += 2) this.removeRange(other.ranges[i] as number, other.ranges[i + 1] as number);
  }

  /** The members that are also members of `other`. */
  intersection(other: IntervalSet): IntervalSet {
    const out = new IntervalSet();
    const a = this.ranges;
    const b = other.ranges;
    let i = 0;
    let j = 0;
    while (i < a.length && j < b.length) {
      const s = Math.max(a[i] as number, b[j] as number);
      const e = Math.min(a[i + 1] as number, b[j + 1] as number);
      if (e > s) out.ranges.push(s, e);
      if ((a[i + 1] as number) < (b[j + 1] as number)) i += 2;
      else j += 2;
    }
    return out;
  }

  /** Removes the `count` smallest members and returns them. */
  takeFirst(count: number): IntervalSet {
    const out = new IntervalSet();
    let left = count;
    while (left > 0 && this.ranges.length > 0) {
      const s = this.ranges[0] as number;
      const e = this.ranges[1] as number;
      if (e - s <= left) {
        out.ranges.push(s, e);
        this.ranges.splice(0, 2);
        left -= e - s;
      } else {
        out.ranges.push(s, s + left);
        this.ranges[0] = s + left;
        left = 0;
      }
    }
    return out;
  }

  get rangeCount(): number {
    return this.ranges.length / 2;
  }

  /** Number of members. */
  get size(): number {
    let n = 0;
    for (let i = 0; i < this.ranges.length; i += 2) n += (this.ranges[i + 1] as number) - (this.ranges[i] as number);
    return n;
  }

  has(value: number): boolean {
    const i = this.indexAfter(value);
    return i > 0 && value < (this.ranges[2 * (i - 1) + 1] as number);
  }

  add(value: number): void {
    this.addRange(value, value + 1);
  }

  /** Adds [start, end). */
  addRange(start: number, end: number): void {
    if (end <= start) return;
    const r = this.ranges;
    // First range whose end >= start (could merge), last range whose start <= end.
    let lo = 0;
    let top = r.length / 2;
    while (lo < top) {
      const mid = (lo + top) >> 1;
      if ((r[2 * mid + 1] as number) < start) lo = mid + 1;
      else top = mid;
    }
    let hi = lo;
    let newStart = start;
    let newEnd = end;
    while (hi < r.length / 2 && (r[2 * hi] as number) <= end) {
      newStart = Math.min(newStart, r[2 * hi] as number);
      newEnd = Math.max(newEnd, r[2 * hi + 1] as number);
      hi++;
    }
    r.splice(2 * lo, 2 * (hi - lo), newStart, newEnd);
  }

  /** The smallest value >= `from` that is not a member. */
  nextMissing(from: number): number {
    const i = this.indexAfter(from);
    if (i > 0) {
      const end = this.ranges[2 * (i - 1) + 1] as number;
      if (from < end) return end;
    }
    return from;
  }

  /** Members within [start, end). Finds the first range by binary search: cost follows the ranges inside. */
  countIn(start: number, end: number): number {
    const r = this.ranges;
    // First range whose end is past `start`.
    let lo = 0;
    let hi = r.length / 2;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if ((r[2 * mid + 1] as number) <= start) lo = mid + 1;
      else hi = mid;
    }
    let n = 0;
    for (let i = 2 * lo; i < r.length && (r[i] as number) < end; i += 2) {
      const s = Math.max(start, r[i] as number);
      const e = Math.min(end, r[i + 1] as number);
      if (e > s) n += e - s;
    }
    return n;
  }

  /** Removes every member below `value`. */
  deleteBelow(value: number): void {
    const r = this.ranges;
    let i = 0;
    while (i < r.length && (r[i + 1] as number) <= value) i += 2;
    r.splice(0, i);
    if (r.length > 0 && (r[0] as number) < value) r[0] = value;
  }

  /** True when every value in [start, end) is a member (also for an empty range). */
  covers(start: number, end: number): boolean {
    return end <= start || this.countIn(start, end) === end - start;
  }

  toPairs(): [number, number][] {
    const out: [number, number][] = [];
    for (let i = 0; i < this.ranges.length; i += 2) out.push([this.ranges[i] as number, this.ranges[i + 1] as number]);
    return out;
  }

  /** Number of ranges whose start is <= value (binary search). */
  private indexAfter(value: number): number {
    let lo = 0;
    let hi = this.ranges.length / 2;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if ((this.ranges[2 * mid] as number) <= value) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }
}
