/*
 * collab.js: a small browser client for ngx_http_collab_module (wire protocol collab.v1).
 * Plain JavaScript, no dependencies, no build step.
 *
 *   const client = new CollabClient({ params: { user: 'alice' } });   // url defaults to /collab
 *   client.on('reset', ({ doc, seq, data }) => { ... });   // start over from a snapshot (data may be null)
 *   client.on('delta', (m) => { ... });                    // m = {doc, seq, id, user, ts, data}, in seq order
 *   client.on('status', (s) => { ... });                   // connection state, per-doc seq, pending count
 *   client.subscribe('demo');
 *   client.connect();
 *   client.sendDelta('demo', { op: 'add', text: 'hi' }).then(({ seq }) => ...).catch((err) => ...);
 *
 * What it does for you:
 *  - connects with new WebSocket(url, 'collab.v1'), reconnects with exponential backoff + jitter;
 *  - tracks the last seq and the epoch of every document and re-subscribes with {since, epoch}
 *    after a reconnect, so nothing acked is lost; when the server answers with a `state` (the log
 *    was lost or trimmed, or the epoch changed) it emits `reset` and starts from that snapshot;
 *  - delivers deltas strictly in seq order, drops duplicates, re-subscribes on a gap or `resync`;
 *  - gives every delta a unique id and keeps it until acked: after a reconnect unacked deltas are
 *    sent again with the same id (the server acks a retry with the original seq and stores it once);
 *    `rate_limited` / `unavailable` nacks are retried after retry_after_ms (or the backoff).
 *
 * Events (client.on(name, fn)): open, welcome, subscribed, reset, delta, ack, nack, intent,
 * presence, role, unsubscribed, resync, error, close, status, message (every server object).
 */
(function (root) {
    'use strict';

    var RETRYABLE_NACK = { rate_limited: true, unavailable: true };
    var FATAL_CLOSE = { 1008: true, 4401: true, 4403: true };   // no automatic reconnect

    function randomId(len) {
        var chars = 'abcdefghijklmnopqrstuvwxyz0123456789', out = '', i, bytes;
        if (root.crypto && root.crypto.getRandomValues) {
            bytes = new Uint8Array(len);
            root.crypto.getRandomValues(bytes);
            for (i = 0; i < len; i++) { out += chars[bytes[i] % chars.length]; }
        } else {
            for (i = 0; i < len; i++) { out += chars[Math.floor(Math.random() * chars.length)]; }
        }
        return out;
    }

    function defaultUrl() {
        var loc = root.location;
        return (loc.protocol === 'https:' ? 'wss:' : 'ws:') + '//' + loc.host + '/collab';
    }

    function CollabClient(opts) {
        opts = opts || {};
        this.url = opts.url || defaultUrl();
        this.params = opts.params || {};            // added to the query string, e.g. {user: 'alice'}
        this.token = opts.token || null;            // sent as {type:'auth'} first when given
        this.protocol = opts.protocol || 'collab.v1';
        this.minBackoff = opts.minBackoff || 250;   // ms
        this.maxBackoff = opts.maxBackoff || 10000; // ms
        this.maxInflightLosses = opts.maxInflightLosses || 10;  // reconnects a delta may survive unacked
        this.WebSocket = opts.WebSocket || root.WebSocket;

        this.ws = null;
        this.state = 'idle';                        // idle | connecting | open | reconnecting | closed
        this.session = null;
        this.user = null;
        this.heartbeat = null;
        this.docs = {};                             // doc -> {seq, epoch, role, subscribed, wanted}
        this.pending = new Map();                   // id -> unacked delta (insertion order = send order)
        this.handlers = {};
        this.attempt = 0;
        this.reconnectTimer = null;
        this.retryAt = null;
        this.stopped = false;
        this.clientId = randomId(12);
        this.counter = 0;
    }

    CollabClient.prototype.on = function (name, fn) {
        (this.handlers[name] = this.handlers[name] || []).push(fn);
        return this;
    };

    CollabClient.prototype.off = function (name, fn) {
        var list = this.handlers[name] || [];
        this.handlers[name] = list.filter(function (f) { return f !== fn; });
        return this;
    };

    CollabClient.prototype.emit = function (name, arg) {
        var list = (this.handlers[name] || []).slice(), i;
        for (i = 0; i < list.length; i++) {
            try { list[i].call(this, arg); } catch (e) { setTimeout(function () { throw e; }); }
        }
    };

    /* ---- connection -------------------------------------------------------------------- */

    CollabClient.prototype.connect = function () {
        var self = this, url = this.url, qs = [], k, ws;

        this.stopped = false;
        clearTimeout(this.reconnectTimer);
        this.reconnectTimer = null;
        this.retryAt = null;
        if (this.ws) { return this; }

        for (k in this.params) {
            if (Object.prototype.hasOwnProperty.call(this.params, k) && this.params[k] != null) {
                qs.push(encodeURIComponent(k) + '=' + encodeURIComponent(this.params[k]));
            }
        }
        if (qs.length) { url += (url.indexOf('?') < 0 ? '?' : '&') + qs.join('&'); }

        this.setState(this.attempt ? 'reconnecting' : 'connecting');
        ws = this.ws = new this.WebSocket(url, this.protocol);

        ws.onopen = function () {
            if (self.ws !== ws) { return; }
            self.setState('open');
            self.emit('open');
            if (self.token) { self.send({ type: 'auth', token: self.token }); }
            Object.keys(self.docs).forEach(function (doc) {
                if (self.docs[doc].wanted) { self.sendSubscribe(doc); }
            });
        };
        ws.onmessage = function (ev) {
            var m;
            if (self.ws !== ws) { return; }
            try { m = JSON.parse(ev.data); } catch (e) {
                self.emit('error', { code: 'invalid', message: 'server sent non-JSON: ' + e.message });
                return;
            }
            self.handle(m);
        };
        ws.onclose = function (ev) {
            if (self.ws !== ws) { return; }
            self.onClosed(ev.code, ev.reason);
        };
        ws.onerror = function () { /* onclose follows */ };
        return this;
    };

    /* Close for good (no reconnect). Unacked deltas stay queued until connect() again. */
    CollabClient.prototype.close = function () {
        this.stopped = true;
        clearTimeout(this.reconnectTimer);
        this.reconnectTimer = null;
        this.retryAt = null;
        if (this.ws) {
            var ws = this.ws;
            this.ws = null;
            try { ws.close(1000); } catch (e) { /* already closing */ }
            this.onClosed(1000, 'client closed');
        }
        this.setState('closed');
    };

    CollabClient.prototype.onClosed = function (code, reason) {
        var self = this, doc, delay;

        this.ws = null;
        for (doc in this.docs) { this.docs[doc].subscribed = false; }
        this.pending.forEach(function (p, id) {
            if (p.sent) {
                p.sent = false;
                if (++p.losses >= self.maxInflightLosses) {
                    self.fail(id, { code: 'unavailable', message: 'not acked after ' + p.losses + ' reconnects' });
                }
            }
        });
        this.emit('close', { code: code, reason: reason });

        if (this.stopped || FATAL_CLOSE[code]) {
            this.setState('closed');
            return;
        }
        delay = Math.min(this.maxBackoff, this.minBackoff * Math.pow(2, this.attempt));
        if (code === 4429) { delay = this.maxBackoff; }
        delay = Math.round(delay * (0.5 + Math.random() / 2));
        this.attempt++;
        this.retryAt = Date.now() + delay;
        this.setState('reconnecting');
        this.reconnectTimer = setTimeout(function () { self.connect(); }, delay);
    };

    CollabClient.prototype.setState = function (state) {
        this.state = state;
        this.emit('status', this.status());
    };

    CollabClient.prototype.status = function () {
        var docs = {}, doc, d;
        for (doc in this.docs) {
            d = this.docs[doc];
            docs[doc] = { seq: d.seq, epoch: d.epoch, role: d.role, subscribed: d.subscribed };
        }
        return {
            state: this.state, user: this.user, session: this.session, docs: docs,
            pending: this.pending.size,
            retryInMs: this.retryAt ? Math.max(0, this.retryAt - Date.now()) : null
        };
    };

    CollabClient.prototype.send = function (obj) {
        if (!this.ws || this.ws.readyState !== 1) { return false; }
        this.ws.send(JSON.stringify(obj));
        return true;
    };

    /* ---- documents ------------------------------------------------------------------- */

    CollabClient.prototype.subscribe = function (doc) {
        var d = this.docs[doc];
        if (!d) {
            d = this.docs[doc] = {
                seq: null, epoch: null, role: null, subscribed: false, wanted: true, retries: 0
            };
        }
        d.wanted = true;
        if (!d.subscribed) { this.sendSubscribe(doc); }
        return this;
    };

    CollabClient.prototype.unsubscribe = function (doc) {
        var d = this.docs[doc];
        if (!d) { return this; }
        d.wanted = false;
        d.subscribed = false;
        this.send({ type: 'unsubscribe', doc: doc });
        this.emit('status', this.status());
        return this;
    };

    CollabClient.prototype.sendSubscribe = function (doc) {
        var d = this.docs[doc], msg = { type: 'subscribe', doc: doc };
        if (d.seq !== null) {
            msg.since = d.seq;
            if (d.epoch !== null) { msg.epoch = d.epoch; }
        }
        d.subscribed = false;
        this.send(msg);
    };

    CollabClient.prototype.seq = function (doc) {
        return this.docs[doc] ? this.docs[doc].seq : null;
    };

    /* ---- outgoing -------------------------------------------------------------------- */

    /*
     * Send a change. Resolves with {doc, seq, id} once the server stored it, rejects with
     * {code, message} on a final nack ({code: 'conflict', message, seq} when the document moved
     * past opts.base under collab_conflict reject-stale: rebase on seq and send again). opts.id: your own op id (1..128 chars); opts.base: the seq
     * the change was made on (default: the last seq seen).
     */
    CollabClient.prototype.sendDelta = function (doc, data, opts) {
        var self = this, d = this.docs[doc], p;
        opts = opts || {};
        if (!d || !d.wanted) {
            return Promise.reject({ code: 'invalid', message: 'not subscribed to ' + doc });
        }
        p = {
            doc: doc, data: data,
            id: opts.id || this.newId(),
            base: opts.base !== undefined ? opts.base : d.seq,
            sent: false, losses: 0, retries: 0, timer: null
        };
        if (this.pending.has(p.id)) {
            return Promise.reject({ code: 'invalid', message: 'duplicate pending id ' + p.id });
        }
        var promise = new Promise(function (resolve, reject) { p.resolve = resolve; p.reject = reject; });
        this.pending.set(p.id, p);
        this.flush(doc);
        this.emit('status', this.status());
        return promise;
    };

    /* a fresh op id, unique across clients; pass it as opts.id to know it before sending */
    CollabClient.prototype.newId = function () {
        return this.clientId + '-' + (++this.counter);
    };

    CollabClient.prototype.intent = function (doc, data) {
        return this.send({ type: 'intent', doc: doc, data: data });
    };

    CollabClient.prototype.presence = function (doc, data) {
        return this.send({ type: 'presence', doc: doc, data: data });
    };

    /* send every queued delta of doc (in order) while connected and subscribed */
    CollabClient.prototype.flush = function (doc) {
        var self = this, d = this.docs[doc];
        if (!d || !d.subscribed) { return; }
        this.pending.forEach(function (p) {
            if (p.doc !== doc || p.sent || p.timer) { return; }
            var msg = { type: 'delta', doc: doc, id: p.id, data: p.data };
            if (p.base !== null && p.base !== undefined) { msg.base = p.base; }
            if (self.send(msg)) { p.sent = true; }
        });
    };

    CollabClient.prototype.fail = function (id, err) {
        var p = this.pending.get(id);
        if (!p) { return; }
        clearTimeout(p.timer);
        this.pending.delete(id);
        err.id = id;
        err.doc = p.doc;
        p.reject(err);
    };

    /* ---- incoming -------------------------------------------------------------------- */

    CollabClient.prototype.handle = function (m) {
        var self = this, d = m.doc !== undefined ? this.docs[m.doc] : null, p, delay, hasState;

        this.emit('message', m);

        switch (m.type) {
        case 'welcome':
            this.session = m.session;
            this.user = m.user;
            this.heartbeat = m.heartbeat;
            this.attempt = 0;                       // a working connection resets the backoff
            this.emit('welcome', m);
            break;

        case 'subscribed':
            if (!d || !d.wanted) { return; }
            hasState = m.state !== undefined && m.state !== null;
            if (!hasState && d.epoch !== null && m.epoch !== d.epoch) {
                /* another log without a snapshot: never continue from our seq, start over */
                d.seq = null;
                d.epoch = null;
                this.sendSubscribe(m.doc);
                return;
            }
            d.epoch = m.epoch;
            d.role = m.role;
            d.subscribed = true;
            d.retries = 0;
            if (hasState) {
                d.seq = m.state.seq;
                this.emit('reset', { doc: m.doc, seq: m.state.seq, data: m.state.data, epoch: m.epoch });
            } else if (d.seq === null) {
                /* no snapshot and nothing to continue from: take deltas from whatever comes */
                this.emit('reset', { doc: m.doc, seq: 0, data: null, epoch: m.epoch });
            }
            this.emit('subscribed', m);
            this.flush(m.doc);
            this.emit('status', this.status());
            break;

        case 'delta':
            if (!d || !d.subscribed) { return; }
            if (d.seq !== null && m.seq <= d.seq) { return; }        // duplicate
            if (d.seq !== null && m.seq !== d.seq + 1) {             // gap: replay from d.seq
                this.emit('resync', { doc: m.doc, seq: d.seq, reason: 'gap' });
                this.sendSubscribe(m.doc);
                return;
            }
            d.seq = m.seq;
            this.emit('delta', m);
            this.emit('status', this.status());
            break;

        case 'ack':
            p = this.pending.get(m.id);
            if (p) {
                this.pending.delete(m.id);
                clearTimeout(p.timer);
                p.resolve({ doc: m.doc, seq: m.seq, id: m.id });
            }
            this.emit('ack', m);
            this.emit('status', this.status());
            break;

        case 'nack':
            p = this.pending.get(m.id);
            if (p && RETRYABLE_NACK[m.code]) {
                p.sent = false;
                delay = m.retry_after_ms ||
                        Math.min(this.maxBackoff, this.minBackoff * Math.pow(2, p.retries));
                p.retries++;
                p.timer = setTimeout(function () { p.timer = null; self.flush(p.doc); }, delay);
            } else if (p) {
                /* conflict (collab_conflict reject-stale): seq is the head to rebase on */
                this.fail(m.id, m.code === 'conflict'
                          ? { code: m.code, message: m.message, seq: m.seq }
                          : { code: m.code, message: m.message });
            }
            this.emit('nack', m);
            this.emit('status', this.status());
            break;

        case 'resync':
            if (d && d.wanted) {
                this.emit('resync', m);
                this.sendSubscribe(m.doc);
            }
            break;

        case 'unsubscribed':
            if (d) {
                d.wanted = false;
                d.subscribed = false;
                this.pending.forEach(function (q, id) {
                    if (q.doc === m.doc) {
                        self.fail(id, { code: 'forbidden', message: 'unsubscribed: ' + m.reason });
                    }
                });
            }
            this.emit('unsubscribed', m);
            this.emit('status', this.status());
            break;

        case 'role':
            if (d) { d.role = m.role; }
            this.emit('role', m);
            this.emit('status', this.status());
            break;

        case 'error':
            /* a subscribe that failed because the backend is down: try again later */
            if (d && d.wanted && !d.subscribed && m.code === 'unavailable') {
                delay = Math.min(this.maxBackoff, this.minBackoff * Math.pow(2, d.retries++));
                setTimeout(function () {
                    if (d.wanted && !d.subscribed && self.ws) { self.sendSubscribe(m.doc); }
                }, delay);
            }
            this.emit('error', m);
            break;

        case 'intent':
        case 'presence':
            this.emit(m.type, m);
            break;

        default:
            break;
        }
    };

    root.CollabClient = CollabClient;
    if (typeof module !== 'undefined' && module.exports) { module.exports = CollabClient; }
}(typeof window !== 'undefined' ? window : globalThis));
