// The npm package clients/js under collab_conflict reject-stale, run by t/101-reject-stale.t:
//   node --experimental-websocket conflict.mjs URL DOC
// Two clients on one document: a's delta on base 0 is stored; b's on base 0
// is rejected with {code: 'conflict', seq: 1}; b rebases on seq and succeeds.
// Prints one JSON line with what each promise gave.

import { CollabClient, MemoryStorage } from '../../clients/js/src/index.js';

const [url, doc] = process.argv.slice(2);

function client(user) {
    const c = new CollabClient({ url, params: { user }, storage: new MemoryStorage() });
    const sub = c.subscribe(doc);
    return new Promise((resolve, reject) => {
        sub.on('subscribed', () => resolve(c));
        c.on('state', (s) => { if (s.new === 'failed') reject(new Error(s.reason)); });
        c.connect();
    });
}

const out = {};
const timer = setTimeout(() => { console.log(JSON.stringify({ timeout: true, ...out })); process.exit(1); },
                         20000);
try {
    const a = await client('a');
    const b = await client('b');
    out.a = await a.send(doc, { by: 'a' }, { base: 0 });
    out.b = await b.send(doc, { by: 'b' }, { base: 0 })
        .catch((e) => ({ rejected: { code: e.code, message: e.message, seq: e.seq } }));
    const head = out.b.rejected && out.b.rejected.seq;
    out.rebased = await b.send(doc, { by: 'b', rebased: true }, { base: head })
        .catch((e) => ({ rejected: { code: e.code, message: e.message, seq: e.seq } }));
    a.close(); b.close();
} catch (e) {
    out.error = String(e && e.message || e);
}
clearTimeout(timer);
console.log(JSON.stringify(out));
process.exit(0);
