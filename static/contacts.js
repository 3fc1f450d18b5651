// Contacts page: search as you type, requests in and out, contacts. Every list is
// re-read from the API after a change and when a contact notification arrives.
'use strict';

(() => {
  const { api, el, clone, toast, name } = SB;

  function person(user, actions) {
    const li = clone('tpl-person');
    li.dataset.userId = user.id;
    li.querySelector('.name').textContent = name(user);
    li.querySelector('.username').textContent = '@' + user.username;
    li.querySelector('.actions').append(...actions);
    return li;
  }

  // A button running `action`; a `confirm` text makes the first press ask again.
  function button(label, action, opts = {}) {
    const b = el('button', opts.cls || '', label);
    b.type = 'button';
    if (opts.disabled) b.disabled = true;
    let armed = false;
    b.addEventListener('click', async () => {
      if (opts.confirm && !armed) {
        armed = true;
        b.textContent = opts.confirm;
        setTimeout(() => { armed = false; b.textContent = label; }, 4000);
        return;
      }
      b.disabled = true;
      try {
        await action();
        await refresh();
        await search();
      } catch (e) {
        toast(e.message);
        b.disabled = false;
      }
    });
    return b;
  }

  function messageLink(user) {
    const a = el('a', 'button secondary', 'Message');
    a.href = '/chat#u=' + encodeURIComponent(user.id);
    return a;
  }

  function fill(listId, emptyId, items) {
    document.getElementById(listId).replaceChildren(...items);
    document.getElementById(emptyId).hidden = items.length > 0;
  }

  async function refresh() {
    const [contacts, requests, blocked] = await Promise.all([
      api('GET', '/api/contacts'), api('GET', '/api/contacts/requests'), api('GET', '/api/contacts/blocked'),
    ]);
    fill('blocked', 'blocked-empty', blocked.blocked.map((b) => person(b.user, [
      button('Unblock', () => api('DELETE', `/api/contacts/${encodeURIComponent(b.user.id)}/block`), { cls: 'secondary' }),
    ])));
    fill('incoming', 'incoming-empty', requests.incoming.map((r) => person(r.user, [
      button('Accept', () => api('POST', `/api/contacts/requests/${encodeURIComponent(r.id)}/accept`)),
      button('Decline', () => api('POST', `/api/contacts/requests/${encodeURIComponent(r.id)}/decline`), { cls: 'secondary' }),
    ])));
    fill('outgoing', 'outgoing-empty', requests.outgoing.map((r) => person(r.user, [
      button('Cancel request', () => api('DELETE', `/api/contacts/requests/${encodeURIComponent(r.id)}`), { cls: 'secondary' }),
    ])));
    fill('contacts', 'contacts-empty', contacts.contacts.map((c) => person(c.user, [
      messageLink(c.user),
      button('Remove', () => api('DELETE', `/api/contacts/${encodeURIComponent(c.user.id)}`), { cls: 'secondary', confirm: 'Really remove?' }),
      button('Block', () => api('POST', `/api/contacts/${encodeURIComponent(c.user.id)}/block`), { cls: 'danger', confirm: 'Really block?' }),
    ])));
  }

  function searchActions(u) {
    const request = () => api('POST', '/api/contacts/requests', { username: u.username });
    const block = button('Block', () => api('POST', `/api/contacts/${encodeURIComponent(u.id)}/block`), { cls: 'danger', confirm: 'Really block?' });
    switch (u.relation) {
      case 'contact': return [messageLink(u)];
      case 'pending_out': return [button('Requested', async () => {}, { disabled: true, cls: 'secondary' })];
      case 'pending_in': return [button('Accept request', request), block];
      default: return [button('Add contact', request), block];
    }
  }

  const input = document.getElementById('search');
  let pending = null;
  let timer = null;

  async function search() {
    const q = input.value.trim();
    if (pending) pending.abort();
    if (!q) {
      fill('search-results', 'search-empty', []);
      document.getElementById('search-empty').hidden = true;
      return;
    }
    pending = new AbortController();
    try {
      const page = await api('GET', '/api/users?limit=20&q=' + encodeURIComponent(q), undefined, { signal: pending.signal });
      if (q !== input.value.trim()) return;
      fill('search-results', 'search-empty', page.users.map((u) => person(u, searchActions(u))));
    } catch (e) {
      if (e.name !== 'AbortError') toast(e.message);
    }
  }

  input.addEventListener('input', () => {
    clearTimeout(timer);
    timer = setTimeout(search, 150);
  });
  input.addEventListener('keydown', (e) => {
    if (e.key === 'Enter') {
      clearTimeout(timer);
      search();
    }
  });
  document.addEventListener('sb:notification', (ev) => {
    if (ev.detail.kind !== 'message') refresh().then(search).catch(() => {});
  });
  refresh().catch((e) => toast(e.message));
})();
