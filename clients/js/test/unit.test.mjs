// Client logic with a scripted server (a fake WebSocket class): message orders the real
// server produces only sometimes.

import test from 'node:test';
import assert from 'node:assert/strict';
import { CollabClient, MemoryStorage } from '../src/index.js';

class FakeWS {
    static last = null;
    constructor(url, protocol) {
        this.url = url;
        this.protocol = protocol;
        this.readyState = 0;
        this.sent = [];
        FakeWS.last = this;
        setTimeout(() => {
            this.readyState = 1;
            this.onopen && this.onopen();
            this.push({ type: 'welcome', session: 's1', user: 'u', heartbeat: 25 });
        });
    }
    send(text) { this.sent.push(JSON.parse(text)); }
    close() { this.readyState = 3; }
    push(m) { this.onmessage && this.onmessage({ data: JSON.stringify(m) }); }
}

const tick = () => new Promise((r) => setTimeout(r, 5));

function fresh(doc, opts = {}) {
    FakeWS.last = null;
    const c = new CollabClient({ url: 'http://x/collab', WebSocket: FakeWS,
                                 storage: new MemoryStorage() });
    return { c, sub: c.subscribe(doc, opts) };
}

async function until(fn) {
    for (let i = 0; i < 200 && !fn(); i++) {
        await tick();
    }
    assert.ok(fn());
}

test('an ack that comes before its delta keeps the change in the state', async (t) => {
    const { c, sub } = fresh('d', { merge: true });
    t.after(() => c.close());
    const states = [];
    sub.on('change', (e) => states.push(JSON.stringify(e.state)));
    c.connect();
    await until(() => FakeWS.last && FakeWS.last.sent.some((m) => m.type === 'subscribe'));
    const ws = FakeWS.last;
    ws.push({ type: 'subscribed', doc: 'd', role: 'editor', epoch: 'e', seq: 0,
              state: { seq: 0, data: null } });
    const done = sub.send({ notes: { a: { text: 'x' } } });
    await until(() => ws.sent.some((m) => m.type === 'delta'));
    const id = ws.sent.find((m) => m.type === 'delta').id;
    ws.push({ type: 'ack', id, doc: 'd', seq: 1 });
    await done;
    assert.deepEqual(sub.state, { notes: { a: { text: 'x' } } }, 'still there after the ack');
    ws.push({ type: 'delta', doc: 'd', seq: 1, id, user: 'u', ts: 1, data: { notes: { a: { text: 'x' } } } });
    assert.deepEqual(sub.state, { notes: { a: { text: 'x' } } }, 'once, after the delta');
    assert.equal(states[0], 'null', 'the snapshot');
    assert.ok(states.slice(1).every((s) => s.includes('"a"')), `never without the note: ${states}`);
    c.close();
});

test('a gap in seq re-subscribes from the last seq', async (t) => {
    const { c, sub } = fresh('g');
    t.after(() => c.close());
    c.connect();
    await until(() => FakeWS.last && FakeWS.last.sent.some((m) => m.type === 'subscribe'));
    const ws = FakeWS.last;
    ws.push({ type: 'subscribed', doc: 'g', role: 'editor', epoch: 'e', seq: 1,
              state: { seq: 0, data: null } });
    ws.push({ type: 'delta', doc: 'g', seq: 1, id: 'a', user: 'v', ts: 1, data: 1 });
    ws.push({ type: 'delta', doc: 'g', seq: 3, id: 'c', user: 'v', ts: 1, data: 3 });
    const subs = ws.sent.filter((m) => m.type === 'subscribe');
    assert.deepEqual(subs.at(-1), { type: 'subscribe', doc: 'g', since: 1, epoch: 'e' });
    assert.equal(sub.seq, 1);
    c.close();
});

test('resync lagging: re-subscribe, and the recovery names it', async (t) => {
    const { c, sub } = fresh('l');
    t.after(() => c.close());
    c.connect();
    await until(() => FakeWS.last && FakeWS.last.sent.some((m) => m.type === 'subscribe'));
    const ws = FakeWS.last;
    ws.push({ type: 'subscribed', doc: 'l', role: 'viewer', epoch: 'e', seq: 5,
              state: { seq: 5, data: 'x' } });
    const again = new Promise((r) => sub.on('subscribed', r));
    ws.push({ type: 'resync', doc: 'l', seq: 5, reason: 'lagging' });
    assert.deepEqual(ws.sent.at(-1), { type: 'subscribe', doc: 'l', since: 5, epoch: 'e' });
    ws.push({ type: 'subscribed', doc: 'l', role: 'viewer', epoch: 'e', seq: 9 });
    const ev = await again;
    assert.equal(ev.recovered, true);
    assert.equal(ev.reason, 'lagging');
    c.close();
});

test('close() then connect(): a delta sent but not acked goes again, with its id', async (t) => {
    const { c } = fresh('r');
    t.after(() => c.close());
    c.connect();
    await until(() => FakeWS.last && FakeWS.last.sent.some((m) => m.type === 'subscribe'));
    const ws1 = FakeWS.last;
    ws1.push({ type: 'subscribed', doc: 'r', role: 'editor', epoch: 'e', seq: 0,
               state: { seq: 0, data: null } });
    c.send('r', { n: 1 }).catch(() => {});
    await until(() => ws1.sent.some((m) => m.type === 'delta'));
    const id = ws1.sent.find((m) => m.type === 'delta').id;
    c.close();
    c.connect();
    await until(() => FakeWS.last !== ws1 && FakeWS.last.sent.some((m) => m.type === 'subscribe'));
    const ws2 = FakeWS.last;
    ws2.push({ type: 'subscribed', doc: 'r', role: 'editor', epoch: 'e', seq: 0 });
    await until(() => ws2.sent.some((m) => m.type === 'delta'));
    assert.equal(ws2.sent.find((m) => m.type === 'delta').id, id);
});

test('close() while the outbox is loading: no connection is opened', async () => {
    FakeWS.last = null;
    let release;
    const slow = { get: () => new Promise((r) => { release = r; }), set: async () => {}, delete: async () => {} };
    const c = new CollabClient({ url: 'http://x/collab', WebSocket: FakeWS, storage: slow });
    c.connect();
    c.close();
    release(undefined);
    await tick();
    await tick();
    assert.equal(FakeWS.last, null);
    assert.equal(c.state, 'disconnected');
});

test('LocalStorageStorage keeps the outbox in a localStorage-like object', async () => {
    const { LocalStorageStorage } = await import('../src/index.js');
    const data = new Map();
    const ls = { getItem: (k) => (data.has(k) ? data.get(k) : null),
                 setItem: (k, v) => data.set(k, String(v)), removeItem: (k) => data.delete(k) };
    const storage = new LocalStorageStorage(ls, 'app:');
    FakeWS.last = null;
    const c1 = new CollabClient({ url: 'http://x/collab', WebSocket: FakeWS, storage, storageKey: 'k' });
    c1.send('doc1', { a: 1 }).catch(() => {});
    await until(() => data.has('app:k') && JSON.parse(data.get('app:k')).entries.length === 1);
    c1.close();
    const c2 = new CollabClient({ url: 'http://x/collab', WebSocket: FakeWS, storage, storageKey: 'k' });
    await c2.ready;
    assert.equal(c2.clientId, c1.clientId);
    assert.deepEqual(c2.outbox.map((e) => e.data), [{ a: 1 }]);
    await storage.delete('k');
    assert.equal(data.has('app:k'), false);
    c2.close();
});
