// Login and registration forms: JSON to the auth API, errors shown beside the form.
'use strict';

(() => {
  function showError(form, message) {
    const p = form.querySelector('#form-error');
    p.textContent = message;
    p.hidden = false;
  }

  function busy(form, on) {
    form.querySelector('button[type=submit]').disabled = on;
  }

  async function login(username, password) {
    return SB.api('POST', '/api/auth/login', { username, password }, { allow401: true });
  }

  const loginForm = document.getElementById('login-form');
  if (loginForm) {
    loginForm.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const username = loginForm.username.value.trim();
      const password = loginForm.password.value;
      if (!username || !password) return showError(loginForm, 'Enter your username and password.');
      busy(loginForm, true);
      try {
        await login(username, password);
        location.assign(loginForm.dataset.next || '/chat');
      } catch (e) {
        showError(loginForm, e.code === 'invalid_credentials' ? 'Wrong username or password.' : e.message);
        busy(loginForm, false);
        // Focus back where the user can fix it (the disabled button had taken it away).
        loginForm.password.select();
        loginForm.password.focus();
      }
    });
  }

  const registerForm = document.getElementById('register-form');
  if (registerForm) {
    registerForm.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const username = registerForm.username.value.trim();
      const password = registerForm.password.value;
      const display = registerForm.display_name.value.trim();
      if (!/^[A-Za-z0-9_.-]{3,32}$/.test(username)) {
        return showError(registerForm, 'Usernames are 3–32 letters, digits, _ . or -.');
      }
      if (password.length < 8) return showError(registerForm, 'Passwords have at least 8 characters.');
      busy(registerForm, true);
      try {
        await SB.api('POST', '/api/auth/register', { username, password, display_name: display || undefined });
        await login(username, password);
        location.assign('/chat');
      } catch (e) {
        showError(registerForm, e.code === 'username_taken' ? 'That username is taken.' : e.message);
        busy(registerForm, false);
        const field = e.code === 'username_taken' ? registerForm.username : registerForm.password;
        field.select();
        field.focus();
      }
    });
  }
})();
