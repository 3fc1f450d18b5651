// Browser tests of the Switchboard web UI: real headless Chromium (Debian's package),
// a real `switchboard all` process with its own SQLite file and port, two browser
// contexts (two people) talking to each other through the UI only.
//
//   SB_BIN=/path/to/switchboard node --test ui.test.mjs      (scripts/test does this)
//   SB_SCREENSHOTS=docs/screenshots ... also saves the screenshots of the main pages.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import zlib from 'node:zlib';
import { mkdtempSync, rmSync, writeFileSync, readFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { chromium } from 'playwright-core';

const BIN = process.env.SB_BIN;
const CHROMIUM = process.env.SB_CHROMIUM || '/usr/bin/chromium';
const SHOTS = process.env.SB_SCREENSHOTS ? resolve(process.env.SB_SCREENSHOTS) : null;
const WAIT = 20_000;

// ---- the server ------------------------------------------------------------------------
class Server {
  constructor() {
    this.dir = mkdtempSync(join(tmpdir(), 'sb-browser-'));
    this.config = join(this.dir, 'server.toml');
    writeFileSync(this.config, [
      `data_dir = "${join(this.dir, 'data')}"`,
      'log = "warn"',
      '[auth]',
      'jwt_secret = "browser-test-secret-browser-test-secret-0123"',
      'register_per_ip_per_minute = 100000',
      'login_per_ip_per_minute = 100000',
      'login_per_username_per_minute = 100000',
      '[limits]',
      'contact_requests_per_minute = 100000',
      'search_per_minute = 100000',
      '[files]',
      'chunk_bytes = 262144',
      '',
    ].join('\n'));
    this.addr = null;
  }

  // Starts the process (on the same address as before, after a stop).
  async start() {
    const listen = this.addr || '127.0.0.1:0';
    this.child = spawn(BIN, ['--config', this.config, '--listen', listen], { stdio: ['ignore', 'pipe', 'inherit'] });
    this.addr = await new Promise((ok, fail) => {
      let out = '';
      const timer = setTimeout(() => fail(new Error('server did not start: ' + out)), 60_000);
      this.child.stdout.on('data', (d) => {
        out += d;
        const m = out.match(/listening on http:\/\/(\S+)/);
        if (m) {
          clearTimeout(timer);
          ok(m[1]);
        }
      });
      this.child.on('error', (e) => fail(new Error(`cannot start ${BIN}: ${e.message}`)));
      this.child.on('exit', (code) => fail(new Error(`server exited (${code}): ${out}`)));
    });
    this.url = 'http://' + this.addr;
  }

  // Kills the process outright (no graceful shutdown) and waits until it is gone.
  async kill() {
    const exited = new Promise((ok) => this.child.once('exit', ok));
    this.child.kill('SIGKILL');
    await exited;
  }

  cleanup() {
    rmSync(this.dir, { recursive: true, force: true });
  }
}

// ---- helpers ---------------------------------------------------------------------------
const server = new Server();
let browser;
const pages = {};

async function person(nick, opts = {}) {
  const context = await browser.newContext({ viewport: { width: 1100, height: 720 }, acceptDownloads: true, ...opts });
  const page = await context.newPage();
  page.dialogs = [];
  page.on('dialog', (d) => { page.dialogs.push(d.message()); d.dismiss().catch(() => {}); });
  page.errors = [];
  page.on('pageerror', (e) => page.errors.push(String(e)));
  page.nick = nick;
  return page;
}

async function shot(page, name) {
  if (!SHOTS) return;
  mkdirSync(SHOTS, { recursive: true });
  await page.screenshot({ path: join(SHOTS, name + '.png') });
}

const messages = (page) => page.locator('#messages li.msg:not(.pending) .body');
const sha256 = (buf) => createHash('sha256').update(buf).digest('hex');

async function register(page, username, display, password) {
  await page.goto(server.url + '/register');
  await page.fill('#username', username);
  await page.fill('#display_name', display);
  await page.fill('#password', password);
  await page.click('button[type=submit]');
  await page.waitForURL('**/chat', { timeout: WAIT });
}

async function openChatWith(page, display) {
  await page.locator('#conv-list a.conv', { hasText: display }).click();
  await page.locator('#peer-name', { hasText: display }).waitFor({ timeout: WAIT });
}

async function send(page, text) {
  await page.fill('#composer-input', text);
  await page.press('#composer-input', 'Enter');
}

// The bodies of the open conversation as the user sees them.
async function bodies(page) {
  return messages(page).allTextContents();
}

async function waitForBody(page, text) {
  await messages(page).filter({ hasText: text }).first().waitFor({ timeout: WAIT });
}

before(async () => {
  assert.ok(BIN, 'SB_BIN names the switchboard binary');
  await server.start();
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'],
  });
  pages.alice = await person('alice');
  pages.bob = await person('bob');
});

after(async () => {
  await browser?.close();
  if (server.child && server.child.exitCode === null) await server.kill();
  server.cleanup();
});

// A display name that is also an attack: it must show as text everywhere.
const BOB_NAME = 'Bob <b>bold</b><img src=x onerror=alert(3)>';
const PASSWORD = 'correct horse battery';

test('two people use Switchboard in real browsers', async (t) => {
  const { alice, bob } = pages;

  await t.test('the login page, and wrong credentials get a clear error', async () => {
    await alice.goto(server.url + '/');
    await alice.waitForURL('**/login**');
    await shot(alice, 'login');
    await alice.fill('#username', 'nobody');
    await alice.fill('#password', 'wrong password');
    await alice.click('button[type=submit]');
    await alice.locator('#form-error', { hasText: 'Wrong username or password' }).waitFor({ timeout: WAIT });
    // The focus goes back to the password, ready to retype.
    assert.equal(await alice.evaluate(() => document.activeElement?.id), 'password');
  });

  await t.test('both register and land in the chat', async () => {
    await register(alice, 'alice', 'Alice', PASSWORD);
    await register(bob, 'bob', BOB_NAME, PASSWORD);
    await alice.locator('#me', { hasText: '@alice' }).waitFor({ timeout: WAIT });
    await alice.locator('#conv-empty').waitFor({ state: 'visible', timeout: WAIT });
    // Signed in, the login and register pages go to the chat.
    for (const path of ['/login', '/register']) {
      await alice.goto(server.url + path);
      await alice.waitForURL('**/chat');
    }
  });

  await t.test('alice finds bob as she types and asks him; bob is notified and accepts', async () => {
    await alice.click('nav a[href="/contacts"]');
    await alice.waitForURL('**/contacts');
    await alice.type('#search', 'bo', { delay: 50 });
    const result = alice.locator('#search-results li', { hasText: '@bob' });
    await result.waitFor({ timeout: WAIT });
    // The display name shows as text, markup and all.
    assert.equal(await result.locator('.name').textContent(), BOB_NAME);
    await result.getByRole('button', { name: 'Add contact' }).click();
    await alice.locator('#outgoing li', { hasText: '@bob' }).waitFor({ timeout: WAIT });
    await result.getByRole('button', { name: 'Requested' }).waitFor({ timeout: WAIT });

    // Bob, on the chat page, sees the notification count go up live.
    await bob.locator('#notif-count', { hasText: '1' }).waitFor({ timeout: WAIT });
    assert.match(await bob.title(), /^\(1\) /);
    await bob.click('#notif-button');
    const item = bob.locator('#notif-list .notif-item', { hasText: 'wants to be your contact' });
    await item.waitFor({ timeout: WAIT });
    await item.click();
    await bob.waitForURL('**/contacts');
    const request = bob.locator('#incoming li', { hasText: '@alice' });
    await request.getByRole('button', { name: 'Accept' }).click();
    await bob.locator('#contacts li', { hasText: '@alice' }).waitFor({ timeout: WAIT });
    await bob.locator('#incoming-empty').waitFor({ state: 'visible' });
    await bob.locator('#notif-count').waitFor({ state: 'hidden', timeout: WAIT });
    // Alice learns it too (a notification) and bob moves to her contacts.
    await alice.locator('#notif-count', { hasText: '1' }).waitFor({ timeout: WAIT });
    await alice.locator('#contacts li', { hasText: '@bob' }).waitFor({ timeout: WAIT });
  });

  await t.test('they chat both ways live, with unread badges, typing, receipts and presence', async () => {
    await alice.goto(server.url + '/chat');
    await bob.goto(server.url + '/chat');
    await openChatWith(alice, BOB_NAME);
    await alice.locator('#peer-dot.online').waitFor({ timeout: WAIT });
    await send(alice, 'Hello Bob');
    await waitForBody(alice, 'Hello Bob');
    // Bob has not opened the conversation: an unread badge, and the count in the title.
    const badge = bob.locator('#conv-list a.conv', { hasText: 'Alice' }).locator('.badge');
    await badge.filter({ hasText: '1' }).waitFor({ timeout: WAIT });
    await bob.waitForFunction(() => document.title.startsWith('(1) '), null, { timeout: WAIT });
    // A second message: one notification for the conversation, counting both.
    await send(alice, 'Are you there?');
    await badge.filter({ hasText: '2' }).waitFor({ timeout: WAIT });
    await bob.click('#notif-button');
    const note = bob.locator('#notif-list .notif-item', { hasText: 'Alice: Are you there?' });
    await note.waitFor({ timeout: WAIT });
    assert.match(await note.textContent(), /2 new messages\. Alice: Are you there\?/);
    assert.equal(await bob.locator('#notif-list .notif-item', { hasText: 'Hello Bob' }).count(), 0);
    await bob.keyboard.press('Escape');
    await openChatWith(bob, 'Alice');
    await waitForBody(bob, 'Hello Bob');
    await badge.waitFor({ state: 'hidden', timeout: WAIT });
    await bob.waitForFunction(() => !document.title.startsWith('('), null, { timeout: WAIT });
    // Alice sees that bob read both.
    await alice.locator('#messages li.msg.mine .status', { hasText: 'Read' }).nth(1).waitFor({ timeout: WAIT });

    // Typing shows on the other side.
    await bob.type('#composer-input', 'Hi Al', { delay: 30 });
    await alice.locator('#typing', { hasText: 'is typing' }).waitFor({ timeout: WAIT });
    await bob.fill('#composer-input', '');
    await send(bob, 'Hi Alice, the notes are at https://example.com/docs.');
    await waitForBody(alice, 'the notes are at');
    const link = alice.locator('#messages .body a', { hasText: 'https://example.com/docs' });
    assert.equal(await link.getAttribute('href'), 'https://example.com/docs');
    assert.equal(await link.getAttribute('rel'), 'noopener noreferrer nofollow');

    // Shift+Enter adds a line; Enter sends.
    await alice.click('#composer-input');
    await alice.keyboard.type('line one');
    await alice.keyboard.press('Shift+Enter');
    await alice.keyboard.type('line two');
    await alice.keyboard.press('Enter');
    await waitForBody(bob, 'line two');
    assert.ok((await bodies(bob)).includes('line one\nline two'));
  });

  await t.test('hole: stored XSS through message bodies and display names (shown as text, nothing runs)', async () => {
    const attacks = ['<script>alert(1)</script>', '<img src=x onerror=alert(2)>', '<a href="javascript:alert(4)">click</a>'];
    for (const a of attacks) await send(alice, a);
    for (const page of [alice, bob]) {
      await waitForBody(page, attacks[2]);
      const shown = await bodies(page);
      for (const a of attacks) assert.ok(shown.includes(a), `${page.nick} shows ${a} as text`);
      assert.equal(await page.locator('#messages img, #messages script, #conv-list img').count(), 0);
      assert.equal(await page.locator('#messages a[href^="javascript"]').count(), 0);
      assert.deepEqual(page.dialogs, [], `no script ran in ${page.nick}'s browser`);
      assert.deepEqual(page.errors, [], `no errors in ${page.nick}'s page`);
    }
    // Bob's display name, in alice's list and header, is text too.
    assert.equal(await alice.locator('#peer-name').textContent(), BOB_NAME);
  });

  await t.test('a file is sent in chunks, resumes after a reload, and downloads intact', async () => {
    const content = randomBytes(1_300_000); // 5 chunks of 256 KiB
    const fileName = '"><img src=x onerror=alert(5)> report.bin';
    // Stop the upload after its first chunk: later chunks fail as if the network dropped.
    let allowed = 1;
    await alice.route('**/api/transfers/*/chunks/*', (route) => (allowed-- > 0 ? route.continue() : route.abort()));
    await alice.setInputFiles('#file-input', { name: fileName, mimeType: 'application/octet-stream', buffer: content });
    await alice.locator('#uploads .upload .upload-name', { hasText: 'report.bin' }).waitFor({ timeout: WAIT });
    // Bob sees the upload's progress.
    await bob.locator('#uploads .upload-state', { hasText: 'is sending' }).waitFor({ timeout: WAIT });
    await alice.waitForFunction(() => Object.keys(localStorage).some((k) => k.startsWith('sb:uploads:') && localStorage[k].includes('report.bin')));
    await alice.unroute('**/api/transfers/*/chunks/*');
    await alice.reload();
    const paused = alice.locator('#uploads .upload', { hasText: 'report.bin' });
    await paused.locator('.upload-state', { hasText: 'paused' }).waitFor({ timeout: WAIT });
    await paused.locator('.resume input').setInputFiles({ name: fileName, mimeType: 'application/octet-stream', buffer: content });
    // The file message appears on both sides, its name as text.
    for (const page of [alice, bob]) await page.locator('#messages a.file-link', { hasText: 'report.bin' }).waitFor({ timeout: WAIT });
    assert.equal(await bob.locator('#messages a.file-link').last().textContent(), fileName);
    const [download] = await Promise.all([bob.waitForEvent('download'), bob.locator('#messages a.file-link').last().click()]);
    const saved = await download.path();
    assert.equal(sha256(readFileSync(saved)), sha256(content), 'the downloaded file is the sent one');
    assert.deepEqual(bob.dialogs, []);
  });

  await t.test('several files at once: picked together, pasted, and dropped on the conversation', async () => {
    const file = (n) => ({ name: `notes-${n}.txt`, mimeType: 'text/plain', buffer: Buffer.from(`notes number ${n}\n`) });
    await alice.setInputFiles('#file-input', [file(1), file(2)]);
    // A pasted file (a screenshot, say) and one dropped onto the conversation.
    await alice.evaluate(() => {
      const dt = new DataTransfer();
      dt.items.add(new File(['pasted notes\n'], 'notes-3.txt', { type: 'text/plain' }));
      document.getElementById('composer-input').dispatchEvent(new ClipboardEvent('paste', { clipboardData: dt, bubbles: true, cancelable: true }));
      const drop = new DataTransfer();
      drop.items.add(new File(['dropped notes\n'], 'notes-4.txt', { type: 'text/plain' }));
      document.getElementById('history').dispatchEvent(new DragEvent('drop', { dataTransfer: drop, bubbles: true, cancelable: true }));
    });
    for (const n of [1, 2, 3, 4]) await bob.locator('#messages a.file-link', { hasText: `notes-${n}.txt` }).waitFor({ timeout: WAIT });
    // The newest message stays in view above the upload rows.
    const last = bob.locator('#messages li.msg').last();
    assert.ok(await last.isVisible());
    // The Attach button shows the keyboard focus.
    await alice.locator('#file-input').focus();
    const outline = await alice.evaluate(() => getComputedStyle(document.getElementById('attach-label')).outlineStyle);
    assert.equal(outline, 'solid');
  });

  await t.test('a pasted image shows as a thumbnail and opens full size; an SVG stays a link', async () => {
    // A screenshot pasted into the composer: 800×400 pixels.
    await alice.evaluate(async () => {
      const canvas = new OffscreenCanvas(800, 400);
      const g = canvas.getContext('2d');
      g.fillStyle = '#3060c0';
      g.fillRect(0, 0, 800, 400);
      g.fillStyle = '#f0c020';
      g.fillRect(100, 100, 300, 200);
      const blob = await canvas.convertToBlob({ type: 'image/png' });
      const dt = new DataTransfer();
      dt.items.add(new File([blob], 'sketch.png', { type: 'image/png' }));
      document.getElementById('composer-input').dispatchEvent(new ClipboardEvent('paste', { clipboardData: dt, bubbles: true, cancelable: true }));
    });
    const svg = '<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><script>alert(7)</script></svg>';
    await alice.setInputFiles('#file-input', { name: 'logo.svg', mimeType: 'image/svg+xml', buffer: Buffer.from(svg) });
    await bob.locator('#messages a.file-link', { hasText: 'logo.svg' }).waitFor({ timeout: WAIT });
    const thumb = bob.locator('#messages li.msg', { hasText: 'sketch.png' }).locator('button.thumb img');
    await thumb.waitFor({ timeout: WAIT });
    // Sized from the message before it loads (240 × 120), then a real picture: the server's
    // thumbnail (480 px wide for a sharp 240 CSS px).
    assert.deepEqual(await thumb.evaluate((i) => [i.width, i.height]), [240, 120]);
    await bob.waitForFunction((img) => img.complete && img.naturalWidth > 0, await thumb.elementHandle(), { timeout: WAIT });
    assert.deepEqual(await thumb.evaluate((i) => [i.naturalWidth, i.naturalHeight]), [480, 240]);
    assert.equal(await bob.locator('#messages li.msg', { hasText: 'logo.svg' }).locator('button.thumb').count(), 0, 'an SVG is no image here');
    // By keyboard: the thumbnail opens the full image in a dialog; Escape closes it and
    // the focus goes back.
    await bob.locator('#messages li.msg', { hasText: 'sketch.png' }).locator('button.thumb').focus();
    await bob.keyboard.press('Enter');
    await bob.locator('#viewer[open]').waitFor({ timeout: WAIT });
    await bob.waitForFunction(() => { const i = document.getElementById('viewer-img'); return i.complete && i.naturalWidth > 0; }, null, { timeout: WAIT });
    assert.equal(await bob.locator('#viewer-img').evaluate((i) => i.naturalWidth), 800);
    assert.equal(await bob.locator('#viewer-name').textContent(), 'sketch.png');
    await bob.keyboard.press('Escape');
    await bob.locator('#viewer[open]').waitFor({ state: 'detached', timeout: WAIT });
    assert.equal(await bob.evaluate(() => document.activeElement.className), 'thumb');
    assert.deepEqual(bob.dialogs, [], 'the SVG ran nothing');

    // A PNG header over no pixels: shown as an image at first (by its header), but no
    // thumbnail comes of it, even when asked again: the link stays, the box goes.
    const chunk = (type, data) => {
      const body = Buffer.concat([Buffer.from(type), data]);
      const len = Buffer.alloc(4);
      len.writeUInt32BE(data.length);
      const crc = Buffer.alloc(4);
      crc.writeUInt32BE(zlib.crc32(body));
      return Buffer.concat([len, body, crc]);
    };
    const ihdr = Buffer.alloc(13);
    ihdr.writeUInt32BE(400, 0);
    ihdr.writeUInt32BE(300, 4);
    ihdr.set([8, 2, 0, 0, 0], 8);
    const hollow = Buffer.concat([Buffer.from('89504e470d0a1a0a', 'hex'), chunk('IHDR', ihdr), chunk('IDAT', Buffer.from('789c630000000100', 'hex')), chunk('IEND', Buffer.alloc(0))]);
    await alice.setInputFiles('#file-input', { name: 'hollow.png', mimeType: 'image/png', buffer: hollow });
    const row = bob.locator('#messages li.msg', { hasText: 'hollow.png' });
    await row.locator('a.file-link').waitFor({ timeout: WAIT });
    await row.locator('button.thumb').waitFor({ state: 'detached', timeout: WAIT });
    assert.equal(await row.locator('a.file-link').textContent(), 'hollow.png');
  });

  await t.test('history survives a reload and older pages load on scroll', async () => {
    // 70 more messages: more than one page of history (50).
    await alice.evaluate(async () => {
      const input = document.getElementById('composer-input');
      for (let i = 1; i <= 70; i++) {
        input.value = `bulk ${i}`;
        input.dispatchEvent(new KeyboardEvent('keydown', { key: 'Enter', bubbles: true }));
        await new Promise((r) => setTimeout(r, 15));
      }
    });
    await waitForBody(bob, 'bulk 70');
    const before = await bodies(bob);
    await bob.reload();
    await waitForBody(bob, 'bulk 70');
    assert.ok((await messages(bob).count()) < before.length, 'a reload shows the newest page first');
    await bob.locator('#history').focus();
    // Scroll to the top with the keyboard until everything is there (each step must load more).
    for (let n = await messages(bob).count(); n < before.length; n = await messages(bob).count()) {
      await bob.keyboard.press('Home');
      await bob.waitForFunction((n) => document.querySelectorAll('#messages li.msg:not(.pending)').length > n, n, { timeout: WAIT });
    }
    assert.deepEqual(await bodies(bob), before, 'all of the history, in order, after scrolling up');
    await bob.locator('#history-top', { hasText: 'beginning of the conversation' }).waitFor({ timeout: WAIT });
    // Scrolled up, bob is told of a new message by a pill, which takes him down to it.
    assert.equal(await bob.locator('#new-pill').isVisible(), false);
    await send(alice, 'while you were reading');
    await bob.locator('#new-pill').waitFor({ state: 'visible', timeout: WAIT });
    await bob.click('#new-pill');
    await bob.locator('#new-pill').waitFor({ state: 'hidden', timeout: WAIT });
    await bob.waitForFunction(() => { const h = document.getElementById('history'); return h.scrollHeight - h.scrollTop - h.clientHeight < 60; }, null, { timeout: WAIT });
    // Opening a conversation with unread messages shows where the new ones start.
    await bob.goto(server.url + '/contacts');
    await send(alice, 'first unread');
    await send(alice, 'second unread');
    await bob.goto(server.url + '/chat');
    await openChatWith(bob, 'Alice');
    await waitForBody(bob, 'second unread');
    const afterDivider = bob.locator('#messages li.new-divider + li.msg .body');
    await afterDivider.waitFor({ timeout: WAIT });
    assert.equal(await afterDivider.textContent(), 'first unread');
  });

  await t.test('offline and back: what was typed offline is sent once, nothing is lost', async () => {
    await server.kill();
    await alice.locator('#conn-status', { hasText: 'Offline' }).waitFor({ timeout: WAIT });
    await bob.locator('#conn-status', { hasText: 'Offline' }).waitFor({ timeout: WAIT });
    await send(alice, 'written while offline');
    await alice.locator('#messages li.pending .status', { hasText: 'Queued' }).waitFor({ timeout: WAIT });
    await server.start();
    // Reconnects by itself (backoff of at most 10 s).
    await alice.locator('#conn-status[data-state=online]').waitFor({ state: 'attached', timeout: 30_000 });
    await waitForBody(alice, 'written while offline');
    await waitForBody(bob, 'written while offline');
    await alice.locator('#messages li.pending').waitFor({ state: 'detached', timeout: WAIT });
    for (const page of [alice, bob]) {
      const all = await bodies(page);
      assert.equal(all.filter((b) => b === 'written while offline').length, 1, `${page.nick} has it once`);
    }
    // And bob, reloaded, has exactly the same conversation as alice.
    await bob.reload();
    await waitForBody(bob, 'written while offline');
    assert.deepEqual((await bodies(bob)).slice(-10), (await bodies(alice)).slice(-10));
  });

  await t.test('with the keyboard alone, alice corrects one message and takes back another; bob sees both', async () => {
    // A bare www. address is a link too (https).
    await send(alice, 'details at www.example.org/plan.');
    const www = bob.locator('#messages a', { hasText: 'www.example.org/plan' });
    await www.waitFor({ timeout: WAIT });
    assert.equal(await www.getAttribute('href'), 'https://www.example.org/plan');
    await send(alice, 'meet at teh cafe');
    await send(alice, 'wrong chat, sorry');
    await waitForBody(bob, 'wrong chat, sorry');
    // Bob is away from the chat while she changes them.
    await bob.goto(server.url + '/contacts');
    const focused = (cls) => alice.waitForFunction((c) => document.activeElement?.classList.contains(c), cls, { timeout: WAIT });
    const typo = alice.locator('#messages li.msg.mine', { hasText: 'meet at teh cafe' });
    await typo.locator('button.msg-edit').focus();
    await alice.keyboard.press('Enter');
    await focused('edit-input');
    await alice.keyboard.press('Control+A');
    await alice.keyboard.type('meet at the cafe');
    await alice.keyboard.press('Enter');
    const fixed = alice.locator('#messages li.msg.mine', { hasText: 'meet at the cafe' });
    await fixed.locator('.edited', { hasText: 'edited' }).waitFor({ timeout: WAIT });
    await focused('msg-edit');
    // Escape leaves an edit without changing anything.
    await alice.keyboard.press('Enter');
    await focused('edit-input');
    await alice.keyboard.type(' and more');
    await alice.keyboard.press('Escape');
    await focused('msg-edit');
    assert.ok(!(await bodies(alice)).some((b) => b.includes('and more')));
    // Deleting asks first, then the message is gone for both.
    const wrong = alice.locator('#messages li.msg.mine', { hasText: 'wrong chat, sorry' });
    await wrong.locator('button.msg-delete').focus();
    await alice.keyboard.press('Enter');
    await focused('msg-delete-yes');
    await alice.keyboard.press('Enter');
    await alice.locator('#messages li.msg.deleted', { hasText: 'Message deleted' }).waitFor({ timeout: WAIT });
    assert.ok(!(await bodies(alice)).includes('wrong chat, sorry'));

    // Bob comes back: the list and the conversation show them as they are now.
    await bob.goto(server.url + '/chat');
    await bob.locator('#conv-list a.conv .last', { hasText: 'Message deleted' }).waitFor({ timeout: WAIT });
    await openChatWith(bob, 'Alice');
    await waitForBody(bob, 'meet at the cafe');
    await bob.locator('#messages li.msg', { hasText: 'meet at the cafe' }).locator('.edited', { hasText: 'edited' }).waitFor();
    await bob.locator('#messages li.msg.deleted', { hasText: 'Message deleted' }).waitFor({ timeout: WAIT });
    const seen = await bodies(bob);
    assert.ok(!seen.some((b) => b.includes('teh') || b.includes('wrong chat')), seen.slice(-5).join(' | '));
    // Bob cannot change alice's messages: no buttons on them.
    assert.equal(await bob.locator('#messages li.msg:not(.mine) button').count(), 0);
    // While he watches, a second correction arrives live.
    await fixed.locator('button.msg-edit').click();
    await alice.fill('#messages .edit-input', 'meet at the cafe at five');
    await alice.click('#messages .edit-save');
    await waitForBody(bob, 'meet at the cafe at five');
    await bob.reload();
    await waitForBody(bob, 'meet at the cafe at five');
    await bob.locator('#messages li.msg.deleted', { hasText: 'Message deleted' }).waitFor({ timeout: WAIT });
  });

  await t.test('bob finds an early message by searching, and the chat jumps back to it', async () => {
    await bob.reload();
    await waitForBody(bob, 'meet at the cafe at five');
    // Far back: not among the newest page a fresh page loads.
    assert.ok(!(await bodies(bob)).includes('Are you there?'));
    await bob.fill('#search-input', 'are you th');
    const hit = bob.locator('#search-results a.search-hit', { hasText: 'Are you there?' });
    await hit.waitFor({ timeout: WAIT });
    assert.deepEqual(await hit.locator('mark').allTextContents(), ['Are', 'you', 'there']);
    // Deleted text is not found; edited text is found by its new words only.
    await bob.fill('#search-input', 'wrong chat');
    await bob.locator('#search-status', { hasText: 'No messages found' }).waitFor({ timeout: WAIT });
    await bob.fill('#search-input', 'teh');
    await bob.locator('#search-status', { hasText: 'No messages found' }).waitFor({ timeout: WAIT });
    await bob.fill('#search-input', 'are you there');
    await hit.waitFor({ timeout: WAIT });
    await hit.click();
    const found = bob.locator('#messages li.msg.found', { hasText: 'Are you there?' });
    await found.waitFor({ timeout: WAIT });
    assert.ok(await found.isVisible());
    // Escape leaves the search for the conversation list.
    await bob.locator('#search-input').focus();
    await bob.keyboard.press('Escape');
    await bob.locator('#conv-list').waitFor({ state: 'visible', timeout: WAIT });
    assert.equal(await bob.locator('#search-results').isVisible(), false);
  });

  await t.test('keyboard only: log out, log in, open the conversation, send', async () => {
    await alice.click('#logout');
    await alice.waitForURL('**/login');
    await alice.goto(server.url + '/chat');
    await alice.waitForURL((u) => u.pathname === '/login' && u.searchParams.get('next') === '/chat');
    await alice.locator('#username').focus();
    await alice.keyboard.type('alice');
    await alice.keyboard.press('Tab');
    await alice.keyboard.type(PASSWORD);
    await alice.keyboard.press('Enter');
    await alice.waitForURL('**/chat');
    await alice.locator('#conv-list a.conv').first().waitFor({ timeout: WAIT });
    // Tab through the page until the conversation link has focus, then open it. (Bounded
    // by the page's focusable elements, not a guess: a page still loading its list or a
    // banner adds stops, and 15 tabs once fell short.)
    const stops = await alice.evaluate(() => document.querySelectorAll('a, button, input, textarea, select, [tabindex]').length);
    let focused = false;
    for (let i = 0; i <= stops + 2 && !focused; i++) {
      await alice.keyboard.press('Tab');
      focused = await alice.evaluate(() => document.activeElement?.classList.contains('conv') ?? false);
    }
    assert.ok(focused, 'the conversation link takes the keyboard focus');
    await alice.keyboard.press('Enter');
    await alice.locator('#peer-name').waitFor({ timeout: WAIT });
    // A fresh page knows from the server how far bob has read.
    await alice.locator('#messages li.msg.mine .status', { hasText: 'Read' }).last().waitFor({ timeout: WAIT });
    await alice.locator('#composer-input').focus();
    await alice.keyboard.type('typed without a mouse');
    await alice.keyboard.press('Enter');
    await waitForBody(bob, 'typed without a mouse');
  });

  await t.test('block and unblock from the contacts page', async () => {
    const carol = await person('carol');
    await register(carol, 'carol', 'Carol', PASSWORD);
    await carol.goto(server.url + '/contacts');
    await carol.type('#search', 'alice', { delay: 20 });
    const hit = carol.locator('#search-results li', { hasText: '@alice' });
    await hit.getByRole('button', { name: 'Add contact' }).click();
    await alice.goto(server.url + '/contacts');
    const request = alice.locator('#incoming li', { hasText: '@carol' });
    // Block asks twice, then the request is gone and carol is listed as blocked.
    const block = alice.locator('#search-results li', { hasText: '@carol' });
    await alice.type('#search', 'carol', { delay: 20 });
    await block.getByRole('button', { name: 'Block' }).click();
    await block.getByRole('button', { name: 'Really block?' }).click();
    await alice.locator('#blocked li', { hasText: '@carol' }).waitFor({ timeout: WAIT });
    await request.waitFor({ state: 'detached', timeout: WAIT });
    await alice.locator('#blocked li', { hasText: '@carol' }).getByRole('button', { name: 'Unblock' }).click();
    await alice.locator('#blocked-empty').waitFor({ state: 'visible', timeout: WAIT });
    await carol.context().close();
  });

  await t.test('on the Contacts page alice stays online and receives: bob sees Delivered', async () => {
    // Alice is on the Contacts page (no chat open).
    assert.equal(new URL(alice.url()).pathname, '/contacts');
    await bob.goto(server.url + '/chat');
    await openChatWith(bob, 'Alice');
    await bob.locator('#peer-seen', { hasText: 'online' }).waitFor({ timeout: WAIT });
    await send(bob, 'Are you on the contacts page?');
    await bob.locator('#messages li.msg.mine', { hasText: 'Are you on the contacts page?' }).locator('.status', { hasText: 'Delivered' }).waitFor({ timeout: WAIT });
    // It reached her: the notifications menu has it.
    await alice.locator('#notif-list .notif-text', { hasText: 'Are you on the contacts page?' }).waitFor({ state: 'attached', timeout: WAIT });
    // Going to the chat shows it; leaving every page makes her offline for bob.
    await alice.goto(server.url + '/chat');
    await openChatWith(alice, BOB_NAME);
    await waitForBody(alice, 'Are you on the contacts page?');
    await alice.goto('about:blank');
    await bob.locator('#peer-seen', { hasText: 'last seen' }).waitFor({ timeout: WAIT });
    await alice.goto(server.url + '/settings');
    await bob.locator('#peer-seen', { hasText: 'online' }).waitFor({ timeout: WAIT });
  });

  await t.test('logging out in another tab sends the open chat page to the login page', async () => {
    await bob.goto(server.url + '/chat');
    await bob.locator('#conv-list a.conv').first().waitFor({ timeout: WAIT });
    const tab = await bob.context().newPage();
    const contactsTab = await bob.context().newPage();
    await contactsTab.goto(server.url + '/contacts');
    await tab.goto(server.url + '/chat');
    await tab.click('#logout');
    await tab.waitForURL('**/login');
    // The other tabs' sockets were opened by the same login: the server closes them (4001)
    // and the pages go to the login page instead of reconnecting for ever.
    await bob.waitForURL((u) => u.pathname === '/login', { timeout: WAIT });
    await contactsTab.waitForURL((u) => u.pathname === '/login', { timeout: WAIT });
    await tab.close();
    await contactsTab.close();
  });

  await t.test('a phone-width screen and the dark scheme', async () => {
    const phone = await person('bob-phone', { viewport: { width: 390, height: 780 }, colorScheme: 'dark', isMobile: true, hasTouch: true });
    await phone.goto(server.url + '/login');
    await phone.fill('#username', 'bob');
    await phone.fill('#password', PASSWORD);
    await phone.click('button[type=submit]');
    await phone.waitForURL('**/chat');
    const list = phone.locator('.sidebar');
    await list.waitFor({ state: 'visible' });
    const bg = await phone.evaluate(() => getComputedStyle(document.body).backgroundColor);
    assert.equal(bg, 'rgb(17, 20, 23)', 'dark colours from the system setting');
    await phone.locator('#conv-list a.conv', { hasText: 'Alice' }).click();
    await waitForBody(phone, 'typed without a mouse');
    assert.equal(await list.isVisible(), false, 'the conversation takes the whole width');
    const width = await phone.evaluate(() => document.documentElement.scrollWidth);
    assert.ok(width <= 390, `nothing wider than the screen (${width}px)`);
    // The top bar is one row, and the notifications menu opens fully on the screen.
    const bar = await phone.locator('.topbar').boundingBox();
    assert.ok(bar.height < 60, `the top bar is one row (${bar.height}px high)`);
    await phone.click('#notif-button');
    const panel = await phone.locator('#notif-panel').boundingBox();
    assert.ok(panel.x >= 0 && panel.x + panel.width <= 390, `the menu is on the screen (${panel.x}..${panel.x + panel.width})`);
    await phone.keyboard.press('Escape');
    await phone.click('#back');
    await list.waitFor({ state: 'visible' });
    assert.deepEqual(phone.errors, []);
    await phone.context().close();
  });
});

test('settings: a new name, the devices list, a new password, an export, deleting the account', async (t) => {
  const desk = await person('dana-desk');
  const laptop = await person('dana-laptop');
  await register(desk, 'dana', 'Dana', PASSWORD);
  await laptop.goto(server.url + '/login');
  await laptop.fill('#username', 'dana');
  await laptop.fill('#password', PASSWORD);
  await laptop.click('button[type=submit]');
  await laptop.waitForURL('**/chat');

  await t.test('the settings page lists both logins and renames', async () => {
    await desk.click('nav a[href="/settings"]');
    await desk.waitForURL('**/settings');
    await desk.locator('#sessions li').nth(1).waitFor({ timeout: WAIT });
    assert.equal(await desk.locator('#sessions li').count(), 2);
    assert.equal(await desk.locator('#sessions li', { hasText: '(this device)' }).count(), 1);
    await desk.fill('#display-name', 'Dana Scully');
    await desk.click('#profile-form button[type=submit]');
    await desk.locator('#me', { hasText: 'Dana Scully (@dana)' }).waitFor({ timeout: WAIT });
    await desk.reload();
    assert.equal(await desk.inputValue('#display-name'), 'Dana Scully');
  });

  await t.test('logging the laptop out from the desk sends it to the login page', async () => {
    const other = desk.locator('#sessions li', { hasNotText: '(this device)' });
    await other.getByRole('button', { name: /^Log out/ }).click();
    await laptop.waitForURL((u) => u.pathname === '/login', { timeout: WAIT });
    await desk.locator('#sessions li').nth(1).waitFor({ state: 'detached', timeout: WAIT });
  });

  await t.test('a wrong current password is refused in place; the right one changes it', async () => {
    await desk.fill('#current-password', 'not the password');
    await desk.fill('#new-password', 'a much better password');
    await desk.click('#password-form button[type=submit]');
    await desk.locator('#toast', { hasText: 'wrong username or password' }).waitFor({ timeout: WAIT });
    assert.equal(new URL(desk.url()).pathname, '/settings', 'still here, not sent to the login page');
    await desk.fill('#current-password', PASSWORD);
    await desk.click('#password-form button[type=submit]');
    await desk.locator('#toast', { hasText: 'Password changed' }).waitFor({ timeout: WAIT });
    await shot(desk, 'settings');
  });

  await t.test('the export downloads her data as JSON', async () => {
    const [download] = await Promise.all([desk.waitForEvent('download'), desk.click('#export')]);
    const doc = JSON.parse(readFileSync(await download.path(), 'utf8'));
    assert.equal(doc.user.username, 'dana');
    assert.equal(doc.user.display_name, 'Dana Scully');
    assert.ok(Array.isArray(doc.conversations));
  });

  await t.test('deleting the account needs the password and the box ticked, then ends it', async () => {
    await desk.fill('#delete-password', 'a much better password');
    await desk.click('#delete-form button[type=submit]');
    assert.equal(new URL(desk.url()).pathname, '/settings', 'not without the box ticked');
    await desk.check('#delete-confirm');
    await desk.click('#delete-form button[type=submit]');
    await desk.waitForURL((u) => u.pathname === '/login', { timeout: WAIT });
    await desk.fill('#username', 'dana');
    await desk.fill('#password', 'a much better password');
    await desk.click('button[type=submit]');
    await desk.locator('#form-error', { hasText: 'Wrong username or password' }).waitFor({ timeout: WAIT });
    assert.deepEqual(desk.errors, []);
  });
  await desk.context().close();
  await laptop.context().close();
});

// The README's screenshots: plausible people and a realistic conversation (the hostile
// names and bodies above belong to the tests, not the front page).
test('screenshots of a realistic conversation', async () => {
  const maria = await person('maria');
  const jonas = await person('jonas');
  await register(maria, 'maria', 'Maria Santos', PASSWORD);
  await register(jonas, 'jonas', 'Jonas Weber', PASSWORD);
  await maria.goto(server.url + '/contacts');
  await maria.type('#search', 'jonas', { delay: 20 });
  await maria.locator('#search-results li', { hasText: '@jonas' }).getByRole('button', { name: 'Add contact' }).click();
  await jonas.goto(server.url + '/contacts');
  await jonas.locator('#incoming li', { hasText: '@maria' }).getByRole('button', { name: 'Accept' }).click();
  await maria.locator('#contacts li', { hasText: '@jonas' }).waitFor({ timeout: WAIT });
  await shot(maria, 'contacts');
  await maria.goto(server.url + '/chat');
  await jonas.goto(server.url + '/chat');
  await openChatWith(maria, 'Jonas Weber');
  await openChatWith(jonas, 'Maria Santos');
  const say = async (from, to, text) => {
    await send(from, text);
    await waitForBody(to, text);
  };
  await say(maria, jonas, 'Hi Jonas! Did you get a chance to look at the venues for Saturday?');
  await say(jonas, maria, 'Yes, the boathouse looks great: room for 40 and a terrace by the water.');
  await say(maria, jonas, 'Perfect. I will send them the deposit today.');
  await jonas.setInputFiles('#file-input', { name: 'boathouse-floor-plan.pdf', mimeType: 'application/pdf', buffer: randomBytes(180_000) });
  await maria.locator('#messages a.file-link', { hasText: 'boathouse-floor-plan.pdf' }).waitFor({ timeout: WAIT });
  await say(jonas, maria, 'Here is the floor plan they sent me.');
  // A photo of the terrace, pasted: sky, water and the deck, drawn in the page.
  await jonas.evaluate(async () => {
    const canvas = new OffscreenCanvas(1200, 800);
    const g = canvas.getContext('2d');
    const sky = g.createLinearGradient(0, 0, 0, 420);
    sky.addColorStop(0, '#f6b36b');
    sky.addColorStop(1, '#fbe3c2');
    g.fillStyle = sky;
    g.fillRect(0, 0, 1200, 420);
    g.fillStyle = '#f8d26a';
    g.beginPath();
    g.arc(860, 330, 70, 0, Math.PI * 2);
    g.fill();
    const water = g.createLinearGradient(0, 420, 0, 640);
    water.addColorStop(0, '#3f7fa8');
    water.addColorStop(1, '#1f4d6e');
    g.fillStyle = water;
    g.fillRect(0, 420, 1200, 220);
    g.fillStyle = '#8a5a36';
    g.fillRect(0, 640, 1200, 160);
    g.fillStyle = '#6e4528';
    for (let x = 0; x < 1200; x += 80) g.fillRect(x, 640, 6, 160);
    const blob = await canvas.convertToBlob({ type: 'image/jpeg', quality: 0.9 });
    const dt = new DataTransfer();
    dt.items.add(new File([blob], 'terrace.jpg', { type: 'image/jpeg' }));
    document.getElementById('composer-input').dispatchEvent(new ClipboardEvent('paste', { clipboardData: dt, bubbles: true, cancelable: true }));
  });
  const photo = maria.locator('#messages li.msg', { hasText: 'terrace.jpg' }).locator('button.thumb img');
  await photo.waitFor({ timeout: WAIT });
  await maria.waitForFunction((img) => img.complete && img.naturalWidth > 0, await photo.elementHandle(), { timeout: WAIT });
  await say(maria, jonas, 'Thanks! Shall we meet there at 6 to set up?');
  await maria.locator('#messages li.msg.mine .status', { hasText: 'Read' }).last().waitFor({ timeout: WAIT });
  await shot(maria, 'chat');

  // Offline: the server goes away; what is typed waits, marked as queued, and goes out
  // when it is back.
  await server.kill();
  await maria.locator('#conn-status', { hasText: 'Offline' }).waitFor({ timeout: WAIT });
  await send(maria, 'On my way, see you soon!');
  await maria.locator('#messages li.pending .status', { hasText: 'Queued' }).waitFor({ timeout: WAIT });
  await shot(maria, 'chat-offline');
  await server.start();
  await waitForBody(jonas, 'On my way, see you soon!');

  const phone = await person('jonas-phone', { viewport: { width: 390, height: 780 }, colorScheme: 'dark', isMobile: true, hasTouch: true });
  await phone.goto(server.url + '/login');
  await phone.fill('#username', 'jonas');
  await phone.fill('#password', PASSWORD);
  await phone.click('button[type=submit]');
  await phone.waitForURL('**/chat');
  await phone.locator('#conv-list a.conv', { hasText: 'Maria Santos' }).click();
  await waitForBody(phone, 'On my way, see you soon!');
  await shot(phone, 'chat-phone-dark');
  for (const p of [maria, jonas, phone]) assert.deepEqual(p.errors, []);
  for (const p of [maria, jonas, phone]) await p.context().close();
});

// Desktop notifications: the Notification API is stubbed to record what would be shown
// (headless Chromium shows nothing), and `document.hidden` is under the test's control.
test('desktop notifications: one per new message while hidden, however many tabs', async () => {
  const stub = () => {
    window.__shown = [];
    window.__hidden = false;
    Object.defineProperty(Document.prototype, 'hidden', { get() { return window.__hidden; }, configurable: true });
    window.Notification = class {
      static permission = 'granted';
      static requestPermission() { return Promise.resolve('granted'); }
      constructor(title, opts) { window.__shown.push({ title, body: opts.body, tag: opts.tag }); }
      close() {}
    };
  };
  const erin = await person('erin');
  await erin.context().addInitScript(stub);
  const frank = await person('frank');
  await register(erin, 'erin', 'Erin Brockovich', PASSWORD);
  await register(frank, 'frank', 'Frank Castle', PASSWORD);
  await frank.goto(server.url + '/contacts');
  await frank.type('#search', 'erin', { delay: 20 });
  await frank.locator('#search-results li', { hasText: '@erin' }).getByRole('button', { name: 'Add contact' }).click();
  await erin.goto(server.url + '/contacts');
  await erin.locator('#incoming li', { hasText: '@frank' }).getByRole('button', { name: 'Accept' }).click();
  // Two tabs on pages without the chat (an open conversation would read the messages).
  await erin.goto(server.url + '/settings');
  const erin2 = await erin.context().newPage();
  erin2.errors = [];
  erin2.on('pageerror', (e) => erin2.errors.push(String(e)));
  await erin2.goto(server.url + '/contacts');
  await frank.goto(server.url + '/chat');
  await openChatWith(frank, 'Erin Brockovich');
  const shown = async () => (await erin.evaluate(() => window.__shown)).concat(await erin2.evaluate(() => window.__shown));

  // Visible tabs: nothing pops up.
  await send(frank, 'Are you at your desk?');
  for (const p of [erin, erin2]) {
    await p.locator('#notif-list .notif-text', { hasText: 'Are you at your desk?' }).waitFor({ state: 'attached', timeout: WAIT });
  }
  assert.deepEqual(await shown(), []);

  // Both tabs hidden: one system notification, from one tab, naming the sender.
  for (const p of [erin, erin2]) await p.evaluate(() => { window.__hidden = true; });
  await send(frank, 'The report is ready for review');
  // Both tabs have handled the notification once it is in their menus (the menu is drawn
  // just before the decision, which takes the lock at once or gives up).
  for (const p of [erin, erin2]) {
    await p.locator('#notif-list .notif-text', { hasText: 'The report is ready for review' }).waitFor({ state: 'attached', timeout: WAIT });
  }
  // The winner holds the change's lock; a query from either tab sees it held, by one.
  await erin.waitForFunction(async () => (await navigator.locks.query()).held.some((l) => l.name.startsWith('sb-desktop:')), null, { timeout: WAIT });
  const all = await shown();
  assert.equal(all.length, 1, JSON.stringify(all));
  assert.equal(all[0].title, 'Frank Castle');
  assert.match(all[0].body, /The report is ready for review/);

  // Erin mutes the chat with Frank (in her second tab, on the chat page, where the menu is).
  for (const p of [erin, erin2]) await p.evaluate(() => { window.__hidden = false; });
  await erin2.goto(server.url + '/chat');
  await openChatWith(erin2, 'Frank Castle');
  await erin2.locator('#mute-select').selectOption({ label: 'Mute until I unmute' });
  await erin2.locator('#mute-select option', { hasText: /^Unmute$/ }).waitFor({ state: 'attached', timeout: WAIT });
  const row = erin2.locator('#conv-list a.conv', { hasText: 'Frank Castle' });
  await row.locator('.mute-icon:not([hidden])').waitFor({ timeout: WAIT });
  // The other tab learns it too (from the counts), before anything arrives.
  await erin.waitForFunction(() => Object.keys(SB.notif.unread.muted || {}).length === 1, null, { timeout: WAIT });
  await erin2.goto(server.url + '/contacts');
  for (const p of [erin, erin2]) await p.evaluate(() => { window.__hidden = true; });
  const bellBefore = await erin.evaluate(() => SB.notif.unread.total);
  await send(frank, 'Muted news');
  // Both tabs have the notification (and so have decided about it)...
  for (const p of [erin, erin2]) {
    await p.waitForFunction(() => [...SB.notif.items.values()].some((n) => n.payload && n.payload.preview === 'Muted news'), null, { timeout: WAIT });
  }
  // ...and raised nothing: no system notification, not in the menu, not in the bell's count.
  // (erin2's record of what it showed began again with its page; erin's did not.)
  const after = await shown();
  assert.ok(!after.some((x) => /Muted news/.test(x.body)), JSON.stringify(after));
  assert.equal(await erin.locator('#notif-list .notif-text', { hasText: 'Muted news' }).count(), 0);
  // The counts that include it (its conversation has one unread again) leave the bell as
  // it was: the muted message adds nothing to it.
  await erin.waitForFunction(() => {
    const n = [...SB.notif.items.values()].find((x) => x.payload && x.payload.preview === 'Muted news');
    return (SB.notif.unread.conversations || {})[n.conversation_id] >= 1;
  }, null, { timeout: WAIT });
  assert.equal(await erin.evaluate(() => SB.notif.unread.total), bellBefore);
  assert.equal(await erin.locator('#notif-count').isHidden(), bellBefore === 0);
  if (bellBefore !== 0) {
    // Seen rarely (2026-12-07): something else unread before the muted message; logged
    // for whoever looks into it (issue note of session 15).
    console.log('unread before the muted message:', JSON.stringify(await erin.evaluate(() => ({ unread: SB.notif.unread, items: [...SB.notif.items.values()] }))));
  }
  // The chat list still counts it, in grey, beside the mute icon.
  await erin2.goto(server.url + '/chat');
  const badge = erin2.locator('#conv-list a.conv', { hasText: 'Frank Castle' }).locator('.badge.quiet');
  await badge.waitFor({ timeout: WAIT });
  assert.equal(await badge.textContent(), '1');
  // Unmuted: the bell counts it again.
  for (const p of [erin, erin2]) await p.evaluate(() => { window.__hidden = false; });
  await openChatWith(erin2, 'Frank Castle');
  await erin2.locator('#mute-select').selectOption({ label: 'Unmute' });
  await erin.waitForFunction(() => Object.keys(SB.notif.unread.muted || {}).length === 0, null, { timeout: WAIT });
  assert.deepEqual(erin.errors.concat(erin2.errors), []);
  for (const p of [erin, frank]) await p.context().close();
});
