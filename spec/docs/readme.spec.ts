import { expect } from 'chai';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { ERROR_DISPOSITIONS, ErrorCode } from '../../lib/errors.js';

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

    it('explains every close code the server uses', () => {
      const line = README.slice(README.indexOf('Close codes: 1001'), README.indexOf('\n\n', README.indexOf('Close codes: 1001')));
      for (const code of [1001, 1007, 1008, 1009, 1011, 1013, 4001, 4002, 4003]) expect(line, `close ${code}`).to.contain(String(code));
    });
  });
});
