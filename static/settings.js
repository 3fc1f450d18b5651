// Settings page: display name, password, the logins list (log out one or all others),
// export, delete the account. User data is only ever written with textContent.
'use strict';

(() => {
  const { api, el, clone, toast, time } = SB;
  const $ = (id) => document.getElementById(id);

  // A short name for a browser's User-Agent ("Chrome on Linux"), or the raw text.
  function device(ua) {
    if (!ua) return 'Unknown device';
    const browser = ['Edg', 'Firefox', 'Chrome', 'Safari'].find((b) => ua.includes(b + '/'));
    const os = ['Android', 'iPhone', 'iPad', 'Windows', 'Mac OS', 'Linux'].find((o) => ua.includes(o));
    const names = { Edg: 'Edge', 'Mac OS': 'macOS' };
    if (browser && os) return `${names[browser] || browser} on ${names[os] || os}`;
    return ua.length > 60 ? ua.slice(0, 60) + '…' : ua;
  }

  async function loadSessions() {
    const list = await api('GET', '/api/auth/sessions');
    const ul = $('sessions');
    ul.replaceChildren();
    for (const s of list) {
      const li = clone('tpl-session');
      li.dataset.sessionId = s.id;
      li.querySelector('.name').textContent = device(s.user_agent) + (s.current ? ' (this device)' : '');
      const from = s.client_addr ? ` from ${s.client_addr}` : '';
      li.querySelector('.detail').textContent = `last active ${time(s.last_seen_at)}${from}, since ${time(s.created_at)}`;
      if (!s.current) {
        const b = el('button', 'secondary', 'Log out');
        b.type = 'button';
        b.setAttribute('aria-label', `Log out ${device(s.user_agent)}`);
        b.addEventListener('click', async () => {
          b.disabled = true;
          try {
            await api('DELETE', `/api/auth/sessions/${encodeURIComponent(s.id)}`);
            toast('Logged out on that device.');
          } catch (e) {
            toast(e.message);
          }
          await loadSessions();
        });
        li.querySelector('.actions').append(b);
      }
      ul.append(li);
    }
    $('end-others').disabled = list.length <= 1;
  }

  async function submit(form, work) {
    const button = form.querySelector('button[type=submit]');
    button.disabled = true;
    try {
      await work();
    } catch (e) {
      toast(e.message);
    } finally {
      button.disabled = false;
    }
  }

  document.addEventListener('DOMContentLoaded', async () => {
    const me = await SB.me;
    $('username').textContent = '@' + me.username;
    $('display-name').value = me.display_name;

    $('profile-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      submit(ev.target, async () => {
        const u = await api('PATCH', '/api/auth/me', { display_name: $('display-name').value });
        $('display-name').value = u.display_name;
        SB.showMe(u);
        toast('Name saved.');
      });
    });

    $('password-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      submit(ev.target, async () => {
        await api('POST', '/api/auth/password', {
          current_password: $('current-password').value,
          new_password: $('new-password').value,
        }, { allow401: true });
        ev.target.reset();
        toast('Password changed. Your other devices were logged out.');
        await loadSessions();
      });
    });

    $('end-others').addEventListener('click', async () => {
      try {
        await api('DELETE', '/api/auth/sessions');
        toast('Logged out everywhere else.');
      } catch (e) {
        toast(e.message);
      }
      await loadSessions();
    });

    $('delete-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      submit(ev.target, async () => {
        await SB.whileLeaving(async () => {
          await api('DELETE', '/api/auth/me', { password: $('delete-password').value }, { allow401: true });
          for (const k of Object.keys(localStorage)) if (k.startsWith('sb:')) localStorage.removeItem(k);
          location.assign('/login');
        });
      });
    });

    loadSessions().catch((e) => toast(e.message));
  });
})();
