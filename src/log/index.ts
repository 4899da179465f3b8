/**
 * What the log layer offers the layers above: the LogStore interface and its two implementations, the
 * shared stream-reading helpers, the record log for state journals, and cross-process locks. Segments,
 * segment sets, stream readers and writers, frames' byte layout and recovery stay inside log/.
 */
export type * from './log-store.js';
export { FileLogStore, type FileLogStoreOptions } from './file-log-store.js';
export { MemoryLogStore } from './memory-log-store.js';
export { FrameType, type Payload } from './frame.js';
export { Lock, type LockOptions } from './lock.js';
export { ShortLock, type ShortLockOptions } from './short-lock.js';
export { RecordLog } from './record-log.js';
export { parseStreamName, streamName } from './stream-id.js';
export { segmentFileName } from './segment.js';
export { readAvailable, readFrames, scanStream, type ScanEvent, type ScanOptions } from './stream-scan.js';
export { TORN_SUFFIX, parseTornFileName } from './recovery.js';
