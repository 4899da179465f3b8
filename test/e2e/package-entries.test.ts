/**
 * The package's two entries, as an application imports them: `mqlog` (the application API) loads no
 * server code — no HTTP server or client, no NATS client, no metrics registry, no logger — and
 * `mqlog/daemon` gives the daemon and the transports.
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { test } from 'node:test';
import { ROOT, run } from '../helpers/index.ts';

const SERVER_PACKAGES = ['fastify', 'undici', 'nats', 'prom-client', 'pino'];

/** Every module reachable from `entry` by static imports: relative files, and bare package names. */
async function staticImports(entry: string): Promise<{ files: Set<string>; packages: Set<string> }> {
  const files = new Set<string>();
  const packages = new Set<string>();
  const pending = [resolve(entry)];
  while (pending.length > 0) {
    const file = pending.pop() as string;
    if (files.has(file)) continue;
    files.add(file);
    const source = await readFile(file, 'utf8');
    // Static `import … from '…'` and `export … from '…'` (not `import()` calls, which load on demand), and
    // module-level `require('…')` of a package through createRequire.
    for (const match of source.matchAll(/^(?:(?:import|export)\s[^;]*?\sfrom\s+|const\s[^;=]*=\s*require\()'([^']+)'/gms)) {
      const spec = match[1] as string;
      if (/^import\s+type\s/.test(match[0]) || /^export\s+type\s/.test(match[0])) continue;
      if (spec.startsWith('.')) pending.push(join(dirname(file), spec));
      else if (!spec.startsWith('node:')) packages.add(spec.split('/')[0]?.startsWith('@') === true ? spec.split('/').slice(0, 2).join('/') : (spec.split('/')[0] as string));
    }
  }
  return { files, packages };
}

test("import 'mqlog' reaches no server code: no HTTP server or client, NATS client, metrics or logger", async () => {
  const { files, packages } = await staticImports(join(ROOT, 'dist', 'index.js'));
  assert.ok(files.size > 10, `the walk found only ${files.size} files`);
  for (const name of SERVER_PACKAGES) assert.ok(!packages.has(name), `import 'mqlog' loads ${name} (packages reached: ${[...packages].join(', ')})`);
  // Only the transport registry (which says what a destination URL is when a message is appended, and
  // loads transports on demand: spec/transports.md §1.2) and the NATS URL parser it uses.
  const transportFiles = [...files].filter((f) => f.includes(`${join('dist', 'transport')}`)).map((f) => basename(f));
  assert.deepEqual(transportFiles.filter((f) => f !== 'registry.js' && f !== 'nats-address.js'), [], 'import mqlog loads a transport');
  // The walk itself sees server code where it is: the daemon entry reaches fastify.
  const daemon = await staticImports(join(ROOT, 'dist', 'daemon', 'index.js'));
  assert.ok(daemon.packages.has('fastify') && daemon.packages.has('undici'), [...daemon.packages].join(', '));
});

test("an application imports 'mqlog' and 'mqlog/daemon' by name, and gets the API each promises", async () => {
  const script = `
    const lib = await import('mqlog');
    const daemon = await import('mqlog/daemon');
    console.log(JSON.stringify({
      openNode: typeof lib.openNode, MemoryLogStore: typeof lib.MemoryLogStore, FileLogStore: typeof lib.FileLogStore,
      MqlogError: typeof lib.MqlogError, DaemonInLib: 'Daemon' in lib, Daemon: typeof daemon.Daemon, HttpSender: typeof daemon.HttpSender,
    }));`;
  const result = await run(process.execPath, ['--input-type=module', '-e', script], { cwd: ROOT });
  assert.equal(result.code, 0, result.stderr);
  assert.deepEqual(JSON.parse(result.stdout), { openNode: 'function', MemoryLogStore: 'function', FileLogStore: 'function', MqlogError: 'function', DaemonInLib: false, Daemon: 'function', HttpSender: 'function' });
});

test('the package ships its license and the sources its source maps name', async () => {
  const packed = await run('npm', ['pack', '--dry-run', '--json', '--ignore-scripts'], { cwd: ROOT });
  assert.equal(packed.code, 0, packed.stderr);
  const [manifest] = JSON.parse(packed.stdout) as [{ files: { path: string }[] }];
  const files = new Set(manifest.files.map((f) => f.path));
  assert.ok(files.has('LICENSE'), 'LICENSE is in the package');
  const maps = [...files].filter((f) => f.endsWith('.js.map'));
  assert.ok(maps.length > 10, `the package has source maps (${maps.length})`);
  for (const map of maps) {
    const { sources } = JSON.parse(await readFile(join(ROOT, map), 'utf8')) as { sources: string[] };
    for (const source of sources) {
      const shipped = join(dirname(map), source);
      assert.ok(files.has(shipped), `${map} names ${shipped}, which the package does not ship`);
    }
  }
});
