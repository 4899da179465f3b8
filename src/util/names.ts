/**
 * Names from users and peers (channels, peers, destinations) never reach a file path as they are.
 * `encodeName` maps any string to one safe path component: bytes outside [A-Za-z0-9_-] become %XX, so
 * `.`, `..`, `/`, NUL and look-alike Unicode all turn into plain ASCII; names too long for a file system
 * are shortened and made unique with a SHA-256 suffix. The original name is stored beside the data.
 */
import { createHash } from 'node:crypto';

const SAFE = /^[A-Za-z0-9_-]$/;
const MAX_COMPONENT_CHARS = 200;

export function encodeName(name: string): string {
  let out = '';
  for (const byte of Buffer.from(name, 'utf8')) {
    const ch = String.fromCharCode(byte);
    out += SAFE.test(ch) ? ch : `%${byte.toString(16).toUpperCase().padStart(2, '0')}`;
  }
  if (out.length === 0) out = '%';
  if (out.length <= MAX_COMPONENT_CHARS) return out;
  const digest = createHash('sha256').update(name, 'utf8').digest('hex').slice(0, 32);
  return `${out.slice(0, MAX_COMPONENT_CHARS - 33).replace(/%[0-9A-F]?$/, '')}~${digest}`;
}

/** Inverse of encodeName for names that were not shortened; undefined otherwise. */
export function decodeName(component: string): string | undefined {
  if (component.includes('~')) return undefined;
  if (component === '%') return '';
  try {
    return decodeURIComponent(component);
  } catch {
    return undefined;
  }
}
