// getToken(): called on connect and before expiry (the session lives on), "unauthorized"
// stops retrying, other errors retry with backoff, a refused token gets one fresh try.

import test from 'node:test';
import assert from 'node:assert/strict';
import { UnauthorizedError } from '../src/index.js';
import { client, connected, jwt, sleep, until, waitFor } from './helpers.mjs';

const now = () => Math.floor(Date.now() / 1000);

test('getToken is called on connect and again before the token expires', async () => {
    const issued = [];
    const c = client({
        path: '/jwt', tokenRefreshMargin: 1500,
        getToken: async () => {
            const exp = now() + 3;
            issued.push(exp);
            return jwt({ sub: 'tina', exp });
        },
    });
    try {
        c.connect();
        await connected(c);
        assert.equal(c.user, 'tina');
        const session = c.session;
        const welcomes = [];
        c.on('welcome', (m) => welcomes.push(m));
        await waitFor(c, 'token', () => true, 5000);
        // past the first token's exp (leeway 0): the server would have closed the session
        await until('past the first expiry', () => Date.now() > issued[0] * 1000 + 800, 8000);
        assert.ok(issued.length >= 2, `getToken called ${issued.length} times`);
        assert.equal(c.state, 'connected');
        assert.equal(c.session, session, 'the same session');
        assert.ok(welcomes.length >= 1 && welcomes[0].session === session,
                  'the server took the fresh token (welcome again)');
        assert.ok(!c.log.some((s) => s.new === 'disconnected'), 'never disconnected');
    } finally {
        c.close();
    }
});

test('getToken throwing UnauthorizedError: state failed, no retry', async () => {
    let calls = 0;
    const c = client({ path: '/jwt', getToken: async () => {
        calls++;
        throw new UnauthorizedError('signed out');
    } });
    c.connect();
    const s = await waitFor(c, 'state', (x) => x.new === 'failed');
    assert.equal(s.reason, 'unauthorized');
    await sleep(700);
    assert.equal(calls, 1);
    assert.equal(c.state, 'failed');
    c.close();
});

test('a token the server refuses: one fresh token, then failed', async () => {
    let calls = 0;
    const c = client({ path: '/jwt', getToken: async () => {
        calls++;
        return jwt({ sub: 'mallory', exp: now() + 60 }).slice(0, -4) + 'AAAA';
    } });
    c.connect();
    await waitFor(c, 'state', (x) => x.new === 'failed');
    assert.equal(calls, 2);
    await sleep(500);
    assert.equal(calls, 2, 'no retry after failed');
    c.close();
});

test('getToken failing otherwise is retried with backoff', async () => {
    let calls = 0;
    const c = client({ path: '/jwt', getToken: async () => {
        if (++calls <= 2) {
            throw new Error('token service unreachable');
        }
        return jwt({ sub: 'rita', exp: now() + 60 });
    } });
    try {
        c.connect();
        await connected(c);
        assert.equal(calls, 3);
        const waits = c.log.filter((s) => s.new === 'disconnected');
        assert.equal(waits.length, 2);
        assert.ok(waits.every((s) => typeof s.retryIn === 'number' && /getToken/.test(s.reason)));
    } finally {
        c.close();
    }
});

test('a static token option works too', async () => {
    const c = client({ path: '/jwt', token: jwt({ sub: 'stan', exp: now() + 60 }) });
    try {
        c.connect();
        await connected(c);
        assert.equal(c.user, 'stan');
    } finally {
        c.close();
    }
});

test('a token valid for decades is not refreshed (no setTimeout overflow)', async () => {
    let calls = 0;
    const c = client({ path: '/jwt', getToken: async () => {
        calls++;
        return jwt({ sub: 'lena', exp: 4102444800 });
    } });
    try {
        const welcomes = [];
        c.on('welcome', (m) => welcomes.push(m));
        c.connect();
        await connected(c);
        await sleep(800);
        assert.equal(calls, 1);
        assert.equal(welcomes.length, 1);
    } finally {
        c.close();
    }
});
