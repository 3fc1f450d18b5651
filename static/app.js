// Switchboard: what every page shares. The REST helper (CSRF header, JSON errors, 401 →
// login), small DOM helpers, the signed-in user, and the notifications menu fed by the
// server-sent event stream. User data is only ever written with textContent.
'use strict';

const SB = (() => {
  const csrf = document.querySelector('meta[name="csrf-token"]')?.content || '';
  const baseTitle = document.title;

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  function loginUrl() {
    return '/login?next=' + encodeURIComponent(location.pathname + location.hash);
  }

  // Sends the page to the login page, once: a logout elsewhere ends this page's socket
  // (4001) and its notification stream (whose check then gets 401) at the same moment, and
  // a second navigation would abort the first one.
  let toLoginStarted = false;
  function toLogin() {
    if (toLoginStarted) return;
    toLoginStarted = true;
    location.assign(loginUrl());
  }

  // fetch() with the CSRF header; JSON in and out; errors as ApiError with the server's
  // code and message. A 401 sends the user to the login page unless `allow401`.
  async function api(method, path, body, opts = {}) {
    const headers = { 'X-CSRF-Token': csrf, ...(opts.headers || {}) };
    let payload = body;
    if (body !== undefined && !(body instanceof Blob) && !(body instanceof ArrayBuffer)) {
      headers['Content-Type'] = 'application/json';
      payload = JSON.stringify(body);
    }
    let res;
    try {
      res = await fetch(path, { method, headers, body: payload, credentials: 'same-origin', signal: opts.signal });
    } catch (e) {
      if (e.name === 'AbortError') throw e;
      throw new ApiError(0, 'network', 'The server cannot be reached. Check your connection.');
    }
    if (res.status === 401 && !opts.allow401) {
      toLogin();
      throw new ApiError(401, 'invalid_token', 'Please log in again.');
    }
    if (!res.ok) {
      let code = 'http_' + res.status;
      let message = res.statusText || 'Request failed';
      try {
        const j = await res.json();
        code = j.error.code;
        message = j.error.message;
      } catch (_) { /* not our JSON error */ }
      throw new ApiError(res.status, code, message);
    }
    if (res.status === 204) return null;
    return (res.headers.get('content-type') || '').includes('json') ? res.json() : null;
  }

  // <tag class=... > with text set through textContent.
  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  // A fresh copy of a <template>'s first element.
  function clone(id) {
    return document.getElementById(id).content.firstElementChild.cloneNode(true);
  }

  let toastTimer = null;
  function toast(message) {
    const t = document.getElementById('toast');
    if (!t) return;
    t.textContent = message;
    t.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { t.hidden = true; }, 4000);
  }

  function time(ms) {
    return new Date(ms).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  }

  function when(ms) {
    const d = new Date(ms);
    const today = new Date();
    return d.toDateString() === today.toDateString() ? time(ms) : d.toLocaleString([], { dateStyle: 'medium', timeStyle: 'short' });
  }

  function name(user) {
    return user ? (user.display_name || user.username) : 'someone';
  }

  function setTitleCount(n) {
    document.title = (n > 0 ? `(${n}) ` : '') + baseTitle;
  }

  // The signed-in user (checks the session; a dead one goes to the login page).
  const signedIn = !!document.getElementById('logout');
  const me = signedIn ? api('GET', '/api/auth/me') : Promise.resolve(null);

  // ---- notifications menu ----------------------------------------------------------
  const notif = { items: new Map(), unread: { total: 0, conversations: {}, muted: {} }, lastN: 0 };

  // Whether the user muted this conversation (on any device): the counts carry the mutes.
  function isMuted(conversationId) {
    const muted = notif.unread.muted || {};
    if (!conversationId || !(conversationId in muted)) return false;
    const until = muted[conversationId];
    return until === null || until > Date.now();
  }

  function notifText(n) {
    const p = n.payload || {};
    const who = p.sender_display_name || p.display_name || p.sender_username || p.username || 'someone';
    if (n.kind === 'message') {
      // One notification per conversation: the newest message, and how many are unread.
      const latest = p.message_kind === 'file' ? `${who} sent ${p.file_name || 'a file'}` : `${who}: ${p.preview || ''}`;
      return n.count > 1 ? `${n.count} new messages. ${latest}` : latest;
    }
    if (n.kind === 'contact_request') return `${who} (@${p.username}) wants to be your contact`;
    if (n.kind === 'contact_accepted') return `${who} accepted your contact request`;
    return n.kind;
  }

  function notifTarget(n) {
    if (n.kind === 'message' && n.conversation_id) return '/chat#c=' + encodeURIComponent(n.conversation_id);
    if (n.kind === 'contact_request') return '/contacts';
    if (n.kind === 'contact_accepted' && n.payload && n.payload.user_id) return '/chat#u=' + encodeURIComponent(n.payload.user_id);
    return '/chat';
  }

  function renderNotifs() {
    const list = document.getElementById('notif-list');
    if (!list) return;
    // A muted conversation raises nothing: its messages are not listed here (they still
    // count in the conversation itself).
    const shown = [...notif.items.values()].filter((n) => !(n.kind === 'message' && isMuted(n.conversation_id)));
    const sorted = shown.sort((a, b) => b.n - a.n).slice(0, 30);
    list.replaceChildren(...sorted.map((n) => {
      const li = clone('tpl-notif');
      const a = li.querySelector('a');
      a.href = notifTarget(n);
      a.dataset.id = n.id;
      a.classList.toggle('unread', !n.read);
      li.querySelector('.notif-text').textContent = notifText(n);
      li.querySelector('time').textContent = when(n.created_at);
      a.addEventListener('click', async (ev) => {
        ev.preventDefault();
        if (!n.read) {
          try { await api('POST', `/api/notifications/${encodeURIComponent(n.id)}/read`); } catch (_) { /* counts follow */ }
        }
        const target = a.getAttribute('href');
        closePanel();
        if (target.startsWith(location.pathname + '#')) {
          location.hash = target.slice(target.indexOf('#'));
        } else {
          location.assign(target);
        }
      });
      return li;
    }));
    document.getElementById('notif-empty').hidden = sorted.length > 0;
  }

  function setUnread(unread) {
    notif.unread = unread;
    const badge = document.getElementById('notif-count');
    if (badge) {
      badge.textContent = String(unread.total);
      badge.hidden = unread.total === 0;
    }
    setTitleCount(unread.total);
    document.dispatchEvent(new CustomEvent('sb:unread', { detail: unread }));
  }

  function addNotif(n) {
    notif.items.set(n.id, n);
    notif.lastN = Math.max(notif.lastN, n.n);
  }

  function closePanel() {
    const panel = document.getElementById('notif-panel');
    const button = document.getElementById('notif-button');
    if (!panel || panel.hidden) return;
    panel.hidden = true;
    button.setAttribute('aria-expanded', 'false');
  }

  async function startNotifications() {
    const button = document.getElementById('notif-button');
    const panel = document.getElementById('notif-panel');
    if (!button) return;
    button.addEventListener('click', () => {
      const open = panel.hidden;
      panel.hidden = !open;
      button.setAttribute('aria-expanded', String(open));
      if (open) panel.querySelector('a, button')?.focus();
    });
    document.addEventListener('keydown', (e) => {
      if (e.key === 'Escape' && !panel.hidden) {
        closePanel();
        button.focus();
      }
    });
    document.addEventListener('click', (e) => {
      if (!panel.hidden && !panel.contains(e.target) && !button.contains(e.target)) closePanel();
    });
    setUpDesktopButton();
    document.getElementById('notif-read-all').addEventListener('click', async () => {
      try {
        await api('POST', '/api/notifications/read-all');
        for (const n of notif.items.values()) n.read = true;
        renderNotifs();
      } catch (e) { toast(e.message); }
    });
    try {
      const page = await api('GET', '/api/notifications?limit=30');
      page.notifications.forEach(addNotif);
      setUnread(page.unread);
      renderNotifs();
    } catch (e) {
      if (e.status !== 401) toast('Notifications are unavailable: ' + e.message);
    }
    openStream();
  }

  // ---- desktop notifications ------------------------------------------------------------
  // With the browser's permission, a new message or contact request that arrives while
  // this tab is hidden shows a system notification (sender and a short text; a click opens
  // it). Every open tab gets the same stream, so the tabs race for a Web Lock named after
  // the change and only the winner shows it; it keeps the lock for a minute, past the
  // moment every tab has had the event (localStorage cannot decide this: another tab may
  // see a write late).
  const DESKTOP_HOLD_MS = 60_000;

  function desktopNotify(n) {
    if (!('Notification' in window) || Notification.permission !== 'granted' || !document.hidden) return;
    if (n.read || !['message', 'contact_request'].includes(n.kind) || isMuted(n.conversation_id)) return;
    const show = () => {
      const p = n.payload || {};
      const title = n.kind === 'message' ? (p.sender_display_name || p.sender_username || 'New message') : 'Contact request';
      const shown = new Notification(title, { body: notifText(n).slice(0, 200), tag: 'sb-' + n.id });
      shown.onclick = () => {
        window.focus();
        location.assign(notifTarget(n));
        shown.close();
      };
    };
    if (!navigator.locks) return show();
    // A conversation's notification is updated in place, with a new n: one lock per update.
    navigator.locks.request(`sb-desktop:${n.id}:${n.n}`, { ifAvailable: true }, (lock) => {
      if (!lock) return null; // another tab has it
      show();
      return new Promise((done) => setTimeout(done, DESKTOP_HOLD_MS));
    });
  }

  // The panel offers to turn them on while the browser has not been asked yet.
  function setUpDesktopButton() {
    const b = document.getElementById('notif-desktop');
    if (!b || !('Notification' in window)) return;
    b.hidden = Notification.permission !== 'default';
    b.addEventListener('click', async () => {
      const answer = await Notification.requestPermission();
      b.hidden = answer !== 'default';
      toast(answer === 'granted' ? 'Desktop notifications are on.' : 'Desktop notifications stay off.');
    });
  }

  // The notification stream. It ends when this login is logged out or its token expires,
  // and a reconnect then gets 401, which EventSource does not report (it only errors). So
  // on any error we close it ourselves, ask GET /api/auth/me (a 401 goes to the login
  // page), and if still signed in (or the server is unreachable) open a new one after a
  // backoff of 1 s doubling to 30 s, resuming with ?after= the last notification seen.
  const stream = { source: null, retry: 0, timer: null, parked: false };

  function openStream() {
    clearTimeout(stream.timer);
    const source = new EventSource('/api/notifications/stream?after=' + notif.lastN);
    stream.source = source;
    source.addEventListener('open', () => { stream.retry = 0; });
    source.addEventListener('notification', (ev) => {
      const n = JSON.parse(ev.data);
      addNotif(n);
      renderNotifs();
      desktopNotify(n);
      document.dispatchEvent(new CustomEvent('sb:notification', { detail: n }));
    });
    source.addEventListener('unread', (ev) => {
      const unread = JSON.parse(ev.data);
      // A read elsewhere: mark what the counts say is read.
      for (const n of notif.items.values()) {
        if (n.kind === 'message' && !n.read) {
          // One notification per conversation: its count is the conversation's (a read
          // changes it without a new notification).
          n.count = unread.conversations[n.conversation_id] || 0;
          if (n.count === 0) n.read = true;
        } else if (unread.total === 0) {
          n.read = true;
        }
      }
      setUnread(unread);
      renderNotifs();
    });
    source.addEventListener('error', async () => {
      if (stream.source !== source) return;
      source.close();
      stream.source = null;
      if (leaving) { stream.parked = true; return; }
      if (!(await stillSignedIn())) return;
      if (leaving) { stream.parked = true; return; }
      if (stream.source) return;
      const delay = Math.min(30000, 1000 * 2 ** Math.min(stream.retry, 5)) * (0.75 + Math.random() / 2);
      stream.retry++;
      stream.timer = setTimeout(openStream, delay);
    });
  }

  // Whether GET /api/auth/me still accepts this session: false only on 401, which has
  // already sent the page to the login page. A network or server error counts as signed
  // in (the caller retries with its backoff); the check gives up after 10 s.
  async function stillSignedIn() {
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), 10000);
    try {
      await api('GET', '/api/auth/me', undefined, { signal: abort.signal });
      return true;
    } catch (e) {
      return e.status !== 401;
    } finally {
      clearTimeout(timer);
    }
  }

  // Set while logging out: the server then closes this login's sockets (4001) and
  // streams, which must not race logout() to the login page (or check the session).
  let leaving = false;

  async function logout() {
    leaving = true;
    try {
      await api('POST', '/api/auth/logout', undefined, { allow401: true });
    } catch (e) {
      if (e.status !== 401) {
        leaving = false;
        toast(e.message);
        // Still signed in: a stream that ended meanwhile comes back.
        if (stream.parked) {
          stream.parked = false;
          openStream();
        }
        return;
      }
    }
    // This browser's queued messages and paused uploads belong to the session.
    for (const k of Object.keys(localStorage)) if (k.startsWith('sb:')) localStorage.removeItem(k);
    location.assign('/login');
  }

  // The signed-in user in the top bar (the Settings link).
  function showMe(u) {
    const e = document.getElementById('me');
    if (e) e.textContent = `${name(u)} (@${u.username})`;
  }

  // ---- the connection on pages without the chat -----------------------------------------
  // The chat page has its own socket (chat.js). Contacts and Settings keep one open too, so
  // that the user stays online for their contacts and the messages sent to them are
  // delivered while they are there (the server marks a message delivered when it reaches
  // a socket of theirs; the notifications menu shows it). It sends nothing (the server's
  // heartbeat keeps it alive) and no `sync`: it gets what arrives while it is open, and the
  // chat page catches up on the rest. A close for a logged-out or expired login goes to
  // the login page, like the chat's.
  const side = { retry: 0, timer: null, ws: null };

  function sideSocket() {
    clearTimeout(side.timer);
    let hello = false;
    const ws = new WebSocket((location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/ws');
    side.ws = ws;
    ws.onmessage = () => {
      if (!hello) side.retry = 0;
      hello = true;
    };
    ws.onclose = async (ev) => {
      side.ws = null;
      if (leaving || toLoginStarted) return;
      if (ev.code === 4001 || ev.code === 4002) return toLogin();
      // Refused at the upgrade (401 shows as 1006): signed out goes to the login page.
      if (!hello && !(await stillSignedIn())) return;
      // The `online` event may have opened the next one meanwhile.
      if (side.ws) return;
      const delay = Math.min(30000, 1000 * 2 ** Math.min(side.retry++, 5)) * (0.75 + Math.random() / 2);
      side.timer = setTimeout(sideSocket, delay);
    };
  }

  document.addEventListener('DOMContentLoaded', () => {
    if (!signedIn) return;
    document.getElementById('logout').addEventListener('click', logout);
    me.then(showMe).catch(() => {});
    startNotifications();
    if (document.body.dataset.page !== 'chat' && 'WebSocket' in window) {
      sideSocket();
      window.addEventListener('online', () => { if (!side.ws) sideSocket(); });
    }
  });

  // Runs `work` (which ends this login: logout, deleting the account) with the page
  // marked as leaving, so the closing stream does not race it to the login page.
  async function whileLeaving(work) {
    leaving = true;
    try {
      return await work();
    } catch (e) {
      leaving = false;
      throw e;
    }
  }

  return { api, ApiError, el, clone, toast, time, when, name, me, showMe, notif, isMuted, setTitleCount, toLogin, stillSignedIn, whileLeaving, leaving: () => leaving || toLoginStarted };
})();
