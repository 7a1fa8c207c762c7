// Browser test of the demo page (www/index.html + www/collab.js), run by t/99-browser.t.
//
//   node demo.mjs --url http://127.0.0.1:PORT/ --doc DOC --out DIR [--nginx-pid PID]
//                 [--chromium /usr/bin/chromium] [--timeout-ms 45000]
//
// Debian's chromium, driven by playwright-core (no browser download). Two browser contexts
// (alice and bob) on the same document:
//   1. both connect; alice types into the shared text while bob adds a note, then alice adds
//      a note: both pages must show the same deltas in the same (dense) seq order;
//   2. bob goes offline and nginx is reloaded (SIGHUP: every WebSocket is closed with 1001);
//      alice reconnects and edits while bob is away; bob comes back and must resume with
//      {since, epoch} (no state, no replay from scratch) and catch up;
//   3. bob's tab is reloaded while alice adds a note: the fresh page subscribes without since,
//      replays the whole log and shows the same document; bob adds one more note;
//   4. a screenshot of each page into --out.
//
// Output, one line each (t/99-browser.t turns `check:` lines into tests):
//   check: 1 NAME | check: 0 NAME -- DETAIL
//   screenshot: PATH
//   result: {JSON}            final rows of the log table, epoch
//   log: ...                  progress
// Exit code 0 when every check passed, 1 otherwise, 2 when the run itself broke.

import { parseArgs } from 'node:util';
import path from 'node:path';
import fs from 'node:fs';
import { chromium } from 'playwright-core';

const { values: opt } = parseArgs({
    options: {
        url: { type: 'string' },
        doc: { type: 'string', default: 'browser-test' },
        out: { type: 'string', default: '.' },
        'nginx-pid': { type: 'string' },
        chromium: { type: 'string', default: '/usr/bin/chromium' },
        'timeout-ms': { type: 'string', default: '45000' },
    },
});
if (!opt.url) {
    console.error('usage: node demo.mjs --url http://127.0.0.1:PORT/ --doc DOC --out DIR');
    process.exit(2);
}

const T0 = Date.now();
const elapsed = () => ((Date.now() - T0) / 1000).toFixed(2) + 's';
const log = (...a) => console.log('log:', elapsed(), ...a);

let failures = 0;
function check(ok, name, detail) {
    if (ok) {
        console.log(`check: 1 ${name}`);
    } else {
        failures++;
        console.log(`check: 0 ${name}` + (detail !== undefined ? ' -- ' + oneLine(detail) : ''));
    }
    return ok;
}
function oneLine(x) {
    return (typeof x === 'string' ? x : JSON.stringify(x)).replace(/\s*\n\s*/g, ' ').slice(0, 2000);
}
const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

let browser = null;

// the whole run is bounded: on overrun, report, kill the browser and exit
const watchdog = setTimeout(async () => {
    console.log(`check: 0 finished within ${opt['timeout-ms']} ms -- stuck at ${elapsed()}`);
    try { browser && browser.process && browser.process()?.kill('SIGKILL'); } catch { /* gone */ }
    process.exit(1);
}, Number(opt['timeout-ms']));

// ---- one tab ------------------------------------------------------------------------------

class Tab {
    constructor(name, context, page) {
        this.name = name;
        this.context = context;
        this.page = page;
        this.sent = [];        // client messages (parsed) on every WebSocket of this tab
        this.received = [];    // server messages (parsed)
        this.sockets = 0;
        this.errors = [];      // page errors and console errors
        page.on('pageerror', (e) => this.errors.push('pageerror: ' + e.message));
        page.on('console', (m) => {
            if (m.type() !== 'error') { return; }
            const where = (m.location() && m.location().url) || '';
            if (/\/favicon\.ico$/.test(where)) { return; }   // the demo has no favicon
            // reconnect attempts while the context is offline (step 2) fail like this
            if (/WebSocket connection to .* failed: .*ERR_INTERNET_DISCONNECTED/.test(m.text())) { return; }
            // a reconnect that reaches an old worker of the nginx reload (step 2) is refused
            // 503 (docs/protocol.md) and retried: the browser logs the refusal
            if (/WebSocket connection to .* failed: .*Unexpected response code: 503/.test(m.text())) { return; }
            this.errors.push('console: ' + m.text() + (where ? ' (' + where + ')' : ''));
        });
        page.on('websocket', (ws) => {
            this.sockets++;
            const parse = (f) => { try { return JSON.parse(f.payload); } catch { return { raw: String(f.payload) }; } };
            ws.on('framesent', (f) => this.sent.push(parse(f)));
            ws.on('framereceived', (f) => this.received.push(parse(f)));
        });
    }

    get url() {
        return opt.url + '?doc=' + encodeURIComponent(opt.doc) + '&user=' + encodeURIComponent(this.name);
    }

    subscribes() { return this.sent.filter((m) => m.type === 'subscribe' && m.doc === opt.doc); }
    subscribeds() { return this.received.filter((m) => m.type === 'subscribed' && m.doc === opt.doc); }

    // what a person sees, read from the DOM
    async view() {
        return this.page.evaluate(() => {
            const $ = (id) => document.getElementById(id);
            const status = $('status').textContent;
            const field = (re) => { const m = status.match(re); return m ? m[1] : null; };
            return {
                state: $('status').className,
                status,
                user: field(/\buser (\S+)/),
                seq: field(/\bseq (\d+|-)/),
                epoch: field(/\bepoch (\S+)/),
                pending: Number(field(/\bpending (\d+)/)),
                text: $('text').value,
                textMeta: $('text-meta').textContent,
                problems: $('problems').textContent,
                notes: [...document.querySelectorAll('#notes li')].map((li) => ({
                    seq: li.querySelector('.seq').textContent,
                    user: li.querySelector('.user').textContent,
                    text: li.lastChild.textContent,
                })),
                // the table shows the newest first: turn it back into seq order
                rows: [...document.querySelectorAll('#log tr')].reverse().map((tr) => {
                    const c = [...tr.children].map((td) => td.textContent);
                    return { seq: Number(c[0]), user: c[1], op: c[2], data: c[3] };
                }),
            };
        });
    }

    async addNote(text) {
        await this.page.fill('#note', text);
        await this.page.click('#note-form button[type=submit]');
    }

    async type(text) {
        await this.page.locator('#text').pressSequentially(text, { delay: 15 });
    }
}

// poll until fn() returns a truthy value; throws with the last value on timeout
async function until(what, fn, timeout = 10000) {
    const deadline = Date.now() + timeout;
    let last;
    for (;;) {
        last = await fn();
        if (last && last.ok !== false) { return last; }
        if (Date.now() > deadline) {
            throw new Error(`timed out after ${timeout} ms waiting for ${what}; last: ${oneLine(last && last.detail !== undefined ? last.detail : last)}`);
        }
        await sleep(50);
    }
}

// a tab is connected when its status is "open" and it got `subscribed` number n (1-based)
async function connected(tab, n) {
    return until(`${tab.name} connected (subscribed #${n})`, async () => {
        const v = await tab.view();
        return { ok: v.state === 'connected' && tab.subscribeds().length >= n && v.epoch !== '-', detail: v.status, v };
    });
}

// both tabs show the same log of `count` deltas and have nothing pending
async function converged(tabs, count, timeout = 10000) {
    return until(`both tabs showing ${count} deltas`, async () => {
        const vs = await Promise.all(tabs.map((t) => t.view()));
        const ok = vs.every((v) => v.rows.length === count && v.pending === 0 && v.state === 'connected')
            && vs.every((v) => same(v.rows, vs[0].rows));
        return { ok, vs, detail: vs.map((v) => ({ status: v.status, rows: v.rows.length, last: v.rows.at(-1) })) };
    }, timeout).then((r) => r.vs);
}

// the checks every converged state must pass
function checkSame(step, vs, expect) {
    const [a, b] = vs;
    const seqs = a.rows.map((r) => r.seq);
    check(same(a.rows, b.rows), `${step}: both tabs show the same deltas in the same seq order`,
        { alice: a.rows, bob: b.rows });
    check(same(seqs, seqs.map((_, i) => i + 1)), `${step}: seq is dense from 1 (${seqs.length} deltas)`, seqs);
    check(a.text === expect.text && b.text === expect.text, `${step}: both show the shared text ${JSON.stringify(expect.text)}`,
        { alice: a.text, bob: b.text });
    check(a.textMeta === b.textMeta && /^seq \d+ by alice$/.test(a.textMeta), `${step}: same text origin (${a.textMeta})`,
        { alice: a.textMeta, bob: b.textMeta });
    check(same(a.notes, b.notes) && same(a.notes.map((n) => n.text), expect.notes),
        `${step}: both show the notes ${JSON.stringify(expect.notes)} in seq order`, { alice: a.notes, bob: b.notes });
    // the notes list agrees with the seq order of the `add` deltas
    const adds = a.rows.filter((r) => r.op === 'add').map((r) => '#' + r.seq);
    check(same(a.notes.map((n) => n.seq), adds), `${step}: notes are ordered by their delta's seq`, { notes: a.notes, adds });
    check(a.epoch === b.epoch && a.seq === String(seqs.length) && b.seq === String(seqs.length),
        `${step}: both at seq ${seqs.length} of one epoch`, { alice: a.status, bob: b.status });
    check(!a.problems && !b.problems, `${step}: no problem shown`, { alice: a.problems, bob: b.problems });
}

// ---- the run -------------------------------------------------------------------------------

async function main() {
    fs.mkdirSync(opt.out, { recursive: true });
    log('launching', opt.chromium);
    // launch() gives chromium a fresh --user-data-dir in $TMPDIR (the test's temp dir)
    // and adds --headless; contexts are separate profiles (cookies, sessionStorage)
    browser = await chromium.launch({
        executablePath: opt.chromium,
        headless: true,
        args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
               '--disable-background-networking', '--disable-component-update', '--disable-sync'],
        timeout: 20000,
    });
    log('chromium', browser.version());

    const tabs = await Promise.all(['alice', 'bob'].map(async (name) => {
        const context = await browser.newContext({ viewport: { width: 1100, height: 900 } });
        const page = await context.newPage();
        page.setDefaultTimeout(10000);
        return new Tab(name, context, page);
    }));
    const [alice, bob] = tabs;

    // ---- 1. connect, edit concurrently ---------------------------------------------------
    await Promise.all(tabs.map((t) => t.page.goto(t.url)));
    const v0 = await Promise.all(tabs.map((t) => connected(t, 1).then((r) => r.v)));
    log('connected:', v0.map((v) => v.status).join(' / '));
    check(v0[0].user === 'alice' && v0[1].user === 'bob', 'the server knows the tabs as alice and bob', v0.map((v) => v.status));
    check(v0[0].epoch === v0[1].epoch, 'both tabs joined the same log (epoch)', v0.map((v) => v.epoch));
    check(v0.every((v) => v.seq === '0' && v.rows.length === 0), 'the document starts empty', v0.map((v) => v.status));

    const typed = 'hello from alice';
    await Promise.all([alice.type(typed), bob.addNote('note from bob')]);
    await alice.addNote('note from alice');
    let count = typed.length + 2;
    let vs = await converged(tabs, count);
    log('step 1 converged at seq', count);
    checkSame('edit', vs, { text: typed, notes: vs[0].notes.map((n) => n.text) });
    check(same([...vs[0].notes.map((n) => n.text)].sort(), ['note from alice', 'note from bob']),
        'edit: both notes arrived', vs[0].notes);
    const users = vs[0].rows.map((r) => r.user);
    check(users.filter((u) => u === 'alice').length === typed.length + 1 && users.filter((u) => u === 'bob').length === 1,
        `edit: ${typed.length} keystrokes + 1 note by alice, 1 note by bob`, users);
    check(vs[0].rows.filter((r) => r.op === 'text').at(-1).data === JSON.stringify({ op: 'text', value: typed }),
        'edit: the last text delta carries the whole text', vs[0].rows.at(-1));
    let notes = vs[0].notes.map((n) => n.text);
    const epoch = vs[0].epoch;

    // ---- 2. connection lost: resume with since + epoch --------------------------------------
    if (opt['nginx-pid']) {
        const before = { alice: alice.subscribes().length, bob: bob.subscribes().length,
                         aliceOk: alice.subscribeds().length, bobOk: bob.subscribeds().length };
        const bobSeq = count;
        await bob.context.setOffline(true);
        log('bob offline; SIGHUP nginx', opt['nginx-pid']);
        process.kill(Number(opt['nginx-pid']), 'SIGHUP');
        await until('bob disconnected', async () => (await bob.view()).state !== 'connected');
        await connected(alice, before.aliceOk + 1);
        log('alice is back:', (await alice.view()).status);
        await alice.addNote('while bob was away');
        await alice.type(' again');
        count += 1 + ' again'.length;
        notes.push('while bob was away');
        await until('alice to get her deltas acked and back', async () => {
            const v = await alice.view();
            return { ok: v.rows.length === count && v.pending === 0, detail: v.status };
        });
        const vb = await bob.view();
        check(vb.state !== 'connected' && vb.rows.length === bobSeq, 'reconnect: bob is away and missed the new deltas', vb.status);

        await bob.context.setOffline(false);
        await connected(bob, before.bobOk + 1);
        vs = await converged(tabs, count, 15000);
        log('step 2 converged at seq', count, 'after', bob.sockets, 'bob sockets');
        const subA = alice.subscribes().slice(before.alice);
        const subB = bob.subscribes().slice(before.bob);
        check(subB.length >= 1 && subB.every((m) => m.since === bobSeq && m.epoch === epoch),
            `reconnect: bob resubscribed with since ${bobSeq} and the epoch`, subB);
        check(subA.length >= 1 && subA.every((m) => m.since === bobSeq && m.epoch === epoch),
            `reconnect: alice resubscribed with since ${bobSeq} and the epoch`, subA);
        const lastB = bob.subscribeds().at(-1);
        check(lastB.state === undefined && lastB.epoch === epoch,
            'reconnect: bob was served from the log (no state, same epoch)', lastB);
        const replayed = bob.received.slice(bob.received.indexOf(lastB) + 1)
            .filter((m) => m.type === 'delta' && m.doc === opt.doc).map((m) => m.seq);
        check(same(replayed.slice(0, count - bobSeq), Array.from({ length: count - bobSeq }, (_, i) => bobSeq + 1 + i)),
            `reconnect: bob got exactly seq ${bobSeq + 1}..${count} after resubscribing`, replayed);
        checkSame('reconnect', vs, { text: typed + ' again', notes });
    } else {
        log('no --nginx-pid: skipping the reconnect step');
    }
    const text = opt['nginx-pid'] ? typed + ' again' : typed;

    // ---- 3. bob reloads his tab while alice adds a note ------------------------------------
    const bobSubs = bob.subscribes().length, bobOk = bob.subscribeds().length;
    await Promise.all([bob.page.reload(), alice.addNote('during the reload')]);
    count += 1;
    notes.push('during the reload');
    await connected(bob, bobOk + 1);
    vs = await converged(tabs, count);
    const fresh = bob.subscribes().slice(bobSubs);
    check(fresh.length >= 1 && fresh[0].since === undefined,
        'reload: the reloaded page subscribed afresh (no since)', fresh);
    const sub = bob.subscribeds().at(-1);
    check(sub.state && sub.state.seq === 0 && sub.epoch === epoch,
        'reload: it got the (empty) state and the log from seq 1', sub);
    checkSame('reload', vs, { text, notes });

    await bob.addNote('bob is back');
    count += 1;
    notes.push('bob is back');
    vs = await converged(tabs, count);
    checkSame('after reload', vs, { text, notes });

    // ---- 4. screenshots -------------------------------------------------------------------
    for (const t of tabs) {
        const file = path.resolve(opt.out, `${t.name}.png`);
        await t.page.screenshot({ path: file, fullPage: true });
        console.log('screenshot:', file);
    }

    for (const t of tabs) {
        check(t.errors.length === 0, `${t.name}: no JavaScript or console errors`, t.errors);
    }
    console.log('result:', JSON.stringify({ epoch, count, text, notes, rows: vs[0].rows }));
}

let rc = 0;
try {
    await main();
    rc = failures ? 1 : 0;
} catch (e) {
    console.log(`check: 0 the browser run completed -- ${oneLine(e && e.stack || String(e))}`);
    rc = failures ? 1 : 2;
} finally {
    clearTimeout(watchdog);
    if (browser) { await browser.close().catch(() => {}); }
    log('done:', failures, 'failed checks');
}
process.exit(rc);
