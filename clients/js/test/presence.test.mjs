// Presence: setPresence / onPresence with join, update and leave; the snapshot on subscribe.

import test from 'node:test';
import assert from 'node:assert/strict';
import { client, docName, until, waitFor } from './helpers.mjs';

test('presence: join (from the snapshot and live), update, leave', async () => {
    const doc = docName('presence');
    const a = client({ params: { user: 'alice' } });
    const b = client({ params: { user: 'bob' } });
    try {
        const sa = a.subscribe(doc);
        a.setPresence(doc, { name: 'Alice', cursor: 1 });
        a.connect();
        await waitFor(sa, 'subscribed');

        const seen = [];
        b.onPresence(doc, (ev) => seen.push(ev));
        const sb = b.subscribe(doc);
        b.connect();
        await until('bob sees alice', () => seen.some((e) => e.type === 'join'), 10000);
        const join = seen.find((e) => e.type === 'join');
        assert.equal(join.user, 'alice');
        assert.deepEqual(join.data, { name: 'Alice', cursor: 1 });
        assert.equal(sb.members.size, 1);

        const seenByA = [];
        sa.onPresence((ev) => seenByA.push(ev));
        sb.setPresence({ name: 'Bob' });
        await until('alice sees bob join', () => seenByA.some((e) => e.type === 'join'
                                                              && e.user === 'bob'));

        sa.setPresence({ name: 'Alice', cursor: 2 });
        await until('bob sees the update', () => seen.some((e) => e.type === 'update'
                                                          && e.data.cursor === 2));
        a.close();
        const leave = await until('bob sees alice leave',
                                  () => seen.find((e) => e.type === 'leave'));
        assert.equal(leave.user, 'alice');
        assert.equal(leave.reason, 'closed');
        assert.equal(sb.members.size, 0);
    } finally {
        a.close();
        b.close();
    }
});

test('intents reach the other members', async () => {
    const doc = docName('intent');
    const a = client({ params: { user: 'alice' } });
    const b = client({ params: { user: 'bob' } });
    try {
        const sa = a.subscribe(doc);
        const sb = b.subscribe(doc);
        const ready = [waitFor(sa, 'subscribed'), waitFor(sb, 'subscribed')];
        a.connect();
        b.connect();
        await Promise.all(ready);
        const got = waitFor(sb, 'intent');
        sa.sendIntent({ typing: true });
        const m = await got;
        assert.equal(m.user, 'alice');
        assert.deepEqual(m.data, { typing: true });
    } finally {
        a.close();
        b.close();
    }
});
