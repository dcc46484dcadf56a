// gochat-rs client: the REST API and the WebSocket protocol of a gochat-rs server, in one ES
// module without dependencies, for browsers and Node (20 with --experimental-websocket, or any
// WebSocket constructor given as an option). The protocol it speaks is docs/protocol.md's; the
// binary one is proto/proto/client.proto. What it guarantees is in README.md.

/** The WebSocket subprotocol of the binary (protobuf) protocol. */
export const SUBPROTOCOL = 'gochat-pb';

/** gochat's op numbers, and gochat-rs' additions. */
export const OP = Object.freeze({
  PRIVATE: 2,
  ROOM: 3,
  COUNT: 4,
  MEMBERS: 5,
  AUTH_OK: 7,
  REFUSED: 8,
  PRESENCE: 9,
  JOIN: 10,
  LEAVE: 11,
  ACK: 12,
});

/** The REST envelope's code for a missing, invalid or expired session token. */
export const SESSION_ERROR = 40000;

/** Close codes after which the client does not reconnect by default: 1008 is the server's
 * refusal (a bad or expired token, a logout, too many sockets for the user, a flood, a bad auth
 * frame); the same request would be refused again. */
export const TERMINAL_CLOSE_CODES = Object.freeze([1008]);

/** Close codes a backend may disconnect a user with through the server API: from 4500 on it
 * means "do not reconnect" (an account suspended), below it "reconnect" (docs/server-api.md). */
export const NO_RECONNECT_CODES = Object.freeze({ from: 4500, to: 4999 });

/** Reasons of a terminal close code that are worth trying again: the gateway gave up waiting
 * for the token to be checked (a slow control), not the client's fault. */
const RETRIED_REFUSALS = Object.freeze(['authentication timeout']);
/** Most ids the server takes in one acknowledgement (op 12). */
const MAX_ACK_IDS = 256;
/** Message ids remembered to drop a message delivered again (private messages, and room
 * messages of a room without history). */
const SEEN_IDS = 4096;
/** Epochs of a room remembered as over, whose late messages are dropped. */
const OLD_EPOCHS = 8;
/** Times a gap is looked for in the history before the client gives up on it. */
const FILL_TRIES = 3;
/** Close code the client closes its own socket with (the range 4000–4999 is the application's). */
const CLIENT_CLOSE = 4000;

// ---------------------------------------------------------------------------------------------
// Events

/** A small event emitter: `on` returns a function that removes the listener. A listener that
 * throws does not stop the others, nor the client: its error is rethrown on its own. */
export class Emitter {
  #listeners = new Map();

  on(type, listener) {
    if (typeof listener !== 'function') throw new TypeError('a listener must be a function');
    let list = this.#listeners.get(type);
    if (!list) this.#listeners.set(type, (list = []));
    list.push(listener);
    return () => this.off(type, listener);
  }

  once(type, listener) {
    const off = this.on(type, (event) => {
      off();
      listener(event);
    });
    return off;
  }

  off(type, listener) {
    const list = this.#listeners.get(type);
    if (!list) return;
    const i = list.indexOf(listener);
    if (i >= 0) list.splice(i, 1);
  }

  emit(type, event) {
    const list = this.#listeners.get(type);
    if (!list) return;
    for (const listener of [...list]) {
      try {
        listener(event);
      } catch (e) {
        queueMicrotask(() => {
          throw e;
        });
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// REST

/** A REST call that did not succeed: `code` is the envelope's (1 refused, -1 unknown,
 * 40000 session error), or -1 when the server could not be reached or did not answer JSON.
 * `retryAfter`: seconds, when a rate limit said so. */
export class ApiError extends Error {
  constructor(message, code, { status = 0, retryAfter = 0, cause } = {}) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = 'ApiError';
    this.code = code;
    this.status = status;
    this.retryAfter = retryAfter;
  }

  /** Whether the session token is missing, invalid or expired (log in again). */
  get isSessionError() {
    return this.code === SESSION_ERROR;
  }
}

/** gochat's REST API: every route is a POST of a JSON object answered with
 * `{"code","message","data"}`; a method resolves to `data` when `code` is 0 and rejects with an
 * [`ApiError`] otherwise. `token` is the session token: set by `login` and `register`, cleared by
 * `logout`, sent by the routes that need one. */
export class GochatApi {
  #fetch;

  constructor({ url, fetch: fetchFn = globalThis.fetch, token = null } = {}) {
    if (typeof url !== 'string' || !url) throw new TypeError('GochatApi needs the API base URL (url)');
    if (typeof fetchFn !== 'function') throw new TypeError('no fetch: pass one as the fetch option');
    this.url = url.replace(/\/+$/, '');
    this.#fetch = fetchFn;
    this.token = token;
  }

  /** POSTs `body` to `path` (e.g. `/push/count`) and resolves to the envelope's `data`. */
  async call(path, body) {
    let res;
    // Called as a plain function: a browser's fetch refuses any `this` but the window.
    const fetchFn = this.#fetch;
    try {
      res = await fetchFn(this.url + path, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify(body),
      });
    } catch (cause) {
      throw new ApiError('Cannot reach the server', -1, { cause });
    }
    let envelope;
    try {
      envelope = await res.json();
    } catch (cause) {
      throw new ApiError(`Unexpected server response (HTTP ${res.status})`, -1, { status: res.status, cause });
    }
    if (envelope && envelope.code === 0) return envelope.data;
    const code = envelope && Number.isInteger(envelope.code) ? envelope.code : -1;
    const message = (envelope && typeof envelope.message === 'string' && envelope.message) || 'Request failed';
    const retryAfter = Number(res.headers && res.headers.get && res.headers.get('Retry-After')) || 0;
    throw new ApiError(message, code, { status: res.status, retryAfter });
  }

  /** Registers a user and logs them in; resolves to the session token (kept as `token`). */
  async register(userName, passWord) {
    return this.#session(await this.call('/user/register', { userName, passWord }));
  }

  /** Logs in; resolves to the session token (kept as `token`). */
  async login(userName, passWord) {
    return this.#session(await this.call('/user/login', { userName, passWord }));
  }

  /** Ends the session (its sockets are closed with 1008 "logged out"); forgets the token. */
  async logout() {
    const authToken = this.#token();
    this.token = null;
    return this.call('/user/logout', { authToken });
  }

  /** Who the session is: `{ userId, userName }`. */
  checkAuth() {
    return this.call('/user/checkAuth', { authToken: this.#token() });
  }

  /** A private message to `toUserId` (kept for them until acknowledged, when offline). */
  push(toUserId, msg, roomId = 0) {
    return this.call('/push/push', { authToken: this.#token(), msg, toUserId: String(toUserId), roomId });
  }

  /** A message to every member of `roomId`. */
  pushRoom(roomId, msg) {
    return this.call('/push/pushRoom', { authToken: this.#token(), msg, roomId });
  }

  /** Has the room's online count sent to its members (op 4). */
  count(roomId) {
    return this.call('/push/count', { authToken: this.#token(), roomId });
  }

  /** Has the room's member list sent to its members (op 5). */
  getRoomInfo(roomId) {
    return this.call('/push/getRoomInfo', { authToken: this.#token(), roomId });
  }

  /** The room's last messages (at most `limit`; all it keeps when not given), oldest first:
   * `{ epoch, seq, messages }`, `seq` being the room's last. */
  history(roomId, limit) {
    const body = { authToken: this.#token(), roomId };
    if (limit !== undefined) body.limit = limit;
    return this.call('/push/history', body);
  }

  #token() {
    return this.token || '';
  }

  #session(token) {
    if (typeof token !== 'string' || !token) throw new ApiError('No session token received', -1);
    this.token = token;
    return token;
  }
}

// ---------------------------------------------------------------------------------------------
// The binary protocol: protobuf for exactly proto/proto/client.proto's messages.

const utf8Encoder = new TextEncoder();
const utf8Decoder = new TextDecoder();
const MAX_SAFE = BigInt(Number.MAX_SAFE_INTEGER);

/** A uint64 given as a number, a bigint or a decimal string, as a number or a bigint. */
function uint64(value, what) {
  if (typeof value === 'bigint') {
    if (value < 0n || value > 0xffffffffffffffffn) throw new RangeError(`${what} is not a 64-bit unsigned integer`);
    return value;
  }
  if (typeof value === 'number') {
    if (!Number.isSafeInteger(value) || value < 0) throw new RangeError(`${what} must be a whole number of at least 0`);
    return value;
  }
  if (typeof value === 'string' && /^[0-9]{1,20}$/.test(value)) return uint64(BigInt(value), what);
  throw new TypeError(`${what} must be a whole number or a decimal string, not ${JSON.stringify(value)}`);
}

class PbWriter {
  bytes = [];

  varint(value) {
    if (typeof value === 'bigint') {
      let v = BigInt.asUintN(64, value);
      while (v > 0x7fn) {
        this.bytes.push(Number(v & 0x7fn) | 0x80);
        v >>= 7n;
      }
      this.bytes.push(Number(v));
      return;
    }
    let v = value;
    while (v > 0x7f) {
      this.bytes.push((v % 0x80) | 0x80);
      v = Math.floor(v / 0x80);
    }
    this.bytes.push(v);
  }

  tag(field, wireType) {
    this.varint((field << 3) | wireType);
  }

  uint64(field, value) {
    if (value === 0 || value === 0n) return; // proto3 leaves defaults out
    this.tag(field, 0);
    this.varint(value);
  }

  bool(field, value) {
    if (!value) return;
    this.tag(field, 0);
    this.bytes.push(1);
  }

  string(field, value) {
    if (!value) return;
    this.lengthDelimited(field, utf8Encoder.encode(value));
  }

  message(field, writer) {
    this.lengthDelimited(field, writer.bytes);
  }

  lengthDelimited(field, bytes) {
    this.tag(field, 2);
    this.varint(bytes.length);
    for (const b of bytes) this.bytes.push(b);
  }

  finish() {
    return Uint8Array.from(this.bytes);
  }
}

class PbReader {
  constructor(bytes) {
    this.bytes = bytes;
    this.at = 0;
  }

  get done() {
    return this.at >= this.bytes.length;
  }

  byte() {
    if (this.at >= this.bytes.length) throw new RangeError('truncated protobuf message');
    return this.bytes[this.at++];
  }

  /** A varint: a number when it fits one exactly, a bigint otherwise. */
  varint() {
    let value = 0;
    let shift = 0;
    let b;
    // Seven bytes hold 49 bits, exact in a double.
    do {
      b = this.byte();
      value += (b & 0x7f) * 2 ** shift;
      shift += 7;
    } while (b & 0x80 && shift < 49);
    if (!(b & 0x80)) return value;
    let big = BigInt(value);
    do {
      if (shift >= 70) throw new RangeError('protobuf varint over 10 bytes');
      b = this.byte();
      big |= BigInt(b & 0x7f) << BigInt(shift);
      shift += 7;
    } while (b & 0x80);
    big = BigInt.asUintN(64, big);
    return big <= MAX_SAFE ? Number(big) : big;
  }

  lengthDelimited() {
    const length = this.varint();
    if (typeof length !== 'number' || this.at + length > this.bytes.length) {
      throw new RangeError('truncated protobuf message');
    }
    const out = this.bytes.subarray(this.at, this.at + length);
    this.at += length;
    return out;
  }

  skip(wireType) {
    switch (wireType) {
      case 0: this.varint(); break;
      case 1: this.advance(8); break;
      case 2: this.lengthDelimited(); break;
      case 5: this.advance(4); break;
      default: throw new RangeError(`protobuf wire type ${wireType} is not supported`);
    }
  }

  advance(n) {
    if (this.at + n > this.bytes.length) throw new RangeError('truncated protobuf message');
    this.at += n;
  }

  /** Calls `field(number, wireType)` for each field; `field` returns false for one it skips. */
  fields(field) {
    while (!this.done) {
      const tag = this.varint();
      if (typeof tag !== 'number') throw new RangeError('protobuf field number out of range');
      const wireType = tag % 8;
      if (field(Math.floor(tag / 8), wireType) === false) this.skip(wireType);
    }
  }
}

const num = (v) => (typeof v === 'bigint' ? Number(v) : v);
const int32 = (v) => (typeof v === 'bigint' ? Number(BigInt.asIntN(32, v)) : v | 0);
const text = (bytes) => utf8Decoder.decode(bytes);

/** Reads one message of `fields` ({number: [name, kind]}) into an object of defaults. */
function readMessage(bytes, fields, into = {}) {
  const r = new PbReader(bytes);
  r.fields((field, wireType) => {
    const spec = fields[field];
    if (!spec) return false;
    const [name, kind] = spec;
    const lengthDelimited = wireType === 2;
    switch (kind) {
      case 'uint64':
      case 'int32':
      case 'bool':
      case 'id':
        if (wireType !== 0) return false;
        break;
      case 'packed':
        if (wireType === 0) {
          into[name].push(String(r.varint()));
          return true;
        }
        if (!lengthDelimited) return false;
        break;
      default:
        if (!lengthDelimited) return false;
    }
    switch (kind) {
      case 'uint64': into[name] = num(r.varint()); break;
      case 'id': into[name] = String(r.varint()); break;
      case 'int32': into[name] = int32(r.varint()); break;
      case 'bool': into[name] = r.varint() !== 0; break;
      case 'string': into[name] = text(r.lengthDelimited()); break;
      case 'bytes': into[name] = r.lengthDelimited(); break;
      case 'packed': {
        const inner = new PbReader(r.lengthDelimited());
        while (!inner.done) into[name].push(String(inner.varint()));
        break;
      }
      case 'map': {
        const entry = readMessage(r.lengthDelimited(), { 1: ['key', 'id'], 2: ['value', 'string'] }, { key: '0', value: '' });
        into[name][entry.key] = entry.value;
        break;
      }
      default: into[name] = kind(r.lengthDelimited());
    }
    return true;
  });
  return into;
}

const readPosition = (b) => readMessage(b, { 1: ['epoch', 'string'], 2: ['seq', 'uint64'] }, { epoch: '', seq: 0 });
const readJoined = (b) => readMessage(b, { 1: ['position', readPosition], 2: ['recovered', 'bool'] }, {});

/** `joined` (a Joined message) flattened into `out` as JSON has it: `epoch`, `seq`, `recovered`. */
function flattenJoined(out, joined) {
  if (!joined) return out;
  if (joined.position && joined.position.epoch) {
    out.epoch = joined.position.epoch;
    out.seq = joined.position.seq;
  }
  if (joined.recovered !== undefined) out.recovered = joined.recovered;
  return out;
}

const SERVER_BODIES = {
  2: ['message', (b) => readMessage(b, {
    1: ['code', 'int32'], 2: ['msg', 'string'], 3: ['fromUserId', 'uint64'], 4: ['fromUserName', 'string'],
    5: ['toUserId', 'uint64'], 6: ['toUserName', 'string'], 7: ['roomId', 'uint64'], 8: ['createTime', 'string'],
    9: ['msgId', 'id'], 10: ['seq', 'uint64'], 11: ['epoch', 'string'],
  }, { code: 0, msg: '', fromUserId: 0, fromUserName: '', toUserId: 0, toUserName: '', roomId: 0, createTime: '' })],
  3: ['count', (b) => readMessage(b, { 1: ['roomId', 'uint64'], 2: ['count', 'uint64'] }, { roomId: 0, count: 0 })],
  4: ['roomInfo', (b) => readMessage(b, { 1: ['roomId', 'uint64'], 2: ['count', 'uint64'], 3: ['roomUserInfo', 'map'] },
    { roomId: 0, count: 0, roomUserInfo: {} })],
  5: ['authOk', (b) => readMessage(b, {
    1: ['userId', 'uint64'], 2: ['userName', 'string'], 3: ['roomId', 'uint64'], 4: ['joined', readJoined], 5: ['pending', 'uint64'],
  }, { userId: 0, userName: '', roomId: 0 })],
  6: ['error', (b) => readMessage(b, { 1: ['code', 'int32'], 2: ['message', 'string'] }, { code: 0, message: '' })],
  7: ['presence', (b) => readMessage(b, {
    1: ['roomId', 'uint64'], 2: ['count', 'uint64'], 3: ['joined', 'map'], 4: ['left', 'packed'], 5: ['more', 'uint64'],
  }, { roomId: 0, count: 0, joined: {}, left: [] })],
  8: ['room', (b) => readMessage(b, { 1: ['roomId', 'uint64'], 2: ['joined', readJoined] }, { roomId: 0 })],
  15: ['json', (b) => b],
};

/** A binary server frame (`ServerFrame`) as the JSON body the JSON protocol would have
 * carried: the same field names, ids of messages as decimal strings. Throws on bytes that are
 * not one. */
export function decodeServerFrame(bytes) {
  const data = bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes);
  let op = 0;
  let body = null;
  let kind = null;
  // The last occurrence of a field wins, as protobuf has it.
  const r = new PbReader(data);
  r.fields((field, wireType) => {
    if (field === 1 && wireType === 0) {
      op = int32(r.varint());
      return true;
    }
    const spec = SERVER_BODIES[field];
    if (!spec || wireType !== 2) return false;
    [kind] = spec;
    body = spec[1](r.lengthDelimited());
    return true;
  });
  switch (kind) {
    case 'json': return JSON.parse(text(body));
    case 'message': {
      const m = { ...body, op };
      if (!m.msgId || m.msgId === '0') delete m.msgId;
      if (!m.epoch) delete m.epoch;
      return m;
    }
    case 'count': return { count: body.count, op, roomId: body.roomId };
    case 'roomInfo': return { op, roomId: body.roomId, count: body.count, roomUserInfo: body.roomUserInfo };
    case 'authOk': {
      const out = { op, userId: body.userId, roomId: body.roomId };
      if (body.userName) out.userName = body.userName;
      flattenJoined(out, body.joined);
      if (body.pending) out.pending = body.pending;
      return out;
    }
    case 'error': return { op, code: body.code, message: body.message };
    case 'presence': {
      const out = { op, roomId: body.roomId, count: body.count, joined: body.joined, left: body.left };
      if (body.more) out.more = body.more;
      return out;
    }
    case 'room': return flattenJoined({ op, roomId: body.roomId }, body.joined);
    default: return { op };
  }
}

function position(writer, field, since) {
  if (!since) return;
  const p = new PbWriter();
  p.string(1, since.epoch);
  p.uint64(2, uint64(since.seq, 'seq'));
  writer.message(field, p);
}

/** A client request (what [`GochatClient`] sends: `{kind: 'auth'|'send'|'join'|'leave'|'ack', …}`)
 * as a binary `ClientFrame`. */
export function encodeClientFrame(request) {
  const inner = new PbWriter();
  let field;
  switch (request.kind) {
    case 'auth':
      field = 1;
      inner.string(1, request.authToken);
      inner.uint64(2, uint64(request.roomId, 'roomId'));
      position(inner, 3, request.since);
      inner.bool(4, request.acks);
      break;
    case 'send':
      field = 2;
      inner.uint64(1, uint64(request.roomId, 'roomId'));
      inner.string(2, request.msg);
      break;
    case 'join':
      field = 3;
      inner.uint64(1, uint64(request.roomId, 'roomId'));
      position(inner, 2, request.since);
      break;
    case 'leave':
      field = 4;
      inner.uint64(1, uint64(request.roomId, 'roomId'));
      break;
    case 'ack': {
      field = 5;
      const ids = new PbWriter();
      for (const id of request.msgIds) ids.varint(uint64(id, 'a message id'));
      if (ids.bytes.length) inner.lengthDelimited(1, ids.bytes);
      break;
    }
    default:
      throw new TypeError(`unknown request kind ${request.kind}`);
  }
  const frame = new PbWriter();
  frame.message(field, inner);
  return frame.finish();
}

/** The same request as a JSON protocol frame. */
export function encodeJsonFrame(request) {
  const since = (out) => (request.since ? { ...out, epoch: request.since.epoch, seq: request.since.seq } : out);
  switch (request.kind) {
    case 'auth': {
      const out = since({ authToken: request.authToken, roomId: request.roomId });
      if (request.acks) out.acks = true;
      return JSON.stringify(out);
    }
    case 'send': return JSON.stringify({ op: OP.ROOM, roomId: request.roomId, msg: request.msg });
    case 'join': return JSON.stringify(since({ op: OP.JOIN, roomId: request.roomId }));
    case 'leave': return JSON.stringify({ op: OP.LEAVE, roomId: request.roomId });
    case 'ack': return JSON.stringify({ op: OP.ACK, msgIds: request.msgIds.map(String) });
    default: throw new TypeError(`unknown request kind ${request.kind}`);
  }
}

// ---------------------------------------------------------------------------------------------
// The socket

const DEFAULTS = {
  protocol: 'json',
  acks: true,
  autoAck: true,
  reconnect: true,
  minDelay: 1000,
  maxDelay: 15000,
  factor: 2,
  jitter: 0.5,
  terminalCloseCodes: TERMINAL_CLOSE_CODES,
  authTimeout: 15000,
  gapTimeout: 1000,
  maxPending: 1000,
};

/** Adds `id` to `ids`, a set of the last SEEN_IDS ids. */
function remember(ids, id) {
  ids.add(id);
  if (ids.size > SEEN_IDS) ids.delete(ids.values().next().value);
}

/** A room id the server takes: a whole number from 1. */
function roomIdOf(value) {
  const id = typeof value === 'string' && /^[0-9]+$/.test(value) ? Number(value) : value;
  if (!Number.isSafeInteger(id) || id < 1) throw new RangeError(`a room id is a whole number from 1, not ${JSON.stringify(value)}`);
  return id;
}

/** A client of one gochat-rs WebSocket: authenticates, joins rooms, reconnects, and hands room
 * messages over in order, each once. See README.md for the options, events and guarantees. */
export class GochatClient extends Emitter {
  #o;
  #url;
  #WebSocket;
  #state = 'idle';
  #ws = null;
  #wire = 'json';
  #compressed = false;
  #gen = 0;
  #attempt = 0;
  #retryTimer = null;
  #authTimer = null;
  #user = null;
  /** roomId → room: what is wanted, and where its messages stand. */
  #rooms = new Map();
  #seenPrivate = new Set();
  #seenBroadcast = new Set();
  /** Private message ids acknowledged, to acknowledge again one delivered again. */
  #acked = new Set();
  #acks = [];
  #ackQueued = false;

  constructor(options = {}) {
    super();
    const o = { ...DEFAULTS, ...options };
    if (typeof o.url !== 'string') throw new TypeError('GochatClient needs the socket URL (url), e.g. ws://host:7000/ws');
    let url;
    try {
      url = new URL(o.url);
    } catch {
      throw new TypeError(`not a URL: ${o.url}`);
    }
    if (url.protocol === 'http:') url.protocol = 'ws:';
    else if (url.protocol === 'https:') url.protocol = 'wss:';
    if (url.protocol !== 'ws:' && url.protocol !== 'wss:') throw new TypeError(`a socket URL is ws: or wss:, not ${url.protocol}`);
    const WebSocketCtor = o.WebSocket || globalThis.WebSocket;
    if (typeof WebSocketCtor !== 'function') {
      throw new TypeError('no WebSocket: pass one as the WebSocket option (Node 20: run with --experimental-websocket)');
    }
    if (o.protocol !== 'json' && o.protocol !== 'binary') throw new TypeError("protocol is 'json' or 'binary'");
    if (o.token === undefined && !o.api) throw new TypeError('GochatClient needs a session token (token) or an api holding one');
    this.#o = o;
    this.#url = url.href;
    this.#WebSocket = WebSocketCtor;
    for (const id of o.rooms || []) this.#room(roomIdOf(id)).active = true;
    for (const [id, at] of Object.entries(o.positions || {})) {
      if (at && typeof at.epoch === 'string' && Number.isSafeInteger(at.seq)) {
        Object.assign(this.#room(roomIdOf(id)), { epoch: at.epoch, seq: at.seq });
      }
    }
  }

  /** 'idle', 'connecting' (socket opening or authenticating), 'connected', 'reconnecting'
   * (waiting to try again) or 'closed' (by `close()` or a terminal close code). */
  get state() {
    return this.#state;
  }

  /** The authenticated user (`{ userId, userName }`), once connected. */
  get user() {
    return this.#user;
  }

  /** The protocol of the open socket: 'json', or 'binary' when the server took `gochat-pb`. */
  get protocol() {
    return this.#wire;
  }

  /** Whether the open socket compresses (`permessage-deflate`, negotiated by the WebSocket
   * itself: every browser and Node's WebSocket offer it; the server takes it when its
   * `compression` is on, for JSON). */
  get compressed() {
    return this.#compressed;
  }

  /** The rooms joined or being joined. */
  get rooms() {
    return [...this.#rooms.values()].filter((r) => r.active).map((r) => r.id);
  }

  /** The last room message handed over in `roomId`: `{ epoch, seq }`, or null. Given back as
   * the `positions` option (or to `join`), a later client gets what was missed since. */
  position(roomId) {
    const room = this.#rooms.get(roomIdOf(roomId));
    return room && room.epoch ? { epoch: room.epoch, seq: room.seq } : null;
  }

  /** Opens the socket; when a reconnect is waiting, tries at once. */
  connect() {
    if (this.#state === 'connecting' || this.#state === 'connected') return;
    clearTimeout(this.#retryTimer);
    if (this.#state !== 'reconnecting') this.#attempt = 0;
    this.#open();
  }

  /** Closes the socket for good (until `connect()` again). */
  close(code = 1000, reason = 'closed by the client') {
    clearTimeout(this.#retryTimer);
    const wasOpen = this.#ws !== null;
    this.#drop(code, reason);
    this.#state = 'closed';
    if (wasOpen) this.emit('disconnected', { code, reason, willReconnect: false, terminal: true });
  }

  /** Joins `roomId` (op 10) on this socket and after every reconnect; `since` (a position from
   * `position()`) asks for what was missed since then. */
  join(roomId, since) {
    const room = this.#room(roomIdOf(roomId));
    if (room.active) return;
    if (since && typeof since.epoch === 'string' && Number.isSafeInteger(since.seq)) {
      Object.assign(room, { epoch: since.epoch, seq: since.seq });
    }
    room.active = true;
    room.joined = false;
    if (this.#state === 'connected') this.#request({ kind: 'join', roomId: room.id, since: this.#since(room) });
  }

  /** Leaves `roomId` (op 11). Its position is kept: joining it again gets what was missed. */
  leave(roomId) {
    const room = this.#rooms.get(roomIdOf(roomId));
    if (!room || !room.active) return;
    room.active = false;
    room.joined = false;
    this.#clearPending(room);
    if (this.#state === 'connected') this.#request({ kind: 'leave', roomId: room.id });
    // While authenticating, the auth frame's room is left once the server answers.
    else if (this.#state !== 'connecting') this.emit('left', { op: OP.LEAVE, roomId: room.id });
  }

  /** Sends `msg` to `roomId` over the socket (op 3); false when the socket is not connected. */
  send(roomId, msg) {
    if (typeof msg !== 'string' || !msg) throw new TypeError('msg must be a non-empty string');
    if (this.#state !== 'connected') return false;
    return this.#request({ kind: 'send', roomId: roomIdOf(roomId), msg });
  }

  /** Acknowledges private messages by id (op 12): they are not kept for the user any more.
   * With `autoAck` (the default) every private message is acknowledged once handed over. */
  ack(...msgIds) {
    for (const id of msgIds.flat()) {
      uint64(id, 'a message id');
      this.#acks.push(String(id));
      remember(this.#acked, String(id));
    }
    if (this.#ackQueued) return;
    this.#ackQueued = true;
    queueMicrotask(() => this.#flushAcks());
  }

  // ---- the socket's life ----

  #room(id) {
    let room = this.#rooms.get(id);
    if (!room) {
      room = {
        id, active: false, joined: false, epoch: null, seq: 0, ordered: true,
        oldEpochs: [], pending: new Map(), gapTimer: null, filling: false, fillTries: 0, resyncs: 0, seen: new Set(),
      };
      this.#rooms.set(id, room);
    }
    return room;
  }

  async #open() {
    const gen = ++this.#gen;
    this.#state = 'connecting';
    this.emit('connecting', { attempt: this.#attempt, url: this.#url });
    const token = await this.#token();
    if (gen !== this.#gen) return;
    if (!token) {
      this.#closed(gen, 1008, 'no session token');
      return;
    }
    let ws;
    try {
      ws = this.#o.protocol === 'binary' ? new this.#WebSocket(this.#url, [SUBPROTOCOL]) : new this.#WebSocket(this.#url);
      ws.binaryType = 'arraybuffer';
    } catch (e) {
      this.#closed(gen, 1006, `cannot open the socket: ${e && e.message}`);
      return;
    }
    this.#ws = ws;
    ws.onopen = () => {
      if (gen !== this.#gen) return;
      this.#wire = ws.protocol === SUBPROTOCOL ? 'binary' : 'json';
      this.#compressed = /(^|,)\s*permessage-deflate\b/i.test(ws.extensions || '');
      const first = this.rooms[0];
      const since = first ? this.#since(this.#rooms.get(first)) : undefined;
      this.#request({ kind: 'auth', authToken: token, roomId: first || 0, since, acks: this.#o.acks });
    };
    ws.onmessage = (event) => {
      if (gen !== this.#gen) return;
      const frame = this.#decode(event.data);
      if (frame && typeof frame === 'object') this.#frame(frame);
    };
    // A browser follows an error with a close; Node 20's WebSocket may not (a connection
    // refused fires an error alone): a close that does not follow soon is taken as a drop.
    ws.onerror = () => setTimeout(() => this.#closed(gen, 1006, 'connection failed'), ws.readyState === 0 ? 0 : 1000);
    ws.onclose = (event) => this.#closed(gen, event.code, event.reason || '');
    this.#authTimer = setTimeout(() => {
      if (gen === this.#gen && this.#state === 'connecting') this.#lost(CLIENT_CLOSE, 'no answer to the auth frame in time');
    }, this.#o.authTimeout);
  }

  /** The socket of generation `gen` closed (or never opened) with `code`. */
  #closed(gen, code, reason) {
    if (gen !== this.#gen) return;
    this.#drop(code, reason);
    const refused = this.#o.terminalCloseCodes.includes(code) && !RETRIED_REFUSALS.includes(reason);
    const terminal = refused || (code >= NO_RECONNECT_CODES.from && code <= NO_RECONNECT_CODES.to);
    const willReconnect = !terminal && this.#o.reconnect !== false;
    this.#state = willReconnect ? 'reconnecting' : 'closed';
    this.emit('disconnected', { code, reason, willReconnect, terminal });
    if (willReconnect) this.#retry();
  }

  /** Drops the open socket from the client's side (no answer in time, a gap to resync) and
   * reconnects after `delay` (the backoff when not given). */
  #lost(code, reason, delay) {
    this.#drop(code, reason);
    this.#state = 'reconnecting';
    const gen = this.#gen;
    this.emit('disconnected', { code, reason, willReconnect: true, terminal: false });
    if (gen === this.#gen) this.#retry(delay);
  }

  /** Forgets the current socket: its events are ignored from here on. */
  #drop(code, reason) {
    this.#gen++;
    clearTimeout(this.#authTimer);
    const ws = this.#ws;
    this.#ws = null;
    this.#user = null;
    for (const room of this.#rooms.values()) {
      room.joined = false;
      clearTimeout(room.gapTimer);
      room.gapTimer = null;
    }
    this.#acks = [];
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
      if (ws.readyState === 0 || ws.readyState === 1) {
        try {
          ws.close(code >= 3000 && code <= 4999 ? code : 1000, String(reason).slice(0, 120));
        } catch { /* closing already */ }
      }
    }
  }

  #retry(delay) {
    const o = this.#o;
    if (delay === undefined) {
      // Exponential, capped, with jitter: a server's clients do not all come back at once.
      const base = Math.min(o.maxDelay, o.minDelay * o.factor ** this.#attempt);
      delay = Math.round(base * (1 - o.jitter * Math.random()));
    }
    this.#attempt++;
    this.emit('reconnecting', { attempt: this.#attempt, delay });
    const gen = this.#gen;
    this.#retryTimer = setTimeout(() => {
      if (gen === this.#gen && this.#state === 'reconnecting') this.#open();
    }, delay);
  }

  #request(request) {
    const ws = this.#ws;
    if (!ws || ws.readyState !== 1) return false;
    ws.send(this.#wire === 'binary' ? encodeClientFrame(request) : encodeJsonFrame(request));
    return true;
  }

  #decode(data) {
    try {
      if (typeof data === 'string') return JSON.parse(data);
      if (data instanceof ArrayBuffer || ArrayBuffer.isView(data)) {
        const bytes = data instanceof ArrayBuffer ? new Uint8Array(data) : new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
        return this.#wire === 'binary' ? decodeServerFrame(bytes) : JSON.parse(text(bytes));
      }
    } catch {
      // Not a frame this server sends: nothing to hand over.
    }
    return null;
  }

  /** The session token: the option's (a string, or a function giving one), else the api's. */
  async #token() {
    const o = this.#o;
    try {
      const token = typeof o.token === 'function' ? await o.token() : o.token ?? (o.api && o.api.token);
      return typeof token === 'string' ? token : null;
    } catch {
      return null;
    }
  }

  #since(room) {
    return room && room.epoch ? { epoch: room.epoch, seq: room.seq } : undefined;
  }

  // ---- frames ----

  #frame(f) {
    this.emit('frame', f);
    switch (f.op) {
      case OP.AUTH_OK: return this.#authOk(f);
      case OP.ROOM: return this.#roomMessage(f);
      case OP.PRIVATE: return this.#private(f);
      case OP.COUNT: return this.emit('count', f);
      case OP.MEMBERS: return this.emit('members', f);
      case OP.PRESENCE: return this.emit('presence', f);
      case OP.REFUSED: return this.emit('refused', f);
      case OP.JOIN: {
        const room = this.#rooms.get(Number(f.roomId));
        if (room && room.active) this.#joined(room, f);
        return undefined;
      }
      case OP.LEAVE: return this.#left(f);
      default: return undefined;
    }
  }

  #authOk(f) {
    if (this.#state !== 'connecting') return; // a repeated auth frame's answer
    clearTimeout(this.#authTimer);
    this.#state = 'connected';
    this.#attempt = 0;
    this.#user = { userId: f.userId, userName: f.userName };
    this.emit('connected', { userId: f.userId, userName: f.userName, roomId: f.roomId, pending: f.pending || 0, protocol: this.#wire, compressed: this.#compressed });
    const first = this.#rooms.get(Number(f.roomId));
    if (first && first.active) this.#joined(first, f);
    else if (first) this.#request({ kind: 'leave', roomId: first.id }); // left while authenticating
    for (const room of this.#rooms.values()) {
      if (room.active && room !== first) this.#request({ kind: 'join', roomId: room.id, since: this.#since(room) });
    }
  }

  /** The room's join was answered (op 7 for the auth frame's room, op 10 for the others). */
  #joined(room, f) {
    room.joined = true;
    this.emit('joined', { roomId: room.id, epoch: f.epoch, seq: f.seq, recovered: f.recovered });
    if (!f.epoch) {
      // No history kept: messages carry no position to order them by.
      room.ordered = false;
      room.epoch = null;
      return;
    }
    room.ordered = true;
    if (f.recovered === true && room.epoch === f.epoch) {
      // What was missed follows, from the position sent.
      this.#drain(room);
    } else if (f.recovered === false) {
      // Asked to recover, and told to reload.
      this.#reset(room, room.epoch && room.epoch !== f.epoch ? 'epoch' : 'unrecoverable', f.epoch, f.seq);
    } else if (room.epoch && room.epoch !== f.epoch) {
      this.#reset(room, 'epoch', f.epoch, f.seq);
    } else {
      // A first join: the room's messages from here on (never back before one handed over).
      this.#jump(room, f.epoch, Math.max(f.seq, room.epoch === f.epoch ? room.seq : 0));
    }
  }

  #private(m) {
    const id = m.msgId === undefined || m.msgId === null ? '' : String(m.msgId);
    if (id) {
      m.msgId = id;
      if (this.#seenPrivate.has(id)) {
        // Delivered again: the acknowledgement did not reach the server (or was not made yet).
        if (this.#acked.has(id)) this.ack(id);
        return;
      }
      remember(this.#seenPrivate, id);
    }
    this.emit('private', m);
    if (id && this.#o.acks && this.#o.autoAck) this.ack(id);
  }

  #flushAcks() {
    this.#ackQueued = false;
    const ids = this.#acks;
    this.#acks = [];
    for (let i = 0; i < ids.length; i += MAX_ACK_IDS) {
      this.#request({ kind: 'ack', msgIds: ids.slice(i, i + MAX_ACK_IDS) });
    }
  }

  // ---- room messages, in order ----

  /** Op 11: the answer to a leave, or (for a room still joined here) a backend took this user
   * out of the room (the server API's kick): the room is not joined again on reconnect. */
  #left(f) {
    const room = this.#rooms.get(Number(f.roomId));
    if (!room || !room.active) return this.emit('left', f);
    room.active = false;
    room.joined = false;
    this.#clearPending(room);
    this.emit('left', { ...f, kicked: true });
  }

  #roomMessage(m) {
    if (Number(m.roomId) === 0) {
      // Room 0: a message to everyone (the server API's broadcast), numbered in no history.
      if (m.msgId !== undefined && m.msgId !== null) m.msgId = String(m.msgId);
      if (m.msgId) {
        if (this.#seenBroadcast.has(m.msgId)) return;
        remember(this.#seenBroadcast, m.msgId);
      }
      return this.emit('broadcast', m);
    }
    const room = this.#rooms.get(Number(m.roomId));
    if (!room || !room.active) return;
    if (m.msgId !== undefined && m.msgId !== null) m.msgId = String(m.msgId);
    if (!room.ordered || typeof m.epoch !== 'string' || !m.epoch || !Number.isSafeInteger(m.seq)) {
      // A room without history: handed over as it comes, once per id.
      if (m.msgId) {
        if (room.seen.has(m.msgId)) return;
        remember(room.seen, m.msgId);
      }
      this.emit('message', m);
      return;
    }
    if (m.epoch !== room.epoch) {
      if (room.oldEpochs.includes(m.epoch)) return; // late, from before a reset
      if (room.epoch === null) {
        this.#jump(room, m.epoch, m.seq - 1);
      } else {
        // The room's history started again (it was quiet past its age limit, or its store was
        // lost): numbering restarts at 1.
        this.#reset(room, 'epoch', m.epoch, 0);
      }
    }
    if (m.seq <= room.seq || room.pending.has(m.seq)) return; // a duplicate
    room.pending.set(m.seq, m);
    this.#drain(room);
    if (room.pending.size > this.#o.maxPending) this.#fill(room);
  }

  /** Hands over the room's held messages that follow the last one handed over. */
  #drain(room) {
    for (let next = room.pending.get(room.seq + 1); next; next = room.pending.get(room.seq + 1)) {
      room.pending.delete(next.seq);
      room.seq = next.seq;
      room.fillTries = 0;
      room.resyncs = 0;
      this.emit('message', next);
    }
    if (room.pending.size === 0) {
      clearTimeout(room.gapTimer);
      room.gapTimer = null;
    } else if (!room.gapTimer && !room.filling && this.#state === 'connected') {
      room.gapTimer = setTimeout(() => {
        room.gapTimer = null;
        this.#fill(room);
      }, this.#o.gapTimeout);
    }
  }

  /** Where the room's messages go on from, without a `reset`: a first join. */
  #jump(room, epoch, seq) {
    if (room.epoch !== epoch) room.pending.clear();
    room.epoch = epoch;
    room.seq = seq;
    for (const s of room.pending.keys()) if (s <= seq) room.pending.delete(s);
    this.#drain(room);
  }

  /** Tells the application the room's messages are not continuous here (`reason`), and goes on
   * from `epoch`/`seq`: what lies between was not handed over and will not be. */
  #reset(room, reason, epoch, seq) {
    this.emit('reset', { roomId: room.id, reason, lastEpoch: room.epoch, lastSeq: room.seq, epoch, seq });
    if (room.epoch && room.epoch !== epoch) {
      room.oldEpochs.push(room.epoch);
      if (room.oldEpochs.length > OLD_EPOCHS) room.oldEpochs.shift();
    }
    room.fillTries = 0;
    room.resyncs = 0;
    this.#jump(room, epoch, seq);
  }

  #clearPending(room) {
    room.pending.clear();
    clearTimeout(room.gapTimer);
    room.gapTimer = null;
    room.filling = false;
  }

  /** A gap did not fill by itself: looks for the missing messages in the room's history (REST,
   * when an `api` is given), else reconnects with the room's last position, which recovers
   * them; what neither brings back is given up with a `reset`. */
  async #fill(room) {
    if (room.filling || room.pending.size === 0 || this.#state !== 'connected') return;
    const api = this.#o.api;
    if (!api) {
      if (++room.resyncs > 2) return this.#skipGap(room);
      return this.#lost(CLIENT_CLOSE, `resuming room ${room.id} from seq ${room.seq}`, 0);
    }
    room.filling = true;
    const epoch = room.epoch;
    let data = null;
    try {
      data = await api.call('/push/history', { authToken: await this.#token(), roomId: room.id });
    } catch {
      // No history to fill from: gone on below.
    }
    room.filling = false;
    if (!room.active || room.epoch !== epoch || room.pending.size === 0) return undefined;
    if (!data || typeof data.epoch !== 'string' || !Array.isArray(data.messages)) {
      if (++room.fillTries >= FILL_TRIES) return this.#skipGap(room);
      return this.#drain(room);
    }
    if (data.epoch !== room.epoch) return this.#reset(room, 'epoch', data.epoch, data.seq);
    for (const m of data.messages) {
      if (m && m.epoch === room.epoch && Number.isSafeInteger(m.seq) && m.seq > room.seq && !room.pending.has(m.seq)) {
        if (m.msgId !== undefined && m.msgId !== null) m.msgId = String(m.msgId);
        room.pending.set(m.seq, m);
      }
    }
    this.#drain(room);
    if (room.pending.size === 0) return undefined;
    // The history reaches past the gap yet lacks it: those messages are gone. Otherwise it
    // may not have caught up yet (another control numbered them): look again, a few times.
    const next = Math.min(...room.pending.keys());
    if (data.seq >= next - 1 || ++room.fillTries >= FILL_TRIES) return this.#skipGap(room);
    return undefined;
  }

  /** Gives up on the messages missing before the first one held. */
  #skipGap(room) {
    const next = Math.min(...room.pending.keys());
    this.#reset(room, 'gap', room.epoch, next - 1);
  }
}
