/**
 * The samples of a Prometheus text exposition (format 0.0.4, what prom-client
 * and `GET <path>/metrics` serve). Only the sample lines matter to
 * `sync-coordinator stats`; `# HELP` and `# TYPE` lines are skipped. The npm
 * parsers of this format are unmaintained, and the grammar of a sample line
 * is small: `name{label="value",...} value [timestamp]`.
 */

/** One sample line. */
export interface PrometheusSample {
  name: string;
  labels: Record<string, string>;
  /** The value; `NaN`, `+Inf` and `-Inf` (in any case) are NaN, Infinity and -Infinity. */
  value: number;
}

const NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*/;
const LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*/;

/**
 * Parses every sample line of `text`. Throws Error naming the line number
 * and what was expected at a malformed line.
 */
export function parsePrometheusText(text: string): PrometheusSample[] {
  const samples: PrometheusSample[] = [];
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!.trim();
    if (line === '' || line.startsWith('#')) continue;
    try {
      samples.push(parseSample(line));
    } catch (err) {
      throw new Error(`metrics line ${i + 1}: ${(err as Error).message}: ${JSON.stringify(line.length > 80 ? `${line.slice(0, 80)}...` : line)}`);
    }
  }
  return samples;
}

function parseSample(line: string): PrometheusSample {
  const name = NAME.exec(line)?.[0];
  if (name === undefined) throw new Error('expected a metric name');
  let at = name.length;
  const labels: Record<string, string> = {};
  if (line[at] === '{') {
    at++;
    for (;;) {
      at = skipSpaces(line, at);
      if (line[at] === '}') break;
      const label = LABEL_NAME.exec(line.slice(at))?.[0];
      if (label === undefined) throw new Error(`expected a label name at column ${at + 1}`);
      at = skipSpaces(line, at + label.length);
      if (line[at] !== '=') throw new Error(`expected "=" after label ${label}`);
      at = skipSpaces(line, at + 1);
      if (line[at] !== '"') throw new Error(`expected a quoted value of label ${label}`);
      const [value, after] = quoted(line, at + 1);
      labels[label] = value;
      at = skipSpaces(line, after);
      if (line[at] === ',') at++;
      else if (line[at] !== '}') throw new Error(`expected "," or "}" after label ${label}`);
    }
    at++;
  }
  const [valueText] = line.slice(at).trim().split(/[ \t]+/);
  if (valueText === undefined || valueText === '') throw new Error('expected a value');
  return { name, labels, value: parseValue(valueText) };
}

function skipSpaces(line: string, at: number): number {
  while (line[at] === ' ' || line[at] === '\t') at++;
  return at;
}

/** A label value from just after its opening quote: the text and the offset after the closing quote. */
function quoted(line: string, at: number): [string, number] {
  let out = '';
  for (let i = at; i < line.length; i++) {
    const ch = line[i]!;
    if (ch === '"') return [out, i + 1];
    if (ch !== '\\') {
      out += ch;
      continue;
    }
    const next = line[++i];
    if (next === 'n') out += '\n';
    else if (next === '\\' || next === '"') out += next;
    else throw new Error(`unknown escape "\\${next ?? ''}" in a label value`);
  }
  throw new Error('unterminated label value');
}

/** A value as Go's ParseFloat reads it (what Prometheus does): NaN and infinities in any case (prom-client writes `Nan`). */
function parseValue(text: string): number {
  if (/^nan$/i.test(text)) return NaN;
  const infinite = /^([+-]?)inf(inity)?$/i.exec(text);
  if (infinite) return infinite[1] === '-' ? -Infinity : Infinity;
  const value = Number(text);
  if (Number.isNaN(value)) throw new Error(`expected a number, got ${JSON.stringify(text)}`);
  return value;
}

/** The sum of every sample named `name` (over all label sets); undefined when there is none. */
export function sumOf(samples: readonly PrometheusSample[], name: string): number | undefined {
  let sum: number | undefined;
  for (const sample of samples) if (sample.name === name) sum = (sum ?? 0) + sample.value;
  return sum;
}
