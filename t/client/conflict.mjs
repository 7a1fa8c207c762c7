// www/collab.js under collab_conflict reject-stale, run by t/101-reject-stale.t:
//   node --experimental-websocket conflict.mjs URL DOC
// Two clients on one document: a's delta on base 0 is stored; b's on base 0
// is rejected with {code: 'conflict', seq: 1}; b rebases on seq and succeeds.
// Prints one JSON line with what each promise gave.

import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const CollabClient = require('../../www/collab.js');
const [url, doc] = process.argv.slice(2);

function client(user) {
    const c = new CollabClient({ url, params: { user } });
    return new Promise((resolve, reject) => {
        c.on('subscribed', () => resolve(c));
        c.on('error', reject);
        c.subscribe(doc);
        c.connect();
    });
}

const out = {};
const timer = setTimeout(() => { console.log(JSON.stringify({ timeout: true, ...out })); process.exit(1); },
                         20000);
try {
    const a = await client('a');
    const b = await client('b');
    out.a = await a.sendDelta(doc, { by: 'a' }, { base: 0 });
    out.b = await b.sendDelta(doc, { by: 'b' }, { base: 0 }).catch((e) => ({ rejected: e }));
    const head = out.b.rejected && out.b.rejected.seq;
    out.rebased = await b.sendDelta(doc, { by: 'b', rebased: true }, { base: head })
        .catch((e) => ({ rejected: e }));
    a.close(); b.close();
} catch (e) {
    out.error = String(e && e.message || e);
}
clearTimeout(timer);
console.log(JSON.stringify(out));
process.exit(0);
