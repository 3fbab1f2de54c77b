import { expect } from 'chai';
import { join } from 'node:path';
import { resolveConfig, type LoadConfigOptions, type ResolvedConfig } from '../../lib/config/load-config.js';
import { useConfigDir } from '../helpers/config-dir.js';

describe('resolve-config', () => {
  const dir = useConfigDir('resolve-config-');

  /** A loopback server, so only the warning under test shows up. */
  function resolve(options: LoadConfigOptions = {}): ResolvedConfig {
    return resolveConfig({ cwd: dir.cwd, ...options, env: { SYNC_HOST: '127.0.0.1', ...options.env } });
  }

  describe('#resolveConfig', () => {
    describe('sources', () => {
      it('names where each setting came from the way errors do', async () => {
        await dir.writeConfig({ batchSize: 5 });
        const { sources } = resolve({ env: { SYNC_PORT: '1234' }, overrides: { dataDir: 'd' } });
        expect(sources).to.include({ host: 'SYNC_HOST', port: 'SYNC_PORT', dataDir: '--data-dir', batchSize: 'sync-coordinator.json: batchSize', basePath: 'default' });
      });
    });

    describe('warnings', () => {
      it('gives none for a plain loopback configuration', () => {
        expect(resolve().warnings).to.deep.equal([]);
      });

      const nearMisses: [string, string][] = [
        ['SYNC_PROT', 'SYNC_PORT'],
        ['SYNC_PORTS', 'SYNC_PORT'],
        ['SYNC_DATADIR', 'SYNC_DATA_DIR'],
        ['SYNC_DATA_DIRS', 'SYNC_DATA_DIR'],
        ['SYNC_AUTH_TOKEN', 'SYNC_AUTH_TOKENS'],
        ['SYNC_CORS_ORIGINS', 'SYNC_CORS_ORIGIN'],
        ['SYNC_BATCHSIZE', 'SYNC_BATCH_SIZE'],
        ['sync_port', 'SYNC_PORT'],
      ];
      for (const [name, meant] of nearMisses) {
        it(`warns about ${name} suggesting ${meant}`, () => {
          expect(resolve({ env: { [name]: 'x' } }).warnings).to.deep.equal([`ignoring unknown environment variable ${name} (did you mean ${meant}?)`]);
        });
      }

      it('points SYNC_DEBUG and SYNC_CONFIG at what does exist, and suggests nothing for an unrelated name', () => {
        expect(resolve({ env: { SYNC_DEBUG: '1', SYNC_CONFIG: 'f.json', SYNC_INTERVAL: '5' } }).warnings).to.deep.equal([
          'ignoring unknown environment variable SYNC_CONFIG (the config file is named with --config)',
          'ignoring unknown environment variable SYNC_DEBUG (use DEBUG=sync-coordinator:* or --debug)',
          'ignoring unknown environment variable SYNC_INTERVAL',
        ]);
      });

      it('warns once that S3 stays off when S3_* variables are set without S3_BUCKET, naming them but never their values', () => {
        const env = { S3_REGION: 'eu-west-1', S3_ACCESS_KEY_ID: 'AKIAEXAMPLE', S3_SECRET_ACCESS_KEY: 'very-secret-value', S3_KEY_PREFIX: 'sync/' };
        const { warnings, config } = resolve({ env });
        expect(warnings).to.deep.equal([
          'S3_REGION, S3_ACCESS_KEY_ID, S3_SECRET_ACCESS_KEY, S3_KEY_PREFIX are set, but S3 stays off without a bucket ' +
            `(set S3_BUCKET, --s3-bucket or "s3.bucket" in the config file): databases are stored only in ${JSON.stringify(join(dir.cwd, '.data'))}`,
        ]);
        for (const value of Object.values(env)) expect(warnings[0]).not.to.include(value);
        expect(config.s3).to.equal(undefined);
      });

      it('names S3 flags and config file keys without a bucket the way errors do', async () => {
        await dir.writeConfig({ s3: { endpoint: 'http://127.0.0.1:9000' } });
        expect(resolve({ overrides: { s3: { region: 'eu-west-1' } } }).warnings).to.deep.equal([
          '--s3-region, sync-coordinator.json: s3.endpoint are set, but S3 stays off without a bucket ' +
            `(set S3_BUCKET, --s3-bucket or "s3.bucket" in the config file): databases are stored only in ${JSON.stringify(join(dir.cwd, '.data'))}`,
        ]);
      });

      it('gives no S3 warning once a bucket is set, wherever it comes from', async () => {
        expect(resolve({ env: { S3_BUCKET: 'my-bucket', S3_REGION: 'eu-west-1' } }).warnings).to.deep.equal([]);
        expect(resolve({ env: { S3_REGION: 'eu-west-1' }, overrides: { s3: { bucket: 'my-bucket' } } }).warnings).to.deep.equal([]);
        await dir.writeConfig({ s3: { bucket: 'my-bucket' } });
        expect(resolve({ env: { S3_REGION: 'eu-west-1' } }).warnings).to.deep.equal([]);
      });

      it('does not call SYNC_S3_DURABILITY unknown, and suggests it for a near miss', () => {
        expect(resolve({ env: { SYNC_S3_DURABILITY: 'ack', DISK_EVICTION_ENABLED: 'false', DISK_EVICTION_IDLE_MS: '1000' } }).warnings).to.deep.equal([]);
        expect(resolve({ env: { SYNC_S3_DURABILTY: 'ack' } }).warnings).to.deep.equal([
          'ignoring unknown environment variable SYNC_S3_DURABILTY (did you mean SYNC_S3_DURABILITY?)',
        ]);
      });

      it('warns about a near miss of an S3_* or DISK_EVICTION_* variable, and leaves other programs\' S3_* variables alone', () => {
        const { warnings, config } = resolve({ env: { S3_BUCKT: 'my-bucket', s3_region: 'eu-west-1', DISK_EVICTION_ENABLE: 'true', S3_URL: 'x', S3_CACHE_DIR: '/tmp' } });
        expect(warnings).to.deep.equal([
          'ignoring unknown environment variable DISK_EVICTION_ENABLE (did you mean DISK_EVICTION_ENABLED?)',
          'ignoring unknown environment variable S3_BUCKT (did you mean S3_BUCKET?)',
          'ignoring unknown environment variable s3_region (did you mean S3_REGION?)',
        ]);
        expect(config.s3).to.equal(undefined);
        // With the bucket spelled right, S3 is on and a stray S3_* of another program says nothing.
        expect(resolve({ env: { S3_BUCKET: 'my-bucket', S3_URL: 'x' } }).warnings).to.deep.equal([]);
      });

      it('treats an empty S3_* variable as unset', () => {
        expect(resolve({ env: { S3_BUCKET: '', S3_REGION: ' ' } }).warnings).to.deep.equal([]);
      });

      for (const host of ['0.0.0.0', '::', '::0', '0:0:0:0:0:0:0:0']) {
        it(`warns that host ${host} without authentication lets anyone read and write`, () => {
          const { warnings } = resolve({ env: { SYNC_HOST: host, SYNC_PORT: '8080' } });
          expect(warnings).to.deep.equal([
            `host ${host} (from SYNC_HOST) listens on every interface and authMode is "none" (the default): ` +
              'anyone who can reach port 8080 can read and write every database; set --host 127.0.0.1 or --auth-mode token-whitelist',
          ]);
        });
      }

      it('warns about the defaults, which serve every interface without authentication', () => {
        const { warnings } = resolveConfig({ cwd: dir.cwd, env: {} });
        expect(warnings).to.have.length(1);
        expect(warnings[0]).to.match(/^host 0\.0\.0\.0 \(the default\) listens on every interface and authMode is "none" \(the default\): anyone who can reach port 3000 /);
      });

      it('does not warn about every interface with token-whitelist, nor about a single address', () => {
        expect(resolve({ env: { SYNC_HOST: '0.0.0.0', SYNC_AUTH_MODE: 'token-whitelist', SYNC_AUTH_TOKENS: 't' } }).warnings).to.deep.equal([]);
        expect(resolve({ env: { SYNC_HOST: '::1' } }).warnings).to.deep.equal([]);
      });
    });
  });
});
