/**
 * The streams mqlog writes to (spec/transports.md §3.5): a destination's stream, `STREAM` with subjects
 * `STREAM.>`, and its bodies' bucket, the object store stream `OBJ_<bucket>` laid out as `@nats-io/obj`
 * makes it (subjects `$O.<bucket>.C.>` and `$O.<bucket>.M.>`, roll-ups allowed, discard new), so any
 * object store client reads the bodies. A missing one is created with the configured `stream` settings;
 * an existing one is never changed: when a configured setting differs, or its subjects do not take what
 * mqlog publishes, the answer is ERR_STREAM_CONFLICT saying which setting.
 */
import { DiscardPolicy, StorageType, type JetStreamManager, type StreamConfig, type StreamInfo } from '@nats-io/jetstream';
import { MqlogError } from '../errors.js';
import { jsErrorCode, JS_STREAM_NOT_FOUND, natsError } from './nats-errors.js';
import type { StreamSettings } from './nats-settings.js';

const NS_PER_MS = 1_000_000;
export const DEFAULT_DUPLICATE_WINDOW_MS = 2 * 60_000;

/** The object store stream of a bucket. */
export function bucketStream(bucket: string): string {
  return `OBJ_${bucket}`;
}

/** What mqlog would create, from the settings (the limits it leaves out are the server's defaults). */
function created(settings: StreamSettings | undefined): Partial<StreamConfig> {
  return {
    num_replicas: settings?.replicas ?? 1,
    ...(settings?.maxBytes === undefined ? {} : { max_bytes: settings.maxBytes }),
    ...(settings?.maxAgeMs === undefined ? {} : { max_age: settings.maxAgeMs * NS_PER_MS }),
    storage: settings?.storage === 'memory' ? StorageType.Memory : StorageType.File,
    duplicate_window: (settings?.duplicateWindowMs ?? DEFAULT_DUPLICATE_WINDOW_MS) * NS_PER_MS,
  };
}

/** The settings that were given and differ in an existing stream, as `name: configured ≠ existing`. */
function conflicts(info: StreamInfo, settings: StreamSettings | undefined): string[] {
  if (settings === undefined) return [];
  const config = info.config;
  const out: string[] = [];
  const check = (name: string, wanted: unknown, actual: unknown): void => {
    if (wanted !== undefined && wanted !== actual) out.push(`${name} ${JSON.stringify(wanted)} (the stream has ${JSON.stringify(actual)})`);
  };
  check('replicas', settings.replicas, config.num_replicas);
  check('maxBytes', settings.maxBytes, config.max_bytes);
  check('maxAgeMs', settings.maxAgeMs, config.max_age / NS_PER_MS);
  check('storage', settings.storage, config.storage);
  check('duplicateWindowMs', settings.duplicateWindowMs, (config.duplicate_window ?? 0) / NS_PER_MS);
  return out;
}

async function ensure(jsm: JetStreamManager, where: string, config: Partial<StreamConfig> & { name: string; subjects: string[] }, settings: StreamSettings | undefined, takes: (info: StreamInfo) => string | undefined): Promise<StreamInfo> {
  let info: StreamInfo;
  try {
    info = await jsm.streams.info(config.name);
  } catch (err) {
    if (jsErrorCode(err) !== JS_STREAM_NOT_FOUND) throw natsError(err, where, `cannot look up stream ${config.name}`);
    try {
      return await jsm.streams.add({ ...created(settings), ...config });
    } catch (addErr) {
      // Made meanwhile by another sender: take it as it is (checked below).
      try {
        info = await jsm.streams.info(config.name);
      } catch {
        throw natsError(addErr, where, `cannot create stream ${config.name}`);
      }
    }
  }
  const problems = conflicts(info, settings);
  const subjects = takes(info);
  if (subjects !== undefined) problems.push(subjects);
  if (problems.length > 0) {
    throw new MqlogError('ERR_STREAM_CONFLICT', `${where}: stream ${config.name} exists with other settings than mqlog.json asks for: ${problems.join('; ')}. mqlog never changes an existing stream: change the stream or the "nats.stream" settings`, {
      details: { url: where, stream: config.name },
    });
  }
  return info;
}

/** Makes sure the destination's stream exists and takes `STREAM.<channel>`; returns its info. @throws ERR_STREAM_CONFLICT, ERR_PEER_* */
export function ensureStream(jsm: JetStreamManager, where: string, stream: string, settings: StreamSettings | undefined): Promise<StreamInfo> {
  return ensure(jsm, where, { name: stream, subjects: [`${stream}.>`] }, settings, (info) => {
    const subjects = info.config.subjects ?? [];
    return subjects.some((s) => s === `${stream}.>` || s === `${stream}.*` || s === '>') ? undefined : `subjects [${subjects.join(', ')}] (mqlog publishes to ${stream}.<channel>: the stream must take ${stream}.>)`;
  });
}

/** Makes sure the bodies' bucket exists (an object store); returns its stream's info. @throws ERR_STREAM_CONFLICT, ERR_PEER_* */
export function ensureBucket(jsm: JetStreamManager, where: string, bucket: string, settings: StreamSettings | undefined): Promise<StreamInfo> {
  const chunks = `$O.${bucket}.C.>`;
  const meta = `$O.${bucket}.M.>`;
  return ensure(jsm, where, { name: bucketStream(bucket), subjects: [chunks, meta], allow_rollup_hdrs: true, allow_direct: true, discard: DiscardPolicy.New }, settings, (info) => {
    const subjects = info.config.subjects ?? [];
    if (!subjects.includes(chunks) || !subjects.includes(meta) || info.config.allow_rollup_hdrs !== true) return `it is not an object store bucket (subjects ${chunks} and ${meta}, roll-ups allowed)`;
    return undefined;
  });
}
