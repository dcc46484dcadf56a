// End-to-end tests of the web page in headless Chromium, against a real `gochat up` (sessions
// in Redis, so they outlive the server restarts the test makes); last, the page, the REST API
// and the socket through one origin (a reverse proxy in this file). Run by ./test.sh:
//   cd tests/browser && npm ci && node browser.test.mjs
// Env: GOCHAT_BIN (default ../../target/debug/gochat), CHROMIUM (default /usr/bin/chromium),
// GOCHAT_TEST_DRIVER (gateway driver), REDIS_URL. Screenshots go to ../../test-artifacts/.

import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';

import { GOCHAT_BIN, ROOT, freePorts, gochatConfig, startGochat, stopGochat, until } from '../gochat-up.mjs';

const bin = GOCHAT_BIN;
const artifacts = path.join(ROOT, 'test-artifacts');
const redisUrl = process.env.REDIS_URL || 'redis://127.0.0.1:6379';
const prefix = `gochat-site-test-${process.pid}`;
const WAIT = 15000;

// ---- the server ----
const dir = mkdtempSync(path.join(os.tmpdir(), 'gochat-site-'));
const ports = await freePorts();
const { api, site, grpc, ws } = ports;
const config = path.join(dir, 'gochat.toml');
// `control` adds lines to [control].
const writeConfig = (control = '') => writeFileSync(config, gochatConfig({
  ports,
  dir,
  control: `${control}
state = "redis"
redis_url = "${redisUrl}"
redis_prefix = "${prefix}"
node_id = 1
room_update_interval_ms = 200`,
  gateway: 'compression = "on"',
}));
writeConfig();
let server = null;

// The same ports every time: the page must find the server again after a restart.
async function startServer() {
  server = await startGochat({ bin, config, log: path.join(dir, 'gochat.log'), ports: [site, ws] });
}

async function stopServer() {
  const proc = server;
  server = null;
  await stopGochat(proc);
}

// One origin, as an ingress or a reverse proxy with path routing gives it: `/api/…` to the REST
// API (passed on as it is: control answers under its site_api_url's path), the upgrade of
// `/ws` to the gateway, anything else to the page. Every path asked for is kept in `seen`.
function startProxy() {
  const seen = [];
  const tunnels = new Set();
  const front = http.createServer((req, res) => {
    seen.push(req.url);
    const port = req.url.startsWith('/api/') ? api : site;
    const back = http.request({ host: '127.0.0.1', port, method: req.method, path: req.url, headers: req.headers }, (r) => {
      res.writeHead(r.statusCode, r.headers);
      r.pipe(res);
    });
    back.on('error', () => { res.writeHead(502); res.end(); });
    req.pipe(back);
  });
  front.on('upgrade', (req, socket, head) => {
    seen.push(req.url);
    if (req.url !== '/ws') { socket.destroy(); return; }
    const back = net.connect(ws, '127.0.0.1', () => {
      let lines = `${req.method} ${req.url} HTTP/${req.httpVersion}\r\n`;
      for (let i = 0; i < req.rawHeaders.length; i += 2) lines += `${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}\r\n`;
      back.write(`${lines}\r\n`);
      back.write(head);
      socket.pipe(back).pipe(socket);
    });
    for (const s of [socket, back]) {
      tunnels.add(s);
      s.on('error', () => { socket.destroy(); back.destroy(); });
      s.on('close', () => { tunnels.delete(s); socket.destroy(); back.destroy(); });
    }
  });
  return new Promise((resolve) => front.listen(0, '127.0.0.1', () => resolve({
    port: front.address().port,
    seen,
    close: () => { for (const s of tunnels) s.destroy(); front.closeAllConnections(); front.close(); },
  })));
}

function cleanRedis() {
  const u = new URL(redisUrl);
  const args = ['-h', u.hostname, '-p', u.port || '6379'];
  const keys = spawnSync('redis-cli', [...args, '--scan', '--pattern', `${prefix}:*`], { encoding: 'utf8' });
  const list = (keys.stdout || '').split('\n').filter(Boolean);
  if (list.length) spawnSync('redis-cli', [...args, 'DEL', ...list]);
}

// ---- the browser ----
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
});
const origin = `http://127.0.0.1:${site}`;
mkdirSync(artifacts, { recursive: true });
const external = [];
const pageErrors = [];
// What the page's content security policy refused: reported by the browser as a
// securitypolicyviolation event, which each page logs to the console (Chromium logs its own
// line too). A probe page, which provokes refusals, keeps its own.
const cspViolations = [];

async function newPage(viewport = { width: 1100, height: 720 }, { probe = false } = {}) {
  const context = await browser.newContext({ viewport });
  await context.addInitScript(() => document.addEventListener('securitypolicyviolation', (e) => {
    console.error(`CSP violation: ${e.violatedDirective} ${e.blockedURI}`);
  }));
  const page = await context.newPage();
  page.on('request', (r) => {
    const u = new URL(r.url());
    if (!['127.0.0.1', 'localhost'].includes(u.hostname) && u.protocol !== 'data:') external.push(r.url());
  });
  page.on('pageerror', (e) => pageErrors.push(e.message));
  const violations = probe ? [] : cspViolations;
  page.on('console', (m) => {
    if (/CSP violation|Content Security Policy/.test(m.text())) violations.push(m.text());
  });
  return { context, page, violations };
}

const shot = (page, name) => page.screenshot({ path: path.join(artifacts, `${name}.png`) });
const text = (page, sel) => page.locator(sel).innerText();
const live = (page) => page.waitForSelector('#conn-state[data-state="live"]', { timeout: WAIT });

async function register(page, name, pass = 'secret-123', at = origin) {
  await page.goto(at);
  await page.fill('#login-user', name);
  await page.fill('#login-pass', pass);
  await page.click('#register-btn');
  await page.waitForSelector('#chat:not([hidden])', { timeout: WAIT });
  await live(page);
}

async function send(page, msg) {
  await page.fill('#msg-input', msg);
  await page.press('#msg-input', 'Enter');
}

async function seesMessage(page, msg) {
  await page.waitForSelector(`#messages .msg-text >> text="${msg}"`, { timeout: WAIT });
}

const results = [];
async function step(name, fn) {
  const t0 = Date.now();
  try {
    await fn();
    results.push(`ok   ${name} (${Date.now() - t0} ms)`);
  } catch (e) {
    results.push(`FAIL ${name}: ${e.message}`);
    throw e;
  }
}

let failed = false;
try {
  await startServer();
  const alice = `alice${process.pid}`;
  const bob = `bob${process.pid}`;
  const a = await newPage();
  const b = await newPage();

  await step('the login screen renders and explains bad input', async () => {
    await a.page.goto(origin);
    await a.page.waitForSelector('#auth:not([hidden])');
    await shot(a.page, 'login');
    await a.page.fill('#login-user', 'nobody-here');
    await a.page.fill('#login-pass', 'wrong');
    await a.page.click('#login-btn');
    await until('wrong password is explained', async () =>
      (await text(a.page, '#auth-error')).includes('Wrong user name or password'));
  });

  await step('two users register and meet in room 1', async () => {
    await register(a.page, alice);
    await register(b.page, bob);
    for (const p of [a.page, b.page]) {
      await until('both in the member list', async () => {
        const members = await text(p, '#members');
        return members.includes(alice) && members.includes(bob);
      });
      await until('online count 2', async () => (await text(p, '#online-count')) === '2');
    }
  });

  await step('a taken name is refused clearly', async () => {
    const c = await newPage();
    await c.page.goto(origin);
    await c.page.fill('#login-user', alice);
    await c.page.fill('#login-pass', 'whatever-1');
    await c.page.click('#register-btn');
    await until('taken name explained', async () => (await text(c.page, '#auth-error')).includes('taken'));
    await c.context.close();
  });

  await step('a look-alike of a taken name is refused clearly', async () => {
    const c = await newPage();
    await c.page.goto(origin);
    await c.page.fill('#login-user', alice.toUpperCase());
    await c.page.fill('#login-pass', 'whatever-1');
    await c.page.click('#register-btn');
    await until('look-alike explained', async () => (await text(c.page, '#auth-error')).includes('looks like'));
    await c.context.close();
  });

  await step('room chat reaches both, own messages marked, HTML shown as text', async () => {
    await send(a.page, 'hello from alice');
    await seesMessage(a.page, 'hello from alice');
    await seesMessage(b.page, 'hello from alice');
    await until('own message marked', async () => (await a.page.locator('.msg.mine').count()) === 1);
    const evil = '<img src=x onerror="window.__pwned=1">';
    await send(b.page, evil);
    await seesMessage(a.page, evil);
    if (await a.page.evaluate(() => window.__pwned)) throw new Error('HTML in a message ran');
    await shot(a.page, 'room');
  });

  await step("the browser's socket compresses (permessage-deflate), and the page runs over it", async () => {
    // Chromium offers the extension on every socket, the page's included; the chat above ran
    // over compressed sockets. Its answer, as the page's socket gets it:
    const extensions = await a.page.evaluate((url) => new Promise((resolve, reject) => {
      const socket = new WebSocket(url);
      socket.onopen = () => { resolve(socket.extensions); socket.close(); };
      socket.onerror = () => reject(new Error('the socket did not open'));
    }), `ws://127.0.0.1:${ws}/ws`);
    if (!/^permessage-deflate; server_no_context_takeover; client_no_context_takeover/.test(extensions)) {
      throw new Error(`extensions agreed: ${JSON.stringify(extensions)}`);
    }
    // A message over the threshold comes to the other page deflated, and shows whole.
    const long = `a long line for the compressor ${'and its window '.repeat(40)}`;
    await send(b.page, long);
    await seesMessage(a.page, long);
  });

  await step('a private message in its own thread, with an unread marker', async () => {
    await a.page.click(`#members button.member >> text="${bob}"`);
    await until('private thread open', async () => (await text(a.page, '#thread-title')).includes(bob));
    await send(a.page, 'psst, bob');
    await seesMessage(a.page, 'psst, bob');
    await b.page.waitForSelector('#thread-list li .unread', { timeout: WAIT });
    await shot(b.page, 'unread');
    await b.page.click(`#thread-list button.thread >> text="@ ${alice}"`);
    await seesMessage(b.page, 'psst, bob');
    if (await b.page.locator('#messages .msg-text', { hasText: 'hello from alice' }).count()) {
      throw new Error('room messages leaked into the private thread');
    }
    await shot(b.page, 'private');
    await b.page.click('#thread-list button.thread >> text="Room 1"');
    await seesMessage(b.page, 'hello from alice');
  });

  await step('switching rooms: the other room\'s chat, then back with what was missed meanwhile', async () => {
    await a.page.fill('#room-input', '2');
    await a.page.click('#join-btn');
    await until('room 2 shown', async () => (await text(a.page, '#thread-title')) === 'Room 2');
    await until('alone in room 2', async () => (await text(a.page, '#online-count')) === '1');
    await send(b.page, 'while alice is in room 2');
    await send(a.page, 'alone in room 2');
    await seesMessage(a.page, 'alone in room 2');
    if (await a.page.locator('#messages .msg-text', { hasText: 'while alice is in room 2' }).count()) {
      throw new Error('room 1 leaked into room 2');
    }
    await a.page.click('#thread-list button.thread >> text="Room 1"');
    await seesMessage(a.page, 'while alice is in room 2');
    const copies = await a.page.locator('#messages .msg-text', { hasText: 'hello from alice' }).count();
    if (copies !== 1) throw new Error(`'hello from alice' shown ${copies} times`);
    await until('both in room 1 again', async () => (await text(a.page, '#online-count')) === '2');
  });

  await step('the page works on a phone-sized screen', async () => {
    const phone = await newPage({ width: 390, height: 800 });
    await phone.page.goto(origin);
    await phone.page.fill('#login-user', alice);
    await phone.page.fill('#login-pass', 'secret-123');
    await phone.page.click('#login-btn');
    await live(phone.page);
    await send(phone.page, 'from a phone');
    await seesMessage(b.page, 'from a phone');
    await shot(phone.page, 'phone');
    await phone.context.close();
  });

  await step('a page that comes in later sees the room\'s recent messages, each once', async () => {
    const late = await newPage();
    await late.page.goto(origin);
    await late.page.fill('#login-user', alice);
    await late.page.fill('#login-pass', 'secret-123');
    await late.page.click('#login-btn');
    await live(late.page);
    await seesMessage(late.page, 'hello from alice');
    await seesMessage(late.page, 'from a phone');
    const copies = await late.page.locator('#messages .msg-text', { hasText: 'hello from alice' }).count();
    if (copies !== 1) throw new Error(`'hello from alice' shown ${copies} times`);
    await late.context.close();
  });

  await step('one user goes offline: the other sees the count drop', async () => {
    await until('count back to 2', async () => (await text(a.page, '#online-count')) === '2');
    await b.context.close();
    await until('count drops to 1', async () => (await text(a.page, '#online-count')) === '1');
  });

  await step('a server restart is followed by an automatic reconnect', async () => {
    await stopServer();
    await a.page.waitForSelector('#conn-state[data-state="reconnecting"]', { timeout: WAIT });
    await shot(a.page, 'reconnecting');
    await startServer();
    await live(a.page);
    await a.page.click('#thread-list button.thread >> text="Room 1"');
    await send(a.page, 'after the restart');
    await seesMessage(a.page, 'after the restart');
  });

  await step('an expired session sends the user back to log in', async () => {
    await a.page.evaluate(() => localStorage.setItem('authToken', 'not-a-session'));
    await a.page.reload();
    await until('expired session explained', async () =>
      (await text(a.page, '#auth-error')).includes('expired'));
  });

  await step("gochat's own page's calls work from a browser (its chat.js, replayed)", async () => {
    // gochat's page (site/js/chat.js) uses jQuery from a CDN this machine cannot reach, so its
    // exact calls are replayed here from a page of our origin: JSON with a preflight for
    // checkAuth, jQuery's default form content type for the rest, the socket's auth frame, and
    // ops 3, 4 and 5 back.
    const c = await newPage();
    await c.page.goto(origin);
    const token = await c.page.evaluate(async ({ api, ws, name }) => {
      const post = (path, body, json) => fetch(`${api}${path}`, {
        method: 'POST',
        headers: { 'Content-Type': json ? 'application/json' : 'application/x-www-form-urlencoded; charset=UTF-8' },
        body: JSON.stringify(body),
      }).then((r) => r.json());
      const reg = await post('/user/register', { userName: name, passWord: 'secret-123' }, false);
      if (reg.code !== 0) throw new Error(`register: ${JSON.stringify(reg)}`);
      const authToken = reg.data;
      const who = await post('/user/checkAuth', { authToken }, true);
      if (who.code !== 0 || who.data.userName !== name) throw new Error(`checkAuth: ${JSON.stringify(who)}`);
      const socket = new WebSocket(ws);
      const seen = {};
      const got = (op, test) => new Promise((resolve, reject) => {
        const t = setTimeout(() => reject(new Error(`no op ${op} frame`)), 10000);
        const check = () => {
          const f = (seen[op] || []).find(test);
          if (f) { clearTimeout(t); resolve(f); } else setTimeout(check, 50);
        };
        check();
      });
      socket.onmessage = (evt) => {
        const data = JSON.parse(evt.data);
        (seen[data.op] = seen[data.op] || []).push(data);
      };
      await new Promise((resolve) => { socket.onopen = resolve; });
      socket.send(JSON.stringify({ authToken, roomId: 1 }));
      // The auth reply (op 7) comes once logic has the socket in room 1.
      const ok = await got(7, () => true);
      if (ok.roomId !== 1) throw new Error(`auth reply: ${JSON.stringify(ok)}`);
      if ((await post('/push/getRoomInfo', { roomId: 1, authToken })).code !== 0) throw new Error('getRoomInfo');
      await got(5, (f) => Object.values(f.roomUserInfo || {}).includes(name));
      if ((await post('/push/count', { roomId: 1, authToken })).code !== 0) throw new Error('count');
      await got(4, (f) => f.count >= 1);
      const sent = await post('/push/pushRoom', { op: 3, msg: 'from the old page', roomId: 1, authToken });
      if (sent.code !== 0) throw new Error(`pushRoom: ${JSON.stringify(sent)}`);
      await got(3, (f) => f.msg === 'from the old page' && f.fromUserName === name);
      socket.close();
      return authToken;
    }, { api: `http://127.0.0.1:${api}`, ws: `ws://127.0.0.1:${ws}/ws`, name: `gochatpage${process.pid}` });
    const out = await c.page.evaluate(async ({ api, token }) => fetch(`${api}/user/logout`, {
      method: 'POST', body: JSON.stringify({ authToken: token }),
    }).then((r) => r.json()), { api: `http://127.0.0.1:${api}`, token });
    if (out.code !== 0) throw new Error(`logout: ${JSON.stringify(out)}`);
    await c.context.close();
  });

  await step('the content security policy holds: other ports of the host are refused', async () => {
    const c = await newPage(undefined, { probe: true });
    await c.page.goto(origin);
    const blocked = await c.page.evaluate((url) => fetch(url, { method: 'POST' }).then(() => false, () => true),
      `http://127.0.0.1:${grpc}/`);
    if (!blocked) throw new Error('a fetch to another port went through');
    await until('the refusal is reported', async () => c.violations.some((v) => v.includes(`:${grpc}`)));
    await c.context.close();
  });

  await step('one origin: the page, its API under /api and its socket at /ws through one port', async () => {
    await stopServer();
    writeConfig('site_api_url = "/api"\nsite_ws_url = "/ws"');
    await startServer();
    const proxy = await startProxy();
    const front = `http://127.0.0.1:${proxy.port}`;
    const c = await newPage();
    const [requests, sockets] = [[], []];
    c.page.on('request', (r) => requests.push(r.url()));
    c.page.on('websocket', (w) => sockets.push(w.url()));
    try {
      await register(c.page, `oneorigin${process.pid}`, 'secret-123', front);
      await send(c.page, 'through one origin');
      await seesMessage(c.page, 'through one origin');
      await shot(c.page, 'one-origin');
      const elsewhere = requests.filter((u) => !u.startsWith(`${front}/`));
      if (elsewhere.length) throw new Error(`requests to another origin: ${elsewhere.join(', ')}`);
      if (!sockets.length || sockets.some((u) => u !== `ws://127.0.0.1:${proxy.port}/ws`)) {
        throw new Error(`sockets: ${sockets.join(', ')}`);
      }
      for (const want of ['/config.js', '/api/user/register', '/api/push/pushRoom', '/ws']) {
        if (!proxy.seen.includes(want)) throw new Error(`${want} not through the proxy: ${proxy.seen.join(', ')}`);
      }
    } finally {
      await c.context.close();
      proxy.close();
    }
  });

  await step('nothing was loaded from outside, no script error, nothing refused by the policy', async () => {
    if (external.length) throw new Error(`external requests: ${external.join(', ')}`);
    if (pageErrors.length) throw new Error(`page errors: ${pageErrors.join('; ')}`);
    if (cspViolations.length) throw new Error(`refused by the page's policy: ${cspViolations.join('; ')}`);
  });
} catch (e) {
  failed = true;
  console.error(e);
} finally {
  await browser.close().catch(() => {});
  await stopServer();
  cleanRedis();
  if (!failed) rmSync(dir, { recursive: true, force: true });
  else console.error(`server log kept in ${dir}`);
  console.log(results.join('\n'));
  console.log(`screenshots in ${artifacts}`);
}
process.exit(failed ? 1 : 0);
