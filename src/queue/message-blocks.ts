/**
 * Outbox summaries (spec/log-format.md §17): what the outbox's messages are, per segment, in blocks of
 * consecutive messages, known once and never read again — per block, how many messages name each set
 * of destinations, how many of those have a time to live and between which times it ends, how many ask
 * for a receipt or have a streamed body, and the latest send time. With the outbox state (cursors, dead
 * and expired lists), that is enough to count every message's state without reading it, except in the
 * blocks a cursor or a list cuts through, which are read (outbox-counts.ts).
 *
 * This module is the pure part: building blocks from messages, and the summary file's JSON. Files are
 * written and checked in outbox-counts.ts.
 */
import { crc32 } from 'node:zlib';
import { MqlogError } from '../errors.js';
import type { MessageRouting } from './codec.js';

/** A block ends after this many messages, or once its messages take this many bytes. */
export const BLOCK_MESSAGES = 512;
export const BLOCK_BYTES = 256 * 1024;

/** One message as the summaries need it. */
export interface SummarisedMessage {
  readonly offset: number;
  readonly meta: Pick<MessageRouting, 'to' | 'expiresAt' | 'receipt' | 'streamed' | 'ts'>;
}

/** The messages of a block that name one set of destinations. */
export interface GroupCount {
  /** The destinations, sorted, each once. */
  readonly to: readonly string[];
  readonly messages: number;
  /** Those with a time to live, and the earliest and latest time one of them ends (0 when none). */
  readonly ttl: number;
  readonly minExpiresAt: number;
  readonly maxExpiresAt: number;
}

/** Consecutive messages of one segment: those at offsets [from, to) (other frames may lie between). */
export interface MessageBlock {
  readonly from: number;
  readonly to: number;
  readonly messages: number;
  /** Frame bytes of its messages. */
  readonly bytes: number;
  readonly receipts: number;
  readonly streamed: number;
  /** The latest send time (`ts`) of its messages. */
  readonly maxTs: number;
  readonly groups: readonly GroupCount[];
}

/** Where the last message summarised lies, so that a reader goes on right after it (and checks it). */
export interface LastMessage {
  readonly offset: number;
  readonly position: number;
  readonly crc: number;
}

/** The summary of one segment's messages: all of them (`id` set: the log's id of that segment), or the first ones. */
export interface SegmentMessages {
  readonly stream: string;
  readonly base: number;
  /** The log's id of the segment (log-store.md) when every message of it is summarised; else undefined. */
  readonly id: string | undefined;
  readonly last: LastMessage | undefined;
  /** MESSAGE frames whose fields do not decode (never counted as messages). */
  readonly undecodable: number;
  readonly blocks: readonly MessageBlock[];
}

interface OpenGroup {
  to: readonly string[];
  messages: number;
  ttl: number;
  minExpiresAt: number;
  maxExpiresAt: number;
}

/**
 * Builds a segment's blocks from its messages in offset order. The block being filled keeps its
 * messages, so that it can be looked into without a read while it is open.
 */
export class BlockBuilder {
  readonly stream: string;
  readonly base: number;
  private readonly done: MessageBlock[] = [];
  private open = new OpenBlock();
  private last: LastMessage | undefined;
  private undecodable = 0;
  /** `last` and `undecodable` as they were when the last block was finished. */
  private doneLast: LastMessage | undefined;
  private doneUndecodable = 0;
  /**
   * The last block of the summary this builder went on from, when it was not full (written by a process
   * that stopped while it was open): the next block finished is merged into it, so that summaries
   * written by short-lived processes do not leave a trail of small blocks.
   */
  private carried: MessageBlock | undefined;
  private finishes = 0;
  /** Called with each block finished whole by this builder (not one merged into a carried block), and its messages. */
  onFinished: ((block: MessageBlock, messages: readonly SummarisedMessage[]) => void) | undefined;

  /** A builder for the segment `base` of `stream`, going on after what `from` (its first blocks) says. */
  constructor(stream: string, base: number, from?: SegmentMessages) {
    this.stream = stream;
    this.base = base;
    if (from === undefined) return;
    this.done.push(...from.blocks);
    this.finishes = from.blocks.length;
    const tail = from.blocks.at(-1);
    if (tail !== undefined && tail.messages < BLOCK_MESSAGES && tail.bytes < BLOCK_BYTES) this.carried = tail;
    this.last = this.doneLast = from.last;
    this.undecodable = this.doneUndecodable = from.undecodable;
  }

  /** Messages (and undecodable message frames) added, in all. */
  get frames(): number {
    return this.done.reduce((n, b) => n + b.messages, 0) + this.open.messages.length + this.undecodable;
  }

  /** Grows each time a block is finished (new, or merged into the carried one): what finishedSummary() holds changed. */
  get finishedBlocks(): number {
    return this.finishes;
  }

  /** Messages added since the last finished block. */
  get openCount(): number {
    return this.open.messages.length;
  }

  add(message: SummarisedMessage, bytes: number, at: LastMessage): void {
    const open = this.open;
    open.add(message, bytes);
    this.last = at;
    const carried = this.carried;
    if (open.messages.length + (carried?.messages ?? 0) >= BLOCK_MESSAGES || open.bytes + (carried?.bytes ?? 0) >= BLOCK_BYTES) {
      const block = open.block();
      if (carried === undefined) {
        this.done.push(block);
        this.onFinished?.(block, open.messages);
      } else this.done[this.done.length - 1] = mergeBlocks(carried, block);
      this.carried = undefined;
      this.finishes++;
      this.open = new OpenBlock();
      this.doneLast = this.last;
      this.doneUndecodable = this.undecodable;
    }
  }

  /** A MESSAGE frame whose fields do not decode: not a message, but part of the segment. */
  addUndecodable(at: LastMessage): void {
    this.undecodable++;
    this.last = at;
  }

  /** The messages of the block being filled, when `block` is it. */
  openMessages(block: MessageBlock): readonly SummarisedMessage[] | undefined {
    const messages = this.open.messages;
    const first = messages[0];
    return first !== undefined && first.offset === block.from && messages.length === block.messages ? messages : undefined;
  }

  /** The summary of what was added: finished blocks and the one being filled. `id`: the segment is complete. */
  summary(id?: string): SegmentMessages {
    const blocks = [...this.done];
    if (this.open.messages.length > 0) {
      const block = this.open.block();
      if (this.carried === undefined) blocks.push(block);
      else blocks[blocks.length - 1] = mergeBlocks(this.carried, block);
    }
    return { stream: this.stream, base: this.base, id, last: this.last, undecodable: this.undecodable, blocks };
  }

  /**
   * Only the finished blocks: what is kept of an open segment by a process that follows it (a reader
   * goes on after their last message). One that stops keeps summary() instead.
   */
  finishedSummary(): SegmentMessages {
    return { stream: this.stream, base: this.base, id: undefined, last: this.doneLast, undecodable: this.doneUndecodable, blocks: [...this.done] };
  }
}

/**
 * The block being filled: its messages, and its counts kept up as they are added, so that a look at it
 * (summary(), several times a second while the outbox is followed) costs its groups, not a pass over
 * its messages.
 */
class OpenBlock {
  readonly messages: SummarisedMessage[] = [];
  /** Frame bytes of its messages. */
  bytes = 0;
  private readonly groups = new Map<string, OpenGroup>();
  private receipts = 0;
  private streamed = 0;
  private maxTs = 0;

  add(message: SummarisedMessage, bytes: number): void {
    this.messages.push(message);
    this.bytes += bytes;
    const { meta } = message;
    const expiresAt = meta.expiresAt ?? 0;
    addToGroup(groupOf(this.groups, destinationSet(meta.to)), 1, meta.expiresAt === undefined ? 0 : 1, expiresAt, expiresAt);
    if (meta.receipt === true) this.receipts++;
    if (meta.streamed) this.streamed++;
    this.maxTs = Math.max(this.maxTs, meta.ts);
  }

  /** Its block as it is now (at least one message added). */
  block(): MessageBlock {
    const first = this.messages[0] as SummarisedMessage;
    const last = this.messages[this.messages.length - 1] as SummarisedMessage;
    const groups = [...this.groups.values()].map((g) => ({ ...g }));
    return { from: first.offset, to: last.offset + 1, messages: this.messages.length, bytes: this.bytes, receipts: this.receipts, streamed: this.streamed, maxTs: this.maxTs, groups };
  }
}

/** One block of the messages of two consecutive ones. */
function mergeBlocks(a: MessageBlock, b: MessageBlock): MessageBlock {
  const groups = new Map<string, OpenGroup>();
  for (const g of [...a.groups, ...b.groups]) addToGroup(groupOf(groups, g.to), g.messages, g.ttl, g.minExpiresAt, g.maxExpiresAt);
  return {
    from: a.from,
    to: b.to,
    messages: a.messages + b.messages,
    bytes: a.bytes + b.bytes,
    receipts: a.receipts + b.receipts,
    streamed: a.streamed + b.streamed,
    maxTs: Math.max(a.maxTs, b.maxTs),
    groups: [...groups.values()],
  };
}

/** The group of a set of destinations in `groups`, new (empty) when there is none yet. */
function groupOf(groups: Map<string, OpenGroup>, to: readonly string[]): OpenGroup {
  // One destination is its own key, unless it could be taken for a list's JSON.
  const key = to.length === 1 && !(to[0] as string).startsWith('[') ? (to[0] as string) : JSON.stringify(to);
  let group = groups.get(key);
  if (group === undefined) {
    group = { to, messages: 0, ttl: 0, minExpiresAt: 0, maxExpiresAt: 0 };
    groups.set(key, group);
  }
  return group;
}

/** Adds `messages` to `group`, `ttl` of them with a time to live ending between the two times given. */
function addToGroup(group: OpenGroup, messages: number, ttl: number, minExpiresAt: number, maxExpiresAt: number): void {
  group.messages += messages;
  if (ttl === 0) return;
  group.minExpiresAt = group.ttl === 0 ? minExpiresAt : Math.min(group.minExpiresAt, minExpiresAt);
  group.maxExpiresAt = group.ttl === 0 ? maxExpiresAt : Math.max(group.maxExpiresAt, maxExpiresAt);
  group.ttl += ttl;
}

/** A message's destinations as a set: sorted, each once. */
export function destinationSet(to: readonly string[]): readonly string[] {
  // Nearly every message names one destination: that list is already its set.
  return to.length === 1 ? to : [...new Set(to)].sort();
}

const FILE_VERSION = 2;

/** A block as the file has it: [from, to, messages, bytes, receipts, streamed, maxTs, [[set, messages, ttl, minExpiresAt, maxExpiresAt], …]]. */
type BlockTuple = [number, number, number, number, number, number, number, [number, number, number, number, number][]];

/** The totals of summaries: known from the file's first line for one read back, else added up once. */
const totals = new WeakMap<SegmentMessages, MessageBlock | null>();

/**
 * All of a segment's messages as one block (from its first message to after its last, the groups of
 * every block merged): counting decides a whole segment at once when no cursor, list or expiry time cuts
 * through it (§17.2), without its blocks. Undefined when the summary holds no message.
 */
export function segmentTotal(summary: SegmentMessages): MessageBlock | undefined {
  let total = totals.get(summary);
  if (total === undefined) {
    total = summary.blocks.length === 0 ? null : summary.blocks.reduce(mergeBlocks);
    totals.set(summary, total);
  }
  return total ?? undefined;
}

/**
 * The summary file (spec/log-format.md §17.1): a first line with the segment's totals, and a second with
 * its blocks, which a reader parses only when it needs them.
 */
export function encodeSegmentMessages(summary: SegmentMessages): string {
  const sets = new Map<string, number>();
  const table: (readonly string[])[] = [];
  const setIndex = (to: readonly string[]): number => {
    const key = JSON.stringify(to);
    let i = sets.get(key);
    if (i === undefined) {
      i = table.length;
      sets.set(key, i);
      table.push(to);
    }
    return i;
  };
  const tuple = (b: MessageBlock): BlockTuple => [b.from, b.to, b.messages, b.bytes, b.receipts, b.streamed, b.maxTs, b.groups.map((g) => [setIndex(g.to), g.messages, g.ttl, g.minExpiresAt, g.maxExpiresAt])];
  const blocks = JSON.stringify(summary.blocks.map(tuple));
  const total = segmentTotal(summary);
  const last = summary.last === undefined ? null : [summary.last.offset, summary.last.position, summary.last.crc];
  const head = { version: FILE_VERSION, stream: summary.stream, base: summary.base, id: summary.id ?? null, last, undecodable: summary.undecodable, total: total === undefined ? null : tuple(total), to: table, blocksBytes: Buffer.byteLength(blocks), blocksCrc: crc32(blocks) };
  return `${JSON.stringify(head)}\n${blocks}`;
}

/**
 * Parses a summary file; undefined for anything that is not one of `stream`'s segment `base` (another
 * version, a torn or damaged file). Its blocks are parsed when first asked for.
 */
export function decodeSegmentMessages(file: Buffer | string, stream: string, base: number): SegmentMessages | undefined {
  const bytes = typeof file === 'string' ? Buffer.from(file) : file;
  try {
    const newline = bytes.indexOf(0x0a);
    if (newline < 0) return undefined;
    const head = JSON.parse(bytes.subarray(0, newline).toString()) as {
      version: number;
      stream: string;
      base: number;
      id: string | null;
      last: [number, number, number] | null;
      undecodable: number;
      total: BlockTuple | null;
      to: string[][];
      blocksBytes: number;
      blocksCrc: number;
    };
    if (head.version !== FILE_VERSION || head.stream !== stream || head.base !== base || !Array.isArray(head.to)) return undefined;
    const rest = bytes.subarray(newline + 1);
    if (rest.length !== head.blocksBytes || crc32(rest) !== head.blocksCrc) return undefined;
    const total = head.total === null ? null : blockOfTuple(head.total, head.to);
    if (total === undefined) return undefined;
    let blocks: readonly MessageBlock[] | undefined;
    const summary: SegmentMessages = {
      stream,
      base,
      id: head.id ?? undefined,
      last: head.last === null ? undefined : { offset: head.last[0], position: head.last[1], crc: head.last[2] },
      undecodable: Number(head.undecodable) || 0,
      get blocks(): readonly MessageBlock[] {
        blocks ??= parseBlocks(rest, head.to, `outbox summary of ${stream}@${base}`);
        return blocks;
      },
    };
    totals.set(summary, total);
    return summary;
  } catch {
    return undefined;
  }
}

/** A block from its tuple; undefined when the tuple is not one. */
function blockOfTuple(tuple: BlockTuple, table: readonly string[][]): MessageBlock | undefined {
  if (!Array.isArray(tuple) || !Array.isArray(tuple[7])) return undefined;
  const [from, to, messages, bytes, receipts, streamed, maxTs, groups] = tuple;
  const block: MessageBlock = {
    from,
    to,
    messages,
    bytes,
    receipts,
    streamed,
    maxTs,
    groups: groups.map(([set, count, ttl, minExpiresAt, maxExpiresAt]) => ({ to: table[set] as string[], messages: count, ttl, minExpiresAt, maxExpiresAt })),
  };
  return block.groups.every((g) => Array.isArray(g.to)) && block.to > block.from ? block : undefined;
}

/**
 * The blocks line of a file whose first line (and the CRC it gives for this line) was checked.
 * @throws ERR_CORRUPT_STATE if they do not parse even so (a file written wrong).
 */
function parseBlocks(line: Buffer, table: readonly string[][], what: string): MessageBlock[] {
  let tuples: unknown;
  try {
    tuples = JSON.parse(line.toString());
  } catch (err) {
    throw new MqlogError('ERR_CORRUPT_STATE', `${what}: its blocks do not parse (${(err as Error).message})`);
  }
  const blocks = Array.isArray(tuples) ? tuples.map((t) => blockOfTuple(t as BlockTuple, table)) : [undefined];
  if (blocks.some((b) => b === undefined)) throw new MqlogError('ERR_CORRUPT_STATE', `${what}: a block that is not one`);
  return blocks as MessageBlock[];
}
