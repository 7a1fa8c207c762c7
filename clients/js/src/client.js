// CollabClient: one connection to a collab.v1 endpoint (WebSocket, or SSE + POST), any
// number of documents, a persistent outbox. See README.md for the API.

import { Emitter } from './emitter.js';
import { fullJitter, tokenExpiry } from './backoff.js';
import { defaultStorage } from './storage.js';
import { mergePatch } from './merge.js';
import { Subscription } from './subscription.js';
import { WsTransport } from './transport-ws.js';
import { SseTransport } from './transport-sse.js';

const RETRY_NACKS = ['rate_limited', 'unavailable'];
const DOC_RE = /^[A-Za-z0-9._:-]{1,128}$/;
const MAX_TIMER = 0x7fffffff;

export class UnauthorizedError extends Error {
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

export class CollabClient extends Emitter {
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
