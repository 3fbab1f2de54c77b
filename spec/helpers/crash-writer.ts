/**
 * Child process for the crash test: applies messages of several change sets
 * to a replica as fast as it can and prints each message's number after the
 * apply resolved (that is, after it was acknowledged). The parent kills it
 * with SIGKILL at a random moment.
 */
import { openLevelStore } from '../../lib/storage/leveldb.js';
import { Replica } from '../../lib/replica/replica.js';
import { TestSite, valid } from './changes.js';

const [dir, startArg] = process.argv.slice(2);
const replica = await Replica.open(await openLevelStore(dir!));
const site = new TestSite();
for (let n = Number(startArg); ; n++) {
  const sets = [0, 1, 2].map((k) => site.txn([
    { pk: [n, k], column: 'a', value: `m${n}` },
    { pk: [n, k], column: 'b', value: { __bin: Buffer.from(`blob${n}`).toString('base64') } },
  ]));
  await replica.apply(valid(sets));
  process.stdout.write(`${n}\n`);
}
