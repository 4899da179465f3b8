/**
 * Stream names (spec/log-format.md §1.1): `<key>.w<slot>`, where the key matches `[a-z0-9]{1,16}` and
 * the slot is the writer slot (§7). The one constructor and parser of a stream's name.
 */
import type { StreamId } from './log-store.js';

export const STREAM_KEY = /^[a-z0-9]{1,16}$/;
const STREAM = /^([a-z0-9]{1,16})\.w(\d{1,6})$/;

export function streamName(key: string, slot: number): string {
  return `${key}.w${slot}`;
}

/** Whether `name` is a stream's name (parseStreamName without building its parts: a check per frame received). */
export function isStreamName(name: string): boolean {
  return STREAM.test(name);
}

export function parseStreamName(name: string): StreamId | undefined {
  const match = STREAM.exec(name);
  if (match === null) return undefined;
  return { name, key: match[1] as string, slot: Number(match[2]) };
}

/** Streams by key, then slot. */
export function compareStreams(a: StreamId, b: StreamId): number {
  return a.key === b.key ? a.slot - b.slot : a.key < b.key ? -1 : 1;
}
