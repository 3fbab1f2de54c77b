/**
 * The shape issue 10 asked for, checked on the source: one file names the
 * AWS SDK (so the rest of the code, and a coordinator without S3, never
 * depends on it), and the use cases get their replicas from the router's
 * ReplicaSource instead of building LevelDB stores themselves (so restore
 * and eviction can wrap the opening of a database).
 */
import { expect } from 'chai';
import { readdirSync, readFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));

/** Every .ts file under `dir` (relative to the repository root), sorted. */
function sources(dir: string): string[] {
  const out: string[] = [];
  for (const entry of readdirSync(join(ROOT, dir), { withFileTypes: true, recursive: true })) {
    if (entry.isFile() && entry.name.endsWith('.ts')) out.push(relative(ROOT, join(entry.parentPath, entry.name)));
  }
  return out.sort();
}

/**
 * The string literals of a file's code (comments excluded): module
 * specifiers of imports and exports, and the arguments of require(),
 * import() and createRequire()'s functions alike.
 */
function literals(file: string): string[] {
  const source = ts.createSourceFile(file, readFileSync(join(ROOT, file), 'utf8'), ts.ScriptTarget.Latest, false, ts.ScriptKind.TS);
  const out: string[] = [];
  const visit = (node: ts.Node): void => {
    if (ts.isStringLiteral(node) || ts.isNoSubstitutionTemplateLiteral(node)) out.push(node.text);
    ts.forEachChild(node, visit);
  };
  visit(source);
  return out;
}

/** The module specifiers a file imports (static, type-only and dynamic). */
function imports(file: string): string[] {
  const info = ts.preProcessFile(readFileSync(join(ROOT, file), 'utf8'), true, true);
  return info.importedFiles.map((f) => f.fileName);
}

describe('durability boundaries', () => {
  const shipped = [...sources('lib'), ...sources('cli'), ...sources('bench'), ...sources('examples')];

  it('names the AWS SDK in one file only, lib/durability/s3-archive.ts', () => {
    expect(shipped).to.include('lib/durability/s3-archive.ts');
    const naming = shipped.filter((file) => literals(file).some((text) => /^@(aws-sdk|smithy)\//.test(text)));
    expect(naming).to.deep.equal(['lib/durability/s3-archive.ts']);
  });

  it('loads the SDK there only when an S3 archive is built: its imports of the SDK are type-only', () => {
    const source = readFileSync(join(ROOT, 'lib/durability/s3-archive.ts'), 'utf8');
    const sdkImports = source.split('\n').filter((line) => /^import\b.*'@aws-sdk\//.test(line));
    expect(sdkImports.length).to.be.greaterThan(0);
    for (const line of sdkImports) expect(line, line).to.match(/^import type /);
  });

  it('gives the use cases no way to build a LevelDB store: lib/service gets its replicas injected', () => {
    const service = sources('lib/service');
    expect(service).to.include('lib/service/coordinator.ts');
    for (const file of service) {
      const building = imports(file).filter((spec) => /leveldown|levelup|storage\/leveldb|replica\/open-level|durability\//.test(spec));
      expect(building, `${file} imports`).to.deep.equal([]);
    }
  });
});
