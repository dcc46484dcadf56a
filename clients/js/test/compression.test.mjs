// The client over a compressing server: `gochat up` with `[gateway] compression = "on"`, and
// Node's own WebSocket, which offers permessage-deflate and inflates what comes compressed.
// JSON sockets compress, binary ones do not, and every message arrives whole, long or short.

import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';

import {
  GOCHAT_BIN, freePorts, gochatConfig, nodeWebSocket, startGochat, stopGochat, until,
} from '../../../tests/gochat-up.mjs';
import { GochatApi, GochatClient } from '../gochat.js';
import { record } from './record.mjs';

const bin = GOCHAT_BIN;
const WebSocket = nodeWebSocket();

const dir = mkdtempSync(path.join(os.tmpdir(), 'gochat-js-deflate-'));
let server = null;
let apiUrl = '';
let wsUrl = '';
let wsPort = 0;
const clients = [];

before(async () => {
  const ports = await freePorts();
  const { api, ws } = ports;
  const config = path.join(dir, 'gochat.toml');
  writeFileSync(config, gochatConfig({
    ports,
    dir,
    control: 'login_per_minute = 0\nregister_per_minute = 0\npush_per_second = 0',
    gateway: 'compression = "on"\ncompression_min_bytes = 256',
  }));
  server = await startGochat({ bin, config, log: path.join(dir, 'gochat.log'), ports: [api, ws] });
  apiUrl = `http://127.0.0.1:${api}`;
  wsUrl = `ws://127.0.0.1:${ws}/ws`;
  wsPort = ws;
});

after(async () => {
  for (const c of clients) c.close();
  await stopGochat(server);
  rmSync(dir, { recursive: true, force: true });
});

async function user(role) {
  const name = `${role}${process.pid % 100000}`;
  const api = new GochatApi({ url: apiUrl });
  await api.register(name, 'secret-123');
  return { name, api };
}

function client(who, options) {
  const c = new GochatClient({ url: wsUrl, WebSocket, api: who.api, authTimeout: 3000, ...options });
  c.seen = record(c);
  clients.push(c);
  return c;
}

test('JSON sockets compress, binary ones do not, and messages arrive whole', async () => {
  const [alice, bob] = [await user('deflate'), await user('plainpb')];
  const a = client(alice, { rooms: [5] });
  const b = client(bob, { rooms: [5], protocol: 'binary' });
  for (const c of [a, b]) {
    c.connect();
    await until('connected', () => c.state === 'connected');
  }
  assert.equal(a.compressed, true, 'Node offers permessage-deflate and the server takes it for JSON');
  assert.equal(a.seen.of('connected')[0].compressed, true);
  assert.equal(b.compressed, false, 'the binary protocol is not compressed');
  assert.equal(b.protocol, 'binary');
  const long = 'the release train leaves at noon, bring your changes before then. '.repeat(60);
  await alice.api.pushRoom(5, long);
  await alice.api.pushRoom(5, 'short');
  for (const c of [a, b]) {
    await until('both messages', () => c.seen.of('message').filter((m) => m.roomId === 5).length === 2);
    assert.deepEqual(c.seen.of('message').filter((m) => m.roomId === 5).map((m) => m.msg), [long, 'short']);
  }
  // Sending on a compressing socket: Node's WebSocket sends uncompressed (it only inflates),
  // which the extension allows; a browser's socket deflates what it sends (the browser test).
  assert.equal(a.send(5, long), true);
  await until('alice\'s own long message back', () => a.seen.of('message').filter((m) => m.roomId === 5).length === 3);
  assert.equal(a.seen.of('message').at(-1).msg, long);
  a.close();
  b.close();
});

test('the server answers the offer with no context takeover on either side', async () => {
  // The upgrade as Node's WebSocket sends it, read raw: what the server agreed to.
  const net = await import('node:net');
  const head = await new Promise((resolve, reject) => {
    const s = net.connect(wsPort, '127.0.0.1', () => s.write('GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n'
      + 'Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n'
      + 'Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n'));
    let got = '';
    s.on('data', (d) => {
      got += d.toString('latin1');
      if (got.includes('\r\n\r\n')) {
        s.destroy();
        resolve(got);
      }
    });
    s.on('error', reject);
  });
  assert.match(head, /^HTTP\/1\.1 101 /);
  assert.match(head, /\r\nSec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover\r\n/i);
});
