// Connection states, reconnect after a server-side drop, resume with recovered=true,
// liveness timeout, full-jitter backoff.

import test from 'node:test';
import assert from 'node:assert/strict';
import { fullJitter } from '../src/index.js';
import WebSocket from 'ws';
import { client, connected, docName, proxy, sleep, until, waitFor } from './helpers.mjs';

test('states connecting -> connected, then disconnected with a retry delay after a drop, '
     + 'and connected again', async () => {
    const p = await proxy();
    const c = client({ url: p.url + '/collab', params: { user: 'alice' } });
    try {
        c.connect();
        await connected(c);
        assert.deepEqual(c.log.map((s) => [s.old, s.new]),
                         [['disconnected', 'connecting'], ['connecting', 'connected']]);
        assert.equal(c.transport, 'websocket');
        assert.equal(c.user, 'alice');
        const n = c.log.length;
        p.cut();
        await until('connected again', () => c.log.length > n + 2 && c.state === 'connected');
        const after = c.log.slice(n);
        assert.equal(after[0].old, 'connected');
        assert.equal(after[0].new, 'disconnected');
        assert.equal(typeof after[0].retryIn, 'number', 'the state event says when it retries');
        assert.ok(after[0].retryIn >= 0 && after[0].retryIn <= 400, `retryIn ${after[0].retryIn}`);
        assert.ok(after[0].reason, 'with a reason');
        assert.deepEqual(after.slice(1).map((s) => s.new), ['connecting', 'connected']);
        assert.equal(p.accepted, 2);
    } finally {
        c.close();
        p.close();
    }
});

test('resume after a drop: recovered=true, the missed deltas and nothing twice', async () => {
    const p = await proxy();
    const doc = docName('resume');
    const a = client({ url: p.url + '/collab', params: { user: 'alice' } });
    const b = client({ params: { user: 'bob' } });
    try {
        const sa = a.subscribe(doc);
        const sb = b.subscribe(doc);
        const seen = [];
        sa.on('delta', (m) => seen.push(m.seq));
        const subscribed = [waitFor(sa, 'subscribed'), waitFor(sb, 'subscribed')];
        a.connect();
        b.connect();
        const [first] = await Promise.all(subscribed);
        assert.equal(first.recovered, false);
        assert.equal(first.reason, 'initial');
        await sb.send({ n: 1 });
        await until('alice has seq 1', () => sa.seq === 1);
        const epoch = sa.epoch;

        p.stall();
        p.cut();
        await waitFor(a, 'state', (s) => s.new === 'disconnected');
        p.refuse(true);
        await sb.send({ n: 2 });
        await sb.send({ n: 3 });
        p.refuse(false);
        const again = await waitFor(sa, 'subscribed', () => true, 15000);
        assert.equal(again.recovered, true, 'served from the log');
        assert.equal(again.reason, null);
        assert.equal(again.epoch, epoch);
        await until('alice at seq 3', () => sa.seq === 3);
        assert.deepEqual(seen, [1, 2, 3], 'every delta once, in order');
    } finally {
        a.close();
        b.close();
        p.close();
    }
});

test('liveness: a connection that goes silent is dropped and replaced', async () => {
    const p = await proxy();
    const c = client({ url: p.url + '/collab', params: { user: 'carol' }, livenessTimeout: 1500 });
    try {
        c.connect();
        await connected(c);
        const t0 = Date.now();
        p.stall();
        const s = await waitFor(c, 'state', (x) => x.new === 'disconnected', 10000);
        assert.match(s.reason, /liveness/);
        assert.ok(Date.now() - t0 >= 1000, 'not before the timeout');
        await waitFor(c, 'state', (x) => x.new === 'connected', 10000);
    } finally {
        c.close();
        p.close();
    }
});

test('close() stops: no reconnect, state disconnected with reason closed', async () => {
    const c = client({ params: { user: 'dave' } });
    c.connect();
    await connected(c);
    c.close();
    assert.equal(c.state, 'disconnected');
    assert.equal(c.log.at(-1).reason, 'closed');
    assert.equal(c.log.at(-1).retryIn, null);
    await new Promise((r) => setTimeout(r, 600));
    assert.equal(c.state, 'disconnected');
});

test('full jitter stays within [0, min(max, min * 2^attempt))', () => {
    for (let a = 0; a < 12; a++) {
        const cap = Math.min(10000, 250 * 2 ** a);
        assert.equal(fullJitter(a, 250, 10000, () => 0), 0);
        assert.equal(fullJitter(a, 250, 10000, () => 0.999999), Math.floor(0.999999 * cap));
    }
});

// a WebSocket like a browser's: no way to see the server's pings
class BrowserLikeWebSocket {
    constructor(url, protocol) {
        const ws = this.ws = new WebSocket(url, protocol);
        ws.onopen = (e) => this.onopen && this.onopen(e);
        ws.onmessage = (e) => this.onmessage && this.onmessage({ data: String(e.data) });
        ws.onclose = (e) => this.onclose && this.onclose({ code: e.code, reason: e.reason });
        ws.onerror = (e) => this.onerror && this.onerror(e);
        this.sent = [];
    }
    get readyState() { return this.ws.readyState; }
    send(text) { this.sent.push(text); this.ws.send(text); }
    close(code) { this.ws.close(code); }
}

test('liveness without visible pings: an idle connection is probed and stays up', async () => {
    const sockets = [];
    class Recording extends BrowserLikeWebSocket {
        constructor(...a) { super(...a); sockets.push(this); }
    }
    const c = client({ params: { user: 'pia' }, WebSocket: Recording, livenessTimeout: 1200 });
    const errors = [];
    c.on('error', (e) => errors.push(e));
    try {
        c.connect();
        await connected(c);
        await sleep(3000);
        assert.equal(c.state, 'connected', 'still connected');
        assert.equal(sockets.length, 1, 'the same socket');
        const probes = sockets[0].sent.filter((t) => JSON.parse(t).type === 'ping');
        assert.ok(probes.length >= 2, `probed ${probes.length} times`);
        assert.deepEqual(errors, [], 'the answers to the probes are not reported as errors');
    } finally {
        c.close();
    }
});
