/**
 * Progress of the CLI's long commands on stderr: a bar per phase on a
 * terminal (cli-progress), plain lines otherwise (a log file or a pipe
 * should get a few readable lines, not a stream of carriage returns).
 */
import type * as CliProgress from 'cli-progress';
import { requirePackage } from '../lib/require-package.js';

const cliProgress = requirePackage('cli-progress') as typeof CliProgress;

/** Least time between two plain lines of one phase, in ms; a phase's first and last values are always printed. */
const LINE_INTERVAL_MS = 1000;

export interface Progress {
  /** Starts a phase (ending the one before). Without a total it counts without a bar. */
  phase(name: string, unit: string, total?: number): void;
  /** The phase's value so far (and its total, once known). */
  update(value: number, total?: number): void;
  /** A line of its own (a warning), printed above the bar. */
  note(line: string): void;
  /** Ends the last phase; call it before printing anything else. */
  stop(): void;
}

/**
 * How progress shows: `auto`, a bar on a terminal and plain lines
 * otherwise; `lines`, always lines; `transient-bar`, a bar on a terminal
 * that is erased when stopped, and nothing otherwise (for a command whose
 * result, printed at the end, is all a person or a script wants to read).
 */
export type ProgressMode = 'auto' | 'lines' | 'transient-bar';

/**
 * Progress on `stream` as `mode` says. Lines start with `label` (they may
 * end up in a log among other programs'); a bar starts with `barLabel`,
 * shorter, since a bar wider than the terminal is cut off.
 */
export function createProgress(label: string, barLabel: string, mode: ProgressMode = 'auto', stream: NodeJS.WriteStream = process.stderr): Progress {
  if (mode !== 'lines' && stream.isTTY) return new BarProgress(barLabel, stream, mode === 'transient-bar');
  return mode === 'auto' || mode === 'lines' ? new LineProgress(label, stream) : new NoProgress(stream);
}

interface Phase {
  name: string;
  unit: string;
  total?: number;
  value: number;
  printed?: number;
}

class LineProgress implements Progress {
  #current?: Phase;
  #lastAt = 0;

  constructor(private readonly label: string, private readonly stream: NodeJS.WritableStream) {}

  phase(name: string, unit: string, total?: number): void {
    this.#finish();
    this.#current = { name, unit, value: 0, ...(total === undefined ? {} : { total }) };
    // "0/40 batches" says what is coming; a bare "0 entries" says nothing.
    if (total !== undefined) this.#print();
  }

  update(value: number, total?: number): void {
    const phase = this.#current;
    if (!phase) return;
    phase.value = value;
    if (total !== undefined) phase.total = total;
    const done = phase.total !== undefined && value >= phase.total;
    if (done || phase.printed === undefined || Date.now() - this.#lastAt >= LINE_INTERVAL_MS) this.#print();
  }

  note(line: string): void {
    this.stream.write(`${line}\n`);
  }

  stop(): void {
    this.#finish();
    this.#current = undefined;
  }

  #finish(): void {
    if (this.#current && this.#current.printed !== this.#current.value) this.#print();
  }

  #print(): void {
    const phase = this.#current!;
    const count = phase.total === undefined ? `${phase.value}` : `${phase.value}/${phase.total}`;
    this.stream.write(`${this.label}: ${phase.name}: ${count} ${phase.unit}\n`);
    phase.printed = phase.value;
    this.#lastAt = Date.now();
  }
}

class BarProgress implements Progress {
  readonly #bars: CliProgress.MultiBar;
  #bar?: CliProgress.SingleBar;
  readonly #transient: boolean;

  constructor(private readonly label: string, stream: NodeJS.WritableStream, transient = false) {
    this.#transient = transient;
    this.#bars = new cliProgress.MultiBar({ stream, hideCursor: true, clearOnComplete: transient, barsize: 20 }, cliProgress.Presets.shades_classic);
  }

  phase(name: string, unit: string, total?: number): void {
    // Each phase keeps its finished line; the next gets a bar below it.
    const format = total === undefined
      ? `${this.label}: ${name}: {value} ${unit}`
      : `${this.label}: ${name} {bar} {percentage}% {value}/{total} ${unit}`;
    this.#bar = this.#bars.create(total ?? 0, 0, {}, { format });
    // A bar that erases itself is drawn at once rather than at the first tick, so even a read shorter than a tick shows on the terminal.
    if (this.#transient) this.#bars.update();
  }

  update(value: number, total?: number): void {
    if (total !== undefined) this.#bar?.setTotal(total);
    this.#bar?.update(value);
  }

  note(line: string): void {
    this.#bars.log(`${line}\n`);
  }

  stop(): void {
    this.#bars.stop();
  }
}

/** Shows nothing but notes: `transient-bar` off a terminal. */
class NoProgress implements Progress {
  constructor(private readonly stream: NodeJS.WritableStream) {}

  phase(): void {}
  update(): void {}
  note(line: string): void {
    this.stream.write(`${line}\n`);
  }
  stop(): void {}
}
