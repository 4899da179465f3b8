/**
 * A deterministic power cut: from the record a process kept with test/fixtures/sync-recorder.mjs, find
 * every byte it wrote that no completed fsync covered, and do to those bytes — and to no others — what a
 * power failure can: lose them, or keep only some pieces of the last writes (a prefix, a suffix only, a
 * page missing, a page of garbage). The same fault patterns LazyFS injects, without a FUSE mount.
 */
import { randomBytes } from 'node:crypto';
import { open, readFile, stat } from 'node:fs/promises';

export const CUT_PATTERNS = ['drop', 'prefix', 'suffix', 'hole', 'hole-then-data', 'garbage', 'keep'] as const;
export type CutPattern = (typeof CUT_PATTERNS)[number];

/** A byte range [start, end) of a file. */
type Range = [number, number];

export interface Cut {
  readonly path: string;
  /** The unsynced bytes of the file, as merged ranges. */
  readonly unsynced: readonly Range[];
  /** What the cut did to them. */
  readonly pattern: CutPattern;
  /** Bytes that now differ from what the process had written. */
  readonly damaged: number;
}

const PAGE = 4096;

/** The unsynced byte ranges of every file in the record that still exists. */
export async function unsyncedRanges(logPath: string): Promise<Map<string, Range[]>> {
  const pending = new Map<string, Range[]>();
  let text: string;
  try {
    text = await readFile(logPath, 'utf8');
  } catch {
    return pending;
  }
  for (const line of text.split('\n')) {
    let event: { e: string; p: string; o?: number; n?: number; to?: string };
    try {
      event = JSON.parse(line) as typeof event;
    } catch {
      continue; // the last line of a killed process may be cut short
    }
    const ranges = pending.get(event.p) ?? [];
    if (event.e === 'w' && event.o !== undefined && event.o >= 0 && (event.n ?? 0) > 0) {
      ranges.push([event.o, event.o + (event.n as number)]);
      pending.set(event.p, ranges);
    } else if (event.e === 's') {
      pending.delete(event.p);
    } else if (event.e === 't') {
      const length = event.n ?? 0;
      pending.set(event.p, ranges.flatMap(([a, b]): Range[] => (a >= length ? [] : [[a, Math.min(b, length)]])));
    } else if (event.e === 'r' && event.to !== undefined) {
      pending.delete(event.to);
      if (ranges.length > 0) pending.set(event.to, ranges);
      pending.delete(event.p);
    }
  }
  const existing = new Map<string, Range[]>();
  for (const [path, ranges] of pending) {
    const size = await stat(path).then((s) => (s.isFile() ? s.size : -1), () => -1);
    if (size < 0) continue;
    const clipped = merge(ranges.flatMap(([a, b]): Range[] => (a >= size ? [] : [[a, Math.min(b, size)]])));
    if (clipped.length > 0) existing.set(path, clipped);
  }
  return existing;
}

/** Applies `pattern` to the unsynced bytes of every file in the record. `random` gives numbers in [0, 1). */
export async function powerCut(logPath: string, pattern: CutPattern, random: () => number): Promise<Cut[]> {
  const cuts: Cut[] = [];
  for (const [path, unsynced] of await unsyncedRanges(logPath)) {
    const total = unsynced.reduce((n, [a, b]) => n + (b - a), 0);
    // Positions within the unsynced bytes taken as one sequence, mapped back to file positions.
    const at = (index: number): number => {
      let left = index;
      for (const [a, b] of unsynced) {
        if (left < b - a) return a + left;
        left -= b - a;
      }
      return (unsynced.at(-1) as Range)[1];
    };
    const page = (): Range => {
      const start = at(Math.floor(random() * total));
      const aligned = Math.floor(start / PAGE) * PAGE;
      return [aligned, aligned + PAGE];
    };
    let zero: Range[] = [];
    let garbage: Range[] = [];
    switch (pattern) {
      case 'drop':
        zero = unsynced.slice();
        break;
      case 'prefix':
        zero = within(unsynced, at(Math.floor(random() * total)), Number.POSITIVE_INFINITY);
        break;
      case 'suffix':
        zero = within(unsynced, 0, at(1 + Math.floor(random() * Math.max(1, total - 1))));
        break;
      case 'hole':
        zero = within(unsynced, ...page());
        break;
      case 'hole-then-data': {
        // The start of the write lost, a later part (its last frames) kept.
        const keepFrom = at(Math.floor(total * (0.5 + random() / 2)));
        zero = within(unsynced, 0, keepFrom);
        break;
      }
      case 'garbage':
        garbage = within(unsynced, ...page());
        break;
      case 'keep':
        break;
    }
    const damaged = (await overwrite(path, zero, () => 0)) + (await overwrite(path, garbage, () => randomBytes(1)[0] as number));
    cuts.push({ path, unsynced, pattern, damaged });
  }
  return cuts;
}

/** The parts of `ranges` that lie within [from, to). */
function within(ranges: readonly Range[], from: number, to: number): Range[] {
  return ranges.flatMap(([a, b]): Range[] => {
    const start = Math.max(a, from);
    const end = Math.min(b, to);
    return start < end ? [[start, end]] : [];
  });
}

function merge(ranges: Range[]): Range[] {
  const sorted = ranges.slice().sort((x, y) => x[0] - y[0]);
  const out: Range[] = [];
  for (const [a, b] of sorted) {
    const last = out.at(-1);
    if (last !== undefined && a <= last[1]) last[1] = Math.max(last[1], b);
    else out.push([a, b]);
  }
  return out;
}

/** Overwrites the ranges with bytes from `byte`; returns how many bytes changed. */
async function overwrite(path: string, ranges: readonly Range[], byte: () => number): Promise<number> {
  if (ranges.length === 0) return 0;
  const handle = await open(path, 'r+');
  let changed = 0;
  try {
    for (const [a, b] of ranges) {
      const before = Buffer.alloc(b - a);
      await handle.read(before, 0, before.length, a);
      const after = Buffer.from(Array.from({ length: b - a }, byte));
      for (let i = 0; i < before.length; i++) if (before[i] !== after[i]) changed++;
      await handle.write(after, 0, after.length, a);
    }
  } finally {
    await handle.close();
  }
  return changed;
}
