// Stock y-websocket clients (yjs, y-websocket, y-protocols from npm, the
// `ws` package as the WebSocket) driven by t/113-yjs.t through nginx.
//
//   node scenario.mjs NAME JSON-ARGS
//
// prints one line of JSON (the result) and exits 0, or prints the failure
// on stderr and exits 1.  Every wait has a deadline; disableBc: true
// everywhere, or providers of one process would sync through the global
// BroadcastChannel and prove nothing.

import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import WebSocket from 'ws'
import net from 'node:net'

const [name, rawArgs] = process.argv.slice(2)
const args = JSON.parse(rawArgs || '{}')
const DEADLINE = args.deadline || 30000
const providers = []
// every provider listens for the process's exit
process.setMaxListeners(200)

function fail (msg) {
  console.error(`${name}: ${msg}`)
  process.exit(1)
}

function sleep (ms) {
  return new Promise(resolve => setTimeout(resolve, ms))
}

async function until (what, cond, ms = DEADLINE) {
  const end = Date.now() + ms
  while (!cond()) {
    if (Date.now() > end) fail(`timeout waiting for ${what}`)
    await sleep(20)
  }
}

// url: ws://host:port/location, params: query arguments (user=...)
function client (url, room, params, extra = {}) {
  const doc = new Y.Doc()
  const p = new WebsocketProvider(url, room, doc, {
    WebSocketPolyfill: WebSocket,
    disableBc: true,
    params,
    maxBackoffTime: 500,
    ...extra
  })
  p.denied = []
  p.closes = []
  p.messageHandlers[2] = (_enc, dec) => {
    // auth: [0 = permission denied, reason]
    const t = dec.arr[dec.pos]
    const len = dec.arr[dec.pos + 1]
    p.denied.push({ type: t, reason: Buffer.from(dec.arr.slice(dec.pos + 2, dec.pos + 2 + len)).toString() })
  }
  p.on('connection-close', ev => { if (ev) p.closes.push({ code: ev.code, reason: ev.reason }) })
  providers.push(p)
  return { doc, p, text: doc.getText('t') }
}

// one Redis command (RESP), its reply's first line
function redis (port, ...argv) {
  return new Promise((resolve, reject) => {
    const sock = net.connect(port, '127.0.0.1')
    let out = `*${argv.length}\r\n`
    for (const a of argv) out += `$${Buffer.byteLength(a)}\r\n${a}\r\n`
    sock.on('error', reject)
    sock.on('data', d => { sock.end(); resolve(d.toString().split('\r\n')[0]) })
    sock.write(out)
  })
}

function synced (c) {
  return c.p.synced
}

async function finish (result) {
  for (const p of providers) p.destroy()
  console.log(JSON.stringify(result))
  await sleep(50)
  process.exit(0)
}

const scenarios = {
  // the bytes the server sends in place of a Y.Doc
  async bytes () {
    const empty = new Y.Doc()
    await finish({
      update: Array.from(Y.encodeStateAsUpdate(empty)),
      sv: Array.from(Y.encodeStateVector(empty))
    })
  },

  // two clients (two nginx instances) type concurrently and converge;
  // awareness appears at the other, and goes when one leaves
  async converge () {
    const a = client(args.url1, args.room, { user: 'alice' })
    const b = client(args.url2, args.room, { user: 'bob' })
    await until('both synced', () => synced(a) && synced(b))
    a.p.awareness.setLocalStateField('user', { name: 'alice' })
    b.p.awareness.setLocalStateField('user', { name: 'bob' })
    const n = args.n || 30
    for (let i = 0; i < n; i++) {
      a.text.insert(0, 'a')
      b.text.insert(b.text.length, 'b')
      if (i % 5 === 0) await sleep(5)
    }
    await until('convergence', () =>
      a.text.toString() === b.text.toString() && a.text.length === 2 * n)
    const sees = (c, id, nm) => {
      const s = c.p.awareness.getStates().get(id)
      return s && s.user && s.user.name === nm
    }
    await until('awareness of the other', () =>
      sees(a, b.doc.clientID, 'bob') && sees(b, a.doc.clientID, 'alice'))
    const bid = b.doc.clientID
    let removed = false
    a.p.awareness.on('change', ({ removed: r }) => { if (r.includes(bid)) removed = true })
    const t0 = Date.now()
    b.p.ws.terminate() // a dropped connection, not the client's own goodbye
    b.p.destroy()
    await until('the null state of the client that left', () => removed, 10000)
    await finish({
      text: a.text.toString(),
      removed_ms: Date.now() - t0,
      denied: a.p.denied.length + b.p.denied.length
    })
  },

  // a late joiner gets the whole document, then synced
  async late () {
    const c = client(args.url1, args.room, { user: 'carol' })
    let syncedLen = -1
    c.p.on('synced', s => { if (s && syncedLen < 0) syncedLen = c.text.length })
    await until('synced', () => synced(c))
    await finish({ text: c.text.toString(), synced_len: syncedLen })
  },

  // the network drops b's connection: the provider reconnects by itself
  async drop () {
    const a = client(args.url1, args.room, { user: 'alice' })
    const b = client(args.url2, args.room, { user: 'bob' })
    await until('both synced', () => synced(a) && synced(b))
    let closed = false
    b.p.on('connection-close', () => { closed = true })
    b.p.ws.terminate()
    await until('b saw the drop', () => closed)
    a.text.insert(0, 'WHILE-DOWN ')
    b.text.insert(0, 'DURING-DROP ')
    await until('convergence after the reconnect', () =>
      b.p.synced && a.text.toString() === b.text.toString() &&
      a.text.toString().includes('WHILE-DOWN') &&
      a.text.toString().includes('DURING-DROP'))
    await finish({ text: b.text.toString() })
  },

  // offline: a disconnects, both edit, a comes back: nothing is lost
  async offline () {
    const a = client(args.url1, args.room, { user: 'alice' })
    const b = client(args.url2, args.room, { user: 'bob' })
    await until('both synced', () => synced(a) && synced(b))
    a.p.disconnect()
    await until('a disconnected', () => !a.p.wsconnected)
    a.text.insert(0, 'OFFLINE-A ')
    b.text.insert(b.text.length, ' ONLINE-B')
    await sleep(200)
    if (a.text.toString().includes('ONLINE-B')) fail('a got b\'s edit while offline')
    a.p.connect()
    await until('convergence after reconnect', () =>
      a.text.toString() === b.text.toString() &&
      a.text.toString().includes('OFFLINE-A') &&
      a.text.toString().includes('ONLINE-B'))
    await finish({ text: a.text.toString() })
  },

  // a viewer's edit is refused (auth message) and reaches nobody
  async viewer () {
    const e = client(args.url1, args.room, { user: 'ed' })
    const v = client(args.viewer, args.room, { user: 'vic' })
    await until('both synced', () => synced(e) && synced(v))
    v.text.insert(0, 'VIEWER-EDIT ')
    await until('permission denied', () => v.p.denied.length > 0, 10000)
    e.text.insert(e.text.length, ' EDITOR')
    await until('the editor\'s edit at the viewer', () =>
      v.text.toString().includes('EDITOR'))
    if (e.text.toString().includes('VIEWER-EDIT')) fail('the viewer\'s edit reached the editor')
    const late = client(args.url1, args.room, { user: 'late' })
    await until('late synced', () => synced(late))
    await finish({
      denied: v.p.denied,
      editor: e.text.toString(),
      late: late.text.toString(),
      viewer_closes: v.p.closes
    })
  },

  // one client types, the server compacts; a late joiner converges
  async compact () {
    const a = client(args.url1, args.room, { user: 'alice' })
    await until('synced', () => synced(a))
    const n = args.n || 60
    for (let i = 0; i < n; i++) {
      a.text.insert(a.text.length, String.fromCharCode(97 + i % 26))
      await sleep(10)
    }
    const b = client(args.url1, args.room, { user: 'bob' })
    await until('late synced', () => synced(b))
    await until('late has it all', () => b.text.length === n)
    await finish({ text: a.text.toString(), late: b.text.toString() })
  },

  // a room of n updates: how long a new client takes to be synced
  async jointime () {
    const a = client(args.url1, args.room, { user: 'writer' })
    await until('synced', () => synced(a))
    const n = args.n || 10000
    const t0 = Date.now()
    for (let i = 0; i < n; i++) {
      a.text.insert(a.text.length, String.fromCharCode(97 + i % 26))
      if (i % 200 === 199) await sleep(1)
    }
    const probe = client(args.url1, args.room, { user: 'probe' })
    await until('all stored', () => probe.text.length === n, 120000)
    const write = Date.now() - t0
    probe.p.destroy()
    const t1 = Date.now()
    const c = client(args.url1, args.room, { user: 'joiner' })
    await until('the joiner synced', () => synced(c), 120000)
    const join = Date.now() - t1
    if (c.text.length !== n) fail(`joiner has ${c.text.length} of ${n}`)
    await finish({ write_ms: write, join_ms: join })
  },

  // Redis loses the document: the providers' step 2 after their
  // reconnect (4500, resync epoch) writes it again
  async heal () {
    const a = client(args.url1, args.room, { user: 'alice' })
    const b = client(args.url2, args.room, { user: 'bob' })
    await until('both synced', () => synced(a) && synced(b))
    a.text.insert(0, 'hello')
    await until('b has it', () => b.text.toString() === 'hello')
    const keys = ['state', 'log', 'ops'].map(k => `collab:{${args.room}}:${k}`)
    const del = await redis(args.redis, 'DEL', ...keys)
    if (del !== ':3') fail(`DEL replied ${del}`)
    a.text.insert(5, ' world')
    await until('convergence after the loss', () =>
      a.text.toString() === 'hello world' && b.text.toString() === 'hello world')
    const c = client(args.url1, args.room, { user: 'carol' })
    await until('a late joiner has it all', () =>
      synced(c) && c.text.toString() === 'hello world')
    await finish({
      text: c.text.toString(),
      closes: a.p.closes.concat(b.p.closes).map(x => x.code)
    })
  },

  // bench/yjs.pl: W writers set their key of a Y.Map at a paced total
  // rate for `secs`; R readers see every change: updates relayed per
  // second and the latency from the writer's set to each reader's event
  async relay () {
    const W = args.writers || 4
    const R = args.readers || 16
    const rate = args.rate || 200
    const secs = args.secs || 5
    const urls = [args.url1, args.url2 || args.url1]
    const writers = []
    const readers = []
    for (let i = 0; i < W; i++) writers.push(client(urls[i % 2], args.room, { user: `w${i}` }))
    for (let i = 0; i < R; i++) readers.push(client(urls[i % 2], args.room, { user: `r${i}` }))
    await until('all synced', () => writers.concat(readers).every(synced), 60000)
    const lat = []
    let seen = 0
    for (const r of readers) {
      r.doc.getMap('m').observe(ev => {
        const now = performance.now()
        for (const k of ev.keysChanged) {
          lat.push(now - r.doc.getMap('m').get(k))
          seen++
        }
      })
    }
    const t0 = performance.now()
    let sent = 0
    while (performance.now() - t0 < secs * 1000) {
      const due = Math.floor((performance.now() - t0) / 1000 * rate)
      while (sent < due) {
        writers[sent % W].doc.getMap('m').set(`w${sent % W}`, performance.now())
        sent++
      }
      await sleep(2)
    }
    const want = sent * R
    await until('every reader saw every update', () => seen >= want, 30000)
    const elapsed = (performance.now() - t0) / 1000
    lat.sort((x, y) => x - y)
    const q = f => lat[Math.min(lat.length - 1, Math.floor(f * lat.length))]
    await finish({
      sent,
      delivered: seen,
      sent_per_s: sent / secs,
      delivered_per_s: seen / elapsed,
      p50_ms: q(0.5),
      p99_ms: q(0.99),
      max_ms: lat[lat.length - 1]
    })
  },

  // a provider pointed at a collab.v1 location: closed for good (4400),
  // never sent JSON it would fail on
  async wrong () {
    // the JSON welcome makes the provider's message handler throw: a
    // browser reports that and goes on, as this WebSocket does (a throw
    // out of a handler of `ws` would stop its reading)
    const errors = []
    class BrowserWS extends WebSocket {
      get onmessage () { return super.onmessage }
      set onmessage (fn) {
        super.onmessage = fn && (ev => {
          try { fn(ev) } catch (e) { errors.push(String(e)) }
        })
      }
    }
    const c = client(args.url1, args.room, { user: 'lost' },
      { WebSocketPolyfill: BrowserWS })
    let closed = null
    c.p.on('closed', ev => { closed = ev })
    await until('closed', () => closed !== null, 10000)
    await sleep(500)
    await finish({ code: closed.code, reason: closed.reason, closes: c.p.closes.length, synced: c.p.synced, errors })
  },

  // a client alone stays connected: its awareness echo counts as a message
  async lone () {
    const c = client(args.url1, args.room, { user: 'solo' })
    await until('synced', () => synced(c))
    let echoes = 0
    c.p.ws.addEventListener('message', ev => {
      const b = new Uint8Array(ev.data)
      if (b[0] === 1) echoes++
    })
    c.p.awareness.setLocalStateField('x', 1)
    await until('the echo of its own awareness', () => echoes > 0, 10000)
    await finish({ echoes, closes: c.p.closes })
  }
}

if (!scenarios[name]) fail(`unknown scenario ${name}`)
setTimeout(() => fail('overall deadline'), DEADLINE + 15000).unref()
scenarios[name]().catch(e => fail(e.stack || String(e)))
