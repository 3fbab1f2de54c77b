import { expect } from 'chai';
import { existsSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { CloseCode, ERROR_DISPOSITIONS, ErrorCode } from '../../lib/errors.js';
import { documentedRoutes, servedRoutes } from '../helpers/doc-routes.js';

const README = readFileSync(fileURLToPath(new URL('../../README.md', import.meta.url)), 'utf8');

/** Rows of the README's error-code table: codes, HTTP status, WebSocket disposition. */
function errorTable(): { codes: string[]; status: string; ws: string }[] {
  const section = README.slice(README.indexOf('## Error codes'), README.indexOf('\n## ', README.indexOf('## Error codes') + 1));
  return section.split('\n')
    .filter((line) => line.startsWith('| `'))
    .map((line) => {
      const [codes, status, ws] = line.split('|').slice(1).map((cell) => cell.trim());
      return { codes: [...codes!.matchAll(/`([A-Z_]+)`/g)].map((m) => m[1]!), status: status!, ws: ws! };
    });
}

describe('README', () => {
  describe('error codes', () => {
    it('lists every code of lib/errors.ts, and no other', () => {
      const listed = errorTable().flatMap((row) => row.codes).sort();
      expect(listed).to.deep.equal(Object.values(ErrorCode).sort());
    });

    it('gives each code the HTTP status, fatality and close code of ERROR_DISPOSITIONS', () => {
      for (const row of errorTable()) {
        for (const code of row.codes) {
          const d = ERROR_DISPOSITIONS[code as ErrorCode];
          expect(Number(row.status), `${code}: HTTP status`).to.equal(d.status);
          expect(row.ws.startsWith('fatal'), `${code}: fatal`).to.equal(d.fatal);
          if (d.close !== undefined) expect(row.ws, `${code}: close code`).to.contain(`close ${d.close}`);
          else expect(row.ws, `${code}: no close code`).to.not.match(/close \d/);
        }
      }
    });

    it('explains every close code the server uses in one list, which every other mention agrees with', () => {
      // Every code the server closes with (1000 is a plain goodbye), and 1007, which the ws library sends for bad UTF-8.
      const used = [...Object.values(CloseCode).filter((code) => code !== CloseCode.Normal), 1007].sort();
      const lists = [...README.matchAll(/^(?:- )?Close codes: (\d[\s\S]*?)\n\n/gm)].map((m) => m[1]!);
      expect(lists, 'lists of close codes').to.have.length(1);
      const listed = [...lists[0]!.matchAll(/\b([14]\d{3})\b/g)].map((m) => Number(m[1]));
      expect([...new Set(listed)].sort()).to.deep.equal(used);
      // Elsewhere ("close 1009", "closes sockets with 1001", "closed with 1013"): only codes of that list.
      const mentioned = [...README.matchAll(/\bclose[sd]?(?: \w+)?(?: with)? (\d{4})\b/g)].map((m) => Number(m[1]));
      expect(mentioned.length).to.be.at.least(10);
      expect(mentioned.filter((code) => !used.includes(code)), 'close codes the list does not explain').to.deep.equal([]);
    });
  });

  describe('links', () => {
    it('points client authors at docs/protocol.md and docs/client.md, and every relative link names a file of the repo', () => {
      const links = [...README.matchAll(/\]\(((?!https?:|#)[^)#\s]+)(?:#[^)]*)?\)/g)].map((m) => m[1]!);
      expect(links).to.include.members(['docs/protocol.md', 'docs/client.md']);
      expect(links.filter((link) => !existsSync(fileURLToPath(new URL(`../../${link}`, import.meta.url)))), 'links to nothing').to.deep.equal([]);
    });
  });

  describe('HTTP routes', () => {
    it('lists every route the router serves (its page assets aside), and no other', async () => {
      const served = (await servedRoutes()).filter((route) => !/\.\w+$/.test(route));
      expect(documentedRoutes(README, 'route')).to.deep.equal([...served, 'GET /ws'].sort());
    });
  });
});
