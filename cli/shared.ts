/**
 * What every command of the CLI shares: its name, exit codes, how it fails
 * (one line on stderr), and how it writes sizes and durations.
 */
import { messageOf } from '../lib/errors.js';

export const NAME = 'sync-coordinator';

/** Exit codes, also listed in --help. */
export const EXIT_OK = 0;
export const EXIT_FAILURE = 1;
export const EXIT_USAGE = 2;

/** Prints one line to stderr and exits; every failure of the CLI ends here. */
export function die(code: number, message: string): never {
  process.stderr.write(`${message.replace(/\s*[\r\n]+\s*/g, ' ')}\n`);
  process.exit(code);
}

/** The first line of an error's message (lib/errors.ts `messageOf`), for one-line failures. */
export function firstLine(err: unknown): string {
  return messageOf(err).split('\n')[0]!;
}

export function warn(message: string): void {
  process.stderr.write(`${NAME}: warning: ${message.replace(/\s*[\r\n]+\s*/g, ' ')}\n`);
}

/** Writes `text` to stdout and exits with `code` once it is out (a pipe may take a moment). */
export function finish(text: string, code = EXIT_OK): void {
  process.stdout.write(text, () => process.exit(code));
}

/** `512 B`, `1.5 KiB`, `3.2 MiB`, `1.1 GiB`. */
export function formatBytes(bytes: number): string {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KiB`;
  if (bytes < 1024 * 1024 * 1024) return `${(bytes / 1024 / 1024).toFixed(1)} MiB`;
  return `${(bytes / 1024 / 1024 / 1024).toFixed(1)} GiB`;
}

/** `45 s`, `12 min 5 s`, `3 h 4 min`, `2 d 5 h`, `1 d`, from seconds: the two largest units, a zero second one left out. */
export function formatDuration(seconds: number): string {
  const s = Math.floor(seconds);
  const two = (big: number, bigUnit: string, small: number, smallUnit: string): string => `${big} ${bigUnit}${small === 0 ? '' : ` ${small} ${smallUnit}`}`;
  if (s < 60) return `${s} s`;
  if (s < 3600) return two(Math.floor(s / 60), 'min', s % 60, 's');
  if (s < 86_400) return two(Math.floor(s / 3600), 'h', Math.floor((s % 3600) / 60), 'min');
  return two(Math.floor(s / 86_400), 'd', Math.floor((s % 86_400) / 3600), 'h');
}

/** A count with thousands separators, the same on every machine: `1,234,567`. */
export function formatCount(n: number): string {
  return Math.round(n).toLocaleString('en-US');
}
