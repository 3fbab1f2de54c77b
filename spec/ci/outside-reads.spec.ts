/**
 * The check `.ci/run` makes before `npm test`: no spec, bench or example
 * names a path outside the checkout (a fresh clone has no sibling folders;
 * issue 9's specs read a fixture from a sibling folder of the checkout and
 * failed with ENOENT).
 * Run here on small trees of its own, so it is seen to fail as well as pass.
 */
import { expect } from 'chai';
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { copyFile, mkdir, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { makeTempDir, removeTempDir } from '../helpers/tmp-dir.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const CHECK = join(ROOT, '.ci/no-outside-reads.mjs');

// Built from parts so that this spec does not trip the check itself.
const UP = (n: number): string => Array(n).fill('..').join('/');
const SIBLING = 'shared';
const SIBLING_FIXTURE = [UP(3), SIBLING, 'fixtures', 'reference-transcript.jsonl'].join('/');
const SHARED_ABSOLUTE = ['', 'work', SIBLING, 'fixtures', 'reference-transcript.jsonl'].join('/');

function runCheck(script: string): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [script], (err, stdout, stderr) => {
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr });
    });
  });
}

describe('.ci/no-outside-reads.mjs', () => {
  let dir: string;

  beforeEach(async () => {
    dir = await makeTempDir('outside-reads-');
    for (const folder of ['.ci', 'spec', 'bench', 'examples']) await mkdir(join(dir, folder));
    await copyFile(CHECK, join(dir, '.ci/no-outside-reads.mjs'));
  });
  afterEach(() => removeTempDir(dir));

  /** Writes `files` (path → text) into the tree and runs the check there. */
  async function check(files: Record<string, string>): Promise<{ code: number; stdout: string; stderr: string }> {
    for (const [path, text] of Object.entries(files)) {
      await mkdir(dirname(join(dir, path)), { recursive: true });
      await writeFile(join(dir, path), text);
    }
    return runCheck(join(dir, '.ci/no-outside-reads.mjs'));
  }

  it('fails naming file, line and path for a spec that reads a sibling folder of the checkout', async () => {
    const result = await check({
      'spec/protocol/validate.spec.ts': [
        "import { readFileSync } from 'node:fs';",
        `const FIXTURE = new URL('${SIBLING_FIXTURE}', import.meta.url);`,
        'readFileSync(FIXTURE);',
      ].join('\n'),
    });
    expect(result.code).to.equal(1);
    expect(result.stderr).to.contain(`spec/protocol/validate.spec.ts:2: ${SIBLING_FIXTURE}`);
  });

  it('fails for an absolute path to the shared folder, in a bench or an example too', async () => {
    const result = await check({
      'bench/load.ts': `const transcript = '${SHARED_ABSOLUTE}';\n`,
      'examples/demo.ts': `import '${UP(2)}/outside/module.js';\n`,
    });
    expect(result.code).to.equal(1);
    expect(result.stderr).to.contain(`bench/load.ts:1: absolute path to ${SIBLING}/`);
    expect(result.stderr).to.contain(`examples/demo.ts:1: ${UP(2)}/outside/module.js`);
  });

  it('passes a tree whose specs read their fixtures from spec/fixtures', async () => {
    const result = await check({
      'spec/fixtures/reference-transcript.jsonl': '{}\n',
      'spec/protocol/validate.spec.ts': "const FIXTURE = new URL('../fixtures/reference-transcript.jsonl', import.meta.url);\nimport '../../lib/index.js';\n",
    });
    expect(result.stderr).to.equal('');
    expect(result.code).to.equal(0);
  });

  it('passes this checkout, and .ci/run makes it before installing and testing', async () => {
    const result = await runCheck(CHECK);
    expect(result.stderr).to.equal('');
    expect(result.code).to.equal(0);
    const ci = readFileSync(join(ROOT, '.ci/run'), 'utf8');
    expect(ci).to.match(/^set -euo pipefail$/m);
    const at = ci.indexOf('node .ci/no-outside-reads.mjs');
    expect(at, 'the check in .ci/run').to.be.greaterThan(-1);
    expect(at).to.be.lessThan(ci.indexOf('npm ci'));
    expect(at).to.be.lessThan(ci.indexOf('npm test'));
  });
});
