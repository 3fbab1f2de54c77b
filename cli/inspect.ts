/**
 * `sync-coordinator inspect <db>`: what one database of a stopped server's
 * data directory holds (lib/admin/inspect.ts), as a short report or JSON on
 * stdout, with a bar on stderr while a large store is read on a terminal.
 */
import { ConfigError, parseCliOverrides, resolveConfig, type ResolvedConfig } from '../lib/config/load-config.js';
import { InspectError, inspectDatabase, type DatabaseInspection, type StampInfo } from '../lib/admin/inspect.js';
import { validateDatabaseId } from '../lib/storage/database-id.js';
import { createProgress } from './progress.js';
import { die, EXIT_FAILURE, EXIT_USAGE, finish, firstLine, formatBytes, formatCount, NAME } from './shared.js';

/** The flags `inspect` reads. */
export interface InspectArgs {
  db?: string;
  dataDir?: string;
  config?: string;
  json?: boolean;
}

/** Runs the command and exits: 0 with the report on stdout, 1 when it cannot inspect, 2 for bad arguments. */
export async function runInspectCommand(argv: InspectArgs): Promise<void> {
  const label = `${NAME} inspect`;
  let resolved: ResolvedConfig;
  try {
    // The data directory the server would use: --data-dir, SYNC_DATA_DIR, the config file, ./.data.
    resolved = resolveConfig({ overrides: parseCliOverrides({ dataDir: argv.dataDir }), configFile: argv.config, serving: false });
  } catch (err) {
    if (err instanceof ConfigError || err instanceof TypeError) die(EXIT_USAGE, firstLine(err));
    throw err;
  }
  const { dataDir } = resolved.config;
  let databaseId: string;
  try {
    databaseId = validateDatabaseId(argv.db, '<db>');
  } catch (err) {
    die(EXIT_USAGE, `${label}: ${firstLine(err)}`);
  }
  // The bar goes away once the scan is done: the report is what stays on the screen.
  const progress = createProgress(`${label} ${databaseId}`, `inspect ${databaseId}`, 'transient-bar');
  // Ctrl-C mid-read: give the terminal its cursor back; the operating system drops the locks with the process.
  const onSignal = (signal: string): void => {
    progress.stop();
    die(EXIT_FAILURE, `${label}: interrupted (${signal}) before it finished reading ${databaseId}`);
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  let part: string | undefined;
  let result: DatabaseInspection;
  try {
    result = await inspectDatabase({
      dataDir,
      databaseId,
      onProgress: (p) => {
        if (p.part !== part) {
          part = p.part;
          progress.phase(p.part, 'entries', p.total);
        }
        progress.update(p.done, p.total);
      },
    });
  } catch (err) {
    progress.stop();
    if (err instanceof InspectError) die(EXIT_FAILURE, `${label}: ${firstLine(err)}`);
    if (err instanceof ConfigError) die(EXIT_FAILURE, `${label}: ${err.problem}`);
    throw err;
  }
  progress.stop();
  finish(argv.json ? `${JSON.stringify(result, null, 2)}\n` : formatInspection(result));
}

/** The report `inspect` prints without --json. */
export function formatInspection(r: DatabaseInspection): string {
  const out: string[] = [];
  out.push(`database ${r.databaseId} in ${r.directory}`);
  const facts: [string, string][] = [
    ['size on disk', `${formatBytes(r.sizeBytes)} in ${r.files} files`],
    ['server site id', r.siteId],
    ['last stamp', r.lastStamp ? stampText(r.lastStamp) : 'none (no change accepted yet)'],
    ['archived up to', r.archivedStamp ? stampText(r.archivedStamp) : 'nothing archived (no archive, or none yet)'],
    ['retention floor', r.retentionFloor ? stampText(r.retentionFloor) : 'none (no tombstone swept yet)'],
    ['change log', `${formatCount(r.changeLog.transactions)} transactions, ${formatCount(r.changeLog.entries)} entries, ${formatBytes(r.changeLog.bytes)}`],
    ['schema migrations', formatCount(r.migrations)],
    ['key format', String(r.keyFormat)],
  ];
  const width = Math.max(...facts.map(([name]) => name.length));
  for (const [name, value] of facts) out.push(`  ${name.padEnd(width)}  ${value}`);
  out.push('');
  if (r.tables.length === 0) {
    out.push('no tables (no row was ever written, or every one was deleted and swept)');
  } else {
    const rows = [
      ['table', 'rows', 'column versions', 'tombstones', 'last change'],
      ...r.tables.map((t) => [`${t.schema}.${t.table}`, formatCount(t.rows), formatCount(t.columnVersions), formatCount(t.tombstones), t.lastStamp ? t.lastStamp.time : '-']),
    ];
    const total = r.tables.reduce((sum, t) => ({ rows: sum.rows + t.rows, columns: sum.columns + t.columnVersions, tombstones: sum.tombstones + t.tombstones }), { rows: 0, columns: 0, tombstones: 0 });
    if (r.tables.length > 1) rows.push([`${r.tables.length} tables`, formatCount(total.rows), formatCount(total.columns), formatCount(total.tombstones), '']);
    out.push(...table(rows));
  }
  return `${out.join('\n')}\n`;
}

/** `2025-06-01T10:00:00.123Z (counter 0, op 3) hlc <base64>`. */
function stampText(stamp: StampInfo): string {
  return `${stamp.time} (counter ${stamp.counter}, op ${stamp.opSeq}) hlc ${stamp.hlc}`;
}

/** Rows as aligned columns: the first left-aligned, numbers right-aligned, the last as it is. */
function table(rows: string[][]): string[] {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((row) => row[i]!.length)));
  return rows.map((row) => `  ${row.map((cell, i) => {
    if (i === 0) return cell.padEnd(widths[i]!);
    if (i === row.length - 1) return cell;
    return cell.padStart(widths[i]!);
  }).join('  ')}`.trimEnd());
}
