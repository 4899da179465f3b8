/**
 * Memory for frames larger than a reader's read block (a streamed body's 1 MiB chunks), used again once
 * the caller has let go of the frames read into it (LogReader.release).
 *
 * A large frame is read into a buffer of its own and handed out as it is. A forwarder holds it until
 * the peer has its batch: long enough to outlive a young-generation GC, so that a new buffer per
 * frame is only freed by a full collection, and the memory they hold outside the JS heap starts one
 * every few dozen MiB read. Buffers given back are handed out again instead (a few at most are kept).
 *
 * One pool belongs to one reader: a buffer is only ever in use by the caller (given out, not back yet)
 * or kept here, never both.
 */

/** Capacities are rounded up to this, so that frames of nearly equal size share buffers. */
const GRANULE_BYTES = 64 * 1024;

export class FrameBufferPool {
  private readonly free: ArrayBuffer[] = [];
  /** Buffers handed out and not given back: only these are taken back. */
  private readonly out = new WeakSet<ArrayBuffer>();
  private readonly keep: number;

  /** `keep`: buffers kept for reuse at most (more given back are left to the GC). */
  constructor(keep = 4) {
    this.keep = keep;
  }

  /** A buffer of exactly `bytes` bytes (contents undefined): a free one large enough, or a new one. */
  take(bytes: number): Buffer {
    const i = this.free.findIndex((b) => b.byteLength >= bytes && b.byteLength < bytes + 2 * GRANULE_BYTES);
    const memory = i >= 0 ? (this.free.splice(i, 1)[0] as ArrayBuffer) : Buffer.allocUnsafeSlow(Math.ceil(bytes / GRANULE_BYTES) * GRANULE_BYTES).buffer;
    this.out.add(memory);
    return Buffer.from(memory, 0, bytes);
  }

  /**
   * The caller is done with `bytes` (a frame from a buffer of this pool, or anything else, which is
   * ignored): its buffer may be handed out again. Giving back a buffer twice is harmless.
   */
  give(bytes: Uint8Array): void {
    const memory = bytes.buffer;
    if (!(memory instanceof ArrayBuffer) || !this.out.has(memory)) return;
    this.out.delete(memory);
    if (this.free.length < this.keep) this.free.push(memory);
  }
}
