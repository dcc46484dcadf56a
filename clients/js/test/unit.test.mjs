// The client's logic against a fake WebSocket: frames fed in any order, duplicated or
// missing; reconnects and their backoff; acknowledgements; the binary protocol's encoding.
//   node --test clients/js/test/unit.test.mjs

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { ApiError, GochatApi, GochatClient, encodeClientFrame, decodeServerFrame, encodeJsonFrame } from '../gochat.js';
import { record } from './record.mjs';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** A WebSocket class whose sockets the test opens, feeds and closes; `sockets` lists them. */
function fakeSockets() {
  const sockets = [];
  class FakeWebSocket {
    constructor(url, protocols) {
      Object.assign(this, { url, protocols, readyState: 0, protocol: '', sent: [], closed: null });
      sockets.push(this);
    }

    /** The server accepts the upgrade (with `protocol` when it took one offered, and the
     * `extensions` it agreed to). */
    open(protocol = '', extensions = '') {
      this.protocol = protocol;
      this.extensions = extensions;
      this.readyState = 1;
      this.onopen?.({});
    }

    send(data) {
      this.sent.push(typeof data === 'string' ? JSON.parse(data) : data);
    }

    close(code, reason) {
      this.readyState = 3;
      this.closed = { code, reason };
    }

    /** A frame from the server: an object (JSON), or bytes (binary). */
    receive(frame) {
      this.onmessage?.({ data: frame instanceof Uint8Array ? frame.buffer : JSON.stringify(frame) });
    }

    /** The server closes (or the connection drops, 1006). */
    drop(code = 1006, reason = '') {
      this.readyState = 3;
      this.onclose?.({ code, reason });
    }
  }
  return { WebSocket: FakeWebSocket, sockets, last: () => sockets[sockets.length - 1] };
}

async function until(what, check, ms = 2000) {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (check()) return;
    await sleep(5);
  }
  throw new Error(`not true in time: ${what}`);
}

const msg = (seq, { roomId = 1, epoch = 'e1', msgId } = {}) => ({
  code: 0, msg: `m${seq}`, fromUserId: 2, fromUserName: 'b', toUserId: 0, toUserName: '', roomId, op: 3,
  createTime: '2026-01-01 00:00:00', msgId: msgId ?? String(1000 + seq), seq, epoch,
});

/** A client connected over a fake socket, its room 1 at `epoch`/`seq`. */
async function connected(options = {}, joined = { epoch: 'e1', seq: 10 }) {
  const fake = fakeSockets();
  const client = new GochatClient({
    url: 'ws://gochat.test/ws', WebSocket: fake.WebSocket, token: 'tok', rooms: [1], gapTimeout: 20, minDelay: 10,
    maxDelay: 80, ...options,
  });
  const seen = record(client);
  client.connect();
  await until('a socket', () => fake.sockets.length === 1);
  fake.last().open();
  fake.last().receive({ op: 7, userId: 1, userName: 'a', roomId: 1, ...joined });
  return { fake, client, seen, ws: fake.last() };
}

test('compressed says whether the socket agreed to permessage-deflate, on each connect', async () => {
  const { client, seen, fake } = await connected();
  assert.equal(client.compressed, false);
  fake.last().drop();
  await until('a second socket', () => fake.sockets.length === 2);
  fake.last().open('', 'permessage-deflate; server_no_context_takeover; client_no_context_takeover');
  fake.last().receive({ op: 7, userId: 1, userName: 'a', roomId: 1, epoch: 'e1', seq: 10 });
  await until('connected again', () => seen.of('connected').length === 2);
  assert.equal(client.compressed, true);
  assert.equal(seen.of('connected')[1].compressed, true);
  client.close();
});

test('the auth frame, then connected and the room joined', async () => {
  const { client, seen, ws } = await connected({ rooms: [1, 5] });
  assert.deepEqual(ws.sent[0], { authToken: 'tok', roomId: 1, acks: true });
  assert.equal(client.state, 'connected');
  assert.deepEqual(client.user, { userId: 1, userName: 'a' });
  assert.deepEqual(seen.of('connected')[0], { userId: 1, userName: 'a', roomId: 1, pending: 0, protocol: 'json', compressed: false });
  assert.deepEqual(seen.of('joined')[0], { roomId: 1, epoch: 'e1', seq: 10, recovered: undefined });
  assert.deepEqual(ws.sent[1], { op: 10, roomId: 5 }, 'the other rooms joined after the auth reply');
  ws.receive({ op: 10, roomId: 5, epoch: 'x', seq: 3 });
  assert.deepEqual(client.position(5), { epoch: 'x', seq: 3 });
  client.leave(5);
  assert.deepEqual(ws.sent[2], { op: 11, roomId: 5 });
  ws.receive({ op: 11, roomId: 5 });
  assert.equal(seen.of('left')[0].roomId, 5);
  assert.deepEqual(client.rooms, [1]);
  assert.equal(client.send(1, 'hi'), true);
  assert.deepEqual(ws.sent[3], { op: 3, roomId: 1, msg: 'hi' });
  client.close();
});

test('room messages are handed over in seq order, once, whatever order they come in', async () => {
  const { client, seen, ws } = await connected();
  for (const seq of [9, 10, 12, 11, 11, 13, 12, 15, 14]) ws.receive(msg(seq));
  assert.deepEqual(seen.texts(), ['m11', 'm12', 'm13', 'm14', 'm15']);
  assert.deepEqual(client.position(1), { epoch: 'e1', seq: 15 });
  ws.receive(msg(3, { roomId: 2 }));
  assert.equal(seen.of('message').length, 5, 'a room not joined is not handed over');
  assert.equal(seen.of('reset').length, 0);
  client.close();
});

test('a gap is filled from the room history when an api is given', async () => {
  const calls = [];
  const api = {
    token: 'tok',
    async call(path, body) {
      calls.push([path, body]);
      return { epoch: 'e1', seq: 14, messages: [msg(10), msg(11), msg(12), msg(13), msg(14)] };
    },
  };
  const { client, seen, ws } = await connected({ api });
  ws.receive(msg(11));
  ws.receive(msg(13));
  assert.deepEqual(seen.texts(), ['m11'], '13 held: 12 is missing');
  await until('the gap filled', () => seen.of('message').length === 4);
  assert.deepEqual(calls, [['/push/history', { authToken: 'tok', roomId: 1 }]]);
  assert.deepEqual(seen.texts(), ['m11', 'm12', 'm13', 'm14']);
  ws.receive(msg(14));
  ws.receive(msg(15));
  assert.deepEqual(seen.texts(), ['m11', 'm12', 'm13', 'm14', 'm15'], '14 came live too: once');
  assert.equal(seen.of('reset').length, 0);
  client.close();
});

test('a gap the history no longer has is given up with a reset, then messages go on', async () => {
  const api = { token: 'tok', call: async () => ({ epoch: 'e1', seq: 20, messages: [msg(16), msg(17)] }) };
  const { client, seen, ws } = await connected({ api });
  ws.receive(msg(11));
  ws.receive(msg(16));
  ws.receive(msg(17));
  await until('a reset', () => seen.of('reset').length === 1);
  assert.deepEqual(seen.of('reset')[0], { roomId: 1, reason: 'gap', lastEpoch: 'e1', lastSeq: 11, epoch: 'e1', seq: 15 });
  assert.deepEqual(seen.texts(), ['m11', 'm16', 'm17']);
  const types = seen.map(([t]) => t).filter((t) => t === 'message' || t === 'reset');
  assert.deepEqual(types, ['message', 'reset', 'message', 'message'], 'the reset comes before what follows the gap');
  client.close();
});

test('without an api, a gap is resumed by reconnecting from the last position', async () => {
  const { fake, client, seen, ws } = await connected();
  ws.receive(msg(11));
  ws.receive(msg(13));
  await until('a second socket', () => fake.sockets.length === 2);
  assert.equal(ws.closed.code, 4000);
  const again = fake.last();
  again.open();
  assert.deepEqual(again.sent[0], { authToken: 'tok', roomId: 1, acks: true, epoch: 'e1', seq: 11 });
  again.receive({ op: 7, userId: 1, userName: 'a', roomId: 1, epoch: 'e1', seq: 14, recovered: true });
  for (const seq of [12, 13, 14]) again.receive(msg(seq));
  assert.deepEqual(seen.texts(), ['m11', 'm12', 'm13', 'm14']);
  assert.equal(seen.of('reset').length, 0);
  client.close();
});

test('a reconnect recovers what was missed; a reload signal is a reset', async () => {
  const { fake, client, seen, ws } = await connected();
  ws.receive(msg(11));
  ws.drop(1006);
  assert.equal(client.state, 'reconnecting');
  assert.deepEqual(seen.of('disconnected')[0], { code: 1006, reason: '', willReconnect: true, terminal: false });
  await until('a second socket', () => fake.sockets.length === 2);
  let s = fake.last();
  s.open();
  assert.deepEqual(s.sent[0], { authToken: 'tok', roomId: 1, acks: true, epoch: 'e1', seq: 11 });
  s.receive({ op: 7, userId: 1, userName: 'a', roomId: 1, epoch: 'e1', seq: 13, recovered: true });
  s.receive(msg(12));
  s.receive(msg(13));
  s.receive(msg(13));
  assert.deepEqual(seen.texts(), ['m11', 'm12', 'm13']);
  s.drop(1012, 'service restarting, reconnect');
  await until('a third socket', () => fake.sockets.length === 3);
  s = fake.last();
  s.open();
  s.receive({ op: 7, userId: 1, userName: 'a', roomId: 1, epoch: 'e1', seq: 400, recovered: false });
  assert.deepEqual(seen.of('reset')[0], { roomId: 1, reason: 'unrecoverable', lastEpoch: 'e1', lastSeq: 13, epoch: 'e1', seq: 400 });
  s.receive(msg(399));
  s.receive(msg(401));
  assert.deepEqual(seen.texts(), ['m11', 'm12', 'm13', 'm401']);
  client.close();
});

test('a new epoch is a reset, and its messages count from 1; late ones of the old are dropped', async () => {
  const { client, seen, ws } = await connected();
  ws.receive(msg(11));
  ws.receive(msg(1, { epoch: 'e2' }));
  ws.receive(msg(12));
  ws.receive(msg(2, { epoch: 'e2' }));
  assert.deepEqual(seen.of('reset'), [{ roomId: 1, reason: 'epoch', lastEpoch: 'e1', lastSeq: 11, epoch: 'e2', seq: 0 }]);
  assert.deepEqual(seen.of('message').map((m) => `${m.epoch}/${m.seq}`), ['e1/11', 'e2/1', 'e2/2']);
  client.close();
});

test('a room joined with no history hands messages over as they come, once per id', async () => {
  const { client, seen, ws } = await connected({}, {});
  const plain = { code: 0, msg: 'x', fromUserId: 2, roomId: 1, op: 3, msgId: '77' };
  ws.receive(plain);
  ws.receive(plain);
  ws.receive({ ...plain, msgId: '78', msg: 'y' });
  assert.deepEqual(seen.texts(), ['x', 'y']);
  client.close();
});

test('reconnects back off exponentially with jitter, and stop at a terminal close', async () => {
  const fake = fakeSockets();
  const client = new GochatClient({ url: 'ws://gochat.test/ws', WebSocket: fake.WebSocket, token: 'tok', minDelay: 5, maxDelay: 40, jitter: 0.5 });
  const seen = record(client);
  client.connect();
  for (let n = 1; n <= 6; n++) {
    await until(`socket ${n}`, () => fake.sockets.length === n);
    fake.last().drop(1006);
  }
  const delays = seen.of('reconnecting').map((r) => r.delay);
  const bases = [5, 10, 20, 40, 40, 40];
  delays.forEach((d, i) => assert.ok(d >= bases[i] / 2 && d <= bases[i], `delay ${i}: ${d} of ${bases[i]}`));
  assert.deepEqual(seen.of('reconnecting').map((r) => r.attempt), [1, 2, 3, 4, 5, 6]);
  await until('socket 7', () => fake.sockets.length === 7);
  fake.last().open();
  fake.last().receive({ op: 8, code: 1, message: 'invalid or expired token' });
  fake.last().drop(1008, 'invalid or expired token');
  assert.deepEqual(seen.of('refused')[0], { op: 8, code: 1, message: 'invalid or expired token' });
  assert.deepEqual(seen.of('disconnected').at(-1), { code: 1008, reason: 'invalid or expired token', willReconnect: false, terminal: true });
  assert.equal(client.state, 'closed');
  await sleep(60);
  assert.equal(fake.sockets.length, 7, 'no reconnect after 1008');
});

test('a 1008 for an authentication that timed out on the server is tried again', async () => {
  const fake = fakeSockets();
  const client = new GochatClient({ url: 'ws://gochat.test/ws', WebSocket: fake.WebSocket, token: 'tok', minDelay: 5 });
  const seen = record(client);
  client.connect();
  await until('a socket', () => fake.sockets.length === 1);
  fake.last().open();
  fake.last().drop(1008, 'authentication timeout');
  assert.deepEqual(seen.of('disconnected')[0], { code: 1008, reason: 'authentication timeout', willReconnect: true, terminal: false });
  await until('a second socket', () => fake.sockets.length === 2);
  client.close();
});

test("a backend's disconnect: 4000-4499 reconnects, 4500-4999 stays away", async () => {
  const fake = fakeSockets();
  const client = new GochatClient({ url: 'ws://gochat.test/ws', WebSocket: fake.WebSocket, token: 'tok', minDelay: 5 });
  const seen = record(client);
  client.connect();
  await until('a socket', () => fake.sockets.length === 1);
  fake.last().open();
  fake.last().drop(4001, 'please reconnect');
  assert.deepEqual(seen.of('disconnected')[0], { code: 4001, reason: 'please reconnect', willReconnect: true, terminal: false });
  await until('a second socket', () => fake.sockets.length === 2);
  fake.last().open();
  fake.last().drop(4500, 'account suspended');
  assert.deepEqual(seen.of('disconnected')[1], { code: 4500, reason: 'account suspended', willReconnect: false, terminal: true });
  assert.equal(client.state, 'closed');
  await sleep(30);
  assert.equal(fake.sockets.length, 2, 'no reconnect after 4500');
});

test('a socket that never answers the auth frame is dropped and tried again', async () => {
  const fake = fakeSockets();
  const client = new GochatClient({ url: 'ws://gochat.test/ws', WebSocket: fake.WebSocket, token: 'tok', authTimeout: 20, minDelay: 5 });
  const seen = record(client);
  client.connect();
  await until('a socket', () => fake.sockets.length === 1);
  fake.last().open();
  await until('a second socket', () => fake.sockets.length === 2);
  assert.equal(seen.of('disconnected')[0].code, 4000);
  client.close();
});

test('private messages are acknowledged, and one delivered again is handed over once', async () => {
  const { client, seen, ws } = await connected();
  const pm = (id) => ({ code: 0, msg: `p${id}`, fromUserId: 2, fromUserName: 'b', toUserId: 1, toUserName: 'a', roomId: 0, op: 2, createTime: '', msgId: id });
  ws.receive(pm('501'));
  ws.receive(pm('502'));
  await sleep(0);
  assert.deepEqual(ws.sent.at(-1), { op: 12, msgIds: ['501', '502'] }, 'one ack for both');
  ws.receive(pm('501'));
  await sleep(0);
  assert.deepEqual(seen.of('private').map((p) => p.msg), ['p501', 'p502']);
  assert.deepEqual(ws.sent.at(-1), { op: 12, msgIds: ['501'] }, 'acknowledged again');
  client.close();
});

test('without autoAck the application acknowledges', async () => {
  const { client, seen, ws } = await connected({ autoAck: false });
  ws.receive({ op: 2, msg: 'p', fromUserId: 2, toUserId: 1, msgId: '9007199254740993' });
  await sleep(0);
  assert.equal(ws.sent.length, 1, 'only the auth frame');
  client.ack(seen.of('private')[0].msgId);
  await sleep(0);
  assert.deepEqual(ws.sent.at(-1), { op: 12, msgIds: ['9007199254740993'] });
  assert.throws(() => client.ack('not-an-id'), TypeError);
  client.close();
});

test('bad options and arguments are refused clearly', () => {
  const { WebSocket } = fakeSockets();
  assert.throws(() => new GochatClient({ WebSocket, token: 't' }), /socket URL/);
  assert.throws(() => new GochatClient({ url: 'ftp://x', WebSocket, token: 't' }), /ws: or wss:/);
  assert.throws(() => new GochatClient({ url: 'ws://x/ws', WebSocket }), /session token/);
  assert.throws(() => new GochatClient({ url: 'ws://x/ws', WebSocket, token: 't', protocol: 'xml' }), /protocol/);
  const c = new GochatClient({ url: 'http://x/ws', WebSocket, token: 't' });
  assert.throws(() => c.join(0), RangeError);
  assert.throws(() => c.join('abc'), RangeError);
  assert.throws(() => c.send(1, ''), TypeError);
});

test('REST calls: the envelope read, fetch called as a plain function (as a browser wants it)', async () => {
  const calls = [];
  const answers = [
    { code: 0, message: 'login success', data: 'tok-1' },
    { code: 1, message: 'too many requests, retry in 3 s' },
    { code: 40000, message: 'Session error', data: null },
  ];
  const api = new GochatApi({
    url: 'http://api.test/',
    fetch: function fetchLike(url, init) {
      calls.push({ self: this, url, body: JSON.parse(init.body) });
      const headers = new Headers(calls.length === 2 ? { 'Retry-After': '3' } : {});
      return Promise.resolve({ status: 200, headers, json: async () => answers[calls.length - 1] });
    },
  });
  assert.equal(await api.login('a', 'p'), 'tok-1');
  assert.equal(api.token, 'tok-1');
  await assert.rejects(api.pushRoom(1, 'x'), (e) => e instanceof ApiError && e.code === 1 && e.retryAfter === 3);
  await assert.rejects(api.checkAuth(), (e) => e.isSessionError);
  assert.deepEqual(calls.map((c) => [c.self, c.url]), [
    [undefined, 'http://api.test/user/login'], [undefined, 'http://api.test/push/pushRoom'], [undefined, 'http://api.test/user/checkAuth'],
  ]);
  assert.deepEqual(calls[1].body, { authToken: 'tok-1', msg: 'x', roomId: 1 });
  const broken = new GochatApi({ url: 'http://api.test', fetch: async () => ({ status: 502, json: async () => { throw new SyntaxError('x'); } }) });
  await assert.rejects(broken.checkAuth(), (e) => e.code === -1 && e.status === 502 && /HTTP 502/.test(e.message));
});

// ---- the binary protocol ----

/** A tiny protobuf writer for the server's side of the test. */
function pb(fields) {
  const out = [];
  const varint = (v) => {
    let n = BigInt(v);
    if (n < 0n) n = BigInt.asUintN(64, n);
    while (n > 0x7fn) { out.push(Number(n & 0x7fn) | 0x80); n >>= 7n; }
    out.push(Number(n));
  };
  for (const [field, value] of fields) {
    if (value instanceof Uint8Array || typeof value === 'string') {
      const bytes = typeof value === 'string' ? new TextEncoder().encode(value) : value;
      varint((field << 3) | 2);
      varint(bytes.length);
      out.push(...bytes);
    } else {
      varint(field << 3);
      varint(value);
    }
  }
  return Uint8Array.from(out);
}

test('client frames encode as client.proto has them', () => {
  const hex = (b) => Buffer.from(b).toString('hex');
  // ClientFrame{auth: Auth{auth_token "t", room_id 3, since {epoch "e", seq 9}, acks}}
  assert.equal(hex(encodeClientFrame({ kind: 'auth', authToken: 't', roomId: 3, since: { epoch: 'e', seq: 9 }, acks: true })),
    '0a0e' + '0a0174' + '1003' + '1a05' + '0a0165' + '1009' + '2001');
  assert.equal(hex(encodeClientFrame({ kind: 'send', roomId: 0, msg: 'hé' })), '1205' + '1203' + '68c3a9');
  assert.equal(hex(encodeClientFrame({ kind: 'join', roomId: 300, since: { epoch: 'e', seq: 0 } })), '1a08' + '08ac02' + '1203' + '0a0165');
  assert.equal(hex(encodeClientFrame({ kind: 'leave', roomId: 1 })), '22020801');
  // Packed ids; 2^63 + 1 needs all 64 bits.
  assert.equal(hex(encodeClientFrame({ kind: 'ack', msgIds: ['1', '9223372036854775809'] })),
    '2a0d' + '0a0b' + '01' + '81' + '80'.repeat(8) + '01');
  assert.equal(encodeJsonFrame({ kind: 'ack', msgIds: [5n] }), '{"op":12,"msgIds":["5"]}');
});

test('server frames decode into the JSON bodies', () => {
  const message = pb([[1, 3], [2, pb([[2, 'hi'], [3, 2], [4, 'b'], [7, 1], [8, '2026-01-01 00:00:00'], [9, 9223372036854775807n], [10, 0], [11, 'e1']])]]);
  assert.deepEqual(decodeServerFrame(message), {
    code: 0, msg: 'hi', fromUserId: 2, fromUserName: 'b', toUserId: 0, toUserName: '', roomId: 1,
    createTime: '2026-01-01 00:00:00', msgId: '9223372036854775807', seq: 0, epoch: 'e1', op: 3,
  });
  const authOk = pb([[1, 7], [5, pb([[1, 4], [2, 'a'], [3, 1], [4, pb([[1, pb([[1, 'e1'], [2, 10]])], [2, 1]])], [5, 3]])]]);
  assert.deepEqual(decodeServerFrame(authOk), { op: 7, userId: 4, userName: 'a', roomId: 1, epoch: 'e1', seq: 10, recovered: true, pending: 3 });
  const info = pb([[1, 5], [4, pb([[1, 1], [2, 2], [3, pb([[1, 4], [2, 'a']])], [3, pb([[1, 5], [2, 'b']])]])]]);
  assert.deepEqual(decodeServerFrame(info), { op: 5, roomId: 1, count: 2, roomUserInfo: { 4: 'a', 5: 'b' } });
  const presence = pb([[1, 9], [7, pb([[1, 1], [2, 1], [3, pb([[1, 4], [2, 'a']])], [4, new Uint8Array(0)], [5, 2]])]]);
  assert.deepEqual(decodeServerFrame(presence), { op: 9, roomId: 1, count: 1, joined: { 4: 'a' }, left: [], more: 2 });
  const left = pb([[1, 9], [7, pb([[1, 1], [4, Uint8Array.of(5, 6)]])]]);
  assert.deepEqual(decodeServerFrame(left).left, ['5', '6']);
  assert.deepEqual(decodeServerFrame(pb([[1, 8], [6, pb([[1, -1], [2, 'no']])]])), { op: 8, code: -1, message: 'no' });
  assert.deepEqual(decodeServerFrame(pb([[1, 4], [3, pb([[1, 7], [2, 3]])]])), { count: 3, op: 4, roomId: 7 });
  assert.deepEqual(decodeServerFrame(pb([[1, 11], [8, pb([[1, 7]])]])), { op: 11, roomId: 7 });
  assert.deepEqual(decodeServerFrame(pb([[1, 42], [15, '{"op":42,"x":1}']])), { op: 42, x: 1 });
  assert.deepEqual(decodeServerFrame(pb([[1, 4], [3, pb([[1, 7]])], [99, 5]])), { count: 0, op: 4, roomId: 7 }, 'unknown fields skipped');
  assert.throws(() => decodeServerFrame(Uint8Array.of(0x12, 0x05, 0x01)), RangeError);
});

test('over the binary protocol: the same client, the same ordering', async () => {
  const fake = fakeSockets();
  const client = new GochatClient({ url: 'ws://gochat.test/ws', WebSocket: fake.WebSocket, token: 'tok', rooms: [1], protocol: 'binary' });
  const seen = record(client);
  client.connect();
  await until('a socket', () => fake.sockets.length === 1);
  const ws = fake.last();
  assert.deepEqual(ws.protocols, ['gochat-pb']);
  ws.open('gochat-pb');
  assert.ok(ws.sent[0] instanceof Uint8Array);
  ws.receive(pb([[1, 7], [5, pb([[1, 4], [2, 'a'], [3, 1], [4, pb([[1, pb([[1, 'e1'], [2, 10]])]])]])]]));
  assert.equal(client.protocol, 'binary');
  const room = (seq) => pb([[1, 3], [2, pb([[2, `m${seq}`], [7, 1], [9, 100 + seq], [10, seq], [11, 'e1']])]]);
  for (const seq of [12, 11, 11, 13]) ws.receive(room(seq));
  assert.deepEqual(seen.texts(), ['m11', 'm12', 'm13']);
  ws.receive(pb([[1, 2], [2, pb([[2, 'p'], [3, 2], [5, 4], [9, 9223372036854775807n]])]]));
  await sleep(0);
  assert.deepEqual([...ws.sent.at(-1)], [...encodeClientFrame({ kind: 'ack', msgIds: ['9223372036854775807'] })]);
  client.close();
});

test('a server that does not take gochat-pb gets JSON', async () => {
  const fake = fakeSockets();
  const client = new GochatClient({ url: 'ws://gochat.test/ws', WebSocket: fake.WebSocket, token: 'tok', rooms: [1], protocol: 'binary' });
  client.connect();
  await until('a socket', () => fake.sockets.length === 1);
  fake.last().open('');
  assert.deepEqual(fake.last().sent[0], { authToken: 'tok', roomId: 1, acks: true });
  assert.equal(client.protocol, 'json');
  client.close();
});
