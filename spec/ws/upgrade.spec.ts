import { expect } from 'chai';
import { createServer, request, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { ERROR_DISPOSITIONS, ErrorCode } from '../../lib/errors.js';
import { refuseUpgrade } from '../../lib/ws/upgrade.js';

/** The reason phrases of RFC 9110 §15, written out here rather than taken from the code under test. */
const REASON: Record<number, string> = {
  400: 'Bad Request', 401: 'Unauthorized', 403: 'Forbidden', 404: 'Not Found', 405: 'Method Not Allowed',
  410: 'Gone', 413: 'Payload Too Large', 429: 'Too Many Requests', 500: 'Internal Server Error', 503: 'Service Unavailable',
};

interface Refusal { status: number; reason: string; headers: IncomingMessage['headers']; body: string }

/** Sends a WebSocket upgrade request to `path` and resolves with the HTTP answer that refused it. */
function upgrade(port: number, path: string): Promise<Refusal> {
  return new Promise((resolve, reject) => {
    const req = request({
      host: '127.0.0.1', port, path,
      headers: { Connection: 'Upgrade', Upgrade: 'websocket', 'Sec-WebSocket-Version': '13', 'Sec-WebSocket-Key': 'dGhlIHNhbXBsZSBub25jZQ==' },
    });
    req.on('upgrade', () => reject(new Error('the upgrade was accepted')));
    req.on('response', (res) => {
      let body = '';
      res.setEncoding('utf8').on('data', (chunk: string) => { body += chunk; });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, reason: res.statusMessage ?? '', headers: res.headers, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

describe('ws/upgrade', () => {
  describe('#refuseUpgrade', () => {
    let server: Server;
    let port: number;

    before(async () => {
      server = createServer();
      // /<status>/<code>[?retry=<ms>]: refused with that status and code.
      server.on('upgrade', (req, socket) => {
        const url = new URL(req.url ?? '/', 'http://localhost');
        const [, status, code] = url.pathname.split('/');
        const retry = url.searchParams.get('retry');
        refuseUpgrade(socket, Number(status), code!, `refused with ${status}`, retry === null ? undefined : Number(retry));
      });
      await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
      port = (server.address() as AddressInfo).port;
    });

    after(async () => {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    });

    it('gives every status an error code can have its standard reason phrase, and the JSON envelope', async () => {
      const statuses = [...new Set([...Object.values(ERROR_DISPOSITIONS).map((d) => d.status), 403, 404, 429, 503])].sort();
      expect(statuses.filter((status) => REASON[status] === undefined), 'statuses this spec has no phrase for').to.deep.equal([]);
      for (const status of statuses) {
        const code = Object.values(ErrorCode).find((c) => ERROR_DISPOSITIONS[c].status === status) ?? ErrorCode.RateLimited;
        const answer = await upgrade(port, `/${status}/${code}`);
        expect(`${answer.status} ${answer.reason}`).to.equal(`${status} ${REASON[status]}`);
        expect(answer.headers['content-type']).to.equal('application/json');
        expect(JSON.parse(answer.body)).to.deep.equal({ ok: false, error: { code, message: `refused with ${status}` } });
      }
    });

    it('says when to come back in whole seconds (Retry-After), at least 1', async () => {
      expect((await upgrade(port, '/429/RATE_LIMITED?retry=2500')).headers['retry-after']).to.equal('3');
      expect((await upgrade(port, '/503/RATE_LIMITED?retry=10')).headers['retry-after']).to.equal('1');
      expect((await upgrade(port, '/404/NOT_FOUND')).headers['retry-after']).to.equal(undefined);
    });
  });
});
