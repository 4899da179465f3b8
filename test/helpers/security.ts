/**
 * Helpers for the security and hostile-input tests (test/e2e/auth, tls, limits, paths and test/fuzz):
 * node directories with a hand-written mqlog.json, daemons that may listen with https, raw requests
 * with arbitrary headers (signed or not, over a TLS agent or not), message payloads with any meta
 * fields, a recursive listing of a directory tree, and the run counts and seeds of the fuzz tests.
 */
import { spawn } from 'node:child_process';
import { lstat, mkdir, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { TestContext } from 'node:test';
import { Packr } from 'msgpackr';
import { request, type Dispatcher } from 'undici';
import { signRequest } from '../../src/transport/auth.js';
import { CLI, ROOT, defer, run, track, waitFor } from './index.js';
import { DaemonProcess, freePort, type NodeSpec } from './daemon.js';
import { BATCH_CONTENT_TYPE, uuidV7 } from './wire.js';

const packr = new Packr({ useRecords: false, mapsAsObjects: true });

/** A node directory (mode 0700) under `root` with a free port; its mqlog.json is written by `writeConfig`. */
export async function nodeSpec(root: string, name: string, scheme: 'http' | 'https' = 'http'): Promise<NodeSpec> {
  const port = await freePort();
  const dir = join(root, name);
  await mkdir(dir, { recursive: true, mode: 0o700 });
  return { name, dir, port, url: `${scheme}://127.0.0.1:${port}` };
}

/** Writes `DIR/mqlog.json` (mode 0600): `name` and `listen` from the spec, then `config` on top. */
export async function writeConfig(node: NodeSpec, config: Record<string, unknown>): Promise<void> {
  await writeFile(join(node.dir, 'mqlog.json'), JSON.stringify({ name: node.name, listen: `127.0.0.1:${node.port}`, ...config }), { mode: 0o600 });
}

/** A daemon child process that may listen with https (`listening on https://…`). */
export class AnyDaemon extends DaemonProcess {
  /** Starts the daemon and waits until it prints `listening on http://` or `listening on https://`. */
  override async start(extraArgs: string[] = []): Promise<void> {
    const child = track(spawn(process.execPath, [CLI, 'daemon', '--data', this.node.dir, ...extraArgs], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] }));
    this.child = child;
    this.output = '';
    child.stdout.on('data', (b: Buffer) => (this.output += b.toString()));
    child.stderr.on('data', (b: Buffer) => (this.output += b.toString()));
    await waitFor(() => {
      if (child.exitCode !== null) throw new Error(`daemon ${this.node.name} exited with ${child.exitCode}: ${this.output}`);
      return /listening on https?:\/\//.test(this.output);
    }, { timeoutMs: 60_000, message: `daemon ${this.node.name} to listen` });
  }

  /** The JSON log lines the daemon printed so far. */
  logLines(): Record<string, unknown>[] {
    return this.output
      .split('\n')
      .filter((line) => line.startsWith('{'))
      .flatMap((line) => {
        try {
          return [JSON.parse(line) as Record<string, unknown>];
        } catch {
          return [];
        }
      });
  }
}

/** Daemons for the given nodes (http or https), killed after the test. */
export function anyDaemons(t: TestContext, nodes: NodeSpec[]): AnyDaemon[] {
  const list = nodes.map((n) => new AnyDaemon(n));
  defer(t, async () => {
    for (const d of list) await d.kill();
  });
  return list;
}

export interface Answer {
  readonly status: number;
  readonly text: string;
  readonly json: { code?: unknown; message?: unknown; frame?: unknown; stored?: unknown; duplicates?: unknown } | undefined;
}

/** POSTs a batch to `${url}/v1/messages` with extra request headers (e.g. an authentication proof). */
export async function postWith(url: string, body: Buffer, headers: Record<string, string> = {}, dispatcher?: Dispatcher): Promise<Answer> {
  const response = await request(`${url}/v1/messages`, {
    method: 'POST',
    headers: { 'content-type': BATCH_CONTENT_TYPE, ...headers },
    body,
    headersTimeout: 60_000,
    bodyTimeout: 60_000,
    ...(dispatcher === undefined ? {} : { dispatcher }),
  });
  const text = await response.body.text();
  return { status: response.statusCode, text, json: parseJson(text) as Answer['json'] };
}

/** GET `url` with optional headers; the whole answer as text. */
export async function getText(url: string, headers: Record<string, string> = {}): Promise<{ status: number; text: string; contentType: string }> {
  const response = await request(url, { headers, headersTimeout: 30_000, bodyTimeout: 30_000 });
  const text = await response.body.text();
  const type = response.headers['content-type'];
  return { status: response.statusCode, text, contentType: String(Array.isArray(type) ? type[0] : (type ?? '')) };
}

/** The four authentication headers of spec/http-protocol.md §7 for a POST of `body` to /v1/messages. */
export function signed(peer: string, key: string, body: Buffer, now = Date.now()): Record<string, string> {
  return signRequest(peer, key, 'POST', '/v1/messages', body, now);
}

/** A MESSAGE payload (log-format.md §8) with the given short meta keys on top of valid defaults. */
export function payloadWith(meta: Record<string, unknown> = {}, body: string | Buffer = 'hello'): Buffer {
  const packed = packr.pack({ i: uuidV7(), t: Date.now(), c: 'common', p: 4, d: ['b'], f: 'a', ...meta });
  const prefix = Buffer.alloc(4);
  prefix.writeUInt32LE(packed.length, 0);
  return Buffer.concat([prefix, packed, typeof body === 'string' ? Buffer.from(body, 'utf8') : body]);
}

export interface TreeEntry {
  /** Absolute path. */
  readonly path: string;
  readonly kind: 'file' | 'dir' | 'symlink' | 'other';
  /** Permission bits (mode & 0o777). */
  readonly mode: number;
}

/** Every entry under `root` (not `root` itself), depth first, without following symbolic links. */
export async function listTree(root: string): Promise<TreeEntry[]> {
  const out: TreeEntry[] = [];
  const walk = async (dir: string): Promise<void> => {
    let names: string[];
    try {
      names = await readdir(dir);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return; // removed meanwhile (a temp file)
      throw err;
    }
    for (const name of names.sort()) {
      const path = join(dir, name);
      let stat;
      try {
        stat = await lstat(path);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENOENT') continue;
        throw err;
      }
      const kind = stat.isSymbolicLink() ? 'symlink' : stat.isDirectory() ? 'dir' : stat.isFile() ? 'file' : 'other';
      out.push({ path, kind, mode: stat.mode & 0o777 });
      if (kind === 'dir') await walk(path);
    }
  };
  await walk(root);
  return out;
}

/**
 * Number of runs of a fuzz property whose default is `base` (tuned so that CI stays fast).
 * MQLOG_FUZZ_RUNS=<n> scales every property of the fuzz tests by n / 2000: a property with the usual
 * base of 2000 then runs n times (e.g. MQLOG_FUZZ_RUNS=200000 for a long run).
 */
export function fuzzRuns(base = 2000): number {
  const env = Number(process.env.MQLOG_FUZZ_RUNS);
  if (!Number.isFinite(env) || env <= 0) return base;
  return Math.max(1, Math.round((base * env) / 2000));
}

/** The fast-check seed: MQLOG_FUZZ_SEED when set, else a fixed one, so that CI runs are reproducible. */
export function fuzzSeed(t: TestContext, fixed: number): number {
  const env = process.env.MQLOG_FUZZ_SEED;
  const seed = env === undefined || env === '' ? fixed : Number(env) | 0;
  t.diagnostic(`fast-check seed ${seed} (set MQLOG_FUZZ_SEED to change it)`);
  return seed;
}

function parseJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

export interface Certificates {
  /** The test CA's certificate (PEM): `tls.ca` of both sides. */
  readonly ca: string;
  /** A server certificate for 127.0.0.1 (subjectAltName IP:127.0.0.1), signed by the CA. */
  readonly serverCert: string;
  readonly serverKey: string;
  /** A client certificate signed by the CA (also valid as a server certificate for 127.0.0.1). */
  readonly clientCert: string;
  readonly clientKey: string;
  /** A certificate for 127.0.0.1 signed by another CA, unknown to the nodes. */
  readonly strangerCert: string;
  readonly strangerKey: string;
}

async function openssl(dir: string, args: string[]): Promise<void> {
  const result = await run('/usr/bin/openssl', args, { cwd: dir, timeoutMs: 60_000 });
  if (result.code !== 0) throw new Error(`openssl ${args.join(' ')} failed (${result.code}): ${result.stderr}`);
}

/** Makes a CA and certificates signed by it with openssl, in `dir` (P-256 keys, valid for two days). */
export async function makeCertificates(dir: string): Promise<Certificates> {
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  const makeCa = async (name: string): Promise<void> => {
    await openssl(dir, ['req', '-x509', ...ec, '-keyout', `${name}.key`, '-out', `${name}.pem`, '-days', '2', '-subj', `/CN=mqlog ${name}`,
      '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign']);
  };
  await makeCa('ca');
  await makeCa('stranger-ca');
  await writeFile(join(dir, 'leaf.ext'), 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n');
  let serial = 1;
  const leaf = async (name: string, ca: string): Promise<void> => {
    await openssl(dir, ['req', ...ec, '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${name}`]);
    await openssl(dir, ['x509', '-req', '-in', `${name}.csr`, '-CA', `${ca}.pem`, '-CAkey', `${ca}.key`, '-set_serial', String(serial++), '-days', '2', '-extfile', 'leaf.ext', '-out', `${name}.pem`]);
  };
  await leaf('server', 'ca');
  await leaf('client', 'ca');
  await leaf('stranger', 'stranger-ca');
  const at = (file: string): string => join(dir, file);
  return {
    ca: at('ca.pem'),
    serverCert: at('server.pem'),
    serverKey: at('server.key'),
    clientCert: at('client.pem'),
    clientKey: at('client.key'),
    strangerCert: at('stranger.pem'),
    strangerKey: at('stranger.key'),
  };
}

/**
 * The URL of a peer that is never reached: nothing listens on port 1 (privileged), so connecting fails at
 * once — unlike a port that was free a moment ago, which a concurrently running test may take.
 */
export const UNREACHABLE = 'http://127.0.0.1:1';
