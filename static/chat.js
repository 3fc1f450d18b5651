// The chat page: conversation list, the open conversation and its history, the composer
// with an outbox that survives reloads and disconnects, file uploads that resume, and the
// WebSocket that keeps it all live. Protocol: docs/protocol.md. User data is only ever
// written with textContent (links are built as elements, with http(s) URLs only).
'use strict';

(() => {
  const { api, el, clone, toast, name } = SB;
  const $ = (id) => document.getElementById(id);

  const S = {
    me: null,
    peers: new Map(), // user id -> { user, contact, online }
    convs: new Map(), // conversation id -> conversation
    current: null, // the open conversation's peer id
    ws: null,
    connected: false,
    everConnected: false,
    retry: 0,
    retryAt: 0,
    attempt: 0, // counts connect() calls
    maxBody: 16384,
    outbox: [], // { client_msg_id, to_user_id, body, created_at, sent_at }
    failed: [], // { client_msg_id, to_user_id, body, reason }
    unread: {}, // conversation id -> unread count (notification counts)
    uploads: new Map(), // transfer id -> upload view
    lastPong: 0,
    newAfter: null, // the read marker when the open conversation was opened ("New" divider)
    editWindow: 24 * 3600 * 1000, // how long a sent text can be edited (hello says)
    editing: null, // { id, draft }: the own message being edited
    confirming: null, // the id of the own message whose "Delete for everyone?" is shown
    found: null, // { id, until }: the message a search result jumped to, outlined
    noThumb: new Set(), // file ids whose thumbnail did not load: shown as links only
  };

  // ---- persistence ---------------------------------------------------------------------
  const key = (what) => `sb:${what}:${S.me.id}`;
  function loadList(what) {
    try {
      const v = JSON.parse(localStorage.getItem(key(what)) || '[]');
      return Array.isArray(v) ? v : [];
    } catch (_) {
      return [];
    }
  }
  function saveList(what, list) {
    try {
      localStorage.setItem(key(what), JSON.stringify(list));
    } catch (_) {
      toast('This browser cannot keep unsent messages (storage is full or blocked).');
    }
  }
  const saveOutbox = () => saveList('outbox', S.outbox.map(({ sent_at, ...e }) => e));

  function newId() {
    const b = new Uint8Array(12);
    crypto.getRandomValues(b);
    return Date.now().toString(36) + '-' + [...b].map((x) => x.toString(16).padStart(2, '0')).join('');
  }

  // ---- model -----------------------------------------------------------------------------
  function peer(id) {
    if (!S.peers.has(id)) S.peers.set(id, { user: { id, username: '…', display_name: '…' }, contact: false, online: false });
    return S.peers.get(id);
  }

  function convOf(peerId) {
    for (const c of S.convs.values()) if (c.peerId === peerId) return c;
    return null;
  }

  function conv(id, peerId) {
    let c = S.convs.get(id);
    if (!c) {
      c = { id, peerId: peerId || null, lastSeq: 0, readSeq: 0, peerRead: 0, peerDelivered: 0, messages: new Map(),
            loaded: false, hasOlder: true, loading: false, last: null, updated: 0 };
      S.convs.set(id, c);
      if (!peerId) reloadLists();
    } else if (peerId && !c.peerId) {
      c.peerId = peerId;
    }
    return c;
  }

  function addMessage(m) {
    if (m.kind === 'edit' || m.kind === 'delete') return applyChange(m);
    let peerId = null;
    if (m.sender_id !== S.me.id) peerId = m.sender_id;
    else {
      const entry = S.outbox.find((e) => e.client_msg_id === m.client_msg_id);
      if (entry) peerId = entry.to_user_id;
    }
    const c = conv(m.conversation_id, peerId);
    if (!c.messages.has(m.seq)) c.messages.set(m.seq, m);
    c.lastSeq = Math.max(c.lastSeq, m.seq);
    if (!c.last || m.seq >= c.last.seq) {
      c.last = m;
      c.updated = m.created_at;
    }
    if (m.sender_id === S.me.id && m.client_msg_id) dropFromOutbox(m.client_msg_id);
    return c;
  }

  // An edit or deletion: an entry of the conversation's seq stream like a message (so it
  // moves lastSeq, and sync resumes after it), applied to its target where that is loaded
  // (history and the conversation list already show messages as they are now).
  function applyChange(m) {
    const c = conv(m.conversation_id, m.sender_id !== S.me.id ? m.sender_id : null);
    c.lastSeq = Math.max(c.lastSeq, m.seq);
    const change = (t) => {
      if (!t || t.id !== m.target_id) return;
      if (m.kind === 'delete') Object.assign(t, { deleted: true, body: '', file_id: null });
      else if (!m.deleted && !t.deleted) Object.assign(t, { body: m.body, edited_at: m.created_at });
    };
    for (const t of c.messages.values()) change(t);
    change(c.last);
    if (m.kind === 'delete' && S.editing && S.editing.id === m.target_id) S.editing = null;
    return c;
  }

  function dropFromOutbox(clientMsgId) {
    const before = S.outbox.length;
    S.outbox = S.outbox.filter((e) => e.client_msg_id !== clientMsgId);
    if (S.outbox.length !== before) saveOutbox();
  }

  async function reloadLists() {
    try {
      const [contacts, convs] = await Promise.all([api('GET', '/api/contacts'), api('GET', '/api/conversations')]);
      for (const p of S.peers.values()) p.contact = false;
      for (const ct of contacts.contacts) {
        const p = peer(ct.user.id);
        p.user = ct.user;
        p.contact = true;
        if (ct.last_seen_at) p.lastSeen = Math.max(p.lastSeen || 0, ct.last_seen_at);
      }
      for (const cv of convs.conversations) {
        peer(cv.peer.id).user = cv.peer;
        const c = conv(cv.id, cv.peer.id);
        c.lastSeq = Math.max(c.lastSeq, cv.last_seq);
        c.readSeq = Math.max(c.readSeq, cv.read_seq);
        c.peerRead = Math.max(c.peerRead, cv.peer_read_seq || 0);
        c.peerDelivered = Math.max(c.peerDelivered, cv.peer_delivered_seq || 0, c.peerRead);
        if (cv.last_message && (!c.last || cv.last_message.seq >= c.last.seq)) c.last = cv.last_message;
        c.updated = Math.max(c.updated, cv.updated_at || 0);
      }
      renderList();
      if (S.current) {
        renderHeader();
        refreshStatuses(convOf(S.current));
      }
      updateComposer();
    } catch (e) {
      if (e.status !== 401) toast('Could not load your conversations: ' + e.message);
    }
  }

  // ---- conversation list -----------------------------------------------------------------
  function preview(m) {
    if (!m) return '';
    if (m.deleted) return 'Message deleted';
    if (m.kind === 'file') return 'File: ' + fileInfo(m).name;
    return (m.sender_id === S.me.id ? 'You: ' : '') + m.body.replace(/\s+/g, ' ').slice(0, 80);
  }

  function renderList() {
    const rows = [];
    for (const [id, p] of S.peers) {
      const c = convOf(id);
      if (!p.contact && !c) continue;
      rows.push({ p, c });
    }
    rows.sort((a, b) => ((b.c && b.c.updated) || 0) - ((a.c && a.c.updated) || 0) || name(a.p.user).localeCompare(name(b.p.user)));
    $('conv-list').replaceChildren(...rows.map(({ p, c }) => {
      const li = clone('tpl-conv');
      const a = li.querySelector('a');
      a.href = '#u=' + encodeURIComponent(p.user.id);
      a.dataset.peer = p.user.id;
      if (p.user.id === S.current) a.setAttribute('aria-current', 'true');
      const dot = li.querySelector('.dot');
      dot.classList.toggle('online', p.online);
      dot.title = p.online ? 'online' : 'offline';
      li.querySelector('.name').textContent = name(p.user);
      li.querySelector('.last').textContent = c ? preview(c.last) : (p.contact ? 'No messages yet' : '');
      const n = c ? S.unread[c.id] || 0 : 0;
      const muted = !!c && SB.isMuted(c.id);
      li.querySelector('.mute-icon').hidden = !muted;
      const badge = li.querySelector('.badge');
      badge.textContent = String(n);
      badge.hidden = n === 0;
      badge.classList.toggle('quiet', muted);
      badge.setAttribute('aria-label', `${n} unread`);
      return li;
    }));
    $('conv-empty').hidden = rows.length > 0;
  }

  // ---- the open conversation -------------------------------------------------------------
  function renderHeader() {
    const p = peer(S.current);
    $('peer-name').textContent = name(p.user);
    $('peer-dot').classList.toggle('online', p.online);
    $('peer-dot').title = p.online ? 'online' : 'offline';
    $('peer-seen').textContent = p.online ? 'online' : p.lastSeen ? `last seen ${SB.when(p.lastSeen)}` : '';
    renderMute();
  }

  // The open conversation's mute, as a menu: notifications on, or muted for a while or
  // until unmuted. Every device learns it from the counts (`unread.muted`).
  const MUTE_FOR = [['1h', 'Mute for 1 hour', 3600e3], ['8h', 'Mute for 8 hours', 8 * 3600e3], ['1w', 'Mute for a week', 7 * 86400e3], ['forever', 'Mute until I unmute', null]];
  function renderMute() {
    const sel = $('mute-select');
    const c = S.current && convOf(S.current);
    sel.hidden = !c;
    if (!c) return;
    const opt = (value, text) => { const o = el('option', null, text); o.value = value; return o; };
    const options = [];
    if (SB.isMuted(c.id)) {
      const until = (SB.notif.unread.muted || {})[c.id];
      options.push(opt('', until ? `Muted until ${new Date(until).toLocaleString([], { dateStyle: 'short', timeStyle: 'short' })}` : 'Muted'), opt('off', 'Unmute'));
    } else {
      options.push(opt('', 'Notifications on'));
    }
    for (const [value, text] of MUTE_FOR) options.push(opt(value, text));
    sel.replaceChildren(...options);
    sel.value = '';
  }

  async function onMuteChange() {
    const sel = $('mute-select');
    const c = S.current && convOf(S.current);
    const choice = sel.value;
    if (!c || !choice) return;
    try {
      const path = `/api/conversations/${encodeURIComponent(c.id)}/mute`;
      if (choice === 'off') {
        await api('DELETE', path);
        toast('Notifications are on for this chat.');
      } else {
        const span = MUTE_FOR.find(([v]) => v === choice)[2];
        await api('PUT', path, { until: span === null ? null : Date.now() + span });
        toast('Muted: this chat counts its unread messages but raises no notifications.');
      }
    } catch (e) {
      toast(e.message);
    }
    // The counts that follow (on every device) carry the new mute; until then, as it was.
    renderMute();
  }

  async function open(peerId) {
    if (!peerId) return;
    if (S.current !== peerId) {
      // Messages after what was read when the conversation opened get a "New" divider.
      const known = convOf(peerId);
      S.newAfter = known ? known.readSeq : null;
      $('new-pill').hidden = true;
    }
    S.current = peerId;
    history.replaceState(null, '', '#u=' + encodeURIComponent(peerId));
    $('chat-layout').classList.add('open');
    $('conversation').hidden = false;
    $('no-conv').hidden = true;
    $('typing').textContent = '';
    renderHeader();
    renderList();
    renderMessages('bottom');
    renderUploads();
    updateComposer();
    const c = convOf(peerId);
    if (c && !c.loaded) await loadOlder(c, true);
    if (S.newAfter === null && c) S.newAfter = c.readSeq;
    renderMessages();
    markRead();
    if (window.matchMedia('(min-width: 701px)').matches) $('composer-input').focus();
  }

  function close() {
    S.current = null;
    history.replaceState(null, '', location.pathname);
    $('chat-layout').classList.remove('open');
    $('conversation').hidden = true;
    $('no-conv').hidden = false;
    renderList();
  }

  // Loads the newest page (first) or the page before the oldest loaded message.
  async function loadOlder(c, first, limit = 50) {
    if (c.loading || (!first && !c.hasOlder)) return;
    c.loading = true;
    $('history-top').textContent = 'Loading…';
    const seqs = [...c.messages.keys()];
    const oldest = seqs.length && !first ? Math.min(...seqs) : null;
    const query = oldest ? `?limit=${limit}&before_seq=${oldest}` : `?limit=${limit}`;
    try {
      const page = await api('GET', `/api/conversations/${encodeURIComponent(c.id)}/messages${query}`);
      page.messages.forEach(addMessage);
      c.loaded = true;
      const min = Math.min(...c.messages.keys());
      c.hasOlder = page.messages.length > 0 && min > 1;
      if (c.peerId === S.current) {
        const h = $('history');
        const before = h.scrollHeight - h.scrollTop;
        renderMessages(first ? 'bottom' : null);
        if (!first) h.scrollTop = h.scrollHeight - before;
      }
    } catch (e) {
      toast('Could not load the history: ' + e.message);
    } finally {
      c.loading = false;
      historyTop(c);
    }
    // Fill the screen: a short first page that does not scroll cannot ask for more.
    const h = $('history');
    if (c.peerId === S.current && c.hasOlder && h.scrollHeight <= h.clientHeight + 10) loadOlder(c, false);
  }

  function historyTop(c) {
    $('history-top').textContent = !c ? '' : c.loading ? 'Loading…' : c.hasOlder ? 'Scroll up for older messages' : 'This is the beginning of the conversation.';
  }

  function fileInfo(m) {
    try {
      const f = JSON.parse(m.body);
      const dim = (v) => (Number.isInteger(v) && v > 0 ? v : 0);
      return { name: String(f.name || 'file'), size: Number(f.size) || 0, mime: String(f.mime || ''), width: dim(f.width), height: dim(f.height) };
    } catch (_) {
      return { name: 'file', size: 0, mime: '', width: 0, height: 0 };
    }
  }

  // An image file: its thumbnail, sized from the message before it loads (nothing jumps),
  // as a button that opens the full image; the name links to the download. A thumbnail
  // that does not load (the server could not decode the image) leaves the link alone.
  const THUMB_BOX = 240;
  function imageEl(m, f, url) {
    const scale = Math.min(1, THUMB_BOX / f.width, THUMB_BOX / f.height);
    const b = el('button', 'thumb');
    b.type = 'button';
    b.setAttribute('aria-label', `Open image ${f.name}`);
    const img = el('img');
    img.alt = f.name;
    img.width = Math.max(1, Math.round(f.width * scale));
    img.height = Math.max(1, Math.round(f.height * scale));
    img.decoding = 'async';
    // One retry after a few seconds (a server busy making thumbnails answers 503), then
    // the link alone.
    let tries = 0;
    img.addEventListener('error', () => {
      if (tries++ === 0) {
        setTimeout(() => { if (b.isConnected) img.src = url + '/thumbnail?retry=1'; }, 4000);
      } else {
        S.noThumb.add(m.file_id);
        b.remove();
      }
    });
    img.src = url + '/thumbnail';
    b.append(img);
    b.addEventListener('click', () => openViewer(f, url));
    return b;
  }

  function openViewer(f, url) {
    const d = $('viewer');
    const img = $('viewer-img');
    img.alt = f.name;
    img.src = url;
    $('viewer-name').textContent = f.name;
    const a = $('viewer-download');
    a.href = url;
    a.download = f.name;
    d.showModal();
  }

  function size(n) {
    const u = ['bytes', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0;
    while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
    return (i ? n.toFixed(1) : String(n)) + ' ' + u[i];
  }

  // Text with http(s) links made clickable (and bare www. addresses, as https): the URL is
  // parsed, only http and https become links, and every piece goes in as a text node.
  function linkify(text, into) {
    const re = /\b(?:https?:\/\/|www\.)[^\s<>"']+/gi;
    let at = 0;
    for (let m; (m = re.exec(text));) {
      // Trailing punctuation is the sentence's, not the link's (a loop: a regex anchored
      // at the end takes quadratic time on a long run of dots).
      let end = m[0].length;
      while (end > 0 && '.,;:!?)]'.includes(m[0][end - 1])) end--;
      let url = m[0].slice(0, end);
      if (m.index > at) into.append(document.createTextNode(text.slice(at, m.index)));
      let u = null;
      try { u = new URL(/^www\./i.test(url) ? 'https://' + url : url); } catch (_) { u = null; }
      if (u && (u.protocol === 'http:' || u.protocol === 'https:')) {
        const a = el('a', null, url);
        a.href = u.href;
        a.rel = 'noopener noreferrer nofollow';
        a.target = '_blank';
        into.append(a);
      } else {
        into.append(document.createTextNode(url));
      }
      at = m.index + url.length;
      re.lastIndex = at;
    }
    if (at < text.length) into.append(document.createTextNode(text.slice(at)));
  }

  function statusOf(c, m) {
    if (m.seq <= c.peerRead) return 'Read';
    if (m.seq <= c.peerDelivered) return 'Delivered';
    return 'Sent';
  }

  function messageEl(c, m) {
    const li = clone('tpl-msg');
    const mine = m.sender_id === S.me.id;
    li.classList.toggle('mine', mine);
    li.dataset.seq = m.seq;
    li.dataset.id = m.id;
    if (S.found && S.found.id === m.id && Date.now() < S.found.until) li.classList.add('found');
    const body = li.querySelector('.body');
    if (m.deleted) {
      li.classList.add('deleted');
      body.append(el('em', null, 'Message deleted'));
    } else if (S.editing && S.editing.id === m.id) {
      body.append(editorEl(m));
    } else if (m.kind === 'file' && m.file_id) {
      const f = fileInfo(m);
      const url = '/api/files/' + encodeURIComponent(m.file_id);
      if (f.width && f.height && !S.noThumb.has(m.file_id)) body.append(imageEl(m, f, url));
      const a = el('a', 'file-link', f.name);
      a.href = url;
      a.download = f.name;
      body.append(a, document.createTextNode(` (${size(f.size)})`));
    } else {
      linkify(m.body, body);
    }
    const t = li.querySelector('time');
    t.textContent = SB.time(m.created_at);
    t.dateTime = new Date(m.created_at).toISOString();
    t.title = new Date(m.created_at).toLocaleString();
    if (m.edited_at && !m.deleted) {
      const e = li.querySelector('.edited');
      e.textContent = 'edited';
      e.title = 'Edited ' + new Date(m.edited_at).toLocaleString();
    }
    li.querySelector('.status').textContent = mine ? statusOf(c, m) : '';
    if (mine && !m.deleted && !(S.editing && S.editing.id === m.id)) li.querySelector('.actions').append(...actionsOf(m));
    return li;
  }

  // Edit and Delete on one's own message (buttons: reachable with Tab), or the deletion's
  // confirmation.
  function actionsOf(m) {
    const button = (text, cls, label, onClick) => {
      const b = el('button', 'link ' + cls, text);
      b.type = 'button';
      b.setAttribute('aria-label', label);
      b.addEventListener('click', onClick);
      return b;
    };
    if (S.confirming === m.id) {
      return [el('span', 'confirm-text', 'Delete for everyone?'),
        button('Delete', 'msg-delete-yes', 'Delete this message for everyone', () => deleteMessage(m)),
        button('Cancel', 'msg-delete-no', 'Keep this message', () => {
          S.confirming = null;
          renderMessages();
          focusIn(m.id, '.msg-delete');
        })];
    }
    const out = [];
    if (m.kind === 'text' && (S.editWindow <= 0 ? false : Date.now() - m.created_at < S.editWindow)) {
      out.push(button('Edit', 'msg-edit', 'Edit this message', () => {
        S.editing = { id: m.id, draft: m.body };
        S.confirming = null;
        renderMessages();
        focusIn(m.id, 'textarea');
      }));
    }
    out.push(button('Delete', 'msg-delete', 'Delete this message', () => {
      S.confirming = m.id;
      renderMessages();
      focusIn(m.id, '.msg-delete-yes');
    }));
    return out;
  }

  function focusIn(id, selector) {
    const li = $('messages').querySelector(`li[data-id="${CSS.escape(id)}"]`);
    const target = li && li.querySelector(selector);
    if (target) target.focus();
  }

  // The editor of one's own message: Enter (or Save) saves, Escape (or Cancel) keeps it.
  function editorEl(m) {
    const form = el('div', 'editor');
    const ta = el('textarea', 'edit-input');
    ta.value = S.editing.draft;
    ta.rows = 2;
    ta.setAttribute('aria-label', 'Edit message');
    ta.addEventListener('input', () => { if (S.editing) S.editing.draft = ta.value; });
    const cancel = () => {
      S.editing = null;
      renderMessages();
      focusIn(m.id, '.msg-edit');
    };
    const save = el('button', 'edit-save', 'Save');
    save.type = 'button';
    save.addEventListener('click', () => saveEdit(m, ta.value));
    const no = el('button', 'secondary edit-cancel', 'Cancel');
    no.type = 'button';
    no.addEventListener('click', cancel);
    ta.addEventListener('keydown', (ev) => {
      if (ev.key === 'Escape') {
        ev.preventDefault();
        ev.stopPropagation();
        cancel();
      } else if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing && !window.matchMedia('(pointer: coarse)').matches) {
        ev.preventDefault();
        saveEdit(m, ta.value);
      }
    });
    const row = el('div', 'edit-actions');
    row.append(no, save);
    form.append(ta, row);
    return form;
  }

  async function saveEdit(m, text) {
    if (!text.trim()) return toast('A message cannot be empty: delete it instead.');
    if (new TextEncoder().encode(text).length > S.maxBody) return toast(`Messages are at most ${size(S.maxBody)}.`);
    if (text === m.body) {
      S.editing = null;
      renderMessages();
      return;
    }
    try {
      const now = await api('PATCH', '/api/messages/' + encodeURIComponent(m.id), { body: text });
      Object.assign(m, { body: now.body, edited_at: now.edited_at });
      S.editing = null;
      renderMessages();
      renderList();
      focusIn(m.id, '.msg-edit');
    } catch (e) {
      toast('Could not edit the message: ' + e.message);
    }
  }

  async function deleteMessage(m) {
    try {
      await api('DELETE', '/api/messages/' + encodeURIComponent(m.id));
      Object.assign(m, { deleted: true, body: '', file_id: null });
      const c = S.convs.get(m.conversation_id);
      if (c && c.last && c.last.id === m.id) Object.assign(c.last, { deleted: true, body: '', file_id: null });
      S.confirming = null;
      renderMessages();
      renderList();
      $('composer-input').focus();
    } catch (e) {
      toast('Could not delete the message: ' + e.message);
    }
  }

  function pendingEl(e, failed) {
    const li = clone('tpl-msg');
    li.classList.add('mine', 'pending');
    li.dataset.clientMsgId = e.client_msg_id;
    linkify(e.body, li.querySelector('.body'));
    li.querySelector('time').textContent = SB.time(e.created_at || Date.now());
    li.querySelector('.status').textContent = failed ? 'Not sent: ' + e.reason : S.connected ? 'Sending…' : 'Queued (offline)';
    return li;
  }

  function dayEl(ms) {
    const li = clone('tpl-day');
    const d = new Date(ms);
    const today = new Date();
    const yesterday = new Date(Date.now() - 86400000);
    li.querySelector('span').textContent = d.toDateString() === today.toDateString() ? 'Today'
      : d.toDateString() === yesterday.toDateString() ? 'Yesterday'
        : d.toLocaleDateString([], { weekday: 'long', year: 'numeric', month: 'long', day: 'numeric' });
    return li;
  }

  function renderMessages(scroll) {
    if (!S.current) return;
    const c = convOf(S.current);
    const h = $('history');
    const atBottom = h.scrollHeight - h.scrollTop - h.clientHeight < 60;
    const items = [];
    let lastDay = null;
    let divided = false;
    if (c) {
      for (const m of [...c.messages.values()].sort((a, b) => a.seq - b.seq)) {
        const day = new Date(m.created_at).toDateString();
        if (day !== lastDay) {
          items.push(dayEl(m.created_at));
          lastDay = day;
        }
        if (!divided && S.newAfter !== null && m.seq > S.newAfter && m.sender_id !== S.me.id) {
          const li = el('li', 'new-divider');
          li.append(el('span', '', 'New'));
          items.push(li);
          divided = true;
        }
        items.push(messageEl(c, m));
      }
    }
    for (const e of S.outbox) if (e.to_user_id === S.current) items.push(pendingEl(e, false));
    for (const e of S.failed) if (e.to_user_id === S.current) items.push(pendingEl(e, true));
    // A re-render (a message came, or a change) keeps the keyboard focus where it was: on
    // the same control of the same message, an open editor with its caret.
    const active = document.activeElement;
    const at = active && active.closest ? active.closest('#messages li[data-id]') : null;
    const keep = at && {
      id: at.dataset.id,
      cls: [...active.classList].find((c) => /^(msg-|edit-)/.test(c)),
      caret: active.classList.contains('edit-input') ? [active.selectionStart, active.selectionEnd] : null,
    };
    $('messages').replaceChildren(...items);
    if (keep) {
      const li = $('messages').querySelector(`li[data-id="${CSS.escape(keep.id)}"]`);
      const target = li && (keep.cls ? li.querySelector('.' + keep.cls) : li);
      if (target) {
        if (target === li) li.tabIndex = -1;
        target.focus({ preventScroll: true });
        if (keep.caret && target.setSelectionRange) target.setSelectionRange(...keep.caret);
      }
    }
    historyTop(c);
    if (scroll === 'bottom' || atBottom) h.scrollTop = h.scrollHeight;
  }

  function refreshStatuses(c) {
    if (!S.current || !c || c.peerId !== S.current) return;
    for (const li of $('messages').querySelectorAll('li.msg.mine[data-seq]')) {
      const m = c.messages.get(Number(li.dataset.seq));
      if (m) li.querySelector('.status').textContent = statusOf(c, m);
    }
  }

  function markRead() {
    const c = S.current && convOf(S.current);
    if (!c || !S.connected || document.visibilityState !== 'visible') return;
    if (c.lastSeq > c.readSeq || (S.unread[c.id] || 0) > 0) {
      c.readSeq = c.lastSeq;
      send({ type: 'read', conversation_id: c.id, seq: c.lastSeq });
    }
  }

  // ---- message search --------------------------------------------------------------------
  let searchTimer = null;
  let searchRun = 0;
  function onSearchInput() {
    clearTimeout(searchTimer);
    const q = $('search-input').value.trim();
    if (!q) return endSearch();
    searchTimer = setTimeout(() => runSearch(q), 250);
  }

  function endSearch() {
    searchRun++;
    $('search-results').hidden = true;
    $('search-status').textContent = '';
    $('conv-list').hidden = false;
  }

  async function runSearch(q) {
    const run = ++searchRun;
    try {
      const page = await api('GET', '/api/search/messages?limit=30&q=' + encodeURIComponent(q));
      if (run !== searchRun) return;
      renderResults(page.results);
    } catch (e) {
      if (run !== searchRun) return;
      $('search-status').textContent = e.code === 'invalid_query' ? 'Type a word to search for.' : 'Search failed: ' + e.message;
    }
  }

  // Results as the list of the sidebar: who said it, when, and the words around the match
  // (matched words in <mark>, all of it as text).
  function renderResults(results) {
    $('conv-list').hidden = true;
    const list = $('search-results');
    list.hidden = false;
    list.replaceChildren(...results.map((r) => {
      const m = r.message;
      const c = S.convs.get(m.conversation_id);
      const li = el('li');
      const a = el('a', 'conv search-hit');
      a.href = '#';
      const main = el('span', 'conv-main');
      const who = m.sender_id === S.me.id ? 'You' : name(peer(m.sender_id).user);
      const to = c && c.peerId && m.sender_id === S.me.id ? ' → ' + name(peer(c.peerId).user) : '';
      main.append(el('span', 'name', who + to));
      const snippet = el('span', 'last snippet');
      for (const s of r.snippet) snippet.append(s.hit ? el('mark', null, s.text) : document.createTextNode(s.text));
      main.append(snippet);
      a.append(main, el('time', 'muted', SB.when(m.created_at)));
      a.addEventListener('click', (ev) => {
        ev.preventDefault();
        jumpTo(m);
      });
      li.append(a);
      return li;
    }));
    $('search-status').textContent = results.length ? `${results.length}${results.length === 30 ? '+' : ''} found` : 'No messages found.';
  }

  // Opens the message's conversation with enough history loaded to show it, and shows it.
  async function jumpTo(m) {
    const c = S.convs.get(m.conversation_id);
    if (!c || !c.peerId) return toast('That conversation is not in your list.');
    await open(c.peerId);
    for (let i = 0; i < 40 && !c.messages.has(m.seq) && c.hasOlder; i++) {
      if (c.loading) await new Promise((r) => setTimeout(r, 50));
      else await loadOlder(c, false, 500);
    }
    const li = $('messages').querySelector(`li[data-id="${CSS.escape(m.id)}"]`);
    if (!li) return toast('That message could not be loaded.');
    li.scrollIntoView({ block: 'center' });
    // Outlined for a moment (kept across re-renders meanwhile).
    S.found = { id: m.id, until: Date.now() + 3000 };
    li.classList.add('found');
    li.tabIndex = -1;
    li.focus({ preventScroll: true });
    setTimeout(() => {
      S.found = null;
      const now = $('messages').querySelector(`li[data-id="${CSS.escape(m.id)}"]`);
      if (now) now.classList.remove('found');
    }, 3000);
  }

  // ---- composer ------------------------------------------------------------------------
  function updateComposer() {
    if (!S.current) return;
    const p = peer(S.current);
    const input = $('composer-input');
    const status = $('conn-status');
    const canMessage = p.contact;
    input.disabled = !canMessage;
    $('send').disabled = !canMessage;
    const attach = $('attach-label');
    const canAttach = canMessage && S.connected && !!convOf(S.current);
    attach.classList.toggle('disabled', !canAttach);
    $('file-input').disabled = !canAttach;
    attach.title = !S.connected ? 'Attaching needs a connection' : !convOf(S.current) ? 'Send a message first' : '';
    status.classList.toggle('offline', !S.connected);
    status.dataset.state = S.connected ? 'online' : 'offline';
    if (!canMessage) {
      status.textContent = `You cannot message ${name(p.user)}: you are not contacts.`;
    } else if (!S.connected) {
      const secs = Math.max(0, Math.ceil((S.retryAt - Date.now()) / 1000));
      status.textContent = `Offline${secs ? `, reconnecting in ${secs} s` : ', reconnecting…'}. Messages you send now are queued and sent when the connection returns.`;
    } else {
      status.textContent = '';
    }
  }

  function submit() {
    const input = $('composer-input');
    const body = input.value;
    if (!S.current || !body.trim() || input.disabled) return;
    if (new TextEncoder().encode(body).length > S.maxBody) {
      toast(`Messages are at most ${size(S.maxBody)}.`);
      return;
    }
    const entry = { client_msg_id: newId(), to_user_id: S.current, body, created_at: Date.now() };
    S.outbox.push(entry);
    saveOutbox();
    input.value = '';
    stopTyping();
    renderMessages('bottom');
    sendEntry(entry);
  }

  function sendEntry(e) {
    if (!S.connected) return;
    e.sent_at = Date.now();
    send({ type: 'send', client_msg_id: e.client_msg_id, to_user_id: e.to_user_id, body: e.body });
  }

  // Unacknowledged sends are repeated with the same client_msg_id: stored once.
  setInterval(() => {
    if (!S.connected) return;
    for (const e of S.outbox) if (!e.sent_at || Date.now() - e.sent_at > 10000) sendEntry(e);
  }, 2000);

  let typingSent = 0;
  let typingTimer = null;
  function typed() {
    const c = S.current && convOf(S.current);
    if (!c || !S.connected) return;
    if (Date.now() - typingSent > 3000) {
      typingSent = Date.now();
      send({ type: 'typing', conversation_id: c.id, active: true });
    }
    clearTimeout(typingTimer);
    typingTimer = setTimeout(stopTyping, 4000);
  }
  function stopTyping() {
    clearTimeout(typingTimer);
    if (!typingSent) return;
    typingSent = 0;
    const c = S.current && convOf(S.current);
    if (c && S.connected) send({ type: 'typing', conversation_id: c.id, active: false });
  }

  let peerTypingTimer = null;
  function showTyping(f) {
    const c = S.convs.get(f.conversation_id);
    if (!c || c.peerId !== S.current || f.user_id === S.me.id) return;
    clearTimeout(peerTypingTimer);
    $('typing').textContent = f.active ? `${name(peer(f.user_id).user)} is typing…` : '';
    if (f.active) peerTypingTimer = setTimeout(() => { $('typing').textContent = ''; }, 6000);
  }

  // ---- uploads -------------------------------------------------------------------------
  function uploadView(id, conversationId, fileName) {
    let v = S.uploads.get(id);
    if (!v) {
      const li = clone('tpl-upload');
      li.dataset.transfer = id;
      li.querySelector('.upload-name').textContent = fileName;
      $('uploads').append(li);
      v = { li, conversationId, local: false };
      S.uploads.set(id, v);
      li.querySelector('.dismiss').addEventListener('click', () => removeUpload(id));
    }
    v.li.hidden = !S.current || !convOf(S.current) || convOf(S.current).id !== v.conversationId;
    return v;
  }

  function setUpload(v, percent, state) {
    v.li.querySelector('progress').value = percent;
    v.li.querySelector('.upload-state').textContent = state;
  }

  function removeUpload(id) {
    const v = S.uploads.get(id);
    if (v) v.li.remove();
    S.uploads.delete(id);
  }

  function renderUploads() {
    const cid = S.current && convOf(S.current) ? convOf(S.current).id : null;
    for (const v of S.uploads.values()) v.li.hidden = v.conversationId !== cid;
  }

  const savedUploads = () => loadList('uploads');
  function forgetUpload(id) {
    saveList('uploads', savedUploads().filter((u) => u.id !== id));
  }

  async function hashFile(file, onProgress) {
    const h = new Sha256();
    const step = 4 << 20;
    for (let at = 0; at < file.size; at += step) {
      h.update(new Uint8Array(await file.slice(at, at + step).arrayBuffer()));
      onProgress(Math.round((100 * Math.min(file.size, at + step)) / file.size));
    }
    return h.hex();
  }

  async function startUpload(file) {
    const c = S.current && convOf(S.current);
    if (!c) return;
    if (file.size === 0) {
      toast('Empty files cannot be sent.');
      return;
    }
    const temp = 'local-' + newId();
    const v = uploadView(temp, c.id, file.name);
    v.local = true;
    try {
      const sha256 = await hashFile(file, (p) => setUpload(v, 0, `checking ${p}%`));
      const t = await api('POST', '/api/transfers', { conversation_id: c.id, name: file.name, size: file.size, sha256, mime: file.type || undefined });
      S.uploads.delete(temp);
      S.uploads.set(t.id, v);
      v.li.dataset.transfer = t.id;
      saveList('uploads', [...savedUploads(), { id: t.id, conversation_id: c.id, name: file.name, size: file.size, last_modified: file.lastModified }]);
      await uploadChunks(file, t, t.missing, v);
    } catch (e) {
      setUpload(v, 0, 'failed: ' + e.message);
      v.li.querySelector('.dismiss').hidden = false;
    }
  }

  async function putChunk(t, index, bytes, digest) {
    for (let attempt = 0; ; attempt++) {
      try {
        return await api('PUT', `/api/transfers/${encodeURIComponent(t.id)}/chunks/${index}`, bytes.buffer,
          { headers: { 'X-Chunk-Sha256': digest, 'Content-Type': 'application/octet-stream' } });
      } catch (e) {
        // The network or the server is down: wait and try again. Anything else is final.
        if (!(e.status === 0 || e.status >= 500 || e.status === 429) || attempt > 30) throw e;
        await new Promise((r) => setTimeout(r, Math.min(10000, 500 * 2 ** Math.min(attempt, 5))));
      }
    }
  }

  async function uploadChunks(file, t, missing, v) {
    const total = t.chunk_count;
    let done = total - missing.length;
    setUpload(v, Math.round((100 * done) / total), `${Math.round((100 * done) / total)}%`);
    for (const index of missing) {
      const start = index * t.chunk_size;
      const bytes = new Uint8Array(await file.slice(start, Math.min(file.size, start + t.chunk_size)).arrayBuffer());
      await putChunk(t, index, bytes, new Sha256().update(bytes).hex());
      done++;
      const pct = Math.round((100 * done) / total);
      setUpload(v, pct, `${pct}%`);
    }
    forgetUpload(t.id);
    setUpload(v, 100, 'sent');
    setTimeout(() => removeUpload(t.id), 3000);
  }

  // Uploads this browser left unfinished (a reload, a crash): offer to resume them.
  async function resumeUploads() {
    for (const u of savedUploads()) {
      let t;
      try {
        t = await api('GET', `/api/transfers/${encodeURIComponent(u.id)}`);
      } catch (e) {
        if (e.status === 404) forgetUpload(u.id);
        continue;
      }
      if (t.state !== 'uploading') {
        forgetUpload(u.id);
        continue;
      }
      const v = uploadView(t.id, t.conversation_id, t.name);
      v.local = true;
      setUpload(v, Math.round((100 * t.received_chunks) / t.chunk_count), 'paused');
      const label = v.li.querySelector('.resume');
      label.hidden = false;
      label.querySelector('input').addEventListener('change', async (ev) => {
        const file = ev.target.files[0];
        if (!file) return;
        if (file.name !== u.name || file.size !== u.size) {
          toast(`That is not ${u.name} (${size(u.size)}).`);
          return;
        }
        label.hidden = true;
        try {
          const now = await api('GET', `/api/transfers/${encodeURIComponent(u.id)}`);
          await uploadChunks(file, now, now.missing, v);
        } catch (e) {
          setUpload(v, 0, 'failed: ' + e.message);
          v.li.querySelector('.dismiss').hidden = false;
        }
      });
      renderUploads();
    }
  }

  function onTransfer(f) {
    const mine = f.uploader_id === S.me.id;
    const existing = S.uploads.get(f.transfer_id);
    if (mine && existing && existing.local) {
      if (f.state === 'failed') {
        setUpload(existing, 0, 'failed: the file did not match its checksum');
        existing.li.querySelector('.dismiss').hidden = false;
      }
      return;
    }
    if (mine) return;
    const v = uploadView(f.transfer_id, f.conversation_id, f.name);
    const pct = Math.round((100 * f.received_chunks) / f.chunk_count);
    const who = name(peer(f.uploader_id).user);
    v.peerProgress = { at: Date.now(), pct, who, uploading: f.state === 'uploading' };
    setUpload(v, pct, f.state === 'uploading' ? `${who} is sending: ${pct}%` : f.state);
    if (f.state !== 'uploading') setTimeout(() => removeUpload(f.transfer_id), 2000);
  }

  // A peer's upload that has not moved for a while is paused (they went offline, or stopped
  // it): say so rather than show a frozen percentage. Progress comes at least every few
  // seconds while chunks arrive.
  const PAUSED_AFTER = 15000;
  setInterval(() => {
    for (const v of S.uploads.values()) {
      const p = v.peerProgress;
      if (p && p.uploading && Date.now() - p.at > PAUSED_AFTER) setUpload(v, p.pct, `${p.who} paused at ${p.pct}%`);
    }
  }, 1000);

  // Files chosen, pasted or dropped: each goes up on its own (at most MAX_PICK at once).
  const MAX_PICK = 10;
  function uploadAll(files) {
    const list = [...files].filter((f) => f && f.size !== undefined);
    if (!list.length) return;
    if ($('file-input').disabled) {
      toast($('attach-label').title || 'You cannot send files here now.');
      return;
    }
    if (list.length > MAX_PICK) toast(`Sending the first ${MAX_PICK} files; choose the rest afterwards.`);
    for (const f of list.slice(0, MAX_PICK)) startUpload(f);
  }

  // ---- the WebSocket ---------------------------------------------------------------------
  const CLOSE_LOGGED_OUT = 4001;
  const CLOSE_TOKEN_EXPIRED = 4002;

  function send(frame) {
    if (S.ws && S.ws.readyState === WebSocket.OPEN) S.ws.send(JSON.stringify(frame));
  }

  function connect() {
    clearTimeout(S.reconnectTimer);
    const attempt = ++S.attempt;
    let hello = false;
    const ws = new WebSocket((location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/ws');
    S.ws = ws;
    ws.onmessage = (ev) => {
      let f;
      try { f = JSON.parse(ev.data); } catch (_) { return; }
      S.lastPong = Date.now();
      if (f.type === 'hello') hello = true;
      onFrame(f);
    };
    ws.onclose = async (ev) => {
      if (S.ws !== ws) return;
      S.connected = false;
      S.ws = null;
      // 4001: this login was logged out; 4002: it reached its end. The cookie is no longer
      // good, so reconnecting would only get 401: log in again instead (unless this page
      // is logging out, which goes to the login page by itself).
      if (ev.code === CLOSE_LOGGED_OUT || ev.code === CLOSE_TOKEN_EXPIRED) {
        if (!SB.leaving()) SB.toLogin();
        return;
      }
      for (const p of S.peers.values()) p.online = false;
      renderAll();
      // Refused before its hello: browsers show a 401 at the upgrade (expired or revoked
      // token) only as 1006, so ask GET /api/auth/me, which goes to the login page on 401.
      // Signed in, or the server unreachable: reconnect as usual.
      if (!hello && !SB.leaving()) {
        if (!(await SB.stillSignedIn())) return;
        if (S.attempt !== attempt) return; // connect() ran meanwhile (the online event)
      }
      const delay = Math.min(10000, 500 * 2 ** Math.min(S.retry, 5)) * (0.75 + Math.random() / 2);
      S.retry++;
      S.retryAt = Date.now() + delay;
      S.reconnectTimer = setTimeout(connect, delay);
      updateComposer();
    };
  }

  function onHello(f) {
    S.connected = true;
    S.retry = 0;
    S.maxBody = f.max_body_bytes || S.maxBody;
    if (typeof f.edit_window_secs === 'number') S.editWindow = f.edit_window_secs * 1000;
    S.lastPong = Date.now();
    // What we have per conversation; the server sends the rest, then live messages.
    syncAll();
    for (const e of S.outbox) sendEntry(e);
    if (S.everConnected) reloadLists();
    S.everConnected = true;
    renderAll();
    markRead();
  }

  // Asks for what we lack per conversation; the server sends the rest, then live messages.
  function syncAll() {
    const since = {};
    for (const c of S.convs.values()) since[c.id] = c.lastSeq;
    send({ type: 'sync', id: 'sync', since });
  }

  function onFrame(f) {
    switch (f.type) {
      case 'hello': return onHello(f);
      case 'message': {
        const h = $('history');
        const atBottom = h.scrollHeight - h.scrollTop - h.clientHeight < 60;
        const c = addMessage(f);
        if (c.peerId === S.current) {
          // Scrolled up to read older messages: a pill says something new came.
          const change = f.kind === 'edit' || f.kind === 'delete';
          if (!atBottom && f.sender_id !== S.me.id && !change) $('new-pill').hidden = false;
          renderMessages();
          markRead();
        }
        renderList();
        return;
      }
      case 'ack': {
        const e = S.outbox.find((x) => x.client_msg_id === f.client_msg_id);
        if (e) {
          addMessage({ id: f.message_id, conversation_id: f.conversation_id, seq: f.seq, sender_id: S.me.id, client_msg_id: f.client_msg_id,
                       kind: 'text', body: e.body, file_id: null, created_at: Date.now() });
          if (S.current === e.to_user_id) {
            renderMessages();
            updateComposer();
          }
          renderList();
        }
        return;
      }
      case 'receipt': {
        const c = S.convs.get(f.conversation_id);
        if (!c) return;
        if (f.user_id === S.me.id) {
          c.readSeq = Math.max(c.readSeq, f.read_seq || 0);
        } else {
          c.peerRead = Math.max(c.peerRead, f.read_seq || 0);
          c.peerDelivered = Math.max(c.peerDelivered, f.delivered_seq || 0, c.peerRead);
          refreshStatuses(c);
        }
        return;
      }
      case 'typing': return showTyping(f);
      case 'presence': {
        peer(f.user_id).online = f.online;
        if (!f.online && f.last_seen_at) peer(f.user_id).lastSeen = f.last_seen_at;
        renderList();
        if (f.user_id === S.current) renderHeader();
        return;
      }
      case 'contact': return reloadLists();
      case 'profile': {
        // A contact renamed themselves (or this user did, on another device).
        if (f.user_id === S.me.id) {
          S.me.display_name = f.display_name;
          SB.showMe(S.me);
        } else if (S.peers.has(f.user_id)) {
          peer(f.user_id).user.display_name = f.display_name;
          renderList();
          if (f.user_id === S.current) renderHeader();
        }
        return;
      }
      case 'transfer': return onTransfer(f);
      case 'error': return onError(f);
      default: return; // pong, sync_done, notification (the menu has its own stream)
    }
  }

  function onError(f) {
    // Syncs are rate-limited per user (many tabs reconnecting at once): try again soon.
    if (f.ref === 'sync' && f.code === 'rate_limited') {
      const ws = S.ws;
      setTimeout(() => { if (S.connected && S.ws === ws) syncAll(); }, 1500);
      return;
    }
    const e = f.ref && S.outbox.find((x) => x.client_msg_id === f.ref);
    if (!e) return;
    if (['rate_limited', 'not_acknowledged', 'unavailable'].includes(f.code)) {
      e.sent_at = Date.now(); // the resend timer tries again
      return;
    }
    dropFromOutbox(e.client_msg_id);
    S.failed.push({ ...e, reason: f.message });
    renderMessages();
  }

  // A connection that went quiet (no frame for 45 s; we ping every 20 s) is dead.
  setInterval(() => {
    if (!S.connected) return updateComposer();
    if (Date.now() - S.lastPong > 45000) S.ws.close();
    else send({ type: 'ping' });
  }, 20000);
  setInterval(() => { if (!S.connected) updateComposer(); }, 1000);

  function renderAll() {
    renderList();
    if (S.current) {
      renderHeader();
      renderMessages();
      updateComposer();
    }
  }

  // ---- wiring --------------------------------------------------------------------------
  function fromHash() {
    const h = new URLSearchParams(location.hash.slice(1));
    if (h.get('u')) return h.get('u');
    if (h.get('c')) {
      const c = S.convs.get(h.get('c'));
      return c ? c.peerId : null;
    }
    return null;
  }

  async function main() {
    S.me = await SB.me;
    S.outbox = loadList('outbox');
    await reloadLists();
    const input = $('composer-input');
    $('composer').addEventListener('submit', (ev) => {
      ev.preventDefault();
      submit();
    });
    // On a touch screen Enter adds a line (there is no Shift to hold): the Send button sends.
    const touch = window.matchMedia('(pointer: coarse)').matches;
    if (touch) input.placeholder = 'Write a message';
    input.addEventListener('keydown', (ev) => {
      if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing && !touch) {
        ev.preventDefault();
        submit();
      }
    });
    input.addEventListener('input', typed);
    $('file-input').addEventListener('change', (ev) => {
      const files = [...ev.target.files];
      ev.target.value = '';
      uploadAll(files);
    });
    // Pasted files (a screenshot) and files dropped on the conversation go up too.
    input.addEventListener('paste', (ev) => {
      const files = ev.clipboardData ? [...ev.clipboardData.files] : [];
      if (!files.length) return;
      ev.preventDefault();
      uploadAll(files);
    });
    const pane = $('conversation');
    const hasFiles = (ev) => ev.dataTransfer && [...ev.dataTransfer.types].includes('Files');
    pane.addEventListener('dragover', (ev) => {
      if (!hasFiles(ev)) return;
      ev.preventDefault();
      pane.classList.add('dropping');
    });
    pane.addEventListener('dragleave', (ev) => {
      if (ev.target === pane || !pane.contains(ev.relatedTarget)) pane.classList.remove('dropping');
    });
    pane.addEventListener('drop', (ev) => {
      if (!hasFiles(ev)) return;
      ev.preventDefault();
      pane.classList.remove('dropping');
      uploadAll(ev.dataTransfer.files);
    });
    // The history keeps its bottom in view when it gets shorter (an upload's row or a
    // taller composer appears) if it was at the bottom.
    const h = $('history');
    let stuck = true;
    h.addEventListener('scroll', () => { stuck = h.scrollHeight - h.scrollTop - h.clientHeight < 60; });
    new ResizeObserver(() => { if (stuck) h.scrollTop = h.scrollHeight; }).observe(h);
    $('back').addEventListener('click', close);
    const viewer = $('viewer');
    $('viewer-close').addEventListener('click', () => viewer.close());
    // A click on the backdrop (outside the picture and its bar) closes it too.
    viewer.addEventListener('click', (ev) => { if (ev.target === viewer) viewer.close(); });
    viewer.addEventListener('close', () => { $('viewer-img').removeAttribute('src'); });
    $('search-input').addEventListener('input', onSearchInput);
    $('search-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      const q = $('search-input').value.trim();
      if (q) runSearch(q);
    });
    $('search-input').addEventListener('keydown', (ev) => {
      if (ev.key === 'Escape') {
        $('search-input').value = '';
        endSearch();
      }
    });
    $('new-pill').addEventListener('click', () => {
      const h = $('history');
      h.scrollTop = h.scrollHeight;
      $('new-pill').hidden = true;
      $('composer-input').focus();
    });
    $('history').addEventListener('scroll', () => {
      const h = $('history');
      if (h.scrollHeight - h.scrollTop - h.clientHeight < 60) $('new-pill').hidden = true;
      const c = S.current && convOf(S.current);
      if (c && c.loaded && $('history').scrollTop < 80) loadOlder(c, false);
    });
    window.addEventListener('hashchange', () => open(fromHash()));
    document.addEventListener('visibilitychange', markRead);
    window.addEventListener('focus', markRead);
    window.addEventListener('online', () => { if (!S.connected) connect(); });
    $('mute-select').addEventListener('change', onMuteChange);
    document.addEventListener('sb:unread', (ev) => {
      S.unread = ev.detail.conversations || {};
      if (S.current && peer(S.current)) renderMute();
      renderList();
    });
    S.unread = SB.notif.unread.conversations || {};
    document.addEventListener('keydown', (ev) => {
      if (ev.key === 'Escape' && S.current && document.activeElement === input && !input.value) close();
    });
    connect();
    const start = fromHash();
    if (start) open(start);
    resumeUploads();
  }

  main().catch((e) => toast(e.message));
})();
