import { readFileSync } from 'node:fs';

/**
 * This package's version, from its package.json: built, this file is
 * dist/lib/ (package.json two levels up); run from source it is lib/ (one
 * level up). 'unknown' when neither is readable. Reads a file: call it once
 * when a router is built, not per request.
 */
export function packageVersion(): string {
  for (const relative of ['../package.json', '../../package.json']) {
    try {
      const pkg = JSON.parse(readFileSync(new URL(relative, import.meta.url), 'utf8')) as { name?: string; version?: string };
      if (pkg.name === '@quereus/sync-coordinator' && pkg.version) return pkg.version;
    } catch {
      // Try the next candidate.
    }
  }
  return 'unknown';
}
