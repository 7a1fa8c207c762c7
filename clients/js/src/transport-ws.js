// The WebSocket transport: one socket, every document, both directions.

const OPEN = 1;

export class WsTransport {
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
