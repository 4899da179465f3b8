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
