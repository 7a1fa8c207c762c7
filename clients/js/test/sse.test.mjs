// Transport fallback: WebSocket refused -> SSE + POST; back to WebSocket later.

import test from 'node:test';
import assert from 'node:assert/strict';
import { client, connected, docName, proxy, storedDeltas, until, waitFor } from './helpers.mjs';

test('nginx refuses the upgrade (/nows): SSE + POST, deltas both ways', async () => {
    const doc = docName('nows');
    const c = client({ path: '/nows', params: { user: 'sam' } });
    const w = client({ params: { user: 'wes' } });
    try {
        const sc = c.subscribe(doc);
        const sw = w.subscribe(doc);
        const ready = [waitFor(sc, 'subscribed'), waitFor(sw, 'subscribed')];
        const drops = [];
        c.on('disconnect', (d) => drops.push(d));
        c.connect();
        w.connect();
        await connected(c);
        assert.equal(c.transport, 'sse');
        assert.equal(c.log.at(-1).reason, 'sse', 'the state event names the transport');
        await Promise.all(ready);
        assert.equal(c.user, 'sam');
        assert.deepEqual(drops.map((d) => d.transport), ['websocket', 'websocket'],
                         'two refused WebSockets (fallbackAfter 2), then SSE');

        const got = waitFor(sc, 'delta');
        await w.send(doc, { from: 'wes' });
        assert.deepEqual((await got).data, { from: 'wes' }, 'received over SSE');

        const seenByW = waitFor(sw, 'delta', (m) => m.user === 'sam');
        const r = await c.send(doc, { from: 'sam' });
        assert.equal(r.seq, 2, 'acked over POST');
        await seenByW;
        await until('sam saw his own delta', () => sc.seq === 2);
        assert.equal((await storedDeltas(doc)).length, 2);
    } finally {
        c.close();
        w.close();
    }
});

test('a proxy blocks WebSocket: SSE; once it lets it through, back to WebSocket, recovered',
     async () => {
    const doc = docName('upgrade');
    const p = await proxy();
    p.noUpgrade = true;
    const c = client({ url: p.url + '/collab', params: { user: 'una' }, websocketRetry: 800 });
    const w = client({ params: { user: 'wes' } });
    try {
        const sc = c.subscribe(doc);
        c.connect();
        w.connect();
        await connected(c);
        assert.equal(c.transport, 'sse');
        await waitFor(sc, 'subscribed');
        await w.send(doc, 1);
        await until('una at 1', () => sc.seq === 1);

        p.noUpgrade = false;
        const back = await waitFor(c, 'state', (s) => s.new === 'connected'
                                   && s.transport === 'websocket', 10000);
        assert.ok(back);
        assert.ok(p.upgradesRefused >= 1);
        const ev = await waitFor(sc, 'subscribed');
        assert.equal(ev.recovered, true);
        await w.send(doc, 2);
        await until('una at 2 over WebSocket', () => sc.seq === 2);
        assert.equal(c.transport, 'websocket');
    } finally {
        c.close();
        w.close();
        p.close();
    }
});
