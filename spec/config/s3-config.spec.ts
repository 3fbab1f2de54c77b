import { expect } from 'chai';
import { format } from 'node:util';
import { parseCliOverrides, resolveConfig } from '../../lib/config/load-config.js';
import { parseOptions, type CoordinatorConfig } from '../../lib/config/options.js';
import { createCoordinatorServer } from '../../lib/create-coordinator-server.js';
import { S3Archive } from '../../lib/durability/s3-archive.js';
import { logs } from '../../lib/log.js';
import { configError } from '../helpers/config-error.js';
import { useConfigDir } from '../helpers/config-dir.js';


/** True when `fn` runs without throwing. */
function accepts(fn: () => unknown): boolean {
  try {
    fn();
    return true;
  } catch {
    return false;
  }
}

const ALL_S3_ENV = {
  S3_BUCKET: 'sync-archive',
  S3_REGION: 'eu-west-1',
  S3_ENDPOINT: 'http://127.0.0.1:9000',
  S3_ACCESS_KEY_ID: 'AKIAEXAMPLE',
  S3_SECRET_ACCESS_KEY: 'very-secret-value',
  S3_FORCE_PATH_STYLE: 'true',
  S3_KEY_PREFIX: 'sync/',
};

describe('S3 configuration', () => {
  const dir = useConfigDir('s3-config-');
  const { load, writeConfig } = dir;

  describe('defaults', () => {
    it('leaves S3 off, with async durability and eviction after an hour for when it is on', () => {
      const config = load();
      expect(config.s3).to.equal(undefined);
      expect(config).to.include({ s3Durability: 'async', diskEviction: true, diskEvictionIdleMs: 3_600_000 });
    });
  });

  describe('environment', () => {
    it('reads every S3_* variable, DISK_EVICTION_* and SYNC_S3_DURABILITY by the reference names', () => {
      const config = load({ env: { ...ALL_S3_ENV, DISK_EVICTION_ENABLED: 'false', DISK_EVICTION_IDLE_MS: '60000', SYNC_S3_DURABILITY: 'ack' } });
      expect(config.s3).to.deep.equal({
        bucket: 'sync-archive',
        region: 'eu-west-1',
        endpoint: 'http://127.0.0.1:9000',
        accessKeyId: 'AKIAEXAMPLE',
        secretAccessKey: 'very-secret-value',
        forcePathStyle: true,
        keyPrefix: 'sync/',
      });
      expect(config).to.include({ s3Durability: 'ack', diskEviction: false, diskEvictionIdleMs: 60_000 });
    });

    it('needs only S3_BUCKET; the rest stays unset for the archive to default (us-east-1, the SDK credential chain)', () => {
      expect(load({ env: { S3_BUCKET: 'sync-archive' } }).s3).to.deep.equal({ bucket: 'sync-archive' });
    });

    it('treats empty S3_* variables as unset', () => {
      expect(load({ env: { S3_BUCKET: 'sync-archive', S3_REGION: '', S3_ENDPOINT: ' ', S3_ACCESS_KEY_ID: '', S3_SECRET_ACCESS_KEY: '' } }).s3).to.deep.equal({ bucket: 'sync-archive' });
    });

    for (const [text, value] of [['true', true], ['TRUE', true], ['1', true], ['false', false], ['False', false], ['0', false]] as const) {
      it(`reads ${text} as ${value} in DISK_EVICTION_ENABLED and S3_FORCE_PATH_STYLE`, () => {
        const config = load({ env: { S3_BUCKET: 'sync-archive', DISK_EVICTION_ENABLED: text, S3_FORCE_PATH_STYLE: text } });
        expect(config.diskEviction).to.equal(value);
        expect(config.s3!.forcePathStyle).to.equal(value);
      });
    }
  });

  describe('config file', () => {
    it('takes s3, s3Durability, diskEviction and diskEvictionIdleMs at the top level, and the snapshot options under router', async () => {
      await writeConfig({
        s3: { bucket: 'file-bucket', region: 'eu-central-1', forcePathStyle: true, keyPrefix: 'a/b/' },
        s3Durability: 'ack',
        diskEviction: false,
        diskEvictionIdleMs: 120_000,
        router: { snapshotIntervalMs: 60_000, snapshotChanges: 10, snapshotsKept: 2 },
      });
      const config = load();
      expect(config.s3).to.deep.equal({ bucket: 'file-bucket', region: 'eu-central-1', forcePathStyle: true, keyPrefix: 'a/b/' });
      expect(config).to.include({ s3Durability: 'ack', diskEviction: false, diskEvictionIdleMs: 120_000 });
      expect(config.router).to.deep.equal({ snapshotIntervalMs: 60_000, snapshotChanges: 10, snapshotsKept: 2 });
    });

    it('rejects snapshot options the router would reject, naming file and key', async () => {
      await writeConfig({ router: { snapshotsKept: 0 } });
      expect(configError(() => load()).message).to.equal('sync-coordinator.json: router.snapshotsKept: expected an integer >= 1, got 0');
      await writeConfig({ router: { snapshotIntervalMs: 10 } });
      expect(configError(() => load()).message).to.equal('sync-coordinator.json: router.snapshotIntervalMs: expected an integer from 1000 to 2147483647 (ms), got 10');
    });

    it('sends the S3 settings under router to the top level', async () => {
      await writeConfig({ router: { s3Durability: 'ack' } });
      expect(configError(() => load()).message).to.equal('sync-coordinator.json: router.s3Durability: unknown router option "s3Durability" (set "s3Durability" at the top level instead)');
      await writeConfig({ router: { s3: { bucket: 'b-bucket' } } });
      expect(configError(() => load()).message).to.equal('sync-coordinator.json: router.s3: unknown router option "s3" (set "s3" at the top level instead)');
    });

    it('rejects an s3 that is not an object, and unknown s3 keys with a suggestion', async () => {
      await writeConfig({ s3: 'my-bucket' });
      expect(configError(() => load()).message).to.equal(
        'sync-coordinator.json: s3: expected an object { bucket, region, endpoint, accessKeyId, secretAccessKey, forcePathStyle, keyPrefix }, got "my-bucket"',
      );
      await writeConfig({ s3: { Bucket: 'my-bucket' } });
      expect(configError(() => load()).message).to.equal(
        'sync-coordinator.json: s3.Bucket: unknown S3 setting "Bucket" (did you mean "bucket"?); s3 takes bucket, region, endpoint, accessKeyId, secretAccessKey, forcePathStyle, keyPrefix',
      );
    });

    it('names file and key of a bad s3 field', async () => {
      await writeConfig({ s3: { bucket: 5 } });
      expect(configError(() => load()).message).to.equal(
        'sync-coordinator.json: s3.bucket: expected a bucket name (3-63 characters of a-z, 0-9, ".", "-"), got 5',
      );
      await writeConfig({ s3: { bucket: 'my-bucket', forcePathStyle: 'yes' } });
      expect(configError(() => load()).message).to.equal('sync-coordinator.json: s3.forcePathStyle: expected true or false, got "yes"');
    });
  });

  describe('precedence', () => {
    it('takes each S3 field from the highest source that sets it: flags > env > file', async () => {
      await writeConfig({ s3: { bucket: 'file-bucket', region: 'eu-central-1', endpoint: 'http://file:9000', keyPrefix: 'file/' } });
      const { config, s3Sources } = resolveConfig({
        cwd: dir.cwd,
        env: { S3_BUCKET: 'env-bucket', S3_REGION: 'eu-west-1' },
        overrides: parseCliOverrides({ s3: { region: 'us-west-2', keyPrefix: undefined } }),
      });
      expect(config.s3).to.deep.equal({ bucket: 'env-bucket', region: 'us-west-2', endpoint: 'http://file:9000', keyPrefix: 'file/' });
      expect(s3Sources).to.deep.equal({
        bucket: 'S3_BUCKET', region: '--s3-region', endpoint: 'sync-coordinator.json: s3.endpoint', keyPrefix: 'sync-coordinator.json: s3.keyPrefix',
      });
    });

    it('ranks s3Durability, diskEviction and diskEvictionIdleMs flags > env > file > defaults', async () => {
      await writeConfig({ s3Durability: 'ack', diskEviction: false, diskEvictionIdleMs: 1000 });
      expect(load()).to.include({ s3Durability: 'ack', diskEviction: false, diskEvictionIdleMs: 1000 });
      const env = { SYNC_S3_DURABILITY: 'async', DISK_EVICTION_ENABLED: 'true', DISK_EVICTION_IDLE_MS: '2000' };
      expect(load({ env })).to.include({ s3Durability: 'async', diskEviction: true, diskEvictionIdleMs: 2000 });
      const overrides = parseCliOverrides({ s3Durability: 'ack', diskEviction: 'false', diskEvictionIdleMs: '3000' });
      expect(load({ env, overrides })).to.include({ s3Durability: 'ack', diskEviction: false, diskEvictionIdleMs: 3000 });
      expect(resolveConfig({ cwd: dir.cwd, env, overrides: {} }).sources).to.include({ s3Durability: 'SYNC_S3_DURABILITY', diskEviction: 'DISK_EVICTION_ENABLED', diskEvictionIdleMs: 'DISK_EVICTION_IDLE_MS' });
    });
  });

  describe('#parseCliOverrides', () => {
    it('parses the --s3-* flags and skips those not given', () => {
      expect(parseCliOverrides({
        s3: { bucket: 'my-bucket', region: 'eu-west-1', endpoint: 'https://s3.example.com', accessKeyId: 'id', secretAccessKey: 'secret', forcePathStyle: 'false', keyPrefix: undefined },
      })).to.deep.equal({ s3: { bucket: 'my-bucket', region: 'eu-west-1', endpoint: 'https://s3.example.com', accessKeyId: 'id', secretAccessKey: 'secret', forcePathStyle: false } });
      expect(parseCliOverrides({ s3: {} })).to.deep.equal({});
    });

    it('reads a switch given without a value as true', () => {
      expect(parseCliOverrides({ diskEviction: '', s3: { forcePathStyle: '' } })).to.deep.equal({ diskEviction: true, s3: { forcePathStyle: true } });
    });

    const bad: [Parameters<typeof parseCliOverrides>[0], string][] = [
      [{ s3: { bucket: 'My_Bucket' } }, '--s3-bucket: expected a bucket name (3-63 characters of a-z, 0-9, ".", "-"), got "My_Bucket"'],
      [{ s3: { endpoint: 'ftp://host' } }, '--s3-endpoint: expected an http(s) URL, got "ftp://host"'],
      [{ s3: { forcePathStyle: 'yes' } }, '--s3-force-path-style: expected true or false (or 1 or 0), got "yes"'],
      [{ s3: { keyPrefix: '/abs' } }, '--s3-key-prefix: expected "" or "/"-separated segments such as "sync/" (no leading or doubled "/", no "." or ".." segment, no control characters), got "/abs"'],
      [{ s3Durability: 'sync' }, '--s3-durability: expected "async" or "ack", got "sync"'],
      [{ diskEviction: 'maybe' }, '--disk-eviction: expected true or false (or 1 or 0), got "maybe"'],
      [{ diskEvictionIdleMs: '-1' }, '--disk-eviction-idle-ms: expected an integer from 0 to 2147483647 (ms), got "-1"'],
      [{ diskEvictionIdleMs: '1e3' }, '--disk-eviction-idle-ms: expected an integer from 0 to 2147483647 (ms), got "1e3"'],
      [{ diskEvictionIdleMs: '2147483648' }, '--disk-eviction-idle-ms: expected an integer from 0 to 2147483647 (ms), got "2147483648"'],
    ];
    for (const [texts, message] of bad) {
      it(`rejects ${JSON.stringify(texts)} naming the flag and the text`, () => {
        expect(configError(() => parseCliOverrides(texts)).message).to.equal(message);
      });
    }
  });

  describe('invalid environment', () => {
    const bad: [Record<string, string>, string][] = [
      [{ S3_BUCKET: 'x' }, 'S3_BUCKET: expected a bucket name (3-63 characters of a-z, 0-9, ".", "-"), got "x"'],
      [{ S3_BUCKET: 'my-bucket', S3_ENDPOINT: '127.0.0.1:9000' }, 'S3_ENDPOINT: expected an http(s) URL, got "127.0.0.1:9000"'],
      [{ S3_BUCKET: 'my-bucket', S3_KEY_PREFIX: 'a//b' }, 'S3_KEY_PREFIX: expected "" or "/"-separated segments such as "sync/" (no leading or doubled "/", no "." or ".." segment, no control characters), got "a//b"'],
      [{ S3_FORCE_PATH_STYLE: 'on' }, 'S3_FORCE_PATH_STYLE: expected true or false (or 1 or 0), got "on"'],
      [{ SYNC_S3_DURABILITY: 'ACK' }, 'SYNC_S3_DURABILITY: expected "async" or "ack", got "ACK"'],
      [{ DISK_EVICTION_ENABLED: 'enabled' }, 'DISK_EVICTION_ENABLED: expected true or false (or 1 or 0), got "enabled"'],
      [{ DISK_EVICTION_IDLE_MS: '1h' }, 'DISK_EVICTION_IDLE_MS: expected an integer from 0 to 2147483647 (ms), got "1h"'],
    ];
    for (const [env, message] of bad) {
      it(`rejects ${JSON.stringify(env)} naming the variable and the value`, () => {
        const err = configError(() => load({ env }));
        expect(err.message).to.equal(message);
      });
    }
  });

  describe('credentials', () => {
    it('wants both keys or neither, naming where the one given came from but no key', () => {
      const err = configError(() => load({ env: { S3_BUCKET: 'my-bucket', S3_ACCESS_KEY_ID: 'AKIAEXAMPLE' } }));
      expect(err.message).to.equal(
        'S3_ACCESS_KEY_ID: S3_SECRET_ACCESS_KEY (or --s3-secret-access-key, or "s3.secretAccessKey" in the config file) must be set too: ' +
          "give both keys, or neither to use the AWS SDK's default credential chain",
      );
      expect(err.value).to.equal('[redacted]');
      const other = configError(() => load({ env: { S3_BUCKET: 'my-bucket' }, overrides: { s3: { secretAccessKey: 'very-secret-value' } } }));
      expect(other.setting).to.equal('--s3-secret-access-key');
      expect(other.message).not.to.include('very-secret-value');
    });

    it('takes the two keys from different sources', async () => {
      await writeConfig({ s3: { accessKeyId: 'AKIAEXAMPLE' } });
      expect(load({ env: { S3_BUCKET: 'my-bucket', S3_SECRET_ACCESS_KEY: 'very-secret-value' } }).s3).to.deep.equal({
        bucket: 'my-bucket', accessKeyId: 'AKIAEXAMPLE', secretAccessKey: 'very-secret-value',
      });
    });

    it('never echoes a key in a message', async () => {
      await writeConfig({ s3: { bucket: 'my-bucket', accessKeyId: '', secretAccessKey: ['very-secret-value'] } });
      const err = configError(() => load());
      expect(err.message).to.equal('sync-coordinator.json: s3.accessKeyId: expected a non-empty string');
      await writeConfig({ s3: { bucket: 'my-bucket', accessKeyId: 'AKIAEXAMPLE', secretAccessKey: ['very-secret-value'] } });
      const second = configError(() => load());
      expect(second.message).to.equal('sync-coordinator.json: s3.secretAccessKey: expected a non-empty string');
      expect(second.value).to.equal('[redacted]');
    });

    it('logs where the keys came from, never the keys', () => {
      const lines: string[] = [];
      const logger = logs.config;
      const previousLog = logger.log;
      logger.enabled = true;
      logger.log = (...args: unknown[]) => { lines.push(format(...args)); };
      try {
        load({ env: ALL_S3_ENV });
      } finally {
        // null hands "enabled" back to DEBUG / createDebug.enable.
        logger.enabled = null as unknown as boolean;
        logger.log = previousLog;
      }
      const text = lines.join('\n');
      expect(text).to.include('s3 = s3://sync-archive/sync/ at http://127.0.0.1:9000, region eu-west-1, credentials from S3_ACCESS_KEY_ID and S3_SECRET_ACCESS_KEY (bucket from S3_BUCKET)');
      expect(text).not.to.include('very-secret-value');
      expect(text).not.to.include('AKIAEXAMPLE');
    });
  });

  describe('same values as the router', () => {
    // Each value is given through the config file (typed, like the router's options) and to parseOptions.
    const s3Values: unknown[] = [
      { bucket: 'my-bucket' }, { bucket: 'a.b-c' }, { bucket: 'ab' }, { bucket: 'My-Bucket' }, { bucket: '-bucket' }, { bucket: 'x'.repeat(64) },
      { bucket: 'my-bucket', endpoint: 'http://127.0.0.1:9000' }, { bucket: 'my-bucket', endpoint: 'https://s3.example.com/' },
      { bucket: 'my-bucket', endpoint: 's3.example.com' }, { bucket: 'my-bucket', endpoint: 5 },
      { bucket: 'my-bucket', accessKeyId: 'a', secretAccessKey: 'b' }, { bucket: 'my-bucket', accessKeyId: 'a' }, { bucket: 'my-bucket', secretAccessKey: '' },
      { bucket: 'my-bucket', forcePathStyle: true }, { bucket: 'my-bucket', forcePathStyle: 'true' },
      { bucket: 'my-bucket', region: 'eu-west-1' }, { bucket: 'my-bucket', region: 7 },
      { bucket: 'my-bucket', keyPrefix: 'sync/' }, { bucket: 'my-bucket', keyPrefix: 'a/b' }, { bucket: 'my-bucket', keyPrefix: 3 },
      { bucket: 'my-bucket', sessionToken: 't' },
    ];
    for (const s3 of s3Values) {
      it(`${accepts(() => parseOptions({ s3 } as never)) ? 'accepts' : 'rejects'} s3 ${JSON.stringify(s3)} as createSyncRouter does`, async () => {
        await writeConfig({ s3 });
        expect(accepts(() => load())).to.equal(accepts(() => parseOptions({ s3 } as never)));
      });
    }

    const plain: [keyof CoordinatorConfig, unknown[]][] = [
      ['s3Durability', ['async', 'ack', 'sync', '', 1, null]],
      ['diskEviction', [true, false, 'true', 0]],
      ['diskEvictionIdleMs', [0, 1, 3_600_000, 2 ** 31 - 1, 2 ** 31, -1, 1.5, '1000']],
    ];
    for (const [key, values] of plain) {
      for (const value of values) {
        it(`${accepts(() => parseOptions({ [key]: value })) ? 'accepts' : 'rejects'} ${key} ${JSON.stringify(value)} as createSyncRouter does`, async () => {
          await writeConfig({ [key]: value });
          expect(accepts(() => load())).to.equal(accepts(() => parseOptions({ [key]: value })));
        });
      }
    }

    // S3Archive refuses these only at the first database open; the CLI says so at startup.
    for (const s3 of [{ bucket: 'my-bucket', region: '' }, { bucket: 'my-bucket', keyPrefix: '/sync' }, { bucket: 'my-bucket', keyPrefix: 'a//b' }, { bucket: 'my-bucket', keyPrefix: '../x' }]) {
      it(`rejects s3 ${JSON.stringify(s3)} at load time, which S3Archive would refuse later`, async () => {
        expect(() => new S3Archive(s3)).to.throw(TypeError);
        await writeConfig({ s3 });
        configError(() => load());
      });
    }
  });

  describe('createCoordinatorServer', () => {
    it('passes s3, s3Durability and the eviction settings to its router', async () => {
      const s3 = { bucket: 'my-bucket', endpoint: 'http://127.0.0.1:9', forcePathStyle: true, accessKeyId: 'a', secretAccessKey: 'b' };
      const server = createCoordinatorServer({ config: { dataDir: dir.cwd, s3, s3Durability: 'ack', diskEviction: false, diskEvictionIdleMs: 5000, router: { snapshotsKept: 3 } } });
      try {
        expect(server.router.config.s3).to.deep.equal(s3);
        expect(server.router.config).to.include({ s3Durability: 'ack', diskEviction: false, diskEvictionIdleMs: 5000, snapshotsKept: 3 });
        expect((await server.router.coordinator.status()).archive).to.include({ mode: 'ack' });
      } finally {
        await server.stop();
      }
    });

    it('builds no archive without s3', async () => {
      const server = createCoordinatorServer({ config: { dataDir: dir.cwd } });
      try {
        expect(server.router.config.s3).to.equal(undefined);
        expect((await server.router.coordinator.status()).archive).to.equal(undefined);
      } finally {
        await server.stop();
      }
    });
  });
});
