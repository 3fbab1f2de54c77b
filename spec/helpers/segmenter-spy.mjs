// Preloaded into the CLI (`node --import`) by spec/cli/startup-checks.spec.ts:
// writes one stderr line for every Intl.Segmenter built, naming the caller.
const Native = Intl.Segmenter;
Intl.Segmenter = new Proxy(Native, {
  construct(target, args, newTarget) {
    const caller = (new Error().stack ?? '').split('\n')[2]?.trim() ?? 'unknown';
    process.stderr.write(`Intl.Segmenter built ${caller}\n`);
    return Reflect.construct(target, args, newTarget);
  },
});
