import { expect } from 'chai';
import * as api from '../lib/index.js';

describe('index', () => {
  it('exports the public entry points', () => {
    for (const name of ['createSyncRouter', 'createCoordinatorServer', 'loadConfig', 'ConfigError', 'SyncError', 'ErrorCode', 'CloseCode', 'Replica', 'openLevelStore', 'SyncClient', 'HlcClock', 'encodeHlc', 'hlcFromWire']) {
      expect(api, name).to.have.property(name);
    }
  });

  it('loadConfig gives the defaults of the standalone server', () => {
    const config = api.loadConfig({ env: {}, cwd: '/nonexistent-dir-for-test' });
    expect(config).to.include({ host: '0.0.0.0', port: 3000, basePath: '/sync', authMode: 'none', batchSize: 1000 });
  });
});
