// A TCP proxy in front of the gateway that the tests steer: it kills every connection through
// it (the client sees the connection drop, 1006), refuses new ones for a while (not listening), and holds, drops
// or duplicates a server frame whose payload holds a given text (a room message's, in JSON or
// protobuf alike), to put gaps, duplicates and reorderings in front of the client.

import net from 'node:net';

/** The next whole WebSocket frame at the start of `buf`, or null. */
function nextFrame(buf) {
  if (buf.length < 2) return null;
  let length = buf[1] & 0x7f;
  let at = 2;
  if (length === 126) {
    if (buf.length < 4) return null;
    length = buf.readUInt16BE(2);
    at = 4;
  } else if (length === 127) {
    if (buf.length < 10) return null;
    length = Number(buf.readBigUInt64BE(2));
    at = 10;
  }
  if (buf[1] & 0x80) at += 4;
  if (buf.length < at + length) return null;
  return { bytes: buf.subarray(0, at + length), payload: buf.subarray(at, at + length) };
}

export function startProxy(targetPort) {
  const conns = new Set();
  const rules = [];
  const held = [];

  const forward = (conn, frame) => {
    const i = rules.findIndex((r) => frame.payload.includes(r.text));
    if (i < 0) return conn.client.write(frame.bytes);
    const [rule] = rules.splice(i, 1);
    rule.hit = true;
    if (rule.action === 'duplicate') {
      conn.client.write(frame.bytes);
      conn.client.write(frame.bytes);
    } else if (rule.action === 'hold') {
      held.push({ conn, bytes: frame.bytes });
    }
    return undefined; // 'drop'
  };

  const server = net.createServer((client) => {
    const upstream = net.connect(targetPort, '127.0.0.1');
    const conn = { client, upstream };
    conns.add(conn);
    client.pipe(upstream);
    let buf = Buffer.alloc(0);
    let upgraded = false;
    upstream.on('data', (chunk) => {
      buf = Buffer.concat([buf, chunk]);
      if (!upgraded) {
        const end = buf.indexOf('\r\n\r\n');
        if (end < 0) return;
        client.write(buf.subarray(0, end + 4));
        buf = buf.subarray(end + 4);
        upgraded = true;
      }
      for (let frame = nextFrame(buf); frame; frame = nextFrame(buf)) {
        buf = buf.subarray(frame.bytes.length);
        forward(conn, frame);
      }
    });
    const close = () => {
      client.destroy();
      upstream.destroy();
      conns.delete(conn);
    };
    for (const s of [client, upstream]) {
      s.on('error', close);
      s.on('close', close);
    }
  });

  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve({
    port: server.address().port,
    /** Holds, drops or duplicates the next server frame holding `text`; the rule is returned,
     * its `hit` set once it acted. */
    rule(action, text) {
      const rule = { action, text: Buffer.from(text), hit: false };
      rules.push(rule);
      return rule;
    },
    /** Sends the held frames on, to the connections still open. */
    release() {
      for (const { conn, bytes } of held.splice(0)) if (conns.has(conn)) conn.client.write(bytes);
    },
    /** Drops every connection through the proxy, as a network failure would. */
    killAll() {
      for (const { client, upstream } of conns) {
        client.destroy();
        upstream.destroy();
      }
      conns.clear();
    },
    /** Refuses new connections (stops listening) while `on`, as a server that is down. */
    async refuse(on) {
      const port = this.port;
      if (on) server.close(() => {});
      else await new Promise((r) => server.listen(port, '127.0.0.1', r));
    },
    get open() {
      return conns.size;
    },
    close() {
      this.killAll();
      server.close(() => {});
    },
  })));
}
