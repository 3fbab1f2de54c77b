/**
 * `sync-coordinator inspect <db>`: the built CLI as a child process, on data
 * directories a real coordinator process wrote and was then stopped. The
 * expected figures come from what the test wrote and from what that server
 * itself served (its change feed holds one entry per live fact, stamped).
 */
import { expect } from 'chai';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { readdir, stat, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import type { DatabaseInspection } from '../../lib/admin/inspect.js';
import type { ChangeSet } from '../../lib/protocol/messages.js';
import { databaseDirectory } from '../../lib/storage/database-id.js';
import { TestSite, type ChangeDraft } from '../helpers/changes.js';
import { cleanupCoordinatorProcesses, startCoordinatorProcess, type CoordinatorProcess } from '../helpers/coordinator-process.js';
import { makeTempDir, removeTempDir } from '../helpers/tmp-dir.js';
import { buildOnce, CLI, lines, runToEnd, Runs } from './harness.js';

const DB = 'acme:notes';
/** Over 64 characters: its directory is nested (database-id.ts). */
const LONG_DB = `tenant-${'x'.repeat(70)}.Archive`;

/** POSTs change sets, one transaction each, and checks they were taken. */
async function post(proc: CoordinatorProcess, db: string, site: TestSite, changeSets: ChangeSet[]): Promise<void> {
  const res = await proc.post(`/${encodeURIComponent(db)}/changes`, JSON.stringify({ changes: changeSets }), { 'x-site-id': site.wire });
  expect(res.status, res.body).to.equal(200);
}

/** Every change set the server serves for `db` to another site, paging to the end. */
async function feed(proc: CoordinatorProcess, db: string): Promise<ChangeSet[]> {
  const reader = new TestSite().wire;
  const all: ChangeSet[] = [];
  for (let since: string | undefined; ;) {
    const res = await proc.get(`/${encodeURIComponent(db)}/changes${since ? `?sinceHLC=${encodeURIComponent(since)}` : ''}`, { 'x-site-id': reader });
    expect(res.status, res.body).to.equal(200);
    const { changes, hasMore } = (JSON.parse(res.body) as { data: { changes: ChangeSet[]; hasMore: boolean } }).data;
    all.push(...changes);
    if (!hasMore || changes.length === 0) return all;
    since = changes.at(-1)!.hlc;
  }
}

/** Bytes and number of the files in a LevelDB directory, as inspect measures them. */
async function filesIn(dir: string): Promise<{ bytes: number; files: number }> {
  let bytes = 0;
  let files = 0;
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    if (!entry.isFile()) continue;
    bytes += (await stat(join(dir, entry.name))).size;
    files++;
  }
  return { bytes, files };
}

/** The table facts the test wrote, as inspect should count them. */
interface Expected {
  tables: { schema: string; table: string; rows: number; columnVersions: number; tombstones: number }[];
  migrations: number;
}

/**
 * Writes to `db`: two migrations, 30 notes with two columns, 10 titles
 * overwritten, 5 notes deleted, 4 tags with one deleted, 3 rows in another
 * schema. In several messages of several transactions each.
 */
async function writeNotes(proc: CoordinatorProcess, db: string): Promise<Expected> {
  const site = new TestSite();
  await post(proc, db, site, [site.txn([], [{ table: 'notes' }, { table: 'tags', ddl: 'create table tags (id integer primary key, name text)' }])]);
  const notes: ChangeDraft[][] = [];
  for (let i = 0; i < 30; i++) notes.push([{ pk: [i], column: 'title', value: `note ${i}` }, { pk: [i], column: 'body', value: { __bin: Buffer.from(`body ${i}`).toString('base64') } }]);
  await post(proc, db, site, notes.slice(0, 15).map((changes) => site.txn(changes)));
  await post(proc, db, site, notes.slice(15).map((changes) => site.txn(changes)));
  await post(proc, db, site, [site.txn(Array.from({ length: 10 }, (_, i) => ({ pk: [20 + i], column: 'title', value: `renamed ${i}` })))]);
  await post(proc, db, site, [site.txn(Array.from({ length: 4 }, (_, i) => ({ table: 'tags', pk: [`t${i}`], column: 'name', value: `tag ${i}` })))]);
  await post(proc, db, site, [site.txn([{ schema: 'aux', table: 'log', pk: [1], column: 'line', value: 'a' }, { schema: 'aux', table: 'log', pk: [2], column: 'line', value: 'b' }, { schema: 'aux', table: 'log', pk: [3], column: 'line', value: 'c' }])]);
  await post(proc, db, site, Array.from({ length: 5 }, (_, i) => site.txn([{ pk: [i], delete: true }])));
  await post(proc, db, site, [site.txn([{ table: 'tags', pk: ['t2'], delete: true }])]);
  return {
    tables: [
      { schema: 'aux', table: 'log', rows: 3, columnVersions: 3, tombstones: 0 },
      { schema: 'main', table: 'notes', rows: 25, columnVersions: 50, tombstones: 5 },
      { schema: 'main', table: 'tags', rows: 3, columnVersions: 3, tombstones: 1 },
    ],
    migrations: 2,
  };
}

/** What the server's change feed says inspect should find: transactions, entries, last stamp, and each table's last stamp. */
function fromFeed(changeSets: ChangeSet[]): { transactions: number; entries: number; lastStamp: string; tableStamps: Record<string, string> } {
  const tableStamps: Record<string, string> = {};
  let entries = 0;
  for (const set of changeSets) {
    entries += set.changes.length + set.schemaMigrations.length;
    // The feed is in stamp order, so the last set naming a table holds its latest fact.
    for (const change of set.changes) tableStamps[`${change.schema}.${change.table}`] = set.hlc;
  }
  return { transactions: changeSets.length, entries, lastStamp: changeSets.at(-1)!.hlc, tableStamps };
}

describe('cli inspect', function () {
  this.timeout(120_000);
  const runs = new Runs();
  let cwd: string;
  let dataDir: string;

  before(async function () {
    this.timeout(180_000);
    await buildOnce();
  });

  beforeEach(async () => {
    cwd = await makeTempDir('cli-inspect-');
    dataDir = join(cwd, 'data');
  });

  afterEach(async () => {
    await runs.cleanup();
    await cleanupCoordinatorProcesses();
    await removeTempDir(cwd);
  });

  describe('on a stopped server\'s data directory', () => {
    let expected: Expected;
    let served: ReturnType<typeof fromFeed>;
    let longServed: ReturnType<typeof fromFeed>;

    beforeEach(async () => {
      const proc = await startCoordinatorProcess({ dataDir });
      expected = await writeNotes(proc, DB);
      const site = new TestSite();
      await post(proc, LONG_DB, site, [site.txn([{ pk: ['only'], value: 'one row' }])]);
      served = fromFeed(await feed(proc, DB));
      longServed = fromFeed(await feed(proc, LONG_DB));
      expect((await proc.stop()).code, 'the server stops cleanly').to.equal(0);
    });

    it('prints, as JSON, the tables with their rows, column versions and tombstones, the last stamp and the size on disk', async () => {
      const onDisk = await filesIn(databaseDirectory(dataDir, DB));
      const result = await runToEnd(runs, ['inspect', DB, '--data-dir', dataDir, '--json'], { cwd });
      expect(result.code, result.stderr).to.equal(0);
      expect(result.stderr, 'no progress off a terminal').to.equal('');
      const report = JSON.parse(result.stdout) as DatabaseInspection;
      expect(report.databaseId).to.equal(DB);
      expect(report.directory).to.equal(databaseDirectory(dataDir, DB));
      expect(report.tables.map(({ lastStamp: _, ...counts }) => counts)).to.deep.equal(expected.tables);
      expect(report.migrations).to.equal(expected.migrations);
      expect(report.lastStamp?.hlc, 'the stamp of the last change the server served').to.equal(served.lastStamp);
      for (const table of report.tables) expect(table.lastStamp?.hlc, `${table.schema}.${table.table}`).to.equal(served.tableStamps[`${table.schema}.${table.table}`]);
      const wallTime = Buffer.from(served.lastStamp, 'base64').readUIntBE(2, 6);
      expect(report.lastStamp).to.include({ wallTime, time: new Date(wallTime).toISOString(), siteId: report.siteId });
      expect(report.changeLog).to.include({ transactions: served.transactions, entries: served.entries });
      expect(report.changeLog.entries, 'one log entry per live fact').to.equal(3 + 50 + 5 + 3 + 1 + 2);
      expect(report.sizeBytes).to.equal(onDisk.bytes);
      expect(report.files).to.equal(onDisk.files);
      expect(report.archivedStamp).to.equal(null);
      expect(report.retentionFloor).to.equal(null);
    });

    it('prints the same figures as a report a person reads', async () => {
      const json = JSON.parse((await runToEnd(runs, ['inspect', DB, '--data-dir', dataDir, '--json'], { cwd })).stdout) as DatabaseInspection;
      const result = await runToEnd(runs, ['inspect', DB, '--data-dir', dataDir], { cwd });
      expect(result.code, result.stderr).to.equal(0);
      const out = lines(result.stdout);
      expect(out[0]).to.equal(`database ${DB} in ${databaseDirectory(dataDir, DB)}`);
      expect(out).to.include(`  last stamp         ${json.lastStamp!.time} (counter ${json.lastStamp!.counter}, op ${json.lastStamp!.opSeq}) hlc ${served.lastStamp}`);
      expect(out).to.include(`  change log         ${served.transactions} transactions, ${served.entries} entries, ${formatKiB(json.changeLog.bytes)}`);
      expect(out).to.include('  schema migrations  2');
      const table = out.slice(out.findIndex((line) => line.startsWith('  table ')));
      expect(table[0]).to.match(/^ {2}table +rows +column versions +tombstones +last change$/);
      expect(table.slice(1).map((line) => line.trim().split(/\s+/))).to.deep.equal([
        ['aux.log', '3', '3', '0', json.tables[0]!.lastStamp!.time],
        ['main.notes', '25', '50', '5', json.tables[1]!.lastStamp!.time],
        ['main.tags', '3', '3', '1', json.tables[2]!.lastStamp!.time],
        ['3', 'tables', '31', '56', '6'],
      ]);
    });

    it('finds a database whose id is long enough to be stored in nested directories', async () => {
      const result = await runToEnd(runs, ['inspect', LONG_DB, '--data-dir', dataDir, '--json'], { cwd });
      expect(result.code, result.stderr).to.equal(0);
      const report = JSON.parse(result.stdout) as DatabaseInspection;
      expect(report.directory).to.equal(databaseDirectory(dataDir, LONG_DB));
      expect(report.tables.map(({ lastStamp: _, ...counts }) => counts)).to.deep.equal([{ schema: 'main', table: 'notes', rows: 1, columnVersions: 1, tombstones: 0 }]);
      expect(report.lastStamp?.hlc).to.equal(longServed.lastStamp);
    });

    it('takes the data directory from SYNC_DATA_DIR and from the config file, as the server does', async () => {
      const byEnv = await runToEnd(runs, ['inspect', DB, '--json'], { cwd, env: { SYNC_DATA_DIR: dataDir } });
      expect(byEnv.code, byEnv.stderr).to.equal(0);
      expect((JSON.parse(byEnv.stdout) as DatabaseInspection).lastStamp?.hlc).to.equal(served.lastStamp);
      await writeFile(join(cwd, 'sync-coordinator.json'), JSON.stringify({ dataDir: 'data' }));
      const byFile = await runToEnd(runs, ['inspect', DB, '--json'], { cwd });
      expect(byFile.code, byFile.stderr).to.equal(0);
      expect((JSON.parse(byFile.stdout) as DatabaseInspection).directory).to.equal(databaseDirectory(dataDir, DB));
    });

    it('fails with one line naming the database and what the directory holds, for a database that is not there', async () => {
      const result = await runToEnd(runs, ['inspect', 'acme:other', '--data-dir', dataDir], { cwd });
      expect(result.code).to.equal(1);
      expect(result.stdout).to.equal('');
      expect(lines(result.stderr)).to.deep.equal([
        `sync-coordinator inspect: database "acme:other" is not in "${dataDir}" (no directory "${databaseDirectory(dataDir, 'acme:other')}"; it holds "${DB}", "${LONG_DB}")`,
      ]);
      expect(existsSync(databaseDirectory(dataDir, 'acme:other')), 'nothing created for it').to.equal(false);
    });

    it('shows a bar while it reads on a terminal, and erases it before the report', async function () {
      if (!existsSync('/usr/bin/script')) this.skip();
      // script(1) runs the command on a pseudo-terminal and copies what it writes there.
      const command = [process.execPath, CLI, 'inspect', DB, '--data-dir', dataDir].map((arg) => `'${arg.replace(/'/g, `'\\''`)}'`).join(' ');
      const run = runs.start('/usr/bin/script', ['-qec', command, '/dev/null'], { cwd });
      expect((await run.closed).code, run.output.stderr).to.equal(0);
      const screen = run.output.stdout;
      const bar = screen.indexOf(`inspect ${DB}: column versions `);
      expect(bar, `a bar in ${JSON.stringify(screen.slice(0, 400))}`).to.be.greaterThan(-1);
      expect(screen.slice(bar)).to.match(/^inspect acme:notes: column versions [█░]{20} \d+% \d+\/56 entries/);
      const report = screen.indexOf(`database ${DB} in `);
      // Erased (cursor up, clear to the end of the screen) before the report is printed.
      expect(screen.slice(bar, report)).to.include('\u001b[0J');
      expect(report).to.be.greaterThan(bar);
    });
  });

  it('refuses with one line while a running server holds the data directory, and the server goes on', async () => {
    const proc = await startCoordinatorProcess({ dataDir });
    const site = new TestSite();
    await post(proc, DB, site, [site.txn([{ pk: [1], value: 'x' }])]);
    const result = await runToEnd(runs, ['inspect', DB, '--data-dir', dataDir], { cwd });
    expect(result.code).to.equal(1);
    expect(result.stdout).to.equal('');
    const [line, ...rest] = lines(result.stderr);
    expect(rest).to.deep.equal([]);
    expect(line).to.match(new RegExp(`^sync-coordinator inspect: "${escapeRegExp(dataDir)}" is in use by another running sync coordinator \\(pid ${proc.pid} on `));
    expect(line).to.include('inspect reads a stopped server\'s data (ask a running one with "sync-coordinator stats")');
    expect((await proc.get('/status')).status, 'the server still answers').to.equal(200);
    await post(proc, DB, site, [site.txn([{ pk: [2], value: 'y' }])]);
  });

  it('fails with one line naming the path when the database\'s directory is a file', async () => {
    const path = databaseDirectory(dataDir, 'acme:file');
    mkdirSync(dirname(path), { recursive: true });
    writeFileSync(path, 'not a store');
    const result = await runToEnd(runs, ['inspect', 'acme:file', '--data-dir', dataDir], { cwd });
    expect(result.code).to.equal(1);
    expect(lines(result.stderr)).to.deep.equal([`sync-coordinator inspect: "${path}" (database "acme:file") is a file, not a database directory`]);
  });

  it('fails with one line for a data directory that does not exist, and creates none', async () => {
    const result = await runToEnd(runs, ['inspect', DB, '--data-dir', dataDir], { cwd });
    expect(result.code).to.equal(1);
    expect(lines(result.stderr)).to.deep.equal([`sync-coordinator inspect: there is no data directory "${dataDir}"`]);
    expect(existsSync(dataDir)).to.equal(false);
  });

  it('exits 2 with one line for an invalid database id, a missing one, or an unknown flag', async () => {
    const invalid = await runToEnd(runs, ['inspect', '.hidden', '--data-dir', dataDir], { cwd });
    expect(invalid.code).to.equal(2);
    expect(lines(invalid.stderr)).to.deep.equal(['sync-coordinator inspect: <db>: expected 1-128 characters of [A-Za-z0-9_:.-] not starting with ".", got ".hidden"']);
    const missing = await runToEnd(runs, ['inspect'], { cwd });
    expect(missing.code).to.equal(2);
    expect(lines(missing.stderr)).to.have.length(1);
    expect(missing.stderr).to.include('Not enough non-option arguments');
    const unknown = await runToEnd(runs, ['inspect', DB, '--force'], { cwd });
    expect(unknown.code).to.equal(2);
    expect(unknown.stderr).to.equal('Unknown argument: force (see sync-coordinator --help)\n');
  });
});

function formatKiB(bytes: number): string {
  return bytes < 1024 ? `${bytes} B` : `${(bytes / 1024).toFixed(1)} KiB`;
}

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}
