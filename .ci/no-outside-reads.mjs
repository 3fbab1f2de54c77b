// Fails when a spec, bench or example names a relative path that leaves the
// checkout (a fresh clone has no sibling folders, so such a read fails there).
import { readFileSync, readdirSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const offenders = [];

function walk(dir) {
  for (const name of readdirSync(dir)) {
    const path = join(dir, name);
    if (name === 'node_modules' || name === 'results') continue;
    if (statSync(path).isDirectory()) walk(path);
    else if (/\.(ts|js|mjs|cjs|json)$/.test(name)) check(path);
  }
}

function check(file) {
  const text = readFileSync(file, 'utf8');
  const lines = text.split('\n');
  lines.forEach((line, i) => {
    for (const match of line.matchAll(/['"`]((?:\.\.?\/)+[^'"`$]*)['"`]/g)) {
      const target = resolve(dirname(file), match[1]);
      if (relative(root, target).startsWith('..')) offenders.push(`${relative(root, file)}:${i + 1}: ${match[1]}`);
    }
    if (/\/work\/shared|['"`]\/[^'"`]*shared\/fixtures/.test(line)) offenders.push(`${relative(root, file)}:${i + 1}: absolute path to shared/`);
  });
}

for (const dir of ['spec', 'bench', 'examples']) walk(join(root, dir));
if (offenders.length > 0) {
  console.error('These files read outside the checkout; copy what they need into spec/fixtures/:');
  for (const o of offenders) console.error(`  ${o}`);
  process.exit(1);
}
console.log('no spec, bench or example reads outside the checkout');
