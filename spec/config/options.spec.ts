import { expect } from 'chai';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { DEFAULTS, OPTION_SPECS, parseOptions } from '../../lib/config/options.js';
import { loadConfig, ConfigError } from '../../lib/config/load-config.js';
import { createSyncRouter } from '../../lib/create-sync-router.js';

const ENV = {};
const SOURCE = readFileSync(fileURLToPath(new URL('../../lib/config/options.ts', import.meta.url)), 'utf8');

/** The `@default` text of each documented field of SyncRouterOptions. */
function documentedDefaults(): Map<string, string> {
  const body = SOURCE.slice(SOURCE.indexOf('export interface SyncRouterOptions'), SOURCE.indexOf('\n}\n', SOURCE.indexOf('export interface SyncRouterOptions')));
  const out = new Map<string, string>();
  for (const m of body.matchAll(/\/\*\*((?:(?!\*\/)[\s\S])*)\*\/\s*(\w+)\?:/g)) {
    const tag = /@default\s+([^\n*]+)/.exec(m[1]!);
    if (tag) out.set(m[2]!, tag[1]!.trim());
  }
  return out;
}

describe('config/options', () => {
  describe('OPTION_SPECS', () => {
    it('documents every plain option with an @default that is its real default', () => {
      const documented = documentedDefaults();
      for (const [key, value] of Object.entries(DEFAULTS)) {
        const text = documented.get(key);
        expect(text, `${key} has an @default`).to.be.a('string');
        if (key === 'maxInboundBytes') continue; // derived from maxMessageBytes, documented as such
        const first = text!.split(/\s/)[0]!;
        const shown = typeof value === 'string' ? `'${value}'` : JSON.stringify(value);
        expect(first, `${key}: @default ${text}`).to.equal(shown);
      }
    });

    it('is what createSyncRouter and the config file both check against', () => {
      for (const [key, spec] of Object.entries(OPTION_SPECS)) {
        if (spec.min === undefined || spec.min === 0) continue;
        // The smallest sizes, so that maxInboundBytes >= maxMessageBytes holds whichever is at its minimum.
        const base = { maxMessageBytes: 1024, maxInboundBytes: 1024 };
        expect(() => parseOptions({ ...base, [key]: spec.min! - 1 }), key).to.throw(TypeError, `Option "${key}" must be an integer`);
        expect(parseOptions({ ...base, [key]: spec.min! })[key as 'batchSize'], key).to.equal(spec.min);
      }
      // The same minimum in a config file's router section, named with its file and key.
      expect(() => loadConfig({ env: ENV, overrides: { router: { maxInboundBytes: 1000 } } })).to.throw(ConfigError, 'router.maxInboundBytes: expected an integer >= 1024, got 1000');
      expect(() => loadConfig({ env: ENV, overrides: { router: { statusTokens: 'abc' as never } } })).to.throw(ConfigError, 'router.statusTokens');
      expect(loadConfig({ env: ENV, overrides: { router: { statusTokens: ['s3cret'] } } }).router?.statusTokens).to.deep.equal(['s3cret']);
    });

    it('refuses tokens with whitespace at either end (Bearer tokens are read trimmed), never printing a token', () => {
      for (const key of ['authTokens', 'statusTokens'] as const) {
        for (const tokens of [[' lead', 'good-one'], ['trail\n'], ['']]) {
          let message = '';
          try {
            parseOptions({ [key]: tokens, authMode: 'none' });
          } catch (err) {
            message = (err as Error).message;
          }
          expect(message, `${key} ${JSON.stringify(tokens)}`).to.equal(`Option "${key}" must be an array of non-empty strings without whitespace at either end, got array(${tokens.length})`);
        }
      }
      expect(() => loadConfig({ env: ENV, overrides: { router: { statusTokens: ['ok', 'trail '] } } })).to.throw(ConfigError, 'router.statusTokens: expected an array of non-empty strings without whitespace at either end, got array(2)');
      expect(parseOptions({ statusTokens: ['in side'] }).statusTokens, 'inner whitespace can be presented').to.deep.equal(['in side']);
    });

    it('must describe every plain option: a table without one does not compile (npm run typecheck)', () => {
      const { batchSize: _forgotten, ...rest } = OPTION_SPECS;
      // @ts-expect-error batchSize is missing: a forgotten option is a type error, not a silent default.
      const incomplete: typeof OPTION_SPECS = rest;
      expect(Object.keys(incomplete)).not.to.include('batchSize');
      // And every entry checks its option: a value of no option's type is refused, naming it.
      for (const key of Object.keys(OPTION_SPECS)) expect(() => parseOptions({ [key]: Symbol('bad') }), key).to.throw(TypeError, `Option "${key}" must be`);
    });

    it('accepts the same mount paths as the CLI: plain segments only', () => {
      expect(() => createSyncRouter({ path: '/sync/:db' })).to.throw(TypeError, 'Option "path" must be a path like "/sync"');
      expect(() => loadConfig({ env: { SYNC_BASE_PATH: '/sync/:db' } })).to.throw(ConfigError, 'SYNC_BASE_PATH');
      expect(parseOptions({ path: '/api/v1.2/sync_x~' }).path).to.equal('/api/v1.2/sync_x~');
      for (const bad of ['sync', '/sync/', '/a//b', '/a/../b', '/*', '/a(b)']) expect(() => parseOptions({ path: bad }), bad).to.throw(TypeError, 'path');
    });
  });
});
