// Role events: an ACL change reaches the subscription at once (role, canEdit), the server
// refuses what the role does not allow, and a role of none ends the subscription.

import test from 'node:test';
import assert from 'node:assert/strict';
import { HTTP, client, docName, waitFor } from './helpers.mjs';

async function putAcl(doc, acl) {
    const r = await fetch(`${HTTP}/acl?doc=${doc}`, {
        method: 'PUT', body: JSON.stringify(acl),
        headers: { Authorization: 'Bearer ' + process.env.COLLAB_ADMIN_KEY,
                   'Content-Type': 'application/json' },
    });
    assert.equal(r.status, 200, await r.text());
}

test('role: editor -> viewer (edits refused) -> none (unsubscribed)', async () => {
    const doc = docName('roles');
    const c = client({ params: { user: 'rob' } });
    try {
        const sub = c.subscribe(doc);
        c.connect();
        const first = await waitFor(sub, 'subscribed');
        assert.equal(first.role, 'editor');
        assert.equal(sub.canEdit, true);

        const roleEv = waitFor(sub, 'role');
        const clientRoleEv = waitFor(c, 'role');
        await putAcl(doc, { default: 'viewer' });
        const ev = await roleEv;
        assert.deepEqual({ role: ev.role, old: ev.old }, { role: 'viewer', old: 'editor' });
        assert.equal((await clientRoleEv).doc, doc);
        assert.equal(sub.canEdit, false);
        await assert.rejects(sub.send({ n: 1 }), (e) => e.code === 'forbidden');
        assert.equal(c.outbox.length, 0);

        const gone = waitFor(sub, 'unsubscribed');
        await putAcl(doc, { default: 'none' });
        assert.equal((await gone).reason, 'forbidden');
        assert.equal(sub.active, false);
        assert.equal(sub.subscribed, false);
    } finally {
        c.close();
    }
});
