// The page: every protocol detail (REST envelope, socket, reconnects, recovery, acks) is the
// client library's (clients/js/gochat.js, served by control as /gochat.js); this is the UI.
import { GochatApi, GochatClient, SESSION_ERROR } from './gochat.js';

{
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

  const api = new GochatApi({ url: API, token: localStorage.getItem(TOKEN_KEY) });

  const state = {
    me: null,
    roomId: 1,
    // The socket's client: one room joined at a time, the one shown.
    client: null,
    // What the message pane shows: `r:<roomId>` or `u:<userId>` (a private thread).
    view: 'r:1',
    rooms: loadRooms(),
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

  // A REST call: a session error sends the user back to log in; gochat's messages in plainer words.
  async function call(request) {
    try {
      return await request();
    } catch (e) {
      if (e.code === SESSION_ERROR) sessionExpired();
      e.message = FRIENDLY[e.message] || e.message;
      throw e;
    }
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
    api.token = null;
    localStorage.removeItem(TOKEN_KEY);
  }

  function sessionExpired() {
    if (!api.token) return;
    dropToken();
    showLogin(EXPIRED);
  }

  // ---- auth ----

  function setBusy(busy) {
    ui.loginBtn.disabled = busy;
    ui.registerBtn.disabled = busy;
  }

  async function authenticate(register) {
    const userName = ui.user.value.trim();
    const passWord = ui.pass.value;
    if (!userName || !passWord) {
      ui.authError.textContent = 'Please enter a user name and a password';
      return;
    }
    ui.authError.textContent = '';
    setBusy(true);
    try {
      const token = await call(() => (register ? api.register(userName, passWord) : api.login(userName, passWord)));
      localStorage.setItem(TOKEN_KEY, token);
      const me = await call(() => api.checkAuth());
      showChat(me);
    } catch (e) {
      if (e.code !== SESSION_ERROR) ui.authError.textContent = e.message;
    } finally {
      setBusy(false);
    }
  }

  function logout() {
    const out = api.token ? api.logout() : null;
    dropToken();
    showLogin('');
    if (out) out.catch(() => {});
  }

  // ---- room & socket ----

  function enterRoom(roomId) {
    const previous = state.roomId;
    state.roomId = roomId;
    ui.roomInput.value = String(roomId);
    state.rooms = [roomId, ...state.rooms.filter((r) => r !== roomId)].slice(0, MAX_ROOMS);
    localStorage.setItem(ROOMS_KEY, JSON.stringify(state.rooms));
    thread(`r:${roomId}`, `Room ${roomId}`, { kind: 'room', roomId });
    ui.members.replaceChildren();
    ui.online.textContent = '0';
    setNotice('');
    showThread(`r:${roomId}`);
    if (!state.client) {
      startClient();
    } else if (previous !== roomId) {
      state.client.leave(previous);
      state.client.join(roomId);
    } else if (state.client.state === 'connected') {
      refreshRoom();
    }
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
    if (!state.client) return;
    state.client.close();
    state.client = null;
  }

  // The socket: the library reconnects (backoff and jitter), recovers what was missed, hands
  // room messages over in order, once each, and acknowledges private messages.
  function startClient() {
    const client = new GochatClient({ url: WS, api, rooms: [state.roomId] });
    state.client = client;
    const current = (fn) => (event) => { if (state.client === client) fn(event); };
    client.on('connecting', current((e) => { if (e.attempt === 0) setConn('connecting'); }));
    client.on('reconnecting', current(() => {
      setConn('reconnecting');
      setNotice(RECONNECTING);
    }));
    client.on('connected', current(() => {
      setConn('live');
      if (ui.notice.textContent === RECONNECTING) setNotice('');
    }));
    client.on('disconnected', current((e) => { if (e.terminal) closedForGood(e.reason); }));
    client.on('joined', current((e) => {
      if (e.roomId !== state.roomId) return;
      refreshRoom();
      // A first visit: the room's recent messages (when it was left and joined again, what was
      // missed meanwhile follows instead).
      if (e.recovered === undefined && e.epoch) loadHistory(e.roomId);
    }));
    // Too much was missed (or the room's history started again): reload it.
    client.on('reset', current((e) => { if (e.roomId === state.roomId) loadHistory(e.roomId); }));
    client.on('message', current((m) => { if (sameRoom(m)) addMessage(m, false); }));
    client.on('private', current((m) => addMessage(m, true)));
    client.on('count', current((f) => { if (sameRoom(f)) ui.online.textContent = String(Number(f.count) || 0); }));
    client.on('members', current((f) => { if (sameRoom(f)) renderMembers(f); }));
    client.on('refused', current((f) => setNotice(f.message || `Error ${f.code}`)));
    client.connect();
  }

  // The server closed the socket for good: an expired session logs out, anything else is said.
  async function closedForGood(reason) {
    try {
      await call(() => api.checkAuth());
    } catch (e) {
      if (e.code === SESSION_ERROR) return;
    }
    setConn('disconnected');
    setNotice(reason ? `Disconnected: ${reason}` : 'Disconnected');
  }

  function refreshRoom() {
    call(() => api.count(state.roomId)).catch(reportError);
    call(() => api.getRoomInfo(state.roomId)).catch(reportError);
  }

  function reportError(e) {
    if (e.code !== SESSION_ERROR) setNotice(e.message);
  }

  function sameRoom(frame) {
    return frame.roomId === undefined || frame.roomId === null || Number(frame.roomId) === state.roomId;
  }

  async function loadHistory(roomId) {
    let data;
    try {
      data = await api.history(roomId);
    } catch {
      return; // no history kept: the room starts empty, as in gochat
    }
    if (roomId !== state.roomId || !data || !Array.isArray(data.messages)) return;
    for (const m of data.messages) addMessage(m, false);
    const t = threads.get(`r:${roomId}`);
    if (t) t.items.sort((a, b) => (a.epoch === b.epoch && typeof a.seq === 'number' && typeof b.seq === 'number' ? a.seq - b.seq : 0));
    if (state.view === `r:${roomId}`) showThread(state.view);
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
    if (!msg.trim() || !api.token) return;
    ui.sendBtn.disabled = true;
    const t = threads.get(state.view);
    try {
      if (t && t.kind === 'user') {
        await call(() => api.push(t.userId, msg, state.roomId));
        // The server sends a private message to its receiver only: show ours here.
        addMessage({
          msg, fromUserId: state.me.userId, fromUserName: state.me.userName, toUserId: t.userId,
          toUserName: t.title, createTime: localTime(),
        }, true);
      } else {
        await call(() => api.pushRoom(state.roomId, msg));
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

  ui.authForm.addEventListener('submit', (e) => { e.preventDefault(); authenticate(false); });
  ui.registerBtn.addEventListener('click', () => authenticate(true));
  ui.roomForm.addEventListener('submit', (e) => { e.preventDefault(); join(); });
  ui.sendForm.addEventListener('submit', (e) => { e.preventDefault(); send(); });
  ui.logoutBtn.addEventListener('click', logout);
  // Back online: try at once rather than at the end of the backoff.
  window.addEventListener('online', () => {
    if (state.client && state.client.state === 'reconnecting') state.client.connect();
  });

  async function init() {
    if (!api.token) return showLogin('');
    try {
      showChat(await call(() => api.checkAuth()));
    } catch (e) {
      if (e.code === SESSION_ERROR) return;
      if (e.code !== -1) dropToken();
      showLogin(e.code === -1 ? e.message : EXPIRED);
    }
  }

  init();
}
