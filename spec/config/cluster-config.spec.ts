import { expect } from 'chai';
import { parseCliOverrides } from '../../lib/config/load-config.js';
import { parseOptions } from '../../lib/config/options.js';
import { routerOptionsOf } from '../../lib/create-coordinator-server.js';
import { configError } from '../helpers/config-error.js';
import { useConfigDir } from '../helpers/config-dir.js';

describe('cluster configuration', () => {
  const { load } = useConfigDir('cluster-config-');


  it('stays a single node without a Redis URL', () => {
    const config = load();
    expect(config.redisUrl).to.equal(undefined);
    expect(routerOptionsOf(config)).to.not.have.property('redis');
  });

  it('joins a cluster from SYNC_REDIS_URL and SYNC_NODE_ID, and passes them to the router', () => {
    const config = load({ env: { SYNC_REDIS_URL: 'redis://10.0.0.5:6379/2', SYNC_NODE_ID: 'node-7' } });
    expect(config).to.include({ redisUrl: 'redis://10.0.0.5:6379/2', nodeId: 'node-7' });
    expect(routerOptionsOf(config)).to.include({ redis: 'redis://10.0.0.5:6379/2', nodeId: 'node-7' });
  });

  it('ranks --redis-url and --node-id over the environment and the config file', () => {
    const overrides = parseCliOverrides({ redisUrl: 'rediss://cache:6380', nodeId: 'cli' });
    const config = load({ overrides, env: { SYNC_REDIS_URL: 'redis://env:6379', SYNC_NODE_ID: 'env' } });
    expect(config).to.include({ redisUrl: 'rediss://cache:6380', nodeId: 'cli' });
  });

  it('refuses a URL that is not redis:// or rediss://, naming the variable but never a password', () => {
    const err = configError(() => load({ env: { SYNC_REDIS_URL: 'http://user:hunter2@host:6379' } }));
    expect(err.message).to.match(/^SYNC_REDIS_URL: /);
    expect(err.message).to.include('redis://');
    expect(err.message).to.not.include('hunter2');
  });

  it('refuses a node id with spaces, naming the flag and the value', () => {
    const err = configError(() => load({ overrides: parseCliOverrides({ nodeId: 'my node' }) }));
    expect(err.message).to.match(/^--node-id: expected 1-128 printable characters without spaces, got "my node"/);
  });

  it('refuses s3Durability "ack" in a cluster, naming both settings', () => {
    const err = configError(() => load({ env: { SYNC_REDIS_URL: 'redis://127.0.0.1:6379', S3_BUCKET: 'archive', SYNC_S3_DURABILITY: 'ack' } }));
    expect(err.message).to.match(/^SYNC_S3_DURABILITY: "ack" cannot be used in a cluster \(SYNC_REDIS_URL is set\)/);
    expect(() => parseOptions({ redis: 'redis://127.0.0.1:6379', s3: { bucket: 'archive' }, s3Durability: 'ack' })).to.throw(TypeError, /exclude each other/);
  });

  it('takes clusterLogRetentionMs under router, at least one second', () => {
    expect(parseOptions({ clusterLogRetentionMs: 5000 }).clusterLogRetentionMs).to.equal(5000);
    expect(parseOptions({}).clusterLogRetentionMs).to.equal(24 * 60 * 60 * 1000);
    expect(() => parseOptions({ clusterLogRetentionMs: 10 })).to.throw(TypeError, /clusterLogRetentionMs/);
  });
});
