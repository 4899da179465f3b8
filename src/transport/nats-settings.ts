/**
 * How mqlog reaches a NATS deployment (spec/transports.md §3.5): the settings of mqlog.json's `nats` key,
 * of a peer's and of a source's (`peers.<name>.nats`, `sources[i].nats`, each key overriding the node's).
 * Validated by the daemon's config (src/daemon/config.ts); consumed by the NATS connection and stream
 * set-up. File paths are read when connecting; their contents are secrets and are never logged.
 */

/** Settings mqlog uses when it creates a stream (and its bodies' bucket); checked against an existing one. */
export interface StreamSettings {
  /** Copies in a cluster (1-5). Default 1. */
  readonly replicas?: number | undefined;
  /** Largest size of the stream in bytes (oldest messages go first). Default unlimited. */
  readonly maxBytes?: number | undefined;
  /** How long messages are kept. Default forever. */
  readonly maxAgeMs?: number | undefined;
  /** `file` (default) or `memory`. */
  readonly storage?: 'file' | 'memory' | undefined;
  /** How long JetStream recognises a `Nats-Msg-Id` again. Default 2 minutes. */
  readonly duplicateWindowMs?: number | undefined;
}

export interface NatsSettings {
  /** Seed servers, `nats://HOST:PORT` or `tls://HOST:PORT`, tried with the URL's own server. */
  readonly servers?: readonly string[] | undefined;
  readonly user?: string | undefined;
  readonly pass?: string | undefined;
  readonly token?: string | undefined;
  /** Path of a file holding an nkey seed (`SU…`). */
  readonly nkeySeed?: string | undefined;
  /** Path of a `.creds` file (user JWT and nkey seed). */
  readonly creds?: string | undefined;
  /** TLS: PEM files (paths). Any of them, or a `tls://` URL, makes the connection require TLS. */
  readonly tls?: { readonly ca?: string | undefined; readonly cert?: string | undefined; readonly key?: string | undefined } | undefined;
  readonly stream?: StreamSettings | undefined;
  /**
   * What a message becomes in the stream: `headers` (default: the body as payload, the fields as headers,
   * readable by any NATS client) or `frame` (the mqlog frame as payload).
   */
  readonly format?: 'headers' | 'frame' | undefined;
  /** Object store bucket for bodies larger than a message can carry. Default `mqlog-<STREAM>`. */
  readonly bucket?: string | undefined;
}

/** `base` with the keys `over` sets replaced (one level deep for `tls` and `stream`). */
export function mergeNatsSettings(base: NatsSettings | undefined, over: NatsSettings | undefined): NatsSettings {
  if (over === undefined) return base ?? {};
  if (base === undefined) return over;
  return {
    ...base,
    ...over,
    ...(base.tls === undefined && over.tls === undefined ? {} : { tls: { ...base.tls, ...over.tls } }),
    ...(base.stream === undefined && over.stream === undefined ? {} : { stream: { ...base.stream, ...over.stream } }),
  };
}
