import { expect } from 'chai';
import { startS3Server, type S3TestServer } from './s3-server.js';

/** The S3 test server the S3 specs stand on: ready means it answers, and a crash is told apart from a stop. */
describe('helpers/s3-server', function () {
  this.timeout(60_000);
  let s3: S3TestServer | undefined;

  afterEach(async () => {
    await s3?.close();
    s3 = undefined;
  });

  it('answers HTTP on its endpoint once started, and on the same endpoint after a restart', async () => {
    s3 = await startS3Server('helper-check');
    expect(s3.endpoint).to.match(/^http:\/\/127\.0\.0\.1:\d+$/);
    expect(await s3.probe()).to.equal(undefined);
    await s3.stop();
    expect(s3.running()).to.equal(false);
    expect(await s3.probe()).to.match(/ECONNREFUSED/);
    expect(s3.crash(), 'a stop by the test is no crash').to.equal(undefined);
    await s3.restart();
    expect(s3.running()).to.equal(true);
    expect(await s3.probe()).to.equal(undefined);
  });

  it('reports a server that died under the test with its signal and how long it ran', async () => {
    s3 = await startS3Server('helper-check');
    const pid = s3.pid();
    expect(pid).to.be.a('number');
    process.kill(pid!, 'SIGKILL');
    for (let i = 0; i < 100 && s3.running(); i++) await new Promise((resolve) => setTimeout(resolve, 20));
    expect(s3.running()).to.equal(false);
    expect(s3.crash()).to.match(/^s3rver exited \(code null, signal SIGKILL, \d+ ms after its start\); its stderr:/);
    expect(await s3.probe()).to.match(/ECONNREFUSED/);
  });
});
