// Types of gochat.js: the client of a gochat-rs server (README.md has the guide).

/** The WebSocket subprotocol of the binary (protobuf) protocol. */
export const SUBPROTOCOL: 'gochat-pb';

/** gochat's op numbers, and gochat-rs' additions. */
export const OP: Readonly<{
  PRIVATE: 2;
  ROOM: 3;
  COUNT: 4;
  MEMBERS: 5;
  AUTH_OK: 7;
  REFUSED: 8;
  PRESENCE: 9;
  JOIN: 10;
  LEAVE: 11;
  ACK: 12;
}>;

/** The REST envelope's code for a missing, invalid or expired session token. */
export const SESSION_ERROR: 40000;

/** Close codes after which the client does not reconnect by default ([1008]). */
export const TERMINAL_CLOSE_CODES: readonly number[];
/** Close codes (4500–4999) after which the client never reconnects: a backend's disconnect that
 * means "stay away". */
export const NO_RECONNECT_CODES: Readonly<{ from: number; to: number }>;

/** A small event emitter; `on` returns a function that removes the listener. */
export class Emitter<Events extends Record<string, unknown> = Record<string, unknown>> {
  on<K extends keyof Events>(type: K, listener: (event: Events[K]) => void): () => void;
  once<K extends keyof Events>(type: K, listener: (event: Events[K]) => void): () => void;
  off<K extends keyof Events>(type: K, listener: (event: Events[K]) => void): void;
  emit<K extends keyof Events>(type: K, event: Events[K]): void;
}

// ---- REST ----

/** A REST call that did not succeed. */
export class ApiError extends Error {
  constructor(message: string, code: number, details?: { status?: number; retryAfter?: number; cause?: unknown });
  readonly name: 'ApiError';
  /** The envelope's code: 1 refused, -1 unknown or unreachable, 40000 session error. */
  code: number;
  /** The HTTP status (0 when there was no answer). */
  status: number;
  /** Seconds to wait, when a rate limit said so (0 otherwise). */
  retryAfter: number;
  /** Whether the session token is missing, invalid or expired. */
  readonly isSessionError: boolean;
}

export interface ApiOptions {
  /** The REST API's base URL, e.g. `http://127.0.0.1:7070`. */
  url: string;
  /** A fetch function (default: the global one). */
  fetch?: typeof fetch;
  /** A session token already held. */
  token?: string | null;
}

/** A room message (op 3) or a private message (op 2), as the server sends it. */
export interface ChatMessage {
  op: 2 | 3;
  code: number;
  msg: string;
  fromUserId: number;
  fromUserName: string;
  toUserId: number;
  toUserName: string;
  roomId: number;
  /** Local time of the server, `YYYY-MM-DD HH:MM:SS`. */
  createTime: string;
  /** The message's id as a decimal string (ids use 64 bits). */
  msgId?: string;
  /** Room messages of a room that keeps history: its number in the room, within `epoch`. */
  seq?: number;
  epoch?: string;
}

export interface History {
  /** The room's position: its history's epoch and last seq. */
  epoch: string;
  seq: number;
  /** Its last messages, oldest first. */
  messages: ChatMessage[];
}

/** gochat's REST API; `token` is set by `login` and `register` and sent by the routes that need it. */
export class GochatApi {
  constructor(options: ApiOptions);
  url: string;
  token: string | null;
  /** POSTs `body` to `path` and resolves to the envelope's `data`, or rejects with an ApiError. */
  call<T = unknown>(path: string, body: object): Promise<T>;
  register(userName: string, passWord: string): Promise<string>;
  login(userName: string, passWord: string): Promise<string>;
  logout(): Promise<null>;
  checkAuth(): Promise<{ userId: number; userName: string }>;
  push(toUserId: number | string, msg: string, roomId?: number): Promise<null>;
  pushRoom(roomId: number, msg: string): Promise<string>;
  count(roomId: number): Promise<string>;
  getRoomInfo(roomId: number): Promise<string>;
  history(roomId: number, limit?: number): Promise<History>;
}

// ---- the socket ----

/** Where a room's history stands: `seq` counts its messages within `epoch`. */
export interface Position {
  epoch: string;
  seq: number;
}

/** A constructor like the browser's WebSocket. */
export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

export interface WebSocketLike {
  readonly readyState: number;
  readonly protocol: string;
  /** The extensions the server took (`permessage-deflate; …`), where the WebSocket says. */
  readonly extensions?: string;
  binaryType: string;
  send(data: string | Uint8Array): void;
  close(code?: number, reason?: string): void;
  onopen: ((event: unknown) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  onerror: ((event: unknown) => void) | null;
}

export interface ClientOptions {
  /** The socket's URL, e.g. `ws://127.0.0.1:7000/ws` (http: and https: are taken as ws: and wss:). */
  url: string;
  /** The WebSocket constructor (default: the global one). */
  WebSocket?: WebSocketConstructor;
  /** The session token, or a function giving it (asked at each connect); default: `api.token`. */
  token?: string | (() => string | null | Promise<string | null>);
  /** The REST API: its token, and the room history, to fill a gap without reconnecting. */
  api?: GochatApi;
  /** Rooms to join (the first in the auth frame, the others with op 10). */
  rooms?: number[];
  /** Where each room was left last time (from `position()`), to get what was missed since. */
  positions?: Record<number, Position>;
  /** 'json' (default) or 'binary' (protobuf, subprotocol gochat-pb; JSON when the server does not take it). */
  protocol?: 'json' | 'binary';
  /** Ask the server to keep private messages until acknowledged (default true). */
  acks?: boolean;
  /** Acknowledge each private message once handed over (default true). */
  autoAck?: boolean;
  /** Reconnect after a close that is not terminal (default true). */
  reconnect?: boolean;
  /** First reconnect delay in ms (default 1000). */
  minDelay?: number;
  /** Longest reconnect delay in ms (default 15000). */
  maxDelay?: number;
  /** Growth of the delay per attempt (default 2). */
  factor?: number;
  /** Part of the delay taken off at random, 0 to 1 (default 0.5). */
  jitter?: number;
  /** Close codes after which the client stays closed (default [1008]). */
  terminalCloseCodes?: number[];
  /** Ms to wait for the auth reply before trying again (default 15000). */
  authTimeout?: number;
  /** Ms a room message is held waiting for the ones before it (default 1000). */
  gapTimeout?: number;
  /** Room messages held per room before the gap is filled at once (default 1000). */
  maxPending?: number;
}

export interface ConnectedEvent {
  userId: number;
  userName: string;
  /** The auth frame's room (0: none). */
  roomId: number;
  /** Private messages still kept beyond the ones that follow (they come as those are acknowledged). */
  pending: number;
  protocol: 'json' | 'binary';
  /** The socket compresses (`permessage-deflate`). */
  compressed: boolean;
}

export interface DisconnectedEvent {
  /** The close code (1006: the connection dropped; 4000: the client dropped it itself). */
  code: number;
  reason: string;
  willReconnect: boolean;
  /** Closed for good: a terminal close code, or `close()`. */
  terminal: boolean;
}

export interface JoinedEvent {
  roomId: number;
  /** The room's position (none: the room keeps no history). */
  epoch?: string;
  seq?: number;
  /** Only when a position was sent: whether what was missed follows (false comes with a `reset`). */
  recovered?: boolean;
}

export interface ResetEvent {
  roomId: number;
  /** 'epoch': the room's history started again; 'unrecoverable': the server could not send what
   * was missed (too old, too much); 'gap': messages went missing and could not be found. */
  reason: 'epoch' | 'unrecoverable' | 'gap';
  lastEpoch: string | null;
  lastSeq: number;
  /** Messages go on after this position. */
  epoch: string;
  seq: number;
}

export interface CountFrame { op: 4; count: number; roomId: number }
export interface MembersFrame { op: 5; roomId: number; count: number; roomUserInfo: Record<string, string> }
export interface PresenceFrame {
  op: 9;
  roomId: number;
  count: number;
  joined: Record<string, string>;
  left: string[];
  more?: number;
}
export interface RefusedFrame { op: 8; code: number; message: string }
/** `kicked`: the server took this user out of the room (it is not joined again on reconnect). */
export interface LeftFrame { op: 11; roomId: number; kicked?: true }

export interface ClientEvents {
  [type: string]: unknown;
  connecting: { attempt: number; url: string };
  connected: ConnectedEvent;
  disconnected: DisconnectedEvent;
  reconnecting: { attempt: number; delay: number };
  joined: JoinedEvent;
  left: LeftFrame;
  /** Room messages: per room and epoch in seq order, each once. */
  message: ChatMessage;
  private: ChatMessage;
  /** A message to everyone (op 3, room 0, from the server API's broadcast), once per id. */
  broadcast: ChatMessage;
  count: CountFrame;
  members: MembersFrame;
  presence: PresenceFrame;
  refused: RefusedFrame;
  reset: ResetEvent;
  /** Every frame, decoded, before it is handled. */
  frame: Record<string, unknown> & { op: number };
}

export class GochatClient extends Emitter<ClientEvents> {
  constructor(options: ClientOptions);
  readonly state: 'idle' | 'connecting' | 'connected' | 'reconnecting' | 'closed';
  readonly user: { userId: number; userName: string } | null;
  readonly protocol: 'json' | 'binary';
  /** The open socket compresses (`permessage-deflate`, negotiated by the WebSocket itself). */
  readonly compressed: boolean;
  readonly rooms: number[];
  position(roomId: number): Position | null;
  connect(): void;
  close(code?: number, reason?: string): void;
  join(roomId: number, since?: Position): void;
  leave(roomId: number): void;
  send(roomId: number, msg: string): boolean;
  ack(...msgIds: Array<string | number | bigint | Array<string | number | bigint>>): void;
}

/** A request the client sends, for the encoders. */
export type ClientRequest =
  | { kind: 'auth'; authToken: string; roomId: number; since?: Position; acks?: boolean }
  | { kind: 'send'; roomId: number; msg: string }
  | { kind: 'join'; roomId: number; since?: Position }
  | { kind: 'leave'; roomId: number }
  | { kind: 'ack'; msgIds: Array<string | number | bigint> };

/** A request as a binary `ClientFrame` (proto/proto/client.proto). */
export function encodeClientFrame(request: ClientRequest): Uint8Array;
/** A request as a JSON protocol frame. */
export function encodeJsonFrame(request: ClientRequest): string;
/** A binary `ServerFrame` as the JSON body the JSON protocol carries. Throws on bytes that are not one. */
export function decodeServerFrame(bytes: Uint8Array | ArrayBuffer): Record<string, unknown> & { op: number };
