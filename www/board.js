/*
 * The sticky-notes board: a demo of the collab-client package (www/collab.js, built from
 * clients/js) against the /board/collab location of conf/nginx.conf.in.
 *
 *   the board       one document "board-NAME" (?board=NAME, default "demo"), state
 *                   {notes: {ID: {x, y, text, color, by, z}}}, every edit a JSON merge
 *                   patch (collab_merge json-merge): the server merges, the client applies
 *                   the same patches optimistically (subscribe(doc, {merge: true}))
 *   who you are     ?as=alice|bob|carol picks a demo token (www/demo-tokens.js); its
 *                   `collab` claim makes Alice and Bob editors and Carol a viewer
 *   presence        your name, colour and cursor (setPresence); the others' are the live
 *                   cursors and the avatars in the top bar
 */
(function () {
  'use strict';

  var COLORS = ['#fff3bf', '#d3f9d8', '#d0ebff', '#ffdeeb', '#e5dbff', '#ffe8cc'];
  var query = new URLSearchParams(location.search);
  var users = window.DEMO_USERS;
  var me = users[query.get('as')] ? query.get('as') : 'alice';
  var profile = users[me];
  var doc = 'board-' + ((query.get('board') || 'demo').replace(/[^A-Za-z0-9._:-]/g, '').slice(0, 100) || 'demo');
  var tab = sessionStorage.getItem('board-tab');
  if (!tab) {
    tab = Math.random().toString(36).slice(2, 10);
    sessionStorage.setItem('board-tab', tab);
  }

  var $ = function (id) { return document.getElementById(id); };
  var boardEl = $('board');
  var noteEls = new Map();        // note id -> element
  var cursorEls = new Map();      // session -> element
  var newColor = COLORS[0];
  var dragging = null;

  // ---- the client ----------------------------------------------------------------------
  var client = new Collab.CollabClient({
    url: '/board/collab',
    // a real application fetches a short-lived token from its server here
    getToken: function () { return Promise.resolve(profile.token); },
    // one outbox per user, board and tab: survives a reload of this tab
    storageKey: 'board:' + me + ':' + doc + ':' + tab,
  });
  var sub = client.subscribe(doc, { merge: true });
  sub.setPresence({ name: profile.name, color: profile.color, cursor: null });
  window.board = { client: client, sub: sub, me: me, doc: doc };

  // ---- notes -----------------------------------------------------------------------------
  function notes() {
    return (sub.state && sub.state.notes) || {};
  }

  function send(patch) {
    if (!sub.canEdit) {
      toast('You are a viewer: this board is read-only.');
      return;
    }
    client.send(doc, patch).catch(function (e) {
      toast('Not saved: ' + (e.code || '') + ' ' + (e.message || ''));
    });
  }

  function patchNote(id, fields) {
    var p = { notes: {} };
    p.notes[id] = fields;
    send(p);
  }

  function addNote(x, y) {
    var id = 'n' + Date.now().toString(36) + Math.random().toString(36).slice(2, 6);
    patchNote(id, { x: Math.round(x), y: Math.round(y), text: '', color: newColor,
                    by: profile.name, z: Date.now() });
    var el = noteEls.get(id);
    if (el) { el.querySelector('textarea').focus(); }
  }

  function makeNote(id) {
    var el = document.createElement('div');
    el.className = 'note';
    el.dataset.id = id;
    el.innerHTML = '<div class="note-bar"><span class="note-author"></span>'
      + '<button class="note-del" title="Delete note" aria-label="Delete note">&times;</button></div>'
      + '<textarea class="note-text" placeholder="Write something…" maxlength="500"></textarea>';
    var ta = el.querySelector('textarea');
    var timer = null;
    ta.addEventListener('input', function () {
      clearTimeout(timer);
      timer = setTimeout(function () { timer = null; patchNote(id, { text: ta.value }); }, 250);
    });
    ta.addEventListener('blur', function () {
      if (timer) { clearTimeout(timer); timer = null; patchNote(id, { text: ta.value }); }
    });
    el.querySelector('.note-del').addEventListener('click', function () {
      var p = { notes: {} };
      p.notes[id] = null;
      send(p);
    });
    el.querySelector('.note-bar').addEventListener('pointerdown', function (ev) {
      if (!sub.canEdit || ev.target.closest('.note-del')) { return; }
      ev.preventDefault();
      el.setPointerCapture(ev.pointerId);
      dragging = { id: id, el: el, dx: ev.clientX - el.offsetLeft, dy: ev.clientY - el.offsetTop };
      el.classList.add('dragging');
      el.style.zIndex = 99999;
    });
    el.addEventListener('pointermove', function (ev) {
      if (!dragging || dragging.el !== el) { return; }
      el.style.left = Math.max(0, ev.clientX - dragging.dx) + 'px';
      el.style.top = Math.max(0, ev.clientY - dragging.dy) + 'px';
    });
    el.addEventListener('pointerup', function () {
      if (!dragging || dragging.el !== el) { return; }
      dragging = null;
      el.classList.remove('dragging');
      patchNote(id, { x: el.offsetLeft, y: el.offsetTop, z: Date.now() });
    });
    boardEl.appendChild(el);
    noteEls.set(id, el);
    return el;
  }

  function render() {
    var all = notes(), ids = Object.keys(all), pending = {};
    client.outbox.forEach(function (e) {
      if (e.doc === doc && e.data && e.data.notes) {
        Object.keys(e.data.notes).forEach(function (id) { pending[id] = true; });
      }
    });
    ids.forEach(function (id) {
      var n = all[id] || {}, el = noteEls.get(id) || makeNote(id), ta = el.querySelector('textarea');
      if (!dragging || dragging.el !== el) {
        el.style.left = (n.x || 0) + 'px';
        el.style.top = (n.y || 0) + 'px';
        el.style.zIndex = String(Math.max(1, Math.floor(((n.z || 0) % 1e9) / 1000)));
      }
      el.style.setProperty('--note', n.color || COLORS[0]);
      el.querySelector('.note-author').textContent = n.by || '';
      if (document.activeElement !== ta && ta.value !== (n.text || '')) { ta.value = n.text || ''; }
      ta.readOnly = !sub.canEdit;
      el.classList.toggle('pending', !!pending[id]);
    });
    noteEls.forEach(function (el, id) {
      if (!(id in all)) { el.remove(); noteEls.delete(id); }
    });
    $('empty').hidden = ids.length > 0 || sub.seq === null;
    $('seq').textContent = sub.seq === null ? '' : 'seq ' + sub.seq + (sub.epoch ? ' · epoch ' + sub.epoch.slice(0, 8) : '');
  }

  sub.on('change', render);

  // ---- role ----------------------------------------------------------------------------
  function showRole() {
    var role = sub.role, edit = sub.canEdit;
    document.body.classList.toggle('readonly', !edit);
    $('add-note').disabled = !edit;
    $('role').textContent = role ? role.charAt(0).toUpperCase() + role.slice(1) : '…';
    $('role').className = 'role ' + (role || '');
    var banner = $('banner');
    banner.hidden = !role || edit;
    banner.textContent = profile.name + ' is a ' + role + ' of this board: you see every change live, '
      + 'but cannot change anything (the server refuses it too).';
    render();
  }
  sub.on('role', showRole);
  sub.on('subscribed', showRole);

  // ---- presence: who is here, live cursors ------------------------------------------------
  function showWho() {
    var who = $('who'), seen = {};
    who.textContent = '';
    var list = [{ user: me, data: { name: profile.name, color: profile.color }, me: true }];
    sub.members.forEach(function (m) { list.push(m); });
    list.forEach(function (m) {
      if (seen[m.user]) { return; }
      seen[m.user] = true;
      var d = m.data || {}, li = document.createElement('li');
      li.textContent = (d.name || m.user).charAt(0).toUpperCase();
      li.title = (d.name || m.user) + (m.me ? ' (you)' : '');
      li.style.setProperty('--c', d.color || '#868e96');
      li.dataset.user = m.user;
      if (m.me) { li.className = 'me'; }
      who.appendChild(li);
    });
  }

  function showCursor(ev) {
    var el = cursorEls.get(ev.session), d = ev.data || {};
    if (ev.type === 'leave' || !d.cursor) {
      if (el) { el.remove(); cursorEls.delete(ev.session); }
      return;
    }
    if (!el) {
      el = document.createElement('div');
      el.className = 'cursor';
      el.innerHTML = '<svg width="18" height="22" viewBox="0 0 18 22"><path d="M1 1l15 11-7 1-4 7z" '
        + 'stroke="#fff" stroke-width="1.5"/></svg><span></span>';
      boardEl.appendChild(el);
      cursorEls.set(ev.session, el);
    }
    el.style.setProperty('--c', d.color || '#868e96');
    el.querySelector('path').setAttribute('fill', d.color || '#868e96');
    el.querySelector('span').textContent = d.name || ev.user;
    el.style.left = d.cursor.x + 'px';
    el.style.top = d.cursor.y + 'px';
  }

  sub.onPresence(function (ev) { showWho(); showCursor(ev); });

  var lastMove = 0, moveTimer = null, lastPos = null;
  function sendCursor() {
    lastMove = Date.now();
    moveTimer = null;
    sub.setPresence({ name: profile.name, color: profile.color, cursor: lastPos });
  }
  boardEl.addEventListener('pointermove', function (ev) {
    var r = boardEl.getBoundingClientRect();
    lastPos = { x: Math.round(ev.clientX - r.left + boardEl.scrollLeft),
                y: Math.round(ev.clientY - r.top + boardEl.scrollTop) };
    if (moveTimer) { return; }
    moveTimer = setTimeout(sendCursor, Math.max(0, 80 - (Date.now() - lastMove)));
  });
  boardEl.addEventListener('pointerleave', function () {
    lastPos = null;
    if (!moveTimer) { moveTimer = setTimeout(sendCursor, 80); }
  });

  // ---- adding notes ------------------------------------------------------------------------
  COLORS.forEach(function (c, i) {
    var b = document.createElement('button');
    b.style.setProperty('--c', c);
    b.title = 'New notes in this colour';
    if (i === 0) { b.className = 'on'; }
    b.addEventListener('click', function () {
      newColor = c;
      [].forEach.call($('palette').children, function (x) { x.classList.toggle('on', x === b); });
    });
    $('palette').appendChild(b);
  });
  $('add-note').addEventListener('click', function () {
    var n = Object.keys(notes()).length;
    addNote(24 + (n % 5) * 230 + boardEl.scrollLeft, 24 + Math.floor(n / 5) % 3 * 180 + boardEl.scrollTop);
  });
  boardEl.addEventListener('dblclick', function (ev) {
    if (ev.target !== boardEl || !sub.canEdit) { return; }
    var r = boardEl.getBoundingClientRect();
    addNote(ev.clientX - r.left + boardEl.scrollLeft - 100, ev.clientY - r.top + boardEl.scrollTop - 20);
  });

  // ---- connection state ------------------------------------------------------------------
  var retryAt = null, tick = null;
  function showConn() {
    var s = client.state, conn = $('conn'), text;
    var offline = navigator.onLine === false;
    if (s === 'connected') {
      text = 'Live · ' + (client.transport === 'sse' ? 'SSE + POST' : 'WebSocket');
    } else if (s === 'connecting') {
      text = 'Connecting…';
    } else if (s === 'failed') {
      text = 'Signed out';
    } else {
      text = (offline ? 'Offline' : 'Reconnecting')
        + (retryAt ? ' · retry in ' + Math.max(0, Math.ceil((retryAt - Date.now()) / 1000)) + 's' : '');
    }
    conn.className = 'conn ' + s + (offline && s !== 'connected' ? ' offline' : '');
    $('conn-text').textContent = text;
    clearTimeout(tick);
    if (s === 'disconnected' && retryAt) { tick = setTimeout(showConn, 500); }
  }
  client.on('state', function (ev) {
    retryAt = ev.retryIn !== null ? Date.now() + ev.retryIn : null;
    showConn();
  });
  window.addEventListener('offline', showConn);
  window.addEventListener('online', showConn);
  client.on('outbox', function (e) {
    var p = $('pending');
    p.hidden = !e.size;
    p.textContent = e.size + (e.size === 1 ? ' change' : ' changes') + ' to sync';
    render();
  });

  // ---- misc ------------------------------------------------------------------------------
  var toastTimer = null;
  function toast(text) {
    var t = $('toast');
    t.textContent = text;
    t.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(function () { t.hidden = true; }, 3500);
  }
  client.on('nack', function (m) {
    if (m.code === 'forbidden') { toast('The server refused the change: ' + m.message); }
  });

  [].forEach.call(document.querySelectorAll('.as a'), function (a) {
    var q = new URLSearchParams(location.search);
    q.set('as', a.dataset.as);
    a.href = '?' + q;
    if (a.dataset.as === me) { a.classList.add('me'); a.removeAttribute('target'); }
  });
  $('doc-name').textContent = doc;
  document.title = profile.name + ' · Sticky board';
  showWho();
  showConn();
  render();
  client.connect();
}());
