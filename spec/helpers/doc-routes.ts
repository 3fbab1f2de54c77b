/**
 * Routes as the docs list them and as the router serves them, as
 * `METHOD /path` strings relative to the mount path, so the docs specs can
 * check the README and docs/protocol.md against the real router.
 */
import type { Router } from 'express';
import { createSyncRouter } from '../../lib/create-sync-router.js';
import { makeTempDir, removeTempDir } from './tmp-dir.js';

interface RouteLayer { route?: { path: string | string[]; methods: Record<string, boolean> } }

/** Every route of a default router with the methods it answers (`GET /status`, ...); the 405 catch-alls excluded. */
export async function servedRoutes(): Promise<string[]> {
  const dataDir = await makeTempDir('routes-');
  const sync = createSyncRouter({ dataDir });
  try {
    const out = new Set<string>();
    for (const layer of (sync as Router & { stack: RouteLayer[] }).stack) {
      if (!layer.route) continue;
      const methods = Object.keys(layer.route.methods).filter((m) => m !== '_all');
      for (const path of ([] as string[]).concat(layer.route.path)) for (const m of methods) out.add(`${m.toUpperCase()} ${path}`);
    }
    return [...out].sort();
  } finally {
    await sync.close();
    await removeTempDir(dataDir);
  }
}

/**
 * The routes named in the first column of the markdown table whose header
 * row starts with `| <firstHeader> |`: `` `GET /a?x=<y>` ``, then further
 * paths in the same cell (`` `/b` ``) or file names beside the previous
 * path (`` `app.css` `` after `` `/dashboard/app.js` ``), with the same
 * method. Other code spans (bodies) are skipped; queries are cut.
 */
export function documentedRoutes(markdown: string, firstHeader: string): string[] {
  const lines = markdown.split('\n');
  const start = lines.findIndex((line) => line.startsWith(`| ${firstHeader} |`));
  if (start === -1) throw new Error(`no table with the header "${firstHeader}"`);
  const out = new Set<string>();
  for (const line of lines.slice(start + 2)) {
    if (!line.startsWith('|')) break;
    const cell = line.split('|')[1]!;
    let method: string | undefined;
    let previous: string | undefined;
    for (const [, span] of cell.matchAll(/`([^`]+)`/g)) {
      let path: string | undefined;
      const full = /^([A-Z]+) (\/\S*)/.exec(span!);
      if (full) [method, path] = [full[1], full[2]];
      else if (span!.startsWith('/')) path = span;
      else if (/^[\w-]+\.\w+$/.test(span!) && previous) path = `${previous.slice(0, previous.lastIndexOf('/'))}/${span}`;
      if (path === undefined || method === undefined) continue;
      path = path.split('?')[0]!;
      out.add(`${method} ${path}`);
      previous = path;
    }
  }
  return [...out].sort();
}
