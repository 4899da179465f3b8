import { readFileSync } from 'node:fs';

let cached: string | undefined;

/** The package's version, from package.json beside dist/ (or src/, run from source). */
export function packageVersion(): string {
  cached ??= String((JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version?: unknown }).version);
  return cached;
}
