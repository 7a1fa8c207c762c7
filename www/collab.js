/*! collab-client 0.2.0 | script-tag build of clients/js (do not edit: node clients/js/scripts/build.mjs) */
(function (root) {
'use strict';

// ---- src/emitter.js
// A minimal event emitter (no dependency on Node's events or the DOM's EventTarget).

class Emitter {
    constructor() {
        this._handlers = new Map();
    }

    // on(name, fn) -> a function that removes the handler again
    on(name, fn) {
        let list = this._handlers.get(name);
        if (!list) {
            list = [];
            this._handlers.set(name, list);
        }
        list.push(fn);
        return () => this.off(name, fn);
    }

    once(name, fn) {
        const off = this.on(name, (arg) => {
            off();
            fn(arg);
        });
        return off;
    }

    off(name, fn) {
        const list = this._handlers.get(name);
        if (list) {
            const i = list.indexOf(fn);
            if (i >= 0) {
                list.splice(i, 1);
            }
        }
        return this;
    }

    // a throwing handler neither stops the others nor the client: it is rethrown later
    emit(name, arg) {
        const list = this._handlers.get(name);
        if (!list) {
            return;
        }
        for (const fn of list.slice()) {
            try {
                fn.call(this, arg);
            } catch (e) {
                setTimeout(() => { throw e; });
            }
        }
    }
}

// ---- src/backoff.js
// Reconnect delays: exponential backoff with "full jitter" (a uniformly random delay between
// 0 and min(max, min * 2^attempt)), so that clients dropped together do not come back together.

function fullJitter(attempt, min, max, random = Math.random) {
    const cap = Math.min(max, min * Math.pow(2, Math.min(attempt, 30)));
    return Math.floor(random() * cap);
}

// a token's exp claim in ms since the epoch, or null (not a JWT, no exp)
function tokenExpiry(token) {
    if (typeof token !== 'string') {
        return null;
    }
    const part = token.split('.')[1];
    if (!part) {
        return null;
    }
    try {
        const b64 = part.replace(/-/g, '+').replace(/_/g, '/');
        const text = typeof atob === 'function'
            ? atob(b64 + '==='.slice((b64.length + 3) % 4))
            : Buffer.from(b64, 'base64').toString('binary');
        const claims = JSON.parse(decodeURIComponent(escape(text)));
        return typeof claims.exp === 'number' ? claims.exp * 1000 : null;
    } catch (e) {
        return null;
    }
}

// ---- src/storage.js
// Storage adapters for the outbox: async key/value stores of JSON values.
//   get(key) -> value | undefined,  set(key, value),  delete(key)

class MemoryStorage {
    constructor() {
        this.map = new Map();
    }

    async get(key) {
        const v = this.map.get(key);
        return v === undefined ? undefined : JSON.parse(v);
    }

    async set(key, value) {
        this.map.set(key, JSON.stringify(value));
    }

    async delete(key) {
        this.map.delete(key);
    }
}

class LocalStorageStorage {
    constructor(storage = globalThis.localStorage, prefix = '') {
        this.storage = storage;
        this.prefix = prefix;
    }

    async get(key) {
        const v = this.storage.getItem(this.prefix + key);
        return v === null ? undefined : JSON.parse(v);
    }

    async set(key, value) {
        this.storage.setItem(this.prefix + key, JSON.stringify(value));
    }

    async delete(key) {
        this.storage.removeItem(this.prefix + key);
    }
}

// One object store "kv" in the database `name` (default "collab-client").
class IndexedDBStorage {
    constructor(name = 'collab-client', indexedDB = globalThis.indexedDB) {
        this.name = name;
        this.idb = indexedDB;
        this.db = null;
    }

    _open() {
        if (!this.db) {
            this.db = new Promise((resolve, reject) => {
                const req = this.idb.open(this.name, 1);
                req.onupgradeneeded = () => req.result.createObjectStore('kv');
                req.onsuccess = () => resolve(req.result);
                req.onerror = () => reject(req.error);
            });
        }
        return this.db;
    }

    async _tx(mode, fn) {
        const db = await this._open();
        return new Promise((resolve, reject) => {
            const tx = db.transaction('kv', mode);
            const req = fn(tx.objectStore('kv'));
            tx.oncomplete = () => resolve(req.result);
            tx.onerror = () => reject(tx.error);
            tx.onabort = () => reject(tx.error);
        });
    }

    async get(key) {
        const v = await this._tx('readonly', (s) => s.get(key));
        return v === undefined ? undefined : JSON.parse(v);
    }

    async set(key, value) {
        await this._tx('readwrite', (s) => s.put(JSON.stringify(value), key));
    }

    async delete(key) {
        await this._tx('readwrite', (s) => s.delete(key));
    }
}

// IndexedDB in a browser, else localStorage, else memory (Node: see FileStorage in ./node.js)
function defaultStorage() {
    if (globalThis.indexedDB) {
        return new IndexedDBStorage();
    }
    try {
        if (globalThis.localStorage) {
            return new LocalStorageStorage();
        }
    } catch (e) {
        /* localStorage access can throw (disabled storage) */
    }
    return new MemoryStorage();
}

// ---- src/merge.js
// RFC 7396 JSON Merge Patch, as the server applies it with `collab_merge json-merge`:
// the default `apply` of a subscription, so that the optimistic local state matches what the
// server will compute. Returns a new value; the inputs are not modified.

function mergePatch(target, patch) {
    if (patch === null || typeof patch !== 'object' || Array.isArray(patch)) {
        return patch;
    }
    const out = target !== null && typeof target === 'object' && !Array.isArray(target)
        ? { ...target } : {};
    for (const k of Object.keys(patch)) {
        if (patch[k] === null) {
            delete out[k];
        } else {
            out[k] = mergePatch(out[k], patch[k]);
        }
    }
    return out;
}

// ---- src/subscription.js
// One document of a client: its replay point (seq + epoch), role, state, members.


const EDIT_ROLES = ['editor', 'owner'];

class Subscription extends Emitter {
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

// ---- src/transport-ws.js
// The WebSocket transport: one socket, every document, both directions.

const OPEN = 1;

class WsTransport {
    constructor(client, url) {
        this.kind = 'websocket';
        this.client = client;
        this.url = url;
        this.ws = null;
        this.opened = false;        // the handshake completed (101)
        this.closed = false;
        this.pingsVisible = false;  // the implementation lets us see the server's pings (ws)
    }

    open(token) {
        const WS = this.client.WebSocket;
        if (!WS) {
            throw new Error('no WebSocket implementation: pass the WebSocket option '
                            + '(in Node 20: the "ws" package)');
        }
        const ws = this.ws = new WS(this.url, 'collab.v1');
        ws.onopen = () => {
            if (this.closed) {
                return;
            }
            this.opened = true;
            this.client._touch(this);
            if (token) {
                this.send({ type: 'auth', token });
            }
        };
        ws.onmessage = (ev) => {
            if (this.closed) {
                return;
            }
            let m;
            try {
                m = JSON.parse(typeof ev.data === 'string' ? ev.data : String(ev.data));
            } catch (e) {
                return;
            }
            this.client._onMessage(m, this);
        };
        ws.onclose = (ev) => {
            if (this.closed) {
                return;
            }
            this.closed = true;
            this.client._onTransportLost(this, {
                code: ev.code, reason: ev.reason || '', opened: this.opened,
            });
        };
        ws.onerror = () => { /* onclose follows */ };
        if (typeof ws.on === 'function') {
            // the "ws" package: server pings are events, so liveness needs no probe
            this.pingsVisible = true;
            ws.on('ping', () => this.client._touch(this));
        }
    }

    send(msg) {
        if (this.closed || !this.ws || this.ws.readyState !== OPEN) {
            return false;
        }
        this.ws.send(JSON.stringify(msg));
        return true;
    }

    subscribe(doc, since, epoch) {
        const msg = { type: 'subscribe', doc };
        if (since !== null && since !== undefined) {
            msg.since = since;
            if (epoch) {
                msg.epoch = epoch;
            }
        }
        return this.send(msg);
    }

    unsubscribe(doc) {
        return this.send({ type: 'unsubscribe', doc });
    }

    // browsers hide WebSocket pings: an idle connection is checked with a message that the
    // server always answers (an unknown type gets `error` `invalid`, see docs/client.md)
    probe() {
        return this.send({ type: 'ping' });
    }

    refreshToken(token) {
        return this.send({ type: 'auth', token });
    }

    close() {
        this.closed = true;
        if (this.ws) {
            try {
                this.ws.close(1000);
            } catch (e) {
                /* not open yet */
            }
        }
    }
}

// ---- src/transport-sse.js
// The fallback transport: one Server-Sent Events stream per document (read with fetch, so
// that the token goes in an Authorization header and the server's `: ping` comments are
// seen), and POST for what the client sends. Presence and intents cannot be sent over POST
// (the protocol refuses them there): setPresence() is kept until a WebSocket is back.

class SseTransport {
    constructor(client, httpUrl) {
        this.kind = 'sse';
        this.client = client;
        this.httpUrl = httpUrl;
        this.token = null;
        this.streams = new Map();   // doc -> {ctrl, alive}
        this.queue = [];            // messages waiting for the next POST
        this.posting = false;
        this.opened = false;
        this.closed = false;
        this.pingsVisible = true;
    }

    _headers(extra) {
        const h = { ...extra };
        if (this.token) {
            h.Authorization = 'Bearer ' + this.token;
        }
        return h;
    }

    // an empty POST batch ([] is answered with []) checks that the endpoint is reachable
    open(token) {
        this.token = token;
        this.client.fetch(this.httpUrl, {
            method: 'POST', body: '[]',
            headers: this._headers({ 'Content-Type': 'application/json' }),
        }).then((r) => {
            if (this.closed) {
                return;
            }
            if (r.status !== 200) {
                this._lost(r.status === 401 ? 4401 : 0, 'POST answered ' + r.status);
                return;
            }
            this.opened = true;
            this.client._onSseOpen(this);
        }, (e) => this._lost(0, 'POST failed: ' + (e && e.message)));
    }

    _lost(code, reason) {
        if (this.closed) {
            return;
        }
        this.close();
        this.client._onTransportLost(this, { code, reason, opened: this.opened });
    }

    send(msg) {
        if (this.closed || !this.opened) {
            return false;
        }
        if (msg.type === 'presence' || msg.type === 'intent') {
            return false;
        }
        this.queue.push(msg);
        if (!this.posting) {
            this.posting = true;
            Promise.resolve().then(() => this._post());
        }
        return true;
    }

    async _post() {
        while (this.queue.length && !this.closed) {
            const batch = this.queue.splice(0, 100);
            let replies = null;
            try {
                const r = await this.client.fetch(this.httpUrl, {
                    method: 'POST', body: JSON.stringify(batch),
                    headers: this._headers({ 'Content-Type': 'application/json' }),
                });
                if (r.status === 401) {
                    this._lost(4401, 'POST answered 401');
                    break;
                }
                replies = await r.json().catch(() => null);
            } catch (e) {
                replies = null;
            }
            if (this.closed) {
                break;
            }
            if (!Array.isArray(replies) || replies.length !== batch.length) {
                // outcome unknown: the deltas are sent again (same ids) after a reconnect
                this._lost(0, 'POST failed');
                break;
            }
            for (const m of replies) {
                this.client._onMessage(m, this);
            }
        }
        this.posting = false;
    }

    subscribe(doc, since, epoch) {
        if (this.closed || !this.opened) {
            return false;
        }
        this.unsubscribe(doc);
        const q = new URLSearchParams({ doc });
        if (since !== null && since !== undefined) {
            q.set('since', String(since));
            if (epoch) {
                q.set('epoch', epoch);
            }
        }
        const url = this.httpUrl + (this.httpUrl.includes('?') ? '&' : '?') + q;
        const stream = { doc, ctrl: new AbortController(), lastError: null };
        this.streams.set(doc, stream);
        this._read(stream, url);
        return true;
    }

    async _read(stream, url) {
        let r;
        try {
            r = await this.client.fetch(url, {
                headers: this._headers({ Accept: 'text/event-stream' }),
                signal: stream.ctrl.signal, cache: 'no-store',
            });
        } catch (e) {
            if (this.streams.get(stream.doc) === stream) {
                this._lost(0, 'event stream failed: ' + (e && e.message));
            }
            return;
        }
        if (r.status !== 200) {
            if (r.body) {
                r.body.cancel().catch(() => {});
            }
            if (this.streams.get(stream.doc) === stream) {
                this._lost(r.status === 401 ? 4401 : 0, 'event stream answered ' + r.status);
            }
            return;
        }
        const reader = r.body.getReader();
        const dec = new TextDecoder();
        let buf = '';
        let data = [];
        try {
            for (;;) {
                const { value, done } = await reader.read();
                if (done) {
                    break;
                }
                if (this.streams.get(stream.doc) !== stream) {
                    break;
                }
                this.client._touch(this);
                buf += dec.decode(value, { stream: true });
                let nl;
                while ((nl = buf.indexOf('\n')) >= 0) {
                    const line = buf.slice(0, nl).replace(/\r$/, '');
                    buf = buf.slice(nl + 1);
                    if (line === '') {
                        if (data.length) {
                            this._event(stream, data.join('\n'));
                        }
                        data = [];
                    } else if (line.startsWith('data:')) {
                        data.push(line.slice(line[5] === ' ' ? 6 : 5));
                    }
                }
            }
        } catch (e) {
            /* aborted, or the connection broke: below */
        }
        if (this.streams.get(stream.doc) !== stream || this.closed) {
            return;
        }
        this.streams.delete(stream.doc);
        // the stream ends after resync, unsubscribed and errors: the subscription handles
        // those; any other end (reload, token expiry, network) is a lost connection
        if (!stream.lastError) {
            this._lost(0, 'event stream ended');
        }
    }

    _event(stream, text) {
        let m;
        try {
            m = JSON.parse(text);
        } catch (e) {
            return;
        }
        if (m.type === 'error' || m.type === 'resync' || m.type === 'unsubscribed') {
            stream.lastError = m.type;
        }
        this.client._onMessage(m, this, stream);
    }

    unsubscribe(doc) {
        const s = this.streams.get(doc);
        if (s) {
            this.streams.delete(doc);
            s.ctrl.abort();
        }
        return true;
    }

    probe() {
        return false;
    }

    // a new token: the streams are opened again with it (they carry it in a header)
    refreshToken(token) {
        this.token = token;
        return false;
    }

    close() {
        this.closed = true;
        for (const s of this.streams.values()) {
            s.ctrl.abort();
        }
        this.streams.clear();
    }
}

// ---- src/client.js
// CollabClient: one connection to a collab.v1 endpoint (WebSocket, or SSE + POST), any
// number of documents, a persistent outbox. See README.md for the API.


const RETRY_NACKS = ['rate_limited', 'unavailable'];
const DOC_RE = /^[A-Za-z0-9._:-]{1,128}$/;
const MAX_TIMER = 0x7fffffff;

class UnauthorizedError extends Error {
    constructor(message = 'unauthorized') {
        super(message);
        this.name = 'UnauthorizedError';
        this.code = 'unauthorized';
    }
}

function isUnauthorized(e) {
    return !!e && (e.code === 'unauthorized' || e.name === 'UnauthorizedError'
                   || e.status === 401 || e.status === 403);
}

function randomClientId() {
    const bytes = new Uint8Array(16);
    globalThis.crypto.getRandomValues(bytes);
    let s = '';
    for (const b of bytes) {
        s += String.fromCharCode(b);
    }
    return btoa(s).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

// http(s) and ws(s) URLs of the endpoint
function endpoints(url) {
    let base = url;
    if (!base) {
        const loc = globalThis.location;
        if (!loc) {
            throw new Error('the url option is required outside a browser');
        }
        base = loc.origin + '/collab';
    } else if (base.startsWith('/') && globalThis.location) {
        base = globalThis.location.origin + base;
    }
    const http = base.replace(/^ws(s?):/i, 'http$1:');
    return { http, ws: http.replace(/^http(s?):/i, 'ws$1:') };
}

class CollabClient extends Emitter {
    constructor(opts = {}) {
        super();
        const ep = endpoints(opts.url);
        const q = new URLSearchParams();
        for (const [k, v] of Object.entries(opts.params || {})) {
            if (v !== null && v !== undefined) {
                q.set(k, String(v));
            }
        }
        this.params = q;
        this.httpBase = ep.http;
        this.wsBase = ep.ws;
        this.WebSocket = opts.WebSocket || globalThis.WebSocket;
        this.fetch = opts.fetch || (globalThis.fetch && globalThis.fetch.bind(globalThis));
        this.getToken = opts.getToken
            || (opts.token ? () => opts.token : null);
        this._staticToken = !opts.getToken;
        this.transports = opts.transports || ['websocket', 'sse'];
        this.minBackoff = opts.minBackoff ?? 500;
        this.maxBackoff = opts.maxBackoff ?? 15000;
        this.connectTimeout = opts.connectTimeout ?? 10000;
        this.livenessTimeout = opts.livenessTimeout ?? null;
        this.websocketRetry = opts.websocketRetry ?? 60000;
        this.fallbackAfter = opts.fallbackAfter ?? 2;
        this.tokenRefreshMargin = opts.tokenRefreshMargin ?? 30000;
        this.maxOutbox = opts.maxOutbox ?? 1000;
        this.storage = opts.storage || defaultStorage();
        this.storageKey = opts.storageKey
            || 'collab-outbox:' + this.httpBase + (q.toString() ? '?' + q : '');
        this.random = opts.random || Math.random;

        this.state = 'disconnected';
        this.transport = null;          // 'websocket' | 'sse' while connected
        this.session = null;
        this.user = null;
        this.heartbeat = null;          // seconds, from welcome
        this.clientId = opts.clientId || null;
        this.subs = new Map();          // doc -> Subscription
        this.outbox = [];               // unacked deltas, in send order
        this.token = null;

        this._conn = null;
        this._probeConn = null;         // a WebSocket tried while on SSE
        this._gen = 0;
        this._attempt = 0;
        this._authFailures = 0;
        this._stopped = true;
        this._wsRefusedAt = 0;
        this._wsFailures = 0;
        this._timers = {};
        this._lastRx = 0;
        this._probed = false;
        this._waiters = new Map();      // id -> {resolve, reject}
        this._saving = Promise.resolve();
        this._onOnline = () => {
            if (!this._stopped && this.state === 'disconnected') {
                this._open('online');
            }
        };
        // the browser says the network is gone: do not wait for a timeout to notice
        this._onOffline = () => {
            if (!this._stopped && (this.state === 'connected' || this.state === 'connecting')) {
                const conn = this._conn || { kind: this.transport || 'websocket' };
                this._dropConn();
                this._onTransportLost(conn, { code: 0, reason: 'offline', opened: true,
                                              force: true });
            }
        };
        this.ready = this._load();
    }

    // ---- the outbox -----------------------------------------------------------------

    async _load() {
        let rec;
        try {
            rec = await this.storage.get(this.storageKey);
        } catch (e) {
            this.emit('error', { code: 'storage', message: String(e && e.message || e) });
        }
        if (rec && typeof rec === 'object') {
            if (!this.clientId && typeof rec.clientId === 'string') {
                this.clientId = rec.clientId;
            }
            if (Array.isArray(rec.entries)) {
                const ids = new Set(this.outbox.map((e) => e.doc + '\n' + e.id));
                const old = rec.entries.filter((e) => !ids.has(e.doc + '\n' + e.id))
                    .map((e) => ({ id: e.id, doc: e.doc, data: e.data, base: e.base }));
                this.outbox = old.concat(this.outbox);
            }
        }
        if (!this.clientId) {
            this.clientId = randomClientId();
        }
        this._counter = Date.now();
        this._loaded = true;
        await this._save();
        if (this.outbox.length) {
            this.emit('outbox', { size: this.outbox.length, restored: true });
        }
    }

    _save() {
        const rec = {
            clientId: this.clientId,
            entries: this.outbox.map((e) => ({ id: e.id, doc: e.doc, data: e.data, base: e.base })),
        };
        this._saving = this._saving.then(() => this.storage.set(this.storageKey, rec))
            .catch((e) => this.emit('error', { code: 'storage', message: String(e && e.message || e) }));
        return this._saving;
    }

    _pending(doc) {
        return this.outbox.filter((e) => e.doc === doc);
    }

    _pendingById(doc, id) {
        return this.outbox.find((e) => e.doc === doc && e.id === id);
    }

    newId() {
        return this.clientId.slice(0, 8) + '-' + (++this._counter).toString(36);
    }

    // Queue a delta: persisted, then sent (again after reconnects, same id) until acked.
    // Resolves with {doc, id, seq}; rejects with {code, message} on a final nack.
    send(doc, data, opts = {}) {
        const id = opts.id ?? (this.clientId ? this.newId() : undefined);
        const bad = (msg) => Promise.reject(Object.assign(new Error(msg), { code: 'invalid' }));
        if (typeof doc !== 'string' || !DOC_RE.test(doc)) {
            return bad('doc must be 1-128 characters of A-Za-z0-9._:-');
        }
        if (id !== undefined && (typeof id !== 'string' || id.length < 1 || id.length > 128)) {
            return bad('id must be a string of 1-128 characters');
        }
        if (data === undefined) {
            return bad('data is required (null is allowed)');
        }
        if (!this._loaded) {
            return this.ready.then(() => this.send(doc, data, opts));
        }
        if (this.outbox.length >= this.maxOutbox) {
            return Promise.reject(Object.assign(new Error('the outbox is full'),
                                                { code: 'too_large' }));
        }
        if (this._pendingById(doc, id)) {
            return bad('duplicate pending id ' + id);
        }
        const sub = this.subs.get(doc);
        const e = { id, doc, data, base: opts.base, saving: true };
        if (e.base === undefined && sub && sub.sendBase && sub.seq !== null) {
            e.base = sub.seq;
        }
        const done = new Promise((resolve, reject) => this._waiters.set(doc + '\n' + e.id,
                                                                          { resolve, reject }));
        // applied locally at once; sent once it is persisted
        this.outbox.push(e);
        if (sub) {
            sub._changed('local', { id: e.id });
        }
        this.emit('outbox', { size: this.outbox.length });
        this._save().then(() => {
            e.saving = false;
            this._flush();
        });
        return done;
    }

    _sendable(e) {
        if (e.sent || e.timer || e.waitHead !== undefined || e.saving) {
            return false;
        }
        // a subscribed document's deltas go once it replayed up to the head it was told
        // of, so that the rebase hook has seen what came before them
        const sub = this.subs.get(e.doc);
        return !sub || !sub.active || (sub.subscribed && sub.seq >= sub.head);
    }

    _flush() {
        if (this.state !== 'connected') {
            return;
        }
        for (const e of this.outbox) {
            if (!this._sendable(e)) {
                continue;
            }
            const msg = { type: 'delta', doc: e.doc, id: e.id, data: e.data };
            if (e.base !== undefined && e.base !== null) {
                msg.base = e.base;
            }
            if (this._transportSend(msg)) {
                e.sent = true;
            }
        }
    }

    _settle(e, err, result) {
        const i = this.outbox.indexOf(e);
        if (i >= 0) {
            this.outbox.splice(i, 1);
        }
        clearTimeout(e.timer);
        const w = this._waiters.get(e.doc + '\n' + e.id);
        this._waiters.delete(e.doc + '\n' + e.id);
        if (w) {
            if (err) {
                w.reject(err);
            } else {
                w.resolve(result);
            }
        }
        this._save();
        this.emit('outbox', { size: this.outbox.length });
        const sub = this.subs.get(e.doc);
        if (sub) {
            sub._changed(err ? 'rejected' : 'acked', { id: e.id });
        }
    }

    _rebaseEntry(sub, e, ctx) {
        const r = sub.rebase(e, ctx);
        if (r === null) {
            this._settle(e, { code: 'conflict', message: 'dropped by rebase', id: e.id,
                              doc: e.doc });
            return;
        }
        if (r !== undefined) {
            e.data = r;
        }
        if (ctx.type === 'remote' && e.base !== undefined && e.base !== null) {
            e.base = ctx.delta.seq;
        }
        this._save();
    }

    _onAck(m) {
        const e = this._pendingById(m.doc, m.id);
        const sub = this.subs.get(m.doc);
        if (sub && sub.seq !== null && m.seq > sub.seq) {
            sub._ownSeqs.add(m.seq);
            if (e) {
                sub._unseen.set(m.seq, e.data);
            }
        }
        this.emit('ack', m);
        if (e) {
            this._settle(e, null, { doc: m.doc, id: m.id, seq: m.seq });
        }
    }

    _onNack(m) {
        const e = m.id !== undefined ? this._pendingById(m.doc, m.id) : undefined;
        const sub = this.subs.get(m.doc);
        this.emit('nack', m);
        if (sub) {
            sub.emit('nack', m);
        }
        if (!e) {
            return;
        }
        e.sent = false;
        if (RETRY_NACKS.includes(m.code)) {
            const delay = m.retry_after_ms || this._backoff(e.retries = (e.retries || 0) + 1);
            e.timer = setTimeout(() => {
                e.timer = null;
                this._flush();
            }, delay);
        } else if (m.code === 'conflict' && sub && (sub.rebase || sub.sendBase)) {
            // reject-stale: catch up to the head, let the app rebase, send on the new base
            if (sub.rebase) {
                this._rebaseEntry(sub, e, { type: 'conflict', head: m.seq, nack: m });
                if (!this.outbox.includes(e)) {
                    return;
                }
            }
            e.waitHead = m.seq;
            this._checkHeads(sub);
        } else {
            this._settle(e, { code: m.code, message: m.message, seq: m.seq, id: m.id,
                              doc: m.doc });
        }
    }

    // deltas nacked `conflict` go again once the subscription has reached the head
    _checkHeads(sub) {
        let ready = false;
        for (const e of this._pending(sub.doc)) {
            if (e.waitHead !== undefined && sub.seq !== null && sub.seq >= e.waitHead) {
                e.waitHead = undefined;
                e.base = sub.seq;
                ready = true;
            }
        }
        if (ready) {
            this._save();
        }
        if (ready || sub.seq === sub.head) {
            this._flush();
        }
    }

    // ---- documents --------------------------------------------------------------------

    subscribe(doc, opts = {}) {
        let sub = this.subs.get(doc);
        if (!sub) {
            const o = { ...opts };
            if (o.apply === undefined && o.merge) {
                o.apply = mergePatch;
            }
            sub = new Subscription(this, doc, o);
            this.subs.set(doc, sub);
        }
        sub.active = true;
        if (this.state === 'connected' && !sub.subscribed) {
            this._subscribeNow(sub);
        }
        return sub;
    }

    unsubscribe(doc) {
        const sub = this.subs.get(doc);
        if (!sub) {
            return;
        }
        sub.active = false;
        sub.subscribed = false;
        this.subs.delete(doc);
        if (this._conn && this.state === 'connected') {
            this._conn.unsubscribe(doc);
        }
    }

    _subscribeNow(sub) {
        sub.subscribed = false;
        if (this._conn && this.state === 'connected' && sub.active) {
            this._conn.subscribe(sub.doc, sub.seq, sub.epoch);
        }
    }

    setPresence(doc, data) {
        this.subscribe(doc).setPresence(data);
    }

    onPresence(doc, fn) {
        return this.subscribe(doc).on('presence', fn);
    }

    sendIntent(doc, data) {
        const sub = this.subs.get(doc);
        return !!sub && sub.sendIntent(data);
    }

    _transportSend(msg) {
        return !!this._conn && this.state === 'connected' && this._conn.send(msg);
    }

    // ---- the connection ------------------------------------------------------------------

    connect() {
        this._stopped = false;
        if (globalThis.addEventListener) {
            globalThis.addEventListener('online', this._onOnline);
            globalThis.addEventListener('offline', this._onOffline);
        }
        if (this.state === 'disconnected' || this.state === 'failed') {
            this._authFailures = 0;
            this._open('connect');
        }
        return this;
    }

    close() {
        this._stopped = true;
        if (globalThis.removeEventListener) {
            globalThis.removeEventListener('online', this._onOnline);
            globalThis.removeEventListener('offline', this._onOffline);
        }
        this._gen++;
        this._dropConn();
        this._clearTimers();
        this._setState('disconnected', 'closed', null);
    }

    _clearTimers() {
        for (const k of Object.keys(this._timers)) {
            clearTimeout(this._timers[k]);
        }
        this._timers = {};
    }

    _timer(name, ms, fn) {
        clearTimeout(this._timers[name]);
        this._timers[name] = ms === null ? undefined : setTimeout(() => {
            delete this._timers[name];
            fn();
        }, ms);
    }

    _setState(next, reason, retryIn) {
        const old = this.state;
        if (old === next && next !== 'disconnected') {
            return;
        }
        this.state = next;
        this.emit('state', { old, new: next, reason, retryIn: retryIn ?? null,
                             transport: this.transport });
    }

    _backoff(attempt) {
        return fullJitter(attempt, this.minBackoff, this.maxBackoff, this.random);
    }

    _pickTransport(fallback) {
        const ws = this.transports.includes('websocket') && !!this.WebSocket;
        const sse = this.transports.includes('sse') && !!this.fetch;
        if (fallback && sse) {
            return 'sse';
        }
        if (ws && !(sse && this._wsRefusedAt
                    && Date.now() - this._wsRefusedAt < this.websocketRetry)) {
            return 'websocket';
        }
        return sse ? 'sse' : 'websocket';
    }

    async _open(reason, fallback = false) {
        const gen = ++this._gen;
        this._timer('retry', null);
        this._dropConn();
        this._setState('connecting', reason, null);
        await this.ready;
        if (gen !== this._gen) {
            return;
        }
        let token = null;
        if (this.getToken) {
            try {
                token = await this.getToken();
            } catch (e) {
                if (gen !== this._gen) {
                    return;
                }
                if (isUnauthorized(e)) {
                    this._fail('unauthorized', e);
                } else {
                    this._retryLater('getToken failed: ' + (e && e.message || e));
                }
                return;
            }
            if (gen !== this._gen) {
                return;
            }
            this._useToken(token);
        }
        const kind = this._pickTransport(fallback);
        const conn = this._makeConn(kind);
        this._conn = conn;
        this._timer('connect', this.connectTimeout, () => {
            if (this._conn === conn && this.state === 'connecting') {
                this._dropConn();
                this._onTransportLost(conn, { code: 0, reason: 'connect timeout',
                                              opened: conn.opened, force: true });
            }
        });
        try {
            conn.open(token);
        } catch (e) {
            this._conn = null;
            this._fail('error', e);
        }
    }

    _url(base, doc) {
        const q = new URLSearchParams(this.params);
        q.set('client', this.clientId);
        if (doc) {
            q.set('doc', doc);
        }
        return base + (base.includes('?') ? '&' : '?') + q;
    }

    _makeConn(kind) {
        return kind === 'sse'
            ? new SseTransport(this, this._url(this.httpBase))
            : new WsTransport(this, this._url(this.wsBase));
    }

    _dropConn() {
        const c = this._conn;
        this._conn = null;
        if (c) {
            c.close();
        }
        if (this._probeConn) {
            this._probeConn.close();
            this._probeConn = null;
        }
        this._timer('connect', null);
        this._timer('liveness', null);
        this._timer('upgrade', null);
        this._timer('probe', null);
    }

    _useToken(token) {
        this.token = token;
        const exp = tokenExpiry(token);
        if (exp === null) {
            this._timer('token', null);
            return;
        }
        const life = exp - Date.now();
        const delay = Math.max(1000, Math.max(life - this.tokenRefreshMargin, life / 2));
        if (delay > MAX_TIMER) {
            // setTimeout fires at once beyond 2^31-1 ms: look again later
            this._timer('token', MAX_TIMER, () => this._useToken(token));
            return;
        }
        this._timer('token', delay, () => this._refreshToken(0));
    }

    async _refreshToken(tries) {
        const gen = this._gen;
        let token;
        try {
            token = await this.getToken();
        } catch (e) {
            if (gen !== this._gen) {
                return;
            }
            if (isUnauthorized(e)) {
                this._fail('unauthorized', e);
            } else {
                this._timer('token', this._backoff(tries + 1) + 1000,
                            () => this._refreshToken(tries + 1));
            }
            return;
        }
        if (gen !== this._gen) {
            return;
        }
        this._useToken(token);
        this.emit('token', { refreshed: true });
        const conn = this._conn;
        if (conn && this.state === 'connected' && !conn.refreshToken(token)
            && conn.kind === 'sse') {
            // the streams carry the token in a header: open them again with the new one
            for (const sub of this.subs.values()) {
                this._subscribeNow(sub);
            }
        }
    }

    _fail(reason, err) {
        this._gen++;
        this._dropConn();
        this._clearTimers();
        this.transport = null;
        for (const sub of this.subs.values()) {
            sub.subscribed = false;
        }
        this.emit('error', { code: reason, message: String(err && err.message || err || reason) });
        this._setState('failed', reason, null);
    }

    _retryLater(reason, min = 0) {
        if (this._stopped) {
            return;
        }
        const delay = Math.max(min, this._backoff(this._attempt++));
        this._setState('disconnected', reason, delay);
        this._timer('retry', delay, () => this._open('retry'));
    }

    // the transport is up (WebSocket: welcome; SSE: POST works)
    _connected(conn) {
        this._timer('connect', null);
        this.transport = conn.kind;
        this._attempt = 0;
        if (conn.kind === 'websocket') {
            this._wsFailures = 0;
        }
        this._authFailures = 0;
        this._setState('connected', conn.kind, null);
        for (const e of this.outbox) {
            e.sent = false;             // unacked on the old connection: again (same id)
        }
        for (const sub of this.subs.values()) {
            sub.subscribed = false;
            if (sub.active) {
                this._subscribeNow(sub);
            }
        }
        this._flush();
        this._armLiveness();
        if (conn.kind === 'sse' && this.transports.includes('websocket') && this.WebSocket) {
            this._timer('upgrade', this.websocketRetry, () => this._tryUpgrade());
        }
    }

    _onSseOpen(conn) {
        if (conn === this._conn) {
            this._connected(conn);
        }
    }

    // on SSE: try a WebSocket now and then; switch over once it says welcome
    _tryUpgrade() {
        if (!this._conn || this._conn.kind !== 'sse' || this._probeConn) {
            return;
        }
        const probe = this._makeConn('websocket');
        this._probeConn = probe;
        this._timer('probe', this.connectTimeout, () => {
            if (this._probeConn === probe) {
                probe.close();
                this._onTransportLost(probe, { code: 0, reason: 'timeout', opened: false });
            }
        });
        probe.open(this.token);
    }

    _adoptProbe(probe, welcome) {
        const old = this._conn;
        this._probeConn = null;
        this._timer('probe', null);
        this._conn = probe;
        this._wsRefusedAt = 0;
        if (old) {
            old.close();
        }
        for (const e of this.outbox) {
            e.sent = false;
        }
        this.transport = null;
        this._setState('connecting', 'switching to websocket', null);
        this._onWelcome(welcome, probe);
    }

    _touch(conn) {
        if (conn === this._conn) {
            this._lastRx = Date.now();
            this._probed = false;
        }
    }

    _armLiveness() {
        const limit = this.livenessTimeout
            ?? ((this.heartbeat || 25) * 2000 + 5000);
        const conn = this._conn;
        const check = () => {
            if (conn !== this._conn || this.state !== 'connected') {
                return;
            }
            const idle = Date.now() - this._lastRx;
            if (idle >= limit) {
                this._dropConn();
                this._onTransportLost(conn, { code: 0, reason: 'liveness timeout',
                                              opened: true, force: true });
                return;
            }
            if (!conn.pingsVisible && !this._probed && idle >= limit / 2) {
                this._probed = conn.probe();
            }
            this._timer('liveness', Math.min(limit / 4, limit - idle), check);
        };
        this._lastRx = Date.now();
        this._timer('liveness', limit / 4, check);
    }

    _onTransportLost(conn, info) {
        if (conn === this._probeConn) {
            this._probeConn = null;
            this._timer('probe', null);
            this._wsRefusedAt = Date.now();
            this._timer('upgrade', this.websocketRetry, () => this._tryUpgrade());
            return;
        }
        if (conn !== this._conn && !info.force) {
            return;
        }
        const wasConnected = this.state === 'connected';
        this._dropConn();
        this.transport = null;
        for (const sub of this.subs.values()) {
            sub.subscribed = false;
        }
        for (const e of this.outbox) {
            e.sent = false;
        }
        this.emit('disconnect', { code: info.code, reason: info.reason, transport: conn.kind });
        if (this._stopped) {
            return;
        }
        if (info.code === 4401) {
            // a bad or expired token: one more try with a fresh one from getToken()
            if (this.getToken && !this._staticToken && this._authFailures++ < 1) {
                this._open('token rejected');
                return;
            }
            this._fail('unauthorized', info.reason || 'the server refused the token');
            return;
        }
        const offline = !!globalThis.navigator && globalThis.navigator.onLine === false;
        if (conn.kind === 'websocket' && !info.opened && !wasConnected && !offline
            && this.transports.includes('sse') && this.fetch
            && ++this._wsFailures >= this.fallbackAfter) {
            // refused or blocked before the handshake, again (one refusal may be a reload's
            // exiting worker, 503): try SSE + POST at once
            this._wsFailures = 0;
            this._wsRefusedAt = Date.now();
            this._open('websocket refused', true);
            return;
        }
        if (conn.kind === 'sse' && !conn.opened) {
            this._wsRefusedAt = 0;      // nothing works: start with a WebSocket next time
        }
        const reason = info.reason || ('closed ' + info.code);
        this._retryLater(reason, info.code === 4429 ? this.maxBackoff / 2 : 0);
    }

    // ---- incoming ----------------------------------------------------------------------

    _onWelcome(m, conn) {
        this.user = m.user;
        this.heartbeat = m.heartbeat;
        if (conn.kind === 'websocket') {
            this.session = m.session;
            for (const sub of this.subs.values()) {
                sub.session = m.session;
            }
        }
        this.emit('welcome', m);
        if (this.state !== 'connected' && conn.kind === 'websocket') {
            this._connected(conn);
        }
    }

    _onMessage(m, conn, stream) {
        if (conn === this._probeConn) {
            if (m.type === 'welcome') {
                this._adoptProbe(conn, m);
            }
            return;
        }
        if (conn !== this._conn || !m || typeof m !== 'object') {
            return;
        }
        this._touch(conn);
        this.emit('message', m);
        const sub = typeof m.doc === 'string' ? this.subs.get(m.doc) : undefined;
        switch (m.type) {
        case 'welcome':
            if (stream && sub) {
                sub.session = m.session;
            }
            this._onWelcome(m, conn);
            break;
        case 'subscribed':
            if (sub && sub.active) {
                sub._onSubscribed(m);
                this._flush();
                this._checkHeads(sub);
            }
            break;
        case 'delta':
            if (sub) {
                sub._onDelta(m);
                this._checkHeads(sub);
            }
            break;
        case 'ack':
            this._onAck(m);
            break;
        case 'nack':
            this._onNack(m);
            break;
        case 'presence':
            if (sub) {
                sub._onPresence(m);
            }
            break;
        case 'presence_snapshot':
            if (sub) {
                sub._onPresenceSnapshot(m);
            }
            break;
        case 'intent':
            if (sub) {
                sub.emit('intent', m);
            }
            this.emit('intent', m);
            break;
        case 'role':
            if (sub) {
                sub._setRole(m.role);
            }
            break;
        case 'resync':
            if (sub && sub.active) {
                sub._onResync(m);
            }
            break;
        case 'unsubscribed':
            if (sub) {
                sub._onUnsubscribed(m);
            }
            this.emit('unsubscribed', m);
            break;
        case 'error':
            if (m.doc === undefined && m.code === 'invalid'
                && /unknown message type "ping"/.test(m.message || '')) {
                break;                  // the answer to a liveness probe
            }
            if (sub) {
                sub._onError(m);
            }
            this.emit('error', m);
            break;
        default:
            break;
        }
    }
}

const Collab = { CollabClient, UnauthorizedError, Subscription, MemoryStorage, LocalStorageStorage, IndexedDBStorage, defaultStorage, mergePatch, fullJitter, tokenExpiry };
root.Collab = Collab;
root.CollabClient = CollabClient;
if (typeof module === 'object' && module && module.exports) {
    module.exports = Collab;
}
}(typeof globalThis !== 'undefined' ? globalThis : window));
