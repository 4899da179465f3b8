/**
 * The benchmark suite: `npm run bench [-- [--quick] [NAME…]]`.
 *
 * Runs the modules listed in MODULES one after another (never concurrently: each one's disk traffic
 * would skew the others' figures), or only those whose name contains one of the NAMEs. Each module gets
 * an empty scratch directory under `.bench/` in the project (git-ignored), so that every figure is
 * measured on the disk the project lives on; the directory is removed after the module, and the whole
 * `.bench/run-<pid>/` at the end, also on Ctrl-C.
 *
 * Output, all on stdout: a heading per module and one aligned line per figure while running; then a
 * `# summary` line and one JSON object per figure (`{"bench","id","label","value","unit",…}`), for
 * scripts to compare runs. Progress goes to stderr. Exit code: 0 when every module completed (a figure
 * below its target is reported, not an error), 1 when a module failed, 2 for bad arguments, 130 on
 * interrupt.
 */
import { mkdir, rm, rmdir, stat } from 'node:fs/promises';
import { rmSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { formatBytes, formatValue, freeBytes, meets, type BenchContext, type BenchFn, type Figure, type FigureInput } from './harness.ts';

interface BenchModule {
  /** Selects the module on the command line (substring match). */
  readonly name: string;
  readonly about: string;
  readonly load: () => Promise<{ readonly bench: BenchFn }>;
}

/** Every benchmark module, in the order they run. Add new ones here. */
const MODULES: readonly BenchModule[] = [
  { name: 'log', about: 'raw fsync limits of the disk, durable append through send(), RSS over 1 M appends', load: () => import('./log.bench.ts') },
  { name: 'reopen', about: 'reopening a 10 GiB queue after its writer was SIGKILLed: writer recovery and first reads at late offsets, with and without segment indexes', load: () => import('./reopen.bench.ts') },
  { name: 'backlog', about: 'mqlog stat and a daemon start with 1 M messages pending in the outbox and 1 M in the inboxes, versus an empty node', load: () => import('./backlog.bench.ts') },
  { name: 'compaction', about: 'append throughput and p99 latency with background compaction running versus without', load: () => import('./compaction.bench.ts') },
  { name: 'nats', about: 'forwarding rate into JetStream versus over HTTP to a peer, same run; a stream as an inbox source', load: () => import('./nats.bench.ts') },
  { name: 'e2e', about: 'store and forward A → B on loopback (child-process daemons): msgs/s versus local durable append, lone-message latency', load: () => import('./e2e.bench.ts') },
  { name: 'consume', about: 'consume + ack rate from a full inbox (1 and 8 consumer processes) versus end-to-end forwarding, receipt round trip', load: () => import('./consume.bench.ts') },
  { name: 'large', about: 'a 1 GiB streamed body A → B: MiB/s versus raw fsync\'d disk bandwidth, peak RSS of every process', load: () => import('./large.bench.ts') },
];

const ROOT = resolve(import.meta.dirname, '..');
const SCRATCH_PARENT = join(ROOT, '.bench');

const LABEL_CHARS = 50;
const VALUE_CHARS = 12;
const UNIT_CHARS = 7;

async function main(argv: readonly string[]): Promise<number> {
  const quick = argv.includes('--quick');
  if (argv.includes('--help') || argv.includes('-h')) {
    console.log(usage());
    return 0;
  }
  const unknownFlag = argv.find((a) => a.startsWith('-') && a !== '--quick');
  if (unknownFlag !== undefined) {
    console.error(`unknown option ${unknownFlag}\n${usage()}`);
    return 2;
  }
  const filters = argv.filter((a) => !a.startsWith('-')).map((f) => f.toLowerCase());
  const selected = MODULES.filter((m) => filters.length === 0 || filters.some((f) => m.name.toLowerCase().includes(f)));
  if (selected.length === 0) {
    console.error(`no benchmark matches ${filters.join(', ')}\n${usage()}`);
    return 2;
  }

  const scratch = join(SCRATCH_PARENT, `run-${process.pid}`);
  await mkdir(scratch, { recursive: true });
  const controller = new AbortController();
  let interrupts = 0;
  const onSignal = (signal: NodeJS.Signals): void => {
    interrupts++;
    if (interrupts === 1) {
      console.error(`\n${signal}: stopping the running benchmark and removing ${scratch} (again to quit at once)`);
      controller.abort(new Error(`interrupted by ${signal}`));
      return;
    }
    rmSync(scratch, { recursive: true, force: true });
    process.exit(130);
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);

  const figures: Figure[] = [];
  const failed: string[] = [];
  try {
    await printEnvironment(scratch, quick);
    for (const module of selected) {
      if (controller.signal.aborted) break;
      const dir = join(scratch, module.name);
      await mkdir(dir, { recursive: true });
      console.log(`\n== ${module.name}: ${module.about}${quick ? ' (--quick: smoke test, not trustworthy numbers)' : ''}`);
      const startedMs = performance.now();
      try {
        const { bench } = await module.load();
        await bench(context(module.name, dir, quick, controller.signal, figures));
        console.log(`   (${module.name} took ${((performance.now() - startedMs) / 1000).toFixed(1)} s)`);
      } catch (err) {
        if (controller.signal.aborted) {
          console.error(`${module.name}: interrupted`);
        } else {
          failed.push(module.name);
          console.error(`${module.name} FAILED:`, err);
        }
      } finally {
        await rm(dir, { recursive: true, force: true });
      }
    }
  } finally {
    await rm(scratch, { recursive: true, force: true });
    // .bench/ itself only if nothing else (a concurrent run) is in it.
    await rmdir(SCRATCH_PARENT).catch(() => undefined);
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }

  printSummary(figures, failed, controller.signal.aborted);
  if (controller.signal.aborted) return 130;
  return failed.length > 0 ? 1 : 0;
}

function context(name: string, dir: string, quick: boolean, signal: AbortSignal, figures: Figure[]): BenchContext {
  return {
    name,
    root: ROOT,
    dir,
    quick,
    signal,
    section(title) {
      console.log(`\n  ${title}`);
    },
    figure(input: FigureInput): Figure {
      const figure: Figure = { bench: name, ...input, ...(input.target === undefined ? {} : { pass: meets(input.value, input.target) }) };
      figures.push(figure);
      console.log(formatFigure(figure));
      return figure;
    },
    note(text) {
      console.log(`    note: ${text}`);
    },
    progress(text) {
      console.error(`    … ${text}`);
    },
  };
}

function formatFigure(figure: Figure): string {
  // A ratio reads best as "0.93×"; other units stand apart from their value.
  const value = figure.unit === '×' ? `${formatValue(figure.value, figure.unit)}×` : formatValue(figure.value, figure.unit);
  const unit = figure.unit === '×' ? '' : figure.unit;
  let line = `    ${figure.label.padEnd(LABEL_CHARS)} ${value.padStart(VALUE_CHARS)} ${unit.padEnd(UNIT_CHARS)}`;
  if (figure.target !== undefined) {
    const op = figure.target.op === '>=' ? '≥' : '<';
    const verdict = figure.pass === true ? 'PASS' : figure.target.op === '>=' ? 'BELOW' : 'OVER';
    line += ` target ${op} ${formatValue(figure.target.value, figure.unit)}${figure.unit === '×' ? '×' : ` ${figure.unit}`}  ${verdict}`;
  }
  if (figure.detail !== undefined) line += `  ${figure.detail}`;
  if (figure.runs !== undefined && figure.runs.length > 1) {
    line += `  [runs: ${figure.runs.map((r) => formatValue(r, figure.unit)).join(' / ')}]`;
  }
  return line.trimEnd();
}

/** The JSON lines: one object per figure, in the order measured. */
function printSummary(figures: readonly Figure[], failed: readonly string[], interrupted: boolean): void {
  const checked = figures.filter((f) => f.pass !== undefined);
  const missed = checked.filter((f) => f.pass === false);
  const missedList = missed.length > 0 ? ` (${missed.map((f) => `${f.bench}/${f.id}`).join(', ')})` : '';
  const failedList = `${failed.length > 0 ? `; FAILED: ${failed.join(', ')}` : ''}${interrupted ? '; INTERRUPTED' : ''}`;
  console.log(`\n# summary: ${figures.length} figures, ${checked.length} with a target, ${missed.length} missed${missedList}${failedList}`);
  for (const f of figures) {
    console.log(
      JSON.stringify({
        bench: f.bench,
        id: f.id,
        label: f.label,
        value: round(f.value),
        unit: f.unit,
        ...(f.runs === undefined ? {} : { runs: f.runs.map(round) }),
        ...(f.target === undefined ? {} : { target: f.target, pass: f.pass }),
      }),
    );
  }
}

async function printEnvironment(scratch: string, quick: boolean): Promise<void> {
  const cpu = cpus()[0]?.model ?? 'unknown cpu';
  console.log(`mqlog bench  node ${process.version}  ${process.platform}/${process.arch}  ${cpus().length} × ${cpu}${quick ? '  --quick' : ''}`);
  const [project, temp] = await Promise.all([stat(ROOT), stat(tmpdir())]);
  const sameDevice = project.dev === temp.dev;
  console.log(`scratch ${scratch}  (${formatBytes(await freeBytes(scratch))} free; os.tmpdir() ${tmpdir()} is ${sameDevice ? 'on the same device' : 'on ANOTHER device, not used'})`);
}

function round(value: number): number {
  return Number.isFinite(value) ? Number(value.toPrecision(6)) : value;
}

function usage(): string {
  return [
    'usage: npm run bench -- [--quick] [NAME…]',
    '  NAME     run only the modules whose name contains NAME',
    '  --quick  short runs and small data sets (smoke test)',
    `modules: ${MODULES.map((m) => `${m.name} (${m.about})`).join('; ')}`,
  ].join('\n');
}

process.exitCode = await main(process.argv.slice(2));
