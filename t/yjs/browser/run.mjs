// Run by t/114-yjs-browser.t: two Chromium pages (playwright-core of
// t/browser, Debian's chromium) with a CodeMirror editor bound by
// y-codemirror.next to a Y.Text, synced by the stock y-websocket provider
// through nginx.  Both type at once and must show the same text; a third
// page, opened later, gets it all; remote cursors (awareness) show up.
//
//   node run.mjs URL ROOM CHROMIUM
//
// prints `check: 1|0 NAME` lines and `result: JSON`; exit 0 when all pass.

import { createRequire } from 'node:module'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

const here = path.dirname(fileURLToPath(import.meta.url))
const require = createRequire(path.join(here, '../../browser/package.json'))
const { chromium } = require('playwright-core')

const [url, room, exe] = process.argv.slice(2)
let failures = 0
const check = (ok, name, detail) => {
  if (!ok) failures++
  console.log(`check: ${ok ? 1 : 0} ${name}` + (ok || detail === undefined ? '' : ` -- ${JSON.stringify(detail)}`))
  return ok
}

async function until (page, fn, arg, ms = 20000) {
  try {
    await page.waitForFunction(fn, arg, { timeout: ms, polling: 50 })
    return true
  } catch (e) {
    return false
  }
}

const browser = await chromium.launch({ executablePath: exe, args: ['--no-sandbox'] })
try {
  const open = async (user) => {
    const ctx = await browser.newContext()
    const page = await ctx.newPage()
    page.on('pageerror', e => console.log(`log: ${user} pageerror ${e.message}`))
    page.on('console', m => { if (m.type() === 'error') console.log(`log: ${user} console ${m.text()}`) })
    await page.goto(`${url}/yjs-page/editor.html?room=${room}&user=${user}`)
    return page
  }
  const synced = () => window.collab && window.collab.provider.synced
  const a = await open('alice')
  const b = await open('bob')
  check(await until(a, synced) && await until(b, synced), 'both editors synced')

  await a.click('.cm-content')
  await b.click('.cm-content')
  await Promise.all([
    a.keyboard.type('alice was here. ', { delay: 15 }),
    b.keyboard.type('bob too. ', { delay: 15 })
  ])
  const text = p => p.evaluate(() => window.collab.view.state.doc.toString())
  const same = await until(a, () => {
    const t = window.collab.view.state.doc.toString()
    return t.includes('alice was here.') && t.includes('bob too.')
  }) && await until(b, () => {
    const t = window.collab.view.state.doc.toString()
    return t.includes('alice was here.') && t.includes('bob too.')
  })
  const ta = await text(a)
  const tb = await text(b)
  check(same && ta === tb, 'concurrent typing converges in both editors', { ta, tb })

  const cursor = await until(a, () => document.querySelector('.cm-ySelectionCaret') !== null, undefined, 10000)
  check(cursor, 'the other user\'s cursor shows up (awareness)')

  const c = await open('carol')
  check(await until(c, synced), 'a late page synced')
  const tc = await text(c)
  check(tc === ta, 'the late page shows the whole document', { tc, ta })
  console.log('result: ' + JSON.stringify({ text: ta }))
} catch (e) {
  check(false, 'the run', String(e && e.stack || e))
} finally {
  await browser.close()
}
process.exit(failures ? 1 : 0)
