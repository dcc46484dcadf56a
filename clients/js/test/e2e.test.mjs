// The client against a real `gochat up` (target/debug/gochat), over both protocols: auth, rooms,
// presence, private messages kept until acknowledged, reconnects after the connection is
// killed with recovery of what was missed, frames reordered, duplicated and dropped on the way
// (a proxy in this test steers them) handed over in order once each, and terminal closes.
//   node --experimental-websocket --test clients/js/test/*.test.mjs
// Env: GOCHAT_BIN (default target/debug/gochat), GOCHAT_TEST_DRIVER (gateway driver, epoll).

import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';

import {
  GOCHAT_BIN, freePorts, gochatConfig, nodeWebSocket, startGochat, stopGochat, until,
} from '../../../tests/gochat-up.mjs';
import { ApiError, GochatApi, GochatClient, SESSION_ERROR } from '../gochat.js';
import { startProxy } from './proxy.mjs';
import { record } from './record.mjs';

const bin = GOCHAT_BIN;
const WebSocket = nodeWebSocket();

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const API_KEY = 'js-client-test-key-0123456789abcdef';

/** A server API call (docs/server-api.md), as a backend makes it; its answer, which must be a 200. */
async function backend(method, body) {
  const res = await fetch(`${apiUrl}/api/${method}`, {
    method: 'POST', headers: { Authorization: `apikey ${API_KEY}` }, body: JSON.stringify(body),
  });
  const answer = await res.json();
  assert.equal(res.status, 200, `${method}: ${JSON.stringify(answer)}`);
  return answer;
}
const dir = mkdtempSync(path.join(os.tmpdir(), 'gochat-js-'));
let server = null;
let proxy = null;
let apiUrl = '';
let directWs = '';
let proxiedWs = '';
let keepDir = false;
const clients = [];
let nextRoom = 100;
let nextUser = 0;

before(async () => {
  const ports = await freePorts();
  const { api, ws } = ports;
  const config = path.join(dir, 'gochat.toml');
  writeFileSync(config, gochatConfig({ ports, dir, control: `room_update_interval_ms = 100
login_per_minute = 0
register_per_minute = 0
push_per_second = 0
login_failures_per_account_per_minute = 0
api_keys = ["${API_KEY}"]` }));
  server = await startGochat({ bin, config, log: path.join(dir, 'gochat.log'), ports: [api, ws] });
  proxy = await startProxy(ws);
  apiUrl = `http://127.0.0.1:${api}`;
  directWs = `ws://127.0.0.1:${ws}/ws`;
  proxiedWs = `ws://127.0.0.1:${proxy.port}/ws`;
});

after(async () => {
  for (const c of clients) c.close();
  proxy?.close();
  await stopGochat(server);
  if (keepDir) console.error(`server log kept in ${dir}`);
  else rmSync(dir, { recursive: true, force: true });
});

/** Marks the run failed for the log's sake, and rethrows. */
async function keepLogOnFailure(fn) {
  try {
    await fn();
  } catch (e) {
    keepDir = true;
    throw e;
  }
}

/** A new user, registered and logged in through its own api. */
async function user(role) {
  const name = `${role}${process.pid % 100000}n${nextUser++}`;
  const api = new GochatApi({ url: apiUrl });
  await api.register(name, 'secret-123');
  const me = await api.checkAuth();
  assert.equal(me.userName, name);
  return { name, api, id: me.userId };
}

/** A client of `who`, through the proxy unless `direct`, with short delays; its events are
 * recorded in `client.seen`. */
function client(who, { direct = false, ...options } = {}) {
  const c = new GochatClient({
    url: direct ? directWs : proxiedWs, WebSocket, api: who.api, minDelay: 100, maxDelay: 1000, gapTimeout: 300,
    authTimeout: 3000, ...options,
  });
  c.seen = record(c);
  clients.push(c);
  return c;
}

/** Connects `c` and waits until each of its rooms is joined. */
async function connect(c) {
  c.connect();
  await until('connected', () => c.state === 'connected');
  await until('rooms joined', () => c.rooms.every((r) => c.seen.of('joined').some((j) => j.roomId === r)));
}

const roomTexts = (c, roomId) => c.seen.of('message').filter((m) => m.roomId === roomId).map((m) => m.msg);

/** The room messages `c` got are `texts`, once each, and numbered one after the other. */
function inOrder(c, roomId, texts) {
  const got = c.seen.of('message').filter((m) => m.roomId === roomId);
  assert.deepEqual(got.map((m) => m.msg), texts);
  for (let i = 1; i < got.length; i++) {
    assert.equal(got[i].epoch, got[0].epoch);
    assert.equal(got[i].seq, got[i - 1].seq + 1, `seq after ${got[i - 1].msg}`);
  }
}

test('the REST helpers: gochat\'s envelope, its codes and its errors', () => keepLogOnFailure(async () => {
  const alice = await user('rest');
  const api = new GochatApi({ url: apiUrl });
  await assert.rejects(api.login(alice.name, 'wrong-one'),
    (e) => e instanceof ApiError && e.code === 1 && e.message === 'no this user or password error!');
  await assert.rejects(api.register(alice.name, 'secret-123'), (e) => e.code === 1 && /already have/.test(e.message));
  const token = await api.login(alice.name, 'secret-123');
  assert.equal(api.token, token);
  assert.deepEqual(await api.checkAuth(), { userId: alice.id, userName: alice.name });
  const room = nextRoom++;
  const c = client(alice, { rooms: [room], direct: true });
  await connect(c);
  await alice.api.pushRoom(room, 'kept in the history');
  const history = await alice.api.history(room);
  assert.equal(history.messages.at(-1).msg, 'kept in the history');
  assert.equal(history.seq, history.messages.at(-1).seq);
  assert.equal(typeof history.epoch, 'string');
  await api.logout();
  assert.equal(api.token, null);
  api.token = token;
  await assert.rejects(api.checkAuth(), (e) => e.code === SESSION_ERROR && e.isSessionError);
  const nowhere = new GochatApi({ url: 'http://127.0.0.1:1' });
  await assert.rejects(nowhere.login('x', 'y'), (e) => e.code === -1 && e.message === 'Cannot reach the server');
  c.close();
}));

for (const protocol of ['json', 'binary']) {
  describe(`over ${protocol === 'json' ? 'JSON' : 'the binary protocol (gochat-pb)'}`, () => {
    test('auth, room messages, counts, member lists, presence and several rooms', () => keepLogOnFailure(async () => {
      const [alice, bob] = [await user('alice'), await user('bob')];
      const room = nextRoom++;
      const a = client(alice, { rooms: [room], protocol });
      await connect(a);
      assert.equal(a.protocol, protocol);
      assert.deepEqual(a.user, { userId: alice.id, userName: alice.name });
      const b = client(bob, { rooms: [room], protocol });
      await connect(b);
      await until('alice sees bob arrive', () =>
        a.seen.of('presence').some((p) => p.roomId === room && Object.values(p.joined).includes(bob.name)));
      assert.equal(a.send(room, 'hello from alice'), true);
      await until('alice\'s message back', () => roomTexts(a, room).length === 1);
      await bob.api.pushRoom(room, 'hello from bob');
      for (const c of [a, b]) {
        await until('both messages', () => roomTexts(c, room).length === 2);
        inOrder(c, room, ['hello from alice', 'hello from bob']);
      }
      assert.equal(a.seen.of('message')[0].fromUserName, alice.name, 'the sender is the token\'s user');
      await alice.api.count(room);
      await alice.api.getRoomInfo(room);
      await until('a count of 2', () => a.seen.of('count').some((f) => f.roomId === room && f.count === 2));
      await until('both members', () => a.seen.of('members').some((f) => f.roomId === room
        && Object.values(f.roomUserInfo).sort().join() === [alice.name, bob.name].sort().join()));
      // A second room on the same socket.
      const other = nextRoom++;
      a.join(other);
      await until('the second room joined', () => a.seen.of('joined').some((j) => j.roomId === other));
      assert.deepEqual(a.rooms.sort(), [room, other].sort());
      a.send(other, 'in the other room');
      await until('the other room\'s message', () => roomTexts(a, other).length === 1);
      a.leave(other);
      await until('left', () => a.seen.of('left').some((l) => l.roomId === other));
      await until('bob sees alice in one room only', async () => {
        await bob.api.pushRoom(room, 'after the leave');
        return roomTexts(a, room).includes('after the leave');
      });
      assert.deepEqual(roomTexts(a, other), ['in the other room']);
      a.close();
      b.close();
    }));

    test('what a backend does through the server API reaches the client', () => keepLogOnFailure(async () => {
      const alice = await user('backend');
      const room = nextRoom++;
      const a = client(alice, { rooms: [room], protocol, direct: true });
      await connect(a);
      const published = await backend('publish', { roomId: room, msg: 'from the backend', fromUserName: 'ops' });
      await until('the room message', () => roomTexts(a, room).includes('from the backend'));
      const m = a.seen.of('message').find((x) => x.msg === 'from the backend');
      assert.deepEqual([m.fromUserId, m.fromUserName, m.seq, m.msgId], [0, 'ops', published.seq, published.msgId]);
      await backend('publish', { toUserId: alice.id, msg: 'private from the backend' });
      await until('the private message', () => a.seen.of('private').some((p) => p.msg === 'private from the backend'));
      const all = await backend('broadcast', { msg: 'to everyone' });
      await until('the broadcast', () => a.seen.of('broadcast').some((b) => b.msgId === all.msgId));
      assert.deepEqual((await backend('presence', { roomId: room })).members, { [alice.id]: alice.name });
      assert.equal((await backend('presence', { userId: alice.id })).connections, 1);
      const history = await backend('history', { roomId: room });
      assert.equal(history.messages.at(-1).msg, 'from the backend');
      // A kick: the room is left and stays left.
      await backend('kick', { userId: alice.id, roomId: room });
      await until('kicked', () => a.seen.of('left').some((l) => l.roomId === room && l.kicked));
      assert.deepEqual(a.rooms, []);
      // A disconnect below 4500 is reconnected; from 4500 on it is not.
      await backend('disconnect', { userId: alice.id, code: 4001, reason: 'move along' });
      await until('reconnected', () => a.seen.of('connected').length === 2);
      assert.deepEqual(a.seen.of('disconnected')[0], { code: 4001, reason: 'move along', willReconnect: true, terminal: false });
      await backend('disconnect', { userId: alice.id, code: 4500, reason: 'suspended' });
      await until('closed for good', () => a.state === 'closed');
      assert.deepEqual(a.seen.of('disconnected')[1], { code: 4500, reason: 'suspended', willReconnect: false, terminal: true });
    }));

    test('private messages are kept until acknowledged, and delivered at connect', () => keepLogOnFailure(async () => {
      const [alice, bob] = [await user('alice'), await user('bob')];
      for (const n of [1, 2, 3]) await bob.api.push(alice.id, `kept ${n}`);
      // Fetched by a client that does not acknowledge: kept still.
      const lazy = client(alice, { protocol, autoAck: false });
      await connect(lazy);
      await until('three kept messages', () => lazy.seen.of('private').length === 3);
      lazy.close();
      const a = client(alice, { protocol });
      await connect(a);
      await until('the same three again', () => a.seen.of('private').length === 3);
      const got = a.seen.of('private');
      assert.deepEqual(got.map((p) => p.msg), ['kept 1', 'kept 2', 'kept 3']);
      assert.deepEqual(got.map((p) => p.msgId), lazy.seen.of('private').map((p) => p.msgId));
      assert.ok(got.every((p) => /^[0-9]+$/.test(p.msgId) && p.fromUserName === bob.name));
      await bob.api.push(alice.id, 'live one');
      await until('the live one', () => a.seen.of('private').length === 4);
      // Acknowledged (automatically): a new client of alice's gets none of them again; the
      // first private message it sees is one sent after it connected.
      await sleep(200);
      a.close();
      const again = client(alice, { protocol });
      await connect(again);
      await bob.api.push(alice.id, 'after the acks');
      await until('a private message', () => again.seen.of('private').length > 0);
      assert.deepEqual(again.seen.of('private').map((p) => p.msg), ['after the acks']);
      again.close();
    }));

    test('a killed connection reconnects and recovers what was missed, once each, in order', () => keepLogOnFailure(async () => {
      const [alice, bob] = [await user('alice'), await user('bob')];
      const room = nextRoom++;
      const a = client(alice, { rooms: [room], protocol });
      const b = client(bob, { rooms: [room], protocol, direct: true });
      await connect(a);
      await connect(b);
      for (const n of [1, 2, 3]) await bob.api.pushRoom(room, `m${n}`);
      await until('the first three', () => roomTexts(a, room).length === 3);
      await proxy.refuse(true);
      proxy.killAll();
      await until('alice reconnecting', () => a.state === 'reconnecting');
      assert.equal(a.seen.of('disconnected')[0].code, 1006);
      assert.equal(a.seen.of('disconnected')[0].willReconnect, true);
      for (const n of [4, 5, 6, 7, 8]) await bob.api.pushRoom(room, `m${n}`);
      await until('two reconnects refused', () => a.seen.of('reconnecting').length >= 2);
      await proxy.refuse(false);
      await until('alice back', () => a.state === 'connected');
      await bob.api.pushRoom(room, 'm9');
      await until('all nine', () => roomTexts(a, room).length >= 9);
      await sleep(200);
      inOrder(a, room, ['m1', 'm2', 'm3', 'm4', 'm5', 'm6', 'm7', 'm8', 'm9']);
      assert.equal(a.seen.of('joined').at(-1).recovered, true);
      assert.equal(a.seen.of('reset').length, 0);
      a.close();
      b.close();
    }));

    test('frames reordered and duplicated on the way are handed over in order, once', () => keepLogOnFailure(async () => {
      const [alice, bob] = [await user('alice'), await user('bob')];
      const room = nextRoom++;
      // No api and a long gap timeout: the order comes from holding, not from filling.
      const a = client(alice, { rooms: [room], protocol, api: undefined, token: alice.api.token, gapTimeout: 60000 });
      const b = client(bob, { rooms: [room], protocol, direct: true });
      await connect(a);
      await connect(b);
      const held = proxy.rule('hold', `${protocol}-r2`);
      const doubled = proxy.rule('duplicate', `${protocol}-r3`);
      for (const n of [1, 2, 3, 4]) await bob.api.pushRoom(room, `${protocol}-r${n}`);
      await until('the others through', () => roomTexts(b, room).length === 4 && held.hit && doubled.hit);
      await sleep(200);
      assert.deepEqual(roomTexts(a, room), [`${protocol}-r1`], 'r3 and r4 held until r2 comes');
      proxy.release();
      await until('all four', () => roomTexts(a, room).length === 4);
      await sleep(100);
      inOrder(a, room, [1, 2, 3, 4].map((n) => `${protocol}-r${n}`));
      assert.equal(a.seen.of('reset').length, 0);
      a.close();
      b.close();
    }));

    test('a frame lost on the way is filled from the room history', () => keepLogOnFailure(async () => {
      const [alice, bob] = [await user('alice'), await user('bob')];
      const room = nextRoom++;
      const a = client(alice, { rooms: [room], protocol });
      const b = client(bob, { rooms: [room], protocol, direct: true });
      await connect(a);
      await connect(b);
      const dropped = proxy.rule('drop', `${protocol}-h2`);
      for (const n of [1, 2, 3]) await bob.api.pushRoom(room, `${protocol}-h${n}`);
      await until('all three', () => roomTexts(a, room).length === 3);
      assert.ok(dropped.hit);
      inOrder(a, room, [1, 2, 3].map((n) => `${protocol}-h${n}`));
      assert.equal(a.seen.of('reset').length, 0);
      assert.equal(a.seen.of('disconnected').length, 0, 'filled without reconnecting');
      a.close();
      b.close();
    }));

    test('without an api, a frame lost on the way is recovered by resuming the socket', () => keepLogOnFailure(async () => {
      const [alice, bob] = [await user('alice'), await user('bob')];
      const room = nextRoom++;
      const a = client(alice, { rooms: [room], protocol, api: undefined, token: alice.api.token });
      const b = client(bob, { rooms: [room], protocol, direct: true });
      await connect(a);
      await connect(b);
      proxy.rule('drop', `${protocol}-s2`);
      for (const n of [1, 2, 3]) await bob.api.pushRoom(room, `${protocol}-s${n}`);
      await until('all three', () => roomTexts(a, room).length === 3);
      await sleep(100);
      inOrder(a, room, [1, 2, 3].map((n) => `${protocol}-s${n}`));
      assert.equal(a.seen.of('disconnected')[0].code, 4000, 'resumed by a new socket');
      assert.equal(a.seen.of('joined').at(-1).recovered, true);
      assert.equal(a.seen.of('reset').length, 0);
      a.close();
      b.close();
    }));

    test('a logout and a bad token close for good (1008): no reconnect', () => keepLogOnFailure(async () => {
      const alice = await user('alice');
      const a = client(alice, { rooms: [nextRoom++], protocol });
      await connect(a);
      await alice.api.logout();
      await until('closed', () => a.state === 'closed');
      assert.deepEqual(a.seen.of('disconnected').at(-1), { code: 1008, reason: 'logged out', willReconnect: false, terminal: true });
      assert.equal(a.seen.of('refused').at(-1).message, 'logged out');
      const bad = client({ api: new GochatApi({ url: apiUrl, token: 'not-a-session' }) }, { protocol });
      bad.connect();
      await until('refused', () => bad.state === 'closed');
      assert.equal(bad.seen.of('disconnected').at(-1).code, 1008);
      assert.equal(bad.seen.of('connected').length, 0);
      await sleep(300);
      assert.equal(a.seen.of('connecting').length + bad.seen.of('connecting').length, 2, 'no reconnect');
    }));
  });
}
