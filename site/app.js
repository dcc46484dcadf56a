'use strict';

(() => {
  const cfg = Object.assign({ apiPort: 7070, wsPort: 7000, wsPath: '/ws' }, window.GOCHAT_CONFIG || {});
  // The REST API and the socket: at the configured URLs (a path such as /api is on this page's
  // own origin, so one HTTPS host can serve all three), or on ports of this page's host.
  const API = cfg.apiUrl
    ? new URL(cfg.apiUrl, location.href).href.replace(/\/+$/, '')
    : `${location.protocol}//${location.hostname}:${cfg.apiPort}`;
  const WS = cfg.wsUrl
    ? socketUrl(cfg.wsUrl)
    : `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.hostname}:${cfg.wsPort}${cfg.wsPath}`;
  const TOKEN_KEY = 'authToken';
  const EXPIRED = 'Your session has expired, please log in again';
  const SESSION_ERROR = 40000;
  const MAX_MESSAGES = 500;
  const RECONNECTING = 'reconnecting…';
  const ROOMS_KEY = 'gochatRooms';
  const MAX_ROOMS = 8;
  // gochat's own messages, told in plainer words.
  const FRIENDLY = {
    'no this user or password error!': 'Wrong user name or password',
    'this user name already have , please login !!!': 'This user name is taken; log in instead',
    'this user name looks like one already taken, please choose another':
      'This user name looks like one already taken; choose another',
  };

  const $ = (id) => document.getElementById(id);
  const ui = {
    auth: $('auth'), authForm: $('auth-form'), user: $('login-user'), pass: $('login-pass'),
    loginBtn: $('login-btn'), registerBtn: $('register-btn'), authError: $('auth-error'),
    chat: $('chat'), me: $('me'), roomForm: $('room-form'), roomInput: $('room-input'),
    online: $('online-count'), members: $('members'),
    messages: $('messages'), sendForm: $('send-form'), msgInput: $('msg-input'), sendBtn: $('send-btn'),
    conn: $('conn-state'), logoutBtn: $('logout-btn'), notice: $('notice'),
    threadList: $('thread-list'), threadTitle: $('thread-title'),
  };

  const state = {
    token: localStorage.getItem(TOKEN_KEY),
    me: null,
    roomId: 1,
    ws: null,
    gen: 0,
    attempt: 0,
    retryTimer: 0,
    liveTimer: 0,
    // What the message pane shows: `r:<roomId>` or `u:<userId>` (a private thread).
    view: 'r:1',
    rooms: loadRooms(),
    // The last position seen in each room's history ({epoch, seq}), to recover after a drop.
    positions: new Map(),
  };

  // Conversations by key: the rooms joined, and one thread per private correspondent.
  const threads = new Map();

  function loadRooms() {
    try {
      const rooms = JSON.parse(localStorage.getItem(ROOMS_KEY) || '[]');
      return Array.isArray(rooms) ? rooms.filter((r) => Number.isInteger(r) && r > 0).slice(0, MAX_ROOMS) : [];
    } catch {
      return [];
    }
  }

  // `url` against this page's address, as a socket's: http: becomes ws:, https: wss:.
  function socketUrl(url) {
    const u = new URL(url, location.href);
    if (u.protocol === 'http:') u.protocol = 'ws:';
    else if (u.protocol === 'https:') u.protocol = 'wss:';
    return u.href;
  }

  class ApiError extends Error {
    constructor(message, code) { super(message); this.code = code; }
  }

  async function api(path, body) {
    let res;
    try {
      res = await fetch(API + path, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify(body),
      });
    } catch {
      throw new ApiError('Cannot reach the server', -1);
    }
    let env;
    try {
      env = await res.json();
    } catch {
      throw new ApiError(`Unexpected server response (HTTP ${res.status})`, -1);
    }
    if (env && env.code === 0) return env.data;
    const code = env ? env.code : -1;
    if (code === SESSION_ERROR) sessionExpired();
    const message = (env && env.message) || 'Request failed';
    throw new ApiError(FRIENDLY[message] || message, code);
  }

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = String(text);
    return node;
  }

  function setNotice(text) {
    ui.notice.textContent = text || '';
    ui.notice.hidden = !text;
  }

  function setConn(s) {
    ui.conn.textContent = s;
    ui.conn.dataset.state = s;
  }

  // ---- screens ----

  function showLogin(message) {
    stopSocket();
    state.me = null;
    threads.clear();
    ui.chat.hidden = true;
    ui.auth.hidden = false;
    ui.authError.textContent = message || '';
    ui.pass.value = '';
    setBusy(false);
    (ui.user.value ? ui.pass : ui.user).focus();
  }

  function showChat(me) {
    state.me = me;
    ui.me.textContent = me.userName;
    ui.auth.hidden = true;
    ui.chat.hidden = false;
    enterRoom(state.rooms[0] || state.roomId);
    ui.msgInput.focus();
  }

  function dropToken() {
    state.token = null;
    localStorage.removeItem(TOKEN_KEY);
  }

  function sessionExpired() {
    if (!state.token) return;
    dropToken();
    showLogin(EXPIRED);
  }

  // ---- auth ----

  function setBusy(busy) {
    ui.loginBtn.disabled = busy;
    ui.registerBtn.disabled = busy;
  }

  async function authenticate(path) {
    const userName = ui.user.value.trim();
    const passWord = ui.pass.value;
    if (!userName || !passWord) {
      ui.authError.textContent = 'Please enter a user name and a password';
      return;
    }
    ui.authError.textContent = '';
    setBusy(true);
    try {
      const token = await api(path, { userName, passWord });
      if (typeof token !== 'string' || !token) throw new ApiError('No session token received', -1);
      state.token = token;
      localStorage.setItem(TOKEN_KEY, token);
      const me = await api('/user/checkAuth', { authToken: token });
      showChat(me);
    } catch (e) {
      if (e.code !== SESSION_ERROR) ui.authError.textContent = e.message;
    } finally {
      setBusy(false);
    }
  }

  async function logout() {
    const authToken = state.token;
    dropToken();
    showLogin('');
    if (authToken) api('/user/logout', { authToken }).catch(() => {});
  }

  // ---- room & socket ----

  function enterRoom(roomId) {
    state.roomId = roomId;
    ui.roomInput.value = String(roomId);
    state.rooms = [roomId, ...state.rooms.filter((r) => r !== roomId)].slice(0, MAX_ROOMS);
    localStorage.setItem(ROOMS_KEY, JSON.stringify(state.rooms));
    thread(`r:${roomId}`, `Room ${roomId}`, { kind: 'room', roomId });
    ui.members.replaceChildren();
    ui.online.textContent = '0';
    setNotice('');
    state.attempt = 0;
    showThread(`r:${roomId}`);
    connect('connecting');
  }

  // ---- conversations ----

  function thread(key, title, extra) {
    let t = threads.get(key);
    if (!t) {
      t = { key, title, items: [], ids: new Set(), unread: 0, ...extra };
      threads.set(key, t);
    } else if (title) {
      t.title = title;
    }
    return t;
  }

  function showThread(key) {
    const t = threads.get(key);
    if (!t) return;
    state.view = key;
    t.unread = 0;
    ui.threadTitle.textContent = t.kind === 'user' ? `Private chat with ${t.title}` : t.title;
    ui.msgInput.placeholder = t.kind === 'user' ? `Private message to ${t.title}` : `Message ${t.title}`;
    ui.messages.replaceChildren(...t.items.map(renderMessage));
    ui.messages.scrollTop = ui.messages.scrollHeight;
    renderThreads();
  }

  function openPrivate(userId, name) {
    thread(`u:${userId}`, name, { kind: 'user', userId });
    showThread(`u:${userId}`);
    ui.msgInput.focus();
  }

  function renderThreads() {
    const rooms = state.rooms.map((id) => threads.get(`r:${id}`) || thread(`r:${id}`, `Room ${id}`, { kind: 'room', roomId: id }));
    const people = [...threads.values()].filter((t) => t.kind === 'user');
    ui.threadList.replaceChildren(...[...rooms, ...people].map((t) => {
      const li = el('li', t.key === state.view ? 'current' : '');
      li.dataset.key = t.key;
      const button = el('button', 'thread', t.kind === 'user' ? `@ ${t.title}` : t.title);
      button.type = 'button';
      if (t.kind === 'room' && t.roomId !== state.roomId) button.title = `Join room ${t.roomId}`;
      button.addEventListener('click', () => {
        if (t.kind === 'room' && t.roomId !== state.roomId) enterRoom(t.roomId);
        else showThread(t.key);
      });
      li.append(button);
      if (t.unread > 0) li.append(el('span', 'unread', t.unread > 99 ? '99+' : t.unread));
      return li;
    }));
  }

  function stopSocket() {
    state.gen++;
    clearTimeout(state.retryTimer);
    clearTimeout(state.liveTimer);
    if (state.ws) {
      const ws = state.ws;
      state.ws = null;
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
      try { ws.close(); } catch { /* already closed */ }
    }
  }

  function connect(label) {
    stopSocket();
    if (!state.token || !state.me) return;
    const gen = state.gen;
    const roomId = state.roomId;
    setConn(label);
    let ws;
    try {
      ws = new WebSocket(WS);
    } catch {
      scheduleReconnect(gen);
      return;
    }
    state.ws = ws;
    ws.onopen = () => {
      if (gen !== state.gen) return;
      // The last position seen in the room gets what was missed; acks keep private messages
      // on the server until this page has them.
      const at = state.positions.get(roomId);
      const since = at ? { epoch: at.epoch, seq: at.seq } : {};
      ws.send(JSON.stringify({ authToken: state.token, roomId, acks: true, ...since }));
      state.liveTimer = setTimeout(() => goLive(gen), 2000);
    };
    ws.onmessage = (ev) => {
      if (gen !== state.gen) return;
      let frame;
      try { frame = JSON.parse(ev.data); } catch { return; }
      if (frame && typeof frame === 'object') handleFrame(frame, gen);
    };
    ws.onclose = () => scheduleReconnect(gen);
  }

  function goLive(gen) {
    if (gen !== state.gen || ui.conn.dataset.state === 'live') return;
    clearTimeout(state.liveTimer);
    state.attempt = 0;
    setConn('live');
    if (ui.notice.textContent === RECONNECTING) setNotice('');
    refreshRoom();
  }

  function scheduleReconnect(gen) {
    if (gen !== state.gen || !state.token) return;
    state.gen++;
    state.ws = null;
    clearTimeout(state.liveTimer);
    const base = Math.min(15000, 1000 * 2 ** state.attempt);
    const delay = Math.min(15000, base + Math.random() * base * 0.3);
    state.attempt++;
    setConn('reconnecting');
    setNotice(RECONNECTING);
    const waiting = state.gen;
    state.retryTimer = setTimeout(async () => {
      try {
        await api('/user/checkAuth', { authToken: state.token });
      } catch (e) {
        if (e.code === SESSION_ERROR) return;
      }
      if (waiting === state.gen && state.token && state.me) connect('reconnecting');
    }, delay);
  }

  function refreshRoom() {
    const body = { authToken: state.token, roomId: state.roomId };
    api('/push/count', body).catch(reportError);
    api('/push/getRoomInfo', body).catch(reportError);
  }

  function reportError(e) {
    if (e.code !== SESSION_ERROR) setNotice(e.message);
  }

  function sameRoom(frame) {
    return frame.roomId === undefined || frame.roomId === null || Number(frame.roomId) === state.roomId;
  }

  function handleFrame(f, gen) {
    switch (f.op) {
      case 7: joined(f); goLive(gen); break;
      case 3: if (sameRoom(f)) { notePosition(f); addMessage(f, false); } break;
      case 2: acknowledge(f); addMessage(f, true); break;
      case 4: ui.online.textContent = String(Number(f.count) || 0); break;
      case 5: if (sameRoom(f)) renderMembers(f); break;
      case 8:
        clearTimeout(state.liveTimer);
        if (f.code === SESSION_ERROR) sessionExpired();
        else setNotice(f.message || `Error ${f.code}`);
        break;
      default: break;
    }
  }

  // Where the room stands: what was missed follows when it was recovered; otherwise (a first
  // visit, or too much missed) the room's recent messages are loaded.
  function joined(f) {
    if (!f.epoch || f.recovered === true) return;
    loadHistory(state.roomId);
  }

  function notePosition(m) {
    if (!m.epoch || typeof m.seq !== 'number') return;
    const at = state.positions.get(state.roomId);
    if (!at || at.epoch !== m.epoch || m.seq > at.seq) state.positions.set(state.roomId, { epoch: m.epoch, seq: m.seq });
  }

  async function loadHistory(roomId) {
    let data;
    try {
      data = await api('/push/history', { authToken: state.token, roomId });
    } catch {
      return; // no history kept: the room starts empty, as in gochat
    }
    if (roomId !== state.roomId || !data || !Array.isArray(data.messages)) return;
    for (const m of data.messages) addMessage(m, false);
    const t = threads.get(`r:${roomId}`);
    if (t) t.items.sort((a, b) => (a.epoch === b.epoch && typeof a.seq === 'number' && typeof b.seq === 'number' ? a.seq - b.seq : 0));
    if (typeof data.seq === 'number' && data.epoch) notePosition({ epoch: data.epoch, seq: data.seq });
    if (state.view === `r:${roomId}`) showThread(state.view);
  }

  function acknowledge(m) {
    if (!m.msgId || !state.ws || state.ws.readyState !== WebSocket.OPEN) return;
    state.ws.send(JSON.stringify({ op: 12, msgIds: [String(m.msgId)] }));
  }

  // ---- rendering ----

  function renderMembers(f) {
    const info = f.roomUserInfo && typeof f.roomUserInfo === 'object' ? f.roomUserInfo : {};
    const entries = Object.entries(info).sort((a, b) => String(a[1]).localeCompare(String(b[1])));
    ui.members.replaceChildren(...entries.map(([id, name]) => {
      const self = state.me && String(state.me.userId) === id;
      const li = el('li', self ? 'self' : '');
      li.dataset.userId = id;
      if (self) {
        li.textContent = `${name} (you)`;
      } else {
        const button = el('button', 'member', name);
        button.type = 'button';
        button.title = `Message ${name} privately`;
        button.addEventListener('click', () => openPrivate(Number(id), String(name)));
        li.append(button);
      }
      return li;
    }));
    if (f.count !== undefined) ui.online.textContent = String(Number(f.count) || 0);
  }

  function addMessage(m, isPrivate) {
    const mine = state.me && String(m.fromUserId) === String(state.me.userId);
    let key = `r:${state.roomId}`;
    if (isPrivate) {
      const other = mine ? m.toUserId : m.fromUserId;
      key = `u:${other}`;
      thread(key, (mine ? m.toUserName : m.fromUserName) || `user ${other}`, { kind: 'user', userId: Number(other) });
    }
    const t = threads.get(key);
    // Delivered again (recovery, or a private message not yet acknowledged): shown once.
    if (m.msgId) {
      if (t.ids.has(m.msgId)) return;
      t.ids.add(m.msgId);
    }
    const item = { ...m, mine, isPrivate };
    t.items.push(item);
    if (t.items.length > MAX_MESSAGES) t.items.shift();
    if (state.view !== key) {
      t.unread++;
      renderThreads();
      return;
    }
    const box = ui.messages;
    const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
    box.append(renderMessage(item));
    while (box.children.length > MAX_MESSAGES) box.firstElementChild.remove();
    if (atBottom || mine) box.scrollTop = box.scrollHeight;
  }

  function renderMessage(m) {
    const name = m.fromUserName || `user ${m.fromUserId}`;
    const node = el('div', 'msg');
    if (m.mine) node.classList.add('mine');
    if (m.isPrivate) node.classList.add('private');
    const meta = el('div', 'msg-meta');
    meta.append(el('span', 'msg-from', m.mine ? 'you' : name), el('span', 'msg-time', m.createTime || ''));
    node.append(meta, el('div', 'msg-text', m.msg ?? ''));
    return node;
  }

  // ---- actions ----

  async function send() {
    const msg = ui.msgInput.value;
    if (!msg.trim() || !state.token) return;
    ui.sendBtn.disabled = true;
    const t = threads.get(state.view);
    try {
      if (t && t.kind === 'user') {
        await api('/push/push', { authToken: state.token, msg, toUserId: String(t.userId), roomId: state.roomId });
        // The server sends a private message to its receiver only: show ours here.
        addMessage({
          msg, fromUserId: state.me.userId, fromUserName: state.me.userName, toUserId: t.userId,
          toUserName: t.title, createTime: localTime(),
        }, true);
      } else {
        await api('/push/pushRoom', { authToken: state.token, msg, roomId: state.roomId });
      }
      ui.msgInput.value = '';
    } catch (e) {
      reportError(e);
    } finally {
      ui.sendBtn.disabled = false;
      if (!ui.chat.hidden) ui.msgInput.focus();
    }
  }

  function localTime() {
    const d = new Date();
    const p = (n) => String(n).padStart(2, '0');
    return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
  }

  function join() {
    const roomId = Number(ui.roomInput.value);
    if (!Number.isInteger(roomId) || roomId < 1) {
      setNotice('Room id must be a positive whole number');
      return;
    }
    enterRoom(roomId);
  }

  ui.authForm.addEventListener('submit', (e) => { e.preventDefault(); authenticate('/user/login'); });
  ui.registerBtn.addEventListener('click', () => authenticate('/user/register'));
  ui.roomForm.addEventListener('submit', (e) => { e.preventDefault(); join(); });
  ui.sendForm.addEventListener('submit', (e) => { e.preventDefault(); send(); });
  ui.logoutBtn.addEventListener('click', logout);
  window.addEventListener('online', () => {
    if (ui.conn.dataset.state === 'reconnecting' && !state.ws && state.me) connect('reconnecting');
  });

  async function init() {
    if (!state.token) return showLogin('');
    try {
      showChat(await api('/user/checkAuth', { authToken: state.token }));
    } catch (e) {
      if (e.code === SESSION_ERROR) return;
      if (e.code !== -1) dropToken();
      showLogin(e.code === -1 ? e.message : EXPIRED);
    }
  }

  init();
})();
