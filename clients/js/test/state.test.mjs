// The document state: the snapshot when subscribing without since (json-merge), optimistic
// local apply, the rebase hook on remote deltas and on nack conflict (reject-stale),
// recovered=false with the reason when the log was recreated or trimmed.

import test from 'node:test';
import assert from 'node:assert/strict';
import { client, docName, proxy, redis, storedDeltas, until, waitFor } from './helpers.mjs';

test('json-merge: subscribing without since gives the snapshot; local edits show at once',
     async () => {
    const doc = docName('snap');
    const a = client({ path: '/merge', params: { user: 'alice' } });
    const c = client({ path: '/merge', params: { user: 'carol' } });
    try {
        a.connect();
        await a.send(doc, { title: 'Plan', cards: { c1: { col: 'todo' } } });
        await a.send(doc, { cards: { c1: { col: 'done' }, c2: { col: 'todo' } } });
        await a.send(doc, { cards: { c2: null } });

        const sub = c.subscribe(doc, { merge: true });
        const snap = waitFor(sub, 'snapshot');
        const subd = waitFor(sub, 'subscribed');
        c.connect();
        const s = await snap;
        assert.deepEqual(s.data, { title: 'Plan', cards: { c1: { col: 'done' } } });
        assert.equal(s.seq, 3);
        const ev = await subd;
        assert.equal(ev.reason, 'initial');
        assert.deepEqual(sub.state, s.data);

        const acked = sub.send({ cards: { c3: { col: 'todo' } } });
        assert.deepEqual(sub.state.cards.c3, { col: 'todo' }, 'optimistic: before the ack');
        await acked;
        await until('seq 4', () => sub.seq === 4);
        assert.deepEqual(sub.confirmed, sub.state);
        const r = await fetch(`${process.env.COLLAB_HTTP}/merge?doc=${doc}&view=state`);
        assert.deepEqual((await r.json()).data, sub.state, 'the server computed the same');
    } finally {
        a.close();
        c.close();
    }
});

test('rebase hook: called for a pending delta when a remote delta comes first', async () => {
    const doc = docName('rebase');
    const p = await proxy();
    const a = client({ path: '/merge', params: { user: 'alice' } });
    const calls = [];
    const b = client({ url: p.url + '/merge', params: { user: 'bob' } });
    try {
        const sb = b.subscribe(doc, {
            merge: true,
            rebase: (entry, ctx) => {
                calls.push({ id: entry.id, type: ctx.type, user: ctx.delta && ctx.delta.user });
                return { ...entry.data, rebased: true };
            },
        });
        b.connect();
        a.connect();
        await waitFor(sb, 'subscribed');
        p.stall();                          // bob's link goes silent
        const mine = sb.send({ bob: 1 });
        await a.send(doc, { alice: 1 });
        p.cut();                            // bob reconnects, resumes, then sends
        await mine;
        await until('both in bob\'s state', () => sb.seq === 2);
        assert.deepEqual(calls.map((x) => [x.type, x.user]), [['remote', 'alice']]);
        assert.deepEqual(sb.state, { alice: 1, bob: 1, rebased: true });
        const stored = await storedDeltas(doc, '/merge');
        assert.deepEqual(stored.map((d) => d.data), [{ alice: 1 }, { bob: 1, rebased: true }]);
    } finally {
        a.close();
        b.close();
        p.close();
    }
});

test('nack conflict (reject-stale): the rebase hook runs and the delta goes on the new head',
     async () => {
    const doc = docName('stale');
    const a = client({ path: '/stale', params: { user: 'alice' } });
    const b = client({ path: '/stale', params: { user: 'bob' } });
    const calls = [];
    try {
        const sb = b.subscribe(doc, {
            sendBase: true,
            rebase: (entry, ctx) => {
                calls.push({ type: ctx.type, head: ctx.head, base: entry.base });
                return ctx.type === 'conflict' ? { by: 'b', rebasedOn: ctx.head } : undefined;
            },
        });
        b.connect();
        a.connect();
        await waitFor(sb, 'subscribed');
        const first = await a.send(doc, { by: 'a' }, { base: 0 });
        assert.equal(first.seq, 1);
        const nacks = [];
        b.on('nack', (m) => nacks.push(m));
        const r = await b.send(doc, { by: 'b' }, { base: 0 });
        assert.equal(r.seq, 2, 'stored once rebased');
        assert.equal(nacks.length, 1);
        assert.equal(nacks[0].code, 'conflict');
        assert.equal(nacks[0].seq, 1);
        assert.deepEqual(calls.filter((x) => x.type === 'conflict').map((x) => x.head), [1]);
        const stored = await storedDeltas(doc, '/stale');
        assert.deepEqual(stored.map((d) => d.data), [{ by: 'a' }, { by: 'b', rebasedOn: 1 }]);
    } finally {
        a.close();
        b.close();
    }
});

test('recovered=false with reason "epoch" when the log was recreated', async () => {
    const doc = docName('epoch');
    const a = client({ params: { user: 'alice' } });
    const b = client({ params: { user: 'bob' } });
    try {
        const sa = a.subscribe(doc);
        a.connect();
        b.connect();
        await waitFor(sa, 'subscribed');
        await b.send(doc, 1);
        await until('alice at 1', () => sa.seq === 1);
        const old = sa.epoch;
        const again = waitFor(sa, 'subscribed');
        await redis('DEL', `collab:{${doc}}:log`, `collab:{${doc}}:state`);
        await b.send(doc, 2);
        const ev = await again;
        assert.equal(ev.recovered, false);
        assert.equal(ev.reason, 'epoch');
        assert.notEqual(ev.epoch, old);
        assert.ok(ev.snapshot, 'started from the state');
        await until('alice has the new log', () => sa.seq === 1 && sa.epoch === ev.epoch);
    } finally {
        a.close();
        b.close();
    }
});

test('recovered=false with reason "trimmed" when the log no longer has what was missed',
     async () => {
    const doc = docName('trim');
    const p = await proxy();
    const a = client({ url: p.url + '/merge', params: { user: 'alice' } });
    const b = client({ path: '/merge', params: { user: 'bob' } });
    try {
        const sa = a.subscribe(doc, { merge: true });
        a.connect();
        b.connect();
        await waitFor(sa, 'subscribed');
        await b.send(doc, { n: 1 });
        await until('alice at 1', () => sa.seq === 1);
        p.refuse(true);
        p.cut();
        await waitFor(a, 'state', (s) => s.new === 'disconnected');
        await b.send(doc, { n: 2 });
        await b.send(doc, { m: 3 });
        // the json-merge state is at seq 3: the log may lose everything before it
        await redis('XTRIM', `collab:{${doc}}:log`, 'MINID', '3-0');
        const again = waitFor(sa, 'subscribed', () => true, 15000);
        p.refuse(false);
        const ev = await again;
        assert.equal(ev.recovered, false);
        assert.equal(ev.reason, 'trimmed');
        assert.deepEqual(ev.snapshot, { seq: 3, data: { n: 2, m: 3 } });
        assert.deepEqual(sa.state, { n: 2, m: 3 });
    } finally {
        a.close();
        b.close();
        p.close();
    }
});
