// One document of a client: its replay point (seq + epoch), role, state, members.

import { Emitter } from './emitter.js';

const EDIT_ROLES = ['editor', 'owner'];

export class Subscription extends Emitter {
    constructor(client, doc, opts = {}) {
        super();
        this.client = client;
        this.doc = doc;
        this.seq = opts.since ?? null;      // the last seq applied
        this.epoch = opts.epoch ?? null;    // the log that seq belongs to
        this.role = null;
        this.head = 0;                      // the head `subscribed` announced
        this.subscribed = false;            // `subscribed` came on the current connection
        this.active = true;                 // false after unsubscribe() or a refusal
        this.apply = opts.apply || null;    // (state, data) -> state, for optimistic state
        this.rebase = opts.rebase || null;  // (entry, ctx) -> data | undefined | null
        this.sendBase = !!opts.sendBase;    // send `base` (collab_conflict reject-stale)
        this.confirmed = opts.state;        // the server's state as far as seq
        this.members = new Map();           // session -> {session, user, data}
        this.session = null;                // this client's session on the doc
        this.presence = undefined;          // what setPresence() set
        this._hadSubscribed = false;
        this._resync = null;                // reason of the last resync
        this._pseq = -1;
        this._ownSeqs = new Set();          // seqs acked to this client, not yet seen
        this._unseen = new Map();           // seq -> data of those (still in `state`)
        this._local = undefined;
        this._localValid = false;
        this._retry = 0;
        this._retryTimer = null;
    }

    get canEdit() {
        return EDIT_ROLES.includes(this.role);
    }

    // the confirmed state with the deltas still in the outbox applied on top of it
    get state() {
        if (!this._localValid) {
            let s = this.confirmed;
            if (this.apply) {
                // acked before their delta came: keep them in the state meanwhile
                for (const seq of [...this._unseen.keys()].sort((a, b) => a - b)) {
                    s = this.apply(s, this._unseen.get(seq));
                }
                for (const e of this.client._pending(this.doc)) {
                    if (e.seq === undefined) {
                        s = this.apply(s, e.data);
                    }
                }
            }
            this._local = s;
            this._localValid = true;
        }
        return this._local;
    }

    send(data, opts) {
        return this.client.send(this.doc, data, opts);
    }

    setPresence(data) {
        this.presence = data;
        if (this.subscribed) {
            this.client._transportSend({ type: 'presence', doc: this.doc, data });
        }
    }

    sendIntent(data) {
        return this.subscribed
            && this.client._transportSend({ type: 'intent', doc: this.doc, data });
    }

    onPresence(fn) {
        return this.on('presence', fn);
    }

    unsubscribe() {
        this.client.unsubscribe(this.doc);
    }

    _changed(source, extra) {
        this._localValid = false;
        this.emit('change', { doc: this.doc, state: this.state, seq: this.seq, source, ...extra });
    }

    _setRole(role) {
        const old = this.role;
        this.role = role;
        if (old !== role) {
            const ev = { doc: this.doc, role, old };
            this.emit('role', ev);
            this.client.emit('role', ev);
        }
    }

    _onSubscribed(m) {
        const hasState = m.state !== undefined && m.state !== null;
        const resumed = this.seq !== null;
        let recovered = false;
        let reason = null;

        if (!hasState && this.epoch !== null && m.epoch !== this.epoch) {
            // another log and no snapshot (since sent without epoch): start over
            this.seq = null;
            this.epoch = null;
            this.client._subscribeNow(this);
            return;
        }
        if (!resumed && !this._hadSubscribed) {
            reason = 'initial';
        } else if (!hasState) {
            recovered = true;
            reason = this._resync;
        } else if (this._resync === 'epoch' || (this.epoch !== null && m.epoch !== this.epoch)) {
            reason = 'epoch';
        } else if (this.seq !== null && this.seq > m.seq) {
            reason = 'ahead';
        } else {
            reason = this._resync === 'lagging' ? 'lagging' : 'trimmed';
        }
        this.epoch = m.epoch;
        this.head = m.seq;
        this.subscribed = true;
        this._hadSubscribed = true;
        this._resync = null;
        this._retry = 0;
        this._ownSeqs.clear();
        for (const seq of [...this._unseen.keys()]) {
            if (reason === 'epoch' || (hasState && seq <= m.state.seq)) {
                this._unseen.delete(seq);
            }
        }
        this._setRole(m.role);
        if (hasState) {
            this.seq = m.state.seq;
            this.confirmed = m.state.data;
            this.emit('snapshot', { doc: this.doc, seq: m.state.seq, data: m.state.data,
                                    epoch: m.epoch });
        } else if (this.seq === null) {
            this.seq = 0;
        }
        const ev = { doc: this.doc, recovered, reason, role: m.role, epoch: m.epoch,
                     head: m.seq, seq: this.seq, snapshot: hasState ? m.state : null };
        this.emit('subscribed', ev);
        this.client.emit('subscribed', ev);
        if (hasState) {
            this._changed('snapshot');
        }
        if (this.presence !== undefined) {
            this.client._transportSend({ type: 'presence', doc: this.doc, data: this.presence });
        }
    }

    _onDelta(m) {
        if (!this.subscribed || m.seq <= this.seq) {
            return;                             // not ours yet, or a duplicate
        }
        if (m.seq !== this.seq + 1) {
            this._resync = 'gap';
            this.client._subscribeNow(this);    // replay from this.seq
            return;
        }
        this.seq = m.seq;
        this._unseen.delete(m.seq);
        const entry = this.client._pendingById(this.doc, m.id);
        const own = this._ownSeqs.delete(m.seq)
            || (entry !== undefined && (this.client.user === null || m.user === this.client.user));
        if (this.apply) {
            this.confirmed = this.apply(this.confirmed, m.data);
        }
        if (own && entry) {
            entry.seq = m.seq;                  // in the state now; the ack removes it
        }
        if (!own && this.rebase) {
            for (const e of this.client._pending(this.doc)) {
                if (e.seq === undefined) {
                    this.client._rebaseEntry(this, e, { type: 'remote', delta: m });
                }
            }
        }
        const ev = { ...m, own };
        this.emit('delta', ev);
        this._changed(own ? 'own' : 'remote', { delta: m });
    }

    _onPresenceSnapshot(m) {
        const next = new Map();
        for (const p of m.members || []) {
            if (p.session !== this.session) {
                next.set(p.session, { session: p.session, user: p.user, data: p.data });
            }
        }
        const old = this.members;
        this.members = next;
        this._pseq = typeof m.pseq === 'number' ? m.pseq : -1;
        for (const [s, p] of old) {
            if (!next.has(s)) {
                this._presence({ type: 'leave', reason: 'gone', ...p });
            }
        }
        for (const [s, p] of next) {
            const was = old.get(s);
            if (!was) {
                this._presence({ type: 'join', ...p });
            } else if (JSON.stringify(was.data) !== JSON.stringify(p.data)) {
                this._presence({ type: 'update', ...p });
            }
        }
    }

    _onPresence(m) {
        if (m.session === this.session) {
            return;
        }
        if (typeof m.pseq === 'number') {
            if (m.pseq <= this._pseq) {
                return;
            }
            this._pseq = m.pseq;
        }
        if (m.left) {
            const p = this.members.get(m.session);
            this.members.delete(m.session);
            this._presence({ type: 'leave', reason: m.reason, session: m.session, user: m.user,
                             data: p ? p.data : undefined });
            return;
        }
        const joined = !this.members.has(m.session);
        const p = { session: m.session, user: m.user, data: m.data };
        this.members.set(m.session, p);
        this._presence({ type: joined ? 'join' : 'update', ...p });
    }

    _presence(ev) {
        ev.doc = this.doc;
        this.emit('presence', ev);
        this.client.emit('presence', ev);
    }

    _onResync(m) {
        this.subscribed = false;
        this._resync = m.reason;
        this.emit('resync', m);
        this.client._subscribeNow(this);
    }

    _onUnsubscribed(m) {
        this.subscribed = false;
        this.active = false;
        this.emit('unsubscribed', m);
    }

    _onError(m) {
        this.emit('error', m);
        if (this.subscribed) {
            return;                 // about an intent, presence, state: nothing to redo
        }
        if (m.code === 'unavailable' || (m.code === 'rate_limited')) {
            const delay = m.retry_after_ms
                || this.client._backoff(this._retry++);
            clearTimeout(this._retryTimer);
            this._retryTimer = setTimeout(() => {
                if (this.active && !this.subscribed && this.client.state === 'connected') {
                    this.client._subscribeNow(this);
                }
            }, delay);
        } else if (m.code === 'forbidden' || m.code === 'invalid' || m.code === 'too_large') {
            this.active = false;    // refused: not asked again on reconnects
        }
    }
}
