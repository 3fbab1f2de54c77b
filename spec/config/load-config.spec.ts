import { expect } from 'chai';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { parseCliOverrides } from '../../lib/config/load-config.js';
import { SERVER_DEFAULTS, type CoordinatorConfig } from '../../lib/config/options.js';
import { configError } from '../helpers/config-error.js';
import { useConfigDir } from '../helpers/config-dir.js';
import { makeTempDir, removeTempDir } from '../helpers/tmp-dir.js';


describe('load-config', () => {
  const dir = useConfigDir('load-config-');
  const { load, writeConfig } = dir;

  describe('#loadConfig', () => {
    describe('defaults', () => {
      it('returns SERVER_DEFAULTS with dataDir made absolute against dir.cwd when nothing is set', () => {
        const config = load();
        expect(config).to.deep.equal({ ...SERVER_DEFAULTS, dataDir: join(dir.cwd, '.data') });
      });

      it('returns a fresh object each time, detached from the defaults', () => {
        const first = load();
        first.authTokens.push('x');
        first.port = 1;
        const second = load();
        expect(second.authTokens).to.deep.equal([]);
        expect(second.port).to.equal(3000);
        expect(SERVER_DEFAULTS.authTokens).to.deep.equal([]);
      });
    });

    describe('precedence', () => {
      it('prefers CLI overrides over env over the config file over defaults', async () => {
        await writeConfig({ port: 1111, host: '127.0.0.2', basePath: '/file', batchSize: 7 });
        const env = { SYNC_PORT: '2222', SYNC_HOST: '127.0.0.3' };
        const config = load({ env, overrides: { port: 3333 } });
        expect(config.port).to.equal(3333); // CLI over env and file
        expect(config.host).to.equal('127.0.0.3'); // env over file
        expect(config.basePath).to.equal('/file'); // file over default
        expect(config.batchSize).to.equal(7);
        expect(config.retentionHorizonMs).to.equal(SERVER_DEFAULTS.retentionHorizonMs); // default
      });

      it('ignores undefined overrides so flags not given do not hide env or file values', async () => {
        await writeConfig({ basePath: '/file' });
        const config = load({ env: { SYNC_PORT: '2222' }, overrides: { port: undefined, basePath: undefined } });
        expect(config.port).to.equal(2222);
        expect(config.basePath).to.equal('/file');
      });

      it('replaces lists instead of merging them', async () => {
        await writeConfig({ authMode: 'token-whitelist', authTokens: ['file-token'] });
        expect(load({ env: { SYNC_AUTH_TOKENS: 'env-token' } }).authTokens).to.deep.equal(['env-token']);
        expect(load({ env: { SYNC_AUTH_TOKENS: 'env-token' }, overrides: { authTokens: ['cli-token'] } }).authTokens).to.deep.equal(['cli-token']);
      });

      it('treats an empty env var as unset', async () => {
        await writeConfig({ port: 1111 });
        expect(load({ env: { SYNC_PORT: '', SYNC_HOST: '  ' } })).to.include({ port: 1111, host: '0.0.0.0' });
      });

      it('merges router options from the file with router overrides', async () => {
        await writeConfig({ router: { maxDriftMs: 5, syncWrites: true } });
        const config = load({ overrides: { router: { maxDriftMs: 9, storeIdleMs: 0 } } });
        expect(config.router).to.deep.equal({ maxDriftMs: 9, syncWrites: true, storeIdleMs: 0 });
      });

      it('leaves router unset when no source sets it', () => {
        expect(load()).not.to.have.property('router');
      });
    });

    describe('environment', () => {
      it('parses every SYNC_* variable', () => {
        const config = load({
          env: {
            SYNC_HOST: '127.0.0.1',
            SYNC_PORT: '0',
            SYNC_BASE_PATH: '/api/sync',
            SYNC_DATA_DIR: 'var/data',
            SYNC_CORS_ORIGIN: 'https://a.example.com',
            SYNC_AUTH_MODE: 'token-whitelist',
            SYNC_AUTH_TOKENS: 'alpha, beta',
            SYNC_RETENTION_HORIZON_MS: '86400000',
            SYNC_BATCH_SIZE: '250',
          },
        });
        expect(config).to.deep.equal({
          host: '127.0.0.1',
          port: 0,
          basePath: '/api/sync',
          dataDir: join(dir.cwd, 'var/data'),
          corsOrigin: ['https://a.example.com'],
          authMode: 'token-whitelist',
          authTokens: ['alpha', 'beta'],
          retentionHorizonMs: 86_400_000,
          batchSize: 250,
          s3Durability: 'async',
          diskEviction: true,
          diskEvictionIdleMs: 3_600_000,
        });
      });

      it('keeps an absolute SYNC_DATA_DIR as it is', async () => {
        const elsewhere = await makeTempDir('load-config-data-');
        try {
          expect(load({ env: { SYNC_DATA_DIR: elsewhere } }).dataDir).to.equal(elsewhere);
        } finally {
          await removeTempDir(elsewhere);
        }
      });

      it('accepts host names and IPv6 addresses for SYNC_HOST', () => {
        expect(load({ env: { SYNC_HOST: 'localhost' } }).host).to.equal('localhost');
        expect(load({ env: { SYNC_HOST: '::1' } }).host).to.equal('::1');
        expect(load({ env: { SYNC_HOST: 'sync_server.internal' } }).host).to.equal('sync_server.internal');
        expect(load({ env: { SYNC_HOST: '10-0-0-1.pod.local' } }).host).to.equal('10-0-0-1.pod.local');
      });

      it('refuses a mistyped IPv4 address as SYNC_HOST instead of looking it up as a name', () => {
        expect(configError(() => load({ env: { SYNC_HOST: '999.1.1.1' } })).message).to.equal('SYNC_HOST: expected an IP address or a host name, got "999.1.1.1"');
        expect(configError(() => load({ env: { SYNC_HOST: '127.0.0' } })).message).to.equal('SYNC_HOST: expected an IP address or a host name, got "127.0.0"');
      });

      it('accepts "/" as a base path', () => {
        expect(load({ env: { SYNC_BASE_PATH: '/' } }).basePath).to.equal('/');
      });

      it('ignores unknown SYNC_* variables, and S3_* variables without S3_BUCKET', () => {
        expect(load({ env: { S3_REGION: 'nowhere', S3_FORCE_PATH_STYLE: 'true', SYNC_WHATEVER: 'x' } })).to.deep.equal(load());
      });
    });

    describe('CORS origin', () => {
      const textForms: [string, unknown][] = [
        ['true', true],
        ['false', false],
        ['*', true],
        ['https://a.example.com', ['https://a.example.com']],
        ['https://a.example.com, http://localhost:5173,capacitor://localhost', ['https://a.example.com', 'http://localhost:5173', 'capacitor://localhost']],
      ];
      for (const [text, expected] of textForms) {
        it(`parses SYNC_CORS_ORIGIN=${JSON.stringify(text)}`, () => {
          expect(load({ env: { SYNC_CORS_ORIGIN: text } }).corsOrigin).to.deep.equal(expected);
        });
      }

      const fileForms: [unknown, unknown][] = [
        [true, true],
        [false, false],
        ['*', true],
        ['https://a.example.com', ['https://a.example.com']],
        [['https://a.example.com', 'http://b.example.com:8080'], ['https://a.example.com', 'http://b.example.com:8080']],
      ];
      for (const [value, expected] of fileForms) {
        it(`accepts corsOrigin ${JSON.stringify(value)} in the config file`, async () => {
          await writeConfig({ corsOrigin: value });
          expect(load().corsOrigin).to.deep.equal(expected);
        });
      }

      it('rejects origins with a path, empty list entries and non-origins', () => {
        for (const text of ['https://a.example.com/', 'https://a.example.com,,https://b.example.com', 'yes', 'TRUE', 'a.example.com']) {
          const err = configError(() => load({ env: { SYNC_CORS_ORIGIN: text } }));
          expect(err.setting).to.equal('SYNC_CORS_ORIGIN');
          expect(err.message).to.match(/^SYNC_CORS_ORIGIN: expected /);
        }
      });
    });

    describe('invalid values', () => {
      const badEnv: [string, string][] = [
        ['SYNC_HOST', 'not a host'],
        ['SYNC_HOST', '[::1]'],
        ['SYNC_PORT', 'abc'],
        ['SYNC_PORT', '65536'],
        ['SYNC_PORT', '-1'],
        ['SYNC_PORT', '80.5'],
        ['SYNC_PORT', '1e3'],
        ['SYNC_BASE_PATH', 'sync'],
        ['SYNC_BASE_PATH', '/sync/'],
        ['SYNC_BASE_PATH', '/sync/:id'],
        ['SYNC_BASE_PATH', '/a/../b'],
        ['SYNC_AUTH_MODE', 'basic'],
        ['SYNC_RETENTION_HORIZON_MS', '0'],
        ['SYNC_RETENTION_HORIZON_MS', '30d'],
        ['SYNC_BATCH_SIZE', '0'],
        ['SYNC_BATCH_SIZE', 'lots'],
      ];
      for (const [name, text] of badEnv) {
        it(`rejects ${name}=${JSON.stringify(text)} naming the variable and the value`, () => {
          const err = configError(() => load({ env: { [name]: text } }));
          expect(err.setting).to.equal(name);
          expect(err.value).to.equal(text);
          expect(err.message).to.equal(err.message.split('\n')[0]);
          expect(err.message).to.include(`${name}: `);
          expect(err.message).to.include(JSON.stringify(text));
        });
      }

      const badFile: [string, unknown][] = [
        ['host', ''],
        ['port', '3000'],
        ['port', 70000],
        ['port', 1.5],
        ['port', null],
        ['basePath', 'sync'],
        ['basePath', '/sync/'],
        ['dataDir', ''],
        ['dataDir', 5],
        ['corsOrigin', 5],
        ['corsOrigin', []],
        ['authMode', 'basic'],
        ['retentionHorizonMs', 0],
        ['batchSize', 0],
        ['batchSize', '10'],
      ];
      for (const [key, value] of badFile) {
        it(`rejects ${key}: ${JSON.stringify(value)} in the config file naming file, key and value`, async () => {
          await writeConfig({ [key]: value });
          const err = configError(() => load());
          expect(err.setting).to.equal(`sync-coordinator.json: ${key}`);
          expect(err.value).to.deep.equal(value);
          expect(err.message).to.match(new RegExp(`^sync-coordinator\\.json: ${key}: expected .*, got `));
        });
      }

      it('rejects bad router options in the config file', async () => {
        await writeConfig({ router: { maxMessageBytes: 10 } });
        expect(configError(() => load()).message).to.equal('sync-coordinator.json: router.maxMessageBytes: expected an integer from 1024 to 1073741824 (bytes), got 10');
        // Past 1 GiB, twice the value (the default maxInboundBytes) would no longer be an exact integer.
        await writeConfig({ router: { maxMessageBytes: Number.MAX_SAFE_INTEGER } });
        expect(configError(() => load()).message).to.equal(`sync-coordinator.json: router.maxMessageBytes: expected an integer from 1024 to 1073741824 (bytes), got ${Number.MAX_SAFE_INTEGER}`);
        await writeConfig({ router: { syncWrites: 'yes' } });
        expect(configError(() => load()).setting).to.equal('sync-coordinator.json: router.syncWrites');
        await writeConfig({ router: { path: '/x' } });
        expect(configError(() => load()).message).to.include('set "basePath" at the top level instead');
        await writeConfig({ router: { registry: {} } });
        expect(configError(() => load()).setting).to.equal('sync-coordinator.json: router.registry');
        await writeConfig({ router: 5 });
        expect(configError(() => load()).setting).to.equal('sync-coordinator.json: router');
      });

      it('names the file or flag in the router rules that join two options', async () => {
        await writeConfig({ router: { maxMessageBytes: 4096, maxInboundBytes: 2048 } });
        expect(configError(() => load()).message).to.equal('sync-coordinator.json: router.maxInboundBytes: expected at least maxMessageBytes (4096) so that one largest message fits, got 2048');
        await writeConfig({ router: { maxInboundBytes: 2048 } });
        expect(configError(() => load()).message, 'against the default maxMessageBytes').to.include('router.maxInboundBytes: expected at least maxMessageBytes (67108864)');
        expect(configError(() => load({ overrides: { router: { maxInboundBytes: 1024 } } })).setting, 'the override wins, and is named').to.equal('router.maxInboundBytes');
        await writeConfig({ router: { dashboardAuth: 'token' } });
        const dashboard = configError(() => load());
        expect(dashboard.setting).to.equal('sync-coordinator.json: router.dashboardAuth');
        expect(dashboard.message).to.include('no token could open the dashboard');
        await writeConfig({ authTokens: ['t'], router: { dashboardAuth: 'token' } });
        expect(load().router).to.deep.equal({ dashboardAuth: 'token' });
        await writeConfig({ router: { dashboardAuth: 'token', statusTokens: ['s'] } });
        expect(load().router).to.deep.equal({ dashboardAuth: 'token', statusTokens: ['s'] });
      });

      it('names overrides by their CLI flag', () => {
        const err = configError(() => load({ overrides: { port: 1.5 } }));
        expect(err.message).to.equal('--port: expected an integer 0-65535, got 1.5');
        expect(configError(() => load({ overrides: { basePath: 'x' } })).setting).to.equal('--base-path');
        expect(configError(() => load({ overrides: { retentionHorizonMs: -1 } })).setting).to.equal('--retention-horizon-ms');
        expect(configError(() => load({ overrides: { bogus: 1 } as Partial<CoordinatorConfig> })).setting).to.equal('overrides.bogus');
      });

      it('requires a token for token-whitelist, naming where the mode came from', async () => {
        const fromEnv = configError(() => load({ env: { SYNC_AUTH_MODE: 'token-whitelist' } }));
        expect(fromEnv.setting).to.equal('SYNC_AUTH_MODE');
        expect(fromEnv.message).to.match(/^SYNC_AUTH_MODE: "token-whitelist" needs at least one token/);
        expect(configError(() => load({ overrides: { authMode: 'token-whitelist' } })).setting).to.equal('--auth-mode');
        await writeConfig({ authTokens: ['from-file'] });
        expect(load({ env: { SYNC_AUTH_MODE: 'token-whitelist' } }).authTokens).to.deep.equal(['from-file']);
      });

      it('never echoes tokens in messages', async () => {
        const env = configError(() => load({ env: { SYNC_AUTH_TOKENS: 'secret-one,,secret-two' } }));
        expect(env.message).to.equal('SYNC_AUTH_TOKENS: token 2 of 3 is empty');
        expect(env.value).to.equal('[redacted]');
        await writeConfig({ authTokens: ['secret one'] });
        const file = configError(() => load());
        expect(file.message).to.equal('sync-coordinator.json: authTokens: token 1 of 1 contains whitespace or a comma');
        expect(file.message).not.to.include('secret');
        await writeConfig({ authTokens: 'secret' });
        expect(configError(() => load()).message).not.to.include('secret');
      });
    });

    describe('config file', () => {
      it('reads sync-coordinator.json from dir.cwd only when it exists', async () => {
        expect(load().port).to.equal(3000);
        await writeConfig({ port: 4444 });
        expect(load().port).to.equal(4444);
      });

      it('reads an explicit file relative to dir.cwd, or absolute', async () => {
        await mkdir(join(dir.cwd, 'etc'));
        const path = await writeConfig({ port: 5555 }, 'etc/custom.json');
        expect(load({ configFile: 'etc/custom.json' }).port).to.equal(5555);
        expect(load({ configFile: path }).port).to.equal(5555);
      });

      it('names the explicit file in its errors', async () => {
        await mkdir(join(dir.cwd, 'etc'));
        await writeConfig({ port: 'x' }, 'etc/custom.json');
        expect(configError(() => load({ configFile: 'etc/custom.json' })).setting).to.equal('etc/custom.json: port');
      });

      it('rejects an explicit config file that does not exist', () => {
        const err = configError(() => load({ configFile: 'missing.json' }));
        expect(err.setting).to.equal('config file');
        expect(err.value).to.equal('missing.json');
        expect(err.message).to.include('"missing.json" not found');
        expect(err.message).to.include(join(dir.cwd, 'missing.json'));
      });

      it('rejects a directory given as the config file', async () => {
        await mkdir(join(dir.cwd, 'dir.json'));
        expect(configError(() => load({ configFile: 'dir.json' })).message).to.include('is a directory');
      });

      it('rejects unknown keys, naming the key and suggesting the intended one', async () => {
        await writeConfig({ port: 1, base_path: '/x' });
        const err = configError(() => load());
        expect(err.setting).to.equal('sync-coordinator.json: base_path');
        expect(err.message).to.equal('sync-coordinator.json: base_path: unknown key "base_path" (did you mean "basePath"?)');
        await writeConfig({ colour: 'blue' });
        expect(configError(() => load()).message).to.equal('sync-coordinator.json: colour: unknown key "colour"');
      });

      it('rejects keys that are names of Object.prototype as unknown keys, in the file, its s3 object and overrides', async () => {
        for (const key of ['toString', 'constructor', 'hasOwnProperty', '__proto__']) {
          // Written as text: an object literal's __proto__ would set the prototype, not a key.
          await writeConfig(`{"port": 1, ${JSON.stringify(key)}: 1}`);
          expect(configError(() => load()).message, key).to.equal(`sync-coordinator.json: ${key}: unknown key "${key}"`);
          await writeConfig(`{"s3": {"bucket": "b-1", ${JSON.stringify(key)}: 1}}`);
          expect(configError(() => load()).message, `s3.${key}`).to.match(new RegExp(`^sync-coordinator\\.json: s3\\.${key}: unknown S3 setting "${key}"`));
          await writeConfig({});
          expect(configError(() => load({ overrides: JSON.parse(`{${JSON.stringify(key)}: 1}`) })).message, `overrides.${key}`).to.equal(`overrides.${key}: unknown setting`);
        }
      });

      it('rejects invalid JSON, naming the file', async () => {
        await writeConfig('{ "port": 3000, }');
        const err = configError(() => load());
        expect(err.setting).to.equal('sync-coordinator.json');
        expect(err.message).to.match(/^sync-coordinator\.json: invalid JSON \(.+\)$/);
        expect(err.message.split('\n')).to.have.length(1);
      });

      it('rejects a file that is not a JSON object', async () => {
        await writeConfig('[1, 2]');
        expect(configError(() => load()).message).to.equal('sync-coordinator.json: expected a JSON object of settings, got array(2)');
      });

      it('accepts a file starting with a byte order mark', async () => {
        await writeConfig('\uFEFF{"port": 6666}');
        expect(load().port).to.equal(6666);
      });
    });
  });

  describe('#parseCliOverrides', () => {
    it('parses flag texts and skips flags not given', () => {
      expect(parseCliOverrides({ port: '0', corsOrigin: '*', authTokens: 'a,b', host: undefined })).to.deep.equal({
        port: 0,
        corsOrigin: true,
        authTokens: ['a', 'b'],
      });
    });

    it('names the flag and the text in errors', () => {
      const err = configError(() => parseCliOverrides({ port: 'abc' }));
      expect(err.message).to.equal('--port: expected an integer 0-65535, got "abc"');
      expect(err.setting).to.equal('--port');
      expect(err.value).to.equal('abc');
      expect(configError(() => parseCliOverrides({ batchSize: '' })).setting).to.equal('--batch-size');
    });
  });
});
