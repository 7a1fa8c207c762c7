// Browser test of the sticky-notes board (www/index.html, www/board.js, www/collab.js),
// run by t/99-browser.t against /board/collab (JWT, json-merge, roles from the demo tokens).
//
//   node board.mjs --url http://127.0.0.1:PORT/ --board NAME --out DIR [--chromium PATH]
//                  [--timeout-ms 30000]
//
// Alice (editor) and Carol (viewer) open the same board:
//   1. both connect; each page shows its role; Carol's page is read-only (no add button,
//      read-only notes, a banner) and each sees the other in "who is here";
//   2. Alice adds a note and types into it: Carol sees it; Carol's cursor shows on Alice's page;
//   3. Carol cannot edit: typing into the note changes nothing, and a delta sent through the
//      client anyway is refused by the server (nack forbidden) and reaches nobody;
//   4. Alice goes offline: the indicator says so, a note added offline waits in the outbox
//      ("1 change to sync"); back online, the client reconnects at once and Carol gets it;
//   5. Bob's WebSocket upgrades are refused by nginx (a cookie the test config checks): his
//      page falls back to SSE + POST, says so, and edits with the others;
//   6. (--redis-pid) Redis frozen: a note Alice adds is not acked; she reloads the page; the
//      outbox (IndexedDB) sends it again after the reload; Redis thawed: it is stored once;
//   7. a screenshot of each page into --out (board-alice.png, board-carol.png).
// Output: as demo.mjs (check:, screenshot:, log: lines).

import { parseArgs } from 'node:util';
import path from 'node:path';
import fs from 'node:fs';
import { chromium } from 'playwright-core';

const { values: opt } = parseArgs({
    options: {
        url: { type: 'string' },
        board: { type: 'string', default: 'test' },
        out: { type: 'string', default: '.' },
        chromium: { type: 'string', default: '/usr/bin/chromium' },
        'timeout-ms': { type: 'string', default: '30000' },
        'redis-pid': { type: 'string' },
    },
});
if (!opt.url) {
    console.error('usage: node board.mjs --url http://127.0.0.1:PORT/ --board NAME --out DIR');
    process.exit(2);
}

const T0 = Date.now();
const log = (...a) => console.log('log:', ((Date.now() - T0) / 1000).toFixed(2) + 's', ...a);
let failures = 0;
function oneLine(x) {
    return (typeof x === 'string' ? x : JSON.stringify(x)).replace(/\s*\n\s*/g, ' ').slice(0, 2000);
}
function check(ok, name, detail) {
    if (ok) {
        console.log(`check: 1 board: ${name}`);
    } else {
        failures++;
        console.log(`check: 0 board: ${name}` + (detail !== undefined ? ' -- ' + oneLine(detail) : ''));
    }
    return ok;
}

function canon(x) {
    if (Array.isArray(x)) { return x.map(canon); }
    if (x && typeof x === 'object') {
        return Object.fromEntries(Object.keys(x).sort().map((k) => [k, canon(x[k])]));
    }
    return x;
}
const same = (a, b) => JSON.stringify(canon(a)) === JSON.stringify(canon(b));

let browser = null;
const pages = {};
const watchdog = setTimeout(async () => {
    console.log(`check: 0 board: finished within ${opt['timeout-ms']} ms`);
    await shots('timeout');
    try { browser && browser.process && browser.process()?.kill('SIGKILL'); } catch { /* gone */ }
    process.exit(1);
}, Number(opt['timeout-ms']));

async function shots(tag) {
    for (const [name, t] of Object.entries(pages)) {
        const file = path.resolve(opt.out, `board-${name}${tag ? '-' + tag : ''}.png`);
        try {
            await t.page.screenshot({ path: file });
            console.log('screenshot:', file);
        } catch { /* the page is gone */ }
    }
}

async function until(what, fn, timeout = 10000) {
    const deadline = Date.now() + timeout;
    let last;
    for (;;) {
        last = await fn();
        if (last && last.ok !== false) {
            return last;
        }
        if (Date.now() > deadline) {
            throw new Error(`timed out after ${timeout} ms waiting for ${what}; last: ${oneLine(last && last.detail !== undefined ? last.detail : last)}`);
        }
        await new Promise((r) => setTimeout(r, 50));
    }
}

async function open(name, cookies) {
    const context = await browser.newContext({ viewport: { width: 1280, height: 760 } });
    if (cookies) {
        await context.addCookies(cookies);
    }
    const page = await context.newPage();
    page.setDefaultTimeout(10000);
    const t = { name, context, page, errors: [] };
    page.on('pageerror', (e) => t.errors.push('pageerror: ' + e.message));
    page.on('console', (m) => {
        if (m.type() !== 'error') { return; }
        // offline on purpose (step 4): the browser logs the failed connection attempts
        if (/ERR_INTERNET_DISCONNECTED/.test(m.text())) { return; }
        // bob's refused upgrades (step 5)
        if (t.name === 'bob' && /WebSocket connection to .* failed/.test(m.text())) { return; }
        t.errors.push('console: ' + m.text());
    });
    pages[name] = t;
    // focus changes, for the diagnosis of a failed typing step
    await page.addInitScript(() => {
        window.__focus = [];
        document.addEventListener('focusout', (e) => window.__focus.push(
            [Math.round(performance.now()), 'out', e.target.className,
             e.relatedTarget ? e.relatedTarget.className || e.relatedTarget.tagName : null]), true);
    });
    await page.goto(`${opt.url}?as=${name}&board=${encodeURIComponent(opt.board)}`);
    return t;
}

// what a person sees
function view(t) {
    return t.page.evaluate(() => {
        const $ = (s) => document.querySelector(s);
        return {
            conn: $('#conn').className,
            connText: $('#conn-text').textContent,
            role: $('#role').textContent,
            readonly: document.body.classList.contains('readonly'),
            addDisabled: $('#add-note').disabled,
            banner: $('#banner').hidden ? null : $('#banner').textContent,
            pending: $('#pending').hidden ? null : $('#pending').textContent,
            who: [...document.querySelectorAll('#who li')].map((li) => li.dataset.user),
            cursors: [...document.querySelectorAll('.cursor span')].map((s) => s.textContent),
            outbox: window.board ? window.board.client.outbox.map((e) => e.id) : [],
            notes: [...document.querySelectorAll('.note')].map((n) => ({
                id: n.dataset.id, by: n.querySelector('.note-author').textContent,
                text: n.querySelector('textarea').value,
                readOnly: n.querySelector('textarea').readOnly,
            })),
        };
    });
}

async function main() {
    fs.mkdirSync(opt.out, { recursive: true });
    browser = await chromium.launch({
        executablePath: opt.chromium, headless: true, timeout: 20000,
        args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
               '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
    const [alice, carol] = await Promise.all([open('alice'), open('carol')]);

    // ---- 1. connected, roles, who is here
    const ready = async (t, role) => until(`${t.name} connected as ${role}`, async () => {
        const v = await view(t);
        return { ok: /\bconnected\b/.test(v.conn) && v.role === role, detail: v, v };
    });
    const [va, vc] = (await Promise.all([ready(alice, 'Editor'), ready(carol, 'Viewer')])).map((r) => r.v);
    log('connected:', va.connText, '/', vc.connText);
    check(/Live/.test(va.connText) && /Live/.test(vc.connText), 'both pages say they are live', [va.connText, vc.connText]);
    check(!va.readonly && !va.addDisabled && va.banner === null, 'alice (editor) can edit', va);
    check(vc.readonly && vc.addDisabled && /viewer/.test(vc.banner || ''), 'carol (viewer) gets a read-only page with a banner', vc);
    await until('each sees the other', async () => {
        const [a, c] = await Promise.all([view(alice), view(carol)]);
        return { ok: a.who.includes('carol') && c.who.includes('alice'), detail: [a.who, c.who] };
    });
    check(true, 'who is here: alice sees carol and carol sees alice');

    // ---- 2. alice adds a note, carol sees it; carol's cursor on alice's page
    await alice.page.click('#add-note');
    const ta = alice.page.locator('.note textarea').first();
    await ta.waitFor();
    await ta.pressSequentially('Hello from Alice', { delay: 10 });
    const seen = await until('carol sees the note', async () => {
        const v = await view(carol);
        return { ok: v.notes.length === 1 && v.notes[0].text === 'Hello from Alice',
                 detail: [v.notes, await alice.page.evaluate(() => window.__focus)], v };
    });
    check(seen.v.notes[0].by === 'Alice', 'carol sees alice\'s note, with its author', seen.v.notes);
    await carol.page.mouse.move(600, 500);
    await carol.page.mouse.move(640, 520, { steps: 3 });
    await until('carol\'s cursor on alice\'s page', async () => {
        const v = await view(alice);
        return { ok: v.cursors.includes('Carol'), detail: v.cursors };
    });
    check(true, 'live cursor: alice sees carol\'s cursor');

    // ---- 3. carol cannot edit
    const note = seen.v.notes[0];
    check(note.readOnly, 'carol\'s copy of the note is read-only', note);
    await carol.page.locator('.note textarea').first().click();
    await carol.page.keyboard.type('hacked');
    const vc3 = await view(carol);
    check(vc3.notes[0].text === 'Hello from Alice', 'typing into it changes nothing', vc3.notes);
    const refused = await carol.page.evaluate(() => window.board.client
        .send(window.board.doc, { notes: { hack: { text: 'by carol', x: 0, y: 0 } } })
        .then((r) => ({ stored: r }), (e) => ({ code: e.code, message: e.message })));
    check(refused.code === 'forbidden', 'a delta sent anyway is refused by the server (nack forbidden)', refused);
    await alice.page.waitForTimeout(300);
    const va3 = await view(alice);
    check(va3.notes.length === 1 && !va3.notes.some((n) => n.id === 'hack'), 'alice never sees it', va3.notes);

    // ---- 4. offline: indicator, outbox, back online
    await alice.context.setOffline(true);
    const off = await until('alice shows offline', async () => {
        const v = await view(alice);
        return { ok: /offline/.test(v.conn) && /Offline/.test(v.connText), detail: v, v };
    });
    log('offline:', off.v.connText);
    check(true, 'alice\'s page says it is offline');
    await alice.page.click('#add-note');
    const pend = await until('a pending change', async () => {
        const v = await view(alice);
        return { ok: v.notes.length === 2 && /^\d+ changes? to sync$/.test(v.pending || ''), detail: v, v };
    });
    check(true, `a note added offline shows at once and waits ("${pend.v.pending}")`);
    await alice.context.setOffline(false);
    await until('carol gets the offline note', async () => {
        const [a, c] = await Promise.all([view(alice), view(carol)]);
        return { ok: c.notes.length === 2 && a.pending === null && /\bconnected\b/.test(a.conn), detail: [a.conn, a.pending, c.notes.length] };
    }, 15000);
    check(true, 'back online: alice reconnects, the note is sent and carol gets it');
    await alice.page.locator('.note textarea').last().fill('Made offline, synced later');
    await alice.page.mouse.move(900, 560);
    await alice.page.mouse.move(920, 580, { steps: 3 });
    await until('carol sees the text', async () => {
        const v = await view(carol);
        return { ok: v.notes.some((n) => n.text === 'Made offline, synced later') && v.cursors.includes('Alice'), detail: v };
    });
    await alice.page.locator('.note textarea').last().blur();

    // ---- 5. bob: WebSocket refused by nginx, SSE + POST
    const host = new URL(opt.url).hostname;
    const bob = await open('bob', [{ name: 'nows', value: '1', domain: host, path: '/' }]);
    const vb = (await until('bob connected over SSE', async () => {
        const v = await view(bob);
        return { ok: /\bconnected\b/.test(v.conn) && v.notes.length === 2, detail: v, v };
    }, 15000)).v;
    check(/SSE \+ POST/.test(vb.connText), `bob's page says how it is connected ("${vb.connText}")`, vb.connText);
    await bob.page.evaluate(() => window.board.client.send(window.board.doc, { notes: { sse: {
        x: 60, y: 420, color: '#e5dbff', text: 'Sent over POST', by: 'Bob', z: Date.now() } } }));
    await until('alice and carol see bob\'s note', async () => {
        const [a, c] = await Promise.all([view(alice), view(carol)]);
        return { ok: [a, c].every((v) => v.notes.some((n) => n.text === 'Sent over POST')), detail: [a.notes, c.notes] };
    });
    check(true, 'bob\'s note (POST) reaches alice and carol; theirs reach bob over SSE');

    // concurrent edits from alice (WebSocket) and bob (POST): every page converges on the
    // server's state
    const burst = (t, who) => t.page.evaluate((w) => {
        const b = window.board;
        const all = [];
        for (let i = 0; i < 5; i++) {
            all.push(b.client.send(b.doc, { notes: { sse: { text: `${w} ${i}` },
                                                     [`${w}${i}`]: { x: 20 + i * 40, y: 650, text: w, by: w } } }));
        }
        return Promise.all(all).then(() => true);
    }, who);
    await Promise.all([burst(alice, 'alice'), burst(bob, 'bob')]);
    const stateOf = (t) => t.page.evaluate(() => JSON.stringify(window.board.sub.state));
    const server = await alice.page.evaluate(async () => {
        const r = await fetch(`/board/collab?doc=${window.board.doc}&view=state`,
                              { headers: { Authorization: 'Bearer ' + window.DEMO_USERS.alice.token } });
        return (await r.json()).data;
    });
    const conv = await until('the three pages converge', async () => {
        const st = await Promise.all([alice, bob, carol].map(stateOf));
        return { ok: st.every((x) => same(JSON.parse(x), server)),
                 detail: st.map((x) => x.length), st };
    });
    const parsed = conv.st.map((x) => JSON.parse(x));
    check(parsed.every((p) => same(p, parsed[0])) && same(parsed[0], server)
          && Object.keys(server.notes).filter((k) => /^(alice|bob)\d$/.test(k)).length === 10,
          'concurrent edits (WebSocket and POST): all pages show the server\'s state, 10 new notes',
          { server: Object.keys(server.notes), pages: parsed.map((p) => Object.keys(p.notes).length) });
    await Promise.all([alice, bob].map((t) => t.page.evaluate(() => {
        const b = window.board;
        const p = { notes: {} };
        for (let i = 0; i < 5; i++) { p.notes['alice' + i] = null; p.notes['bob' + i] = null; }
        p.notes.sse = { text: 'Sent over POST' };
        return b.client.send(b.doc, p);
    })));
    await bob.context.close();
    delete pages.bob;

    // ---- 6. a reload with an unacked note: sent again after it, stored once
    if (opt['redis-pid']) {
        const pid = Number(opt['redis-pid']);
        process.kill(pid, 'SIGSTOP');
        let thawed = false;
        try {
            await alice.page.evaluate(() => { window.board.client.send(window.board.doc, { notes: { rl: {
                x: 560, y: 420, color: '#ffe8cc', text: 'Sent before a reload', by: 'Alice', z: Date.now() } } }); });
            const before = await until('the note waits for its ack', async () => {
                const v = await view(alice);
                return { ok: v.outbox.length === 1 && v.pending !== null, detail: v, v };
            });
            await alice.page.reload();
            const after = await until('the reloaded page has it in its outbox', async () => {
                const v = await view(alice).catch(() => null);
                return { ok: !!v && v.outbox.length === 1, detail: v, v };
            });
            check(after.v.outbox[0] === before.v.outbox[0], 'after the reload the outbox holds the same delta (same id)',
                  [before.v.outbox, after.v.outbox]);
            process.kill(pid, 'SIGCONT');
            thawed = true;
            await until('carol sees it and alice has nothing pending', async () => {
                const [a, c] = await Promise.all([view(alice), view(carol)]);
                return { ok: c.notes.some((n) => n.text === 'Sent before a reload') && a.outbox.length === 0
                         && a.pending === null, detail: [a.outbox, a.pending, c.notes.length] };
            }, 20000);
            const stored = await alice.page.evaluate(async () => {
                const b = window.board;
                const r = await fetch(`/board/collab?doc=${b.doc}&view=deltas&since=0`,
                                      { headers: { Authorization: 'Bearer ' + window.DEMO_USERS.alice.token } });
                return (await r.json()).deltas.map((d) => d.id);
            });
            const n = stored.filter((id) => id === before.v.outbox[0]).length;
            check(n === 1, `a note sent before a reload and again after it is stored once (${n})`, stored);
        } finally {
            if (!thawed) { process.kill(pid, 'SIGCONT'); }
        }
    }

    // ---- 5. a fuller board for the screenshot (docs/board.png, see t/99-browser.t)
    await alice.page.evaluate(() => {
        const b = window.board;
        const add = (id, x, y, color, text) => b.client.send(b.doc, { notes: { [id]: {
            x, y, color, text, by: 'Alice', z: Date.now() } } });
        add('s1', 540, 60, '#d3f9d8', 'Demo for the customer on Friday');
        add('s2', 800, 110, '#d0ebff', 'Live cursors and who is here: presence');
        add('s3', 300, 330, '#ffdeeb', 'Viewers see everything, change nothing');
        b.client.send(b.doc, { notes: { sse: { x: 820, y: 380 } } });
    });
    await until('carol has the new notes', async () => (await view(carol)).notes.length >= 5);
    await carol.page.mouse.move(700, 470);
    await carol.page.mouse.move(720, 490, { steps: 3 });
    await alice.page.mouse.move(1000, 560);
    await alice.page.mouse.move(1020, 580, { steps: 3 });
    await until('cursors on both pages', async () => {
        const [a, c] = await Promise.all([view(alice), view(carol)]);
        return { ok: a.cursors.includes('Carol') && c.cursors.includes('Alice'), detail: [a.cursors, c.cursors] };
    });

    await shots('');
    for (const t of [alice, carol]) {
        check(t.errors.length === 0, `${t.name}: no JavaScript or console errors`, t.errors);
    }
}

let rc = 0;
try {
    await main();
    rc = failures ? 1 : 0;
} catch (e) {
    console.log(`check: 0 board: the browser run completed -- ${oneLine(e && e.stack || String(e))}`);
    await shots('failed');
    rc = failures ? 1 : 2;
} finally {
    clearTimeout(watchdog);
    if (browser) { await browser.close().catch(() => {}); }
    log('done:', failures, 'failed checks');
}
process.exit(rc);
