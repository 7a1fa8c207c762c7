// Shared by the tests: they run against a real nginx + Redis started by t/111-js-client.t,
// which passes the endpoints in the environment:
//   COLLAB_HTTP      http://127.0.0.1:PORT (locations: see t/111-js-client.t)
//   COLLAB_JWT_KEY   the HS256 secret of the /jwt location (a file)

import net from 'node:net';
import crypto from 'node:crypto';
import fs from 'node:fs';
import WebSocket from 'ws';
import { CollabClient, MemoryStorage } from '../src/node.js';

export const HTTP = process.env.COLLAB_HTTP;
if (!HTTP) {
    throw new Error('COLLAB_HTTP is not set: run these tests through t/111-js-client.t');
}
export const PORT = Number(new URL(HTTP).port);

let n = 0;
export function docName(tag) {
    return `js-${tag}-${process.pid}-${++n}`;
}

// a client with test-friendly defaults: the ws package, fast backoff, memory storage
export function client(opts = {}) {
    const c = new CollabClient({
        url: HTTP + (opts.path || '/collab'),
        WebSocket,
        storage: opts.storage || new MemoryStorage(),
        minBackoff: 50,
        maxBackoff: 400,
        connectTimeout: 5000,
        ...opts,
    });
    c.log = [];
    c.on('state', (s) => c.log.push(s));
    return c;
}

// resolves with the first `event` of `em` for which pred(arg) is true
export function waitFor(em, event, pred = () => true, timeout = 10000) {
    return new Promise((resolve, reject) => {
        const t = setTimeout(() => {
            off();
            reject(new Error(`timed out after ${timeout} ms waiting for "${event}"`));
        }, timeout);
        const off = em.on(event, (arg) => {
            if (pred(arg)) {
                clearTimeout(t);
                off();
                resolve(arg);
            }
        });
    });
}

// polls fn() until it returns a truthy value
export async function until(what, fn, timeout = 10000) {
    const deadline = Date.now() + timeout;
    for (;;) {
        const v = await fn();
        if (v) {
            return v;
        }
        if (Date.now() > deadline) {
            throw new Error(`timed out after ${timeout} ms waiting for ${what}`);
        }
        await new Promise((r) => setTimeout(r, 25));
    }
}

export const connected = (c, timeout) =>
    c.state === 'connected' ? Promise.resolve() : waitFor(c, 'state', (s) => s.new === 'connected',
                                                          timeout);

// the stored log of a document, read over HTTP (view=deltas)
export async function storedDeltas(doc, path = '/collab') {
    const r = await fetch(`${HTTP}${path}?doc=${encodeURIComponent(doc)}&view=deltas&since=0`);
    const j = await r.json();
    return j.deltas;
}

// HS256 JWT signed with the secret of the /jwt location
export function jwt(claims) {
    const key = fs.readFileSync(process.env.COLLAB_JWT_KEY);
    const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
    const input = b64({ alg: 'HS256', typ: 'JWT' }) + '.' + b64(claims);
    return input + '.' + crypto.createHmac('sha256', key).update(input).digest('base64url');
}

// A TCP proxy in front of nginx, to cut connections or make them go silent:
//   cut()            destroy every connection (the server sees a drop, so does the client)
//   stall(on)        stop forwarding in both directions on the current connections
//   refuse(on)       close new connections at once
//   muteDown()       forward client -> server only (acks never reach the client)
//   noUpgrade = true answer a WebSocket upgrade with 403 (a proxy that blocks WebSocket)
export async function proxy() {
    const conns = new Set();
    const p = { refused: false, noUpgrade: false, upgradesRefused: 0, accepted: 0 };
    const server = net.createServer((c) => {
        p.accepted++;
        if (p.refused) {
            c.destroy();
            return;
        }
        const u = net.connect(PORT, '127.0.0.1');
        const pair = { c, u, stalled: false, muted: false, first: true };
        conns.add(pair);
        c.on('data', (d) => {
            if (pair.first && p.noUpgrade && /^upgrade:\s*websocket/im.test(d.toString('latin1'))) {
                p.upgradesRefused++;
                c.end('HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n');
                u.destroy();
                return;
            }
            pair.first = false;
            if (!pair.stalled) u.write(d);
        });
        u.on('data', (d) => { if (!pair.stalled && !pair.muted) c.write(d); });
        const end = () => { c.destroy(); u.destroy(); conns.delete(pair); };
        c.on('close', end);
        u.on('close', end);
        c.on('error', end);
        u.on('error', end);
    });
    await new Promise((r) => server.listen(0, '127.0.0.1', r));
    p.url = `http://127.0.0.1:${server.address().port}`;
    p.cut = () => { for (const x of conns) { x.c.destroy(); x.u.destroy(); } };
    p.stall = () => { for (const x of conns) x.stalled = true; };
    p.muteDown = () => { for (const x of conns) x.muted = true; };
    p.refuse = (on) => { p.refused = on; };
    p.close = () => { p.cut(); server.close(); };
    return p;
}

// one Redis command (RESP) to the test's redis-server (COLLAB_REDIS_PORT)
export function redis(...args) {
    return new Promise((resolve, reject) => {
        const s = net.connect(Number(process.env.COLLAB_REDIS_PORT), '127.0.0.1');
        let buf = '';
        s.on('data', (d) => {
            buf += d.toString();
            if (buf.endsWith('\r\n')) {
                s.end();
                resolve(buf);
            }
        });
        s.on('error', reject);
        s.write(`*${args.length}\r\n` + args.map((a) => `$${Buffer.byteLength(String(a))}\r\n${a}\r\n`).join(''));
    });
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
