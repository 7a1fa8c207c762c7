// The fallback transport: one Server-Sent Events stream per document (read with fetch, so
// that the token goes in an Authorization header and the server's `: ping` comments are
// seen), and POST for what the client sends. Presence and intents cannot be sent over POST
// (the protocol refuses them there): setPresence() is kept until a WebSocket is back.

export class SseTransport {
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
