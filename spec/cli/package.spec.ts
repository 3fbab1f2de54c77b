import { expect } from 'chai';
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdir, symlink, writeFile } from 'node:fs/promises';
import { dirname, join, normalize } from 'node:path';
import { makeTempDir, removeTempDir } from '../helpers/tmp-dir.js';
import { buildOnce, cleanEnv, npmBinary, ROOT } from './harness.js';

interface PackageJson {
  name: string;
  license: string;
}

const PKG = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as PackageJson;

function run(command: string, args: string[], cwd: string): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(command, args, { cwd, env: cleanEnv({ npm_config_offline: 'true', npm_config_update_notifier: 'false' }), maxBuffer: 16 * 1024 * 1024 }, (err, stdout, stderr) => {
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr });
    });
  });
}

/** The files `npm pack` would put in the tarball, relative to the package root. */
async function packedFiles(): Promise<string[]> {
  // --ignore-scripts: the build is done already, and `prepare` would run tsc again.
  const result = await run(npmBinary('npm'), ['pack', '--dry-run', '--json', '--ignore-scripts'], ROOT);
  expect(result.code, result.stderr).to.equal(0);
  return (JSON.parse(result.stdout) as { files: { path: string }[] }[])[0]!.files.map((file) => file.path);
}

describe('package', function () {
  this.timeout(120_000);
  let dir: string;
  let files: string[];

  before(async function build() {
    this.timeout(180_000);
    await buildOnce();
    files = await packedFiles();
  });

  beforeEach(async () => {
    dir = await makeTempDir('package-');
  });

  afterEach(async () => {
    await removeTempDir(dir);
  });

  it('can be require()d from CommonJS', async () => {
    // Installed the way npm links a local package, so resolution goes through package.json "exports".
    await mkdir(join(dir, 'node_modules', dirname(PKG.name)), { recursive: true });
    await symlink(ROOT, join(dir, 'node_modules', PKG.name), 'dir');
    await writeFile(join(dir, 'main.cjs'), [
      `const sync = require(${JSON.stringify(PKG.name)});`,
      `console.log(typeof sync.createSyncRouter, typeof sync.createCoordinatorServer, typeof sync.loadConfig);`,
    ].join('\n'));
    const result = await run(process.execPath, ['main.cjs'], dir);
    expect(result.stderr).not.to.include('ERR_PACKAGE_PATH_NOT_EXPORTED');
    expect(result.code, result.stderr).to.equal(0);
    expect(result.stdout).to.equal('function function function\n');
  });

  it('ships an MIT LICENSE matching package.json', () => {
    expect(PKG.license).to.equal('MIT');
    expect(files).to.include('LICENSE');
    const text = readFileSync(join(ROOT, 'LICENSE'), 'utf8');
    expect(text).to.match(/^MIT License\n\nCopyright \(c\) \d{4} the sync-coordinator authors\n/);
    expect(text).to.include('THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND');
  });

  it('cites in its declarations and code only documents it ships, and sections of docs/protocol.md that exist', () => {
    const shipped = files.filter((file) => /\.(d\.ts|js)$/.test(file));
    const cited = new Map<string, string>();
    const sections = new Set<string>();
    for (const file of shipped) {
      const text = readFileSync(join(ROOT, file), 'utf8');
      for (const [, doc] of text.matchAll(/([\w./-]+\.md)\b/g)) if (!cited.has(doc!)) cited.set(doc!, file);
      for (const [, section] of text.matchAll(/docs\/protocol\.md §(\d+)/g)) sections.add(section!);
    }
    expect([...cited.keys()], 'documents cited').to.include('docs/protocol.md');
    expect([...cited].filter(([doc]) => !files.includes(doc)).map(([doc, file]) => `${file} cites ${doc}`), 'cited but not shipped').to.deep.equal([]);
    const protocol = readFileSync(join(ROOT, 'docs/protocol.md'), 'utf8');
    expect([...sections].filter((n) => !new RegExp(`^## ${n}\\. `, 'm').test(protocol)), 'sections cited but missing').to.deep.equal([]);
  });

  it('ships source maps whose sources are in the package, inline or as files', () => {
    const maps = files.filter((file) => file.endsWith('.map'));
    expect(maps, 'shipped source maps').not.to.be.empty;
    const missing: string[] = [];
    for (const file of maps) {
      const map = JSON.parse(readFileSync(join(ROOT, file), 'utf8')) as { sources: string[]; sourcesContent?: (string | null)[] };
      map.sources.forEach((source, i) => {
        const shipped = files.includes(normalize(join(dirname(file), source)));
        const inline = typeof map.sourcesContent?.[i] === 'string';
        if (!shipped && !inline) missing.push(`${file} -> ${source}`);
      });
    }
    expect(missing, 'sources neither shipped nor inlined').to.deep.equal([]);
  });
});
