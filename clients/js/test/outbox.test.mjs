// The outbox: persisted before sending, kept until acked, sent again after a "reload"
// (a new client instance on the same storage) with the same ids, stored exactly once.

import test from 'node:test';
import assert from 'node:assert/strict';
import os from 'node:os';
import path from 'node:path';
import fs from 'node:fs';
import { MemoryStorage, FileStorage } from '../src/node.js';
import { HTTP, client, connected, docName, proxy, storedDeltas, until, waitFor } from './helpers.mjs';

async function reloadCase(makeStorage) {
    const p = await proxy();
    const doc = docName('outbox');
    const storageKey = 'outbox-test:' + doc;
    const a1 = client({ url: p.url + '/collab', params: { user: 'alice' },
                        storage: makeStorage(), storageKey });
    try {
        a1.connect();
        await connected(a1);
        p.muteDown();                       // the server stores, the acks never come back
        const pending = [a1.send(doc, { n: 1 }), a1.send(doc, { n: 2 })];
        pending.forEach((x) => x.catch(() => {}));
        await until('both stored', async () => (await storedDeltas(doc)).length === 2);
        assert.equal(a1.outbox.length, 2, 'not acked: still in the outbox');
        const ids = a1.outbox.map((e) => e.id);
        a1.close();                         // the "reload"

        const a2 = client({ params: { user: 'alice' }, storage: makeStorage(), storageKey });
        try {
            await a2.ready;
            assert.equal(a2.clientId, a1.clientId, 'the client instance id survives the reload');
            assert.deepEqual(a2.outbox.map((e) => e.id), ids, 'the same entries, same order');
            const acks = [];
            a2.on('ack', (m) => acks.push(m));
            a2.connect();
            await until('outbox empty', () => a2.outbox.length === 0);
            assert.deepEqual(acks.map((m) => [m.id, m.seq]), [[ids[0], 1], [ids[1], 2]],
                             'acked with the original seqs');
            const stored = await storedDeltas(doc);
            assert.deepEqual(stored.map((d) => [d.seq, d.id, d.data.n]),
                             [[1, ids[0], 1], [2, ids[1], 2]], 'stored exactly once');
            // the emptied outbox is written after the acks, asynchronously
            await until('the persisted outbox is empty', async () =>
                ((await makeStorage().get(storageKey)) || {}).entries?.length === 0);
        } finally {
            a2.close();
        }
    } finally {
        a1.close();
        p.close();
    }
}

test('outbox: unacked deltas survive a reload (memory storage) and are stored once', async () => {
    const storage = new MemoryStorage();
    await reloadCase(() => storage);
});

test('outbox: the same with FileStorage (a new adapter reads the file again)', async () => {
    const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'collab-js-')), 'outbox.json');
    await reloadCase(() => new FileStorage(file));
});

test('outbox: deltas made offline are persisted at once and sent on connect', async () => {
    const storage = new MemoryStorage();
    const doc = docName('offline');
    const c = client({ params: { user: 'olga' }, storage, storageKey: 'k-' + doc });
    const sub = c.subscribe(doc, { merge: true });
    const done = c.send(doc, { title: 'made offline' });
    await until('persisted', async () => {
        const rec = await storage.get('k-' + doc);
        return rec && rec.entries.length === 1;
    });
    assert.deepEqual(sub.state, { title: 'made offline' }, 'applied locally at once');
    c.connect();
    try {
        const r = await done;
        assert.equal(r.seq, 1);
        assert.deepEqual((await storedDeltas(doc)).map((d) => d.data), [{ title: 'made offline' }]);
        await until('own delta in the state', () => sub.seq === 1);
        assert.deepEqual(sub.state, { title: 'made offline' });
    } finally {
        c.close();
    }
});

test('outbox: a final nack rejects the promise and leaves the outbox', async () => {
    const doc = docName('nack');
    const c = client({ path: '/merge', params: { user: 'nick' } });
    c.connect();
    try {
        await connected(c);
        let deep = 1;
        for (let i = 0; i < 70; i++) {
            deep = { d: deep };
        }
        await assert.rejects(c.send(doc, deep), (e) => e.code === 'invalid' && e.id !== undefined);
        assert.equal(c.outbox.length, 0);
        await assert.rejects(c.send('bad doc', 1), (e) => e.code === 'invalid');
        await assert.rejects(c.send(doc, 1, { id: '' }), (e) => e.code === 'invalid');
    } finally {
        c.close();
    }
});

export { HTTP, waitFor };
