// The browser's online/offline events (simulated: Node has no window events): offline drops
// the connection at once, online reconnects at once instead of waiting for the backoff.

import test from 'node:test';
import assert from 'node:assert/strict';
import { client, connected, proxy, waitFor } from './helpers.mjs';

const net = new EventTarget();
globalThis.addEventListener = net.addEventListener.bind(net);
globalThis.removeEventListener = net.removeEventListener.bind(net);

test('offline drops the connection at once; online reconnects without waiting', async () => {
    const p = await proxy();
    // a backoff of a minute: only the online event can bring it back within the test
    const c = client({ url: p.url + '/collab', params: { user: 'olive' },
                       minBackoff: 60000, maxBackoff: 60000, random: () => 0.99 });
    try {
        c.connect();
        await connected(c);
        const t0 = Date.now();
        net.dispatchEvent(new Event('offline'));
        assert.equal(c.state, 'disconnected', 'at once, not after a timeout');
        const s = c.log.at(-1);
        assert.equal(s.reason, 'offline');
        assert.ok(s.retryIn > 30000, `the next try is far away (${s.retryIn} ms)`);
        const back = waitFor(c, 'state', (x) => x.new === 'connected', 5000);
        net.dispatchEvent(new Event('online'));
        await back;
        assert.ok(Date.now() - t0 < 5000);
        assert.ok(c.log.some((x) => x.new === 'connecting' && x.reason === 'online'));
        assert.equal(p.accepted, 2);
    } finally {
        c.close();
        p.close();
    }
});

test('a failed client ignores online', async () => {
    const c = client({ path: '/jwt', getToken: () => {
        throw Object.assign(new Error('nope'), { status: 401 });
    } });
    c.connect();
    await waitFor(c, 'state', (x) => x.new === 'failed');
    net.dispatchEvent(new Event('online'));
    assert.equal(c.state, 'failed');
    c.close();
});
