// What the Node tests (tests/browser/, clients/js/test/) share: free loopback ports, waiting
// for a condition, and a `gochat up` process started from a config file and stopped again.
// Node's standard library only.

import { spawn } from 'node:child_process';
import { openSync, readFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/** The repository's root, and the `gochat` binary the tests start (GOCHAT_BIN, or the debug build). */
export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const GOCHAT_BIN = process.env.GOCHAT_BIN || path.join(ROOT, 'target/debug/gochat');

/** Node's WebSocket, or an error that says how to get it. */
export function nodeWebSocket() {
  if (typeof globalThis.WebSocket !== 'function') {
    throw new Error('no WebSocket in this Node: run it with --experimental-websocket (Node 20) or on Node 22+');
  }
  return globalThis.WebSocket;
}

// Ports for the server, taken in turn from below the kernel's ephemeral range, as
// gochat_runtime::launch::free_addr takes them: a port from that range (what a bind to port 0 gets)
// can be handed to an outgoing connection, or to anyone's bind to port 0, between this pick and
// the server's bind, or while a test restarts the server on the same ports. The server cannot
// bind port 0 itself: its clients must find it at the same address after a restart.
function ephemeralLow() {
  try {
    const low = Number(readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/)[0]);
    if (Number.isInteger(low) && low > 0) return low;
  } catch { /* not Linux: the usual default */ }
  return 32768;
}
const PORTS_LOW = 10000;
const PORTS_HIGH = Math.max(ephemeralLow(), PORTS_LOW + 1000);
let nextPort = (process.pid * 7919 + Date.now()) % (PORTS_HIGH - PORTS_LOW);

function bindable(port) {
  return new Promise((resolve) => {
    const srv = net.createServer();
    srv.once('error', () => resolve(false));
    srv.listen(port, '127.0.0.1', () => srv.close(() => resolve(true)));
  });
}

/** A loopback port nothing listens on, below the ephemeral range. */
export async function freePort() {
  for (let tries = 0; tries < PORTS_HIGH - PORTS_LOW; tries++) {
    const port = PORTS_LOW + (nextPort++ % (PORTS_HIGH - PORTS_LOW));
    if (await bindable(port)) return port;
  }
  throw new Error(`no free loopback port in ${PORTS_LOW}..${PORTS_HIGH}`);
}

/** Free ports for a `gochat up`: `{ api, site, grpc, ws, gw }`. */
export async function freePorts() {
  return { api: await freePort(), site: await freePort(), grpc: await freePort(), ws: await freePort(), gw: await freePort() };
}

/** The config of a `gochat up` on the loopback `ports` of `freePorts`, its users in `dir`, one
 * shard on the driver GOCHAT_TEST_DRIVER names (epoll by default); `control` and `gateway` are
 * more lines for those sections. */
export function gochatConfig({ ports, dir, control = '', gateway = '' }) {
  return `[control]
api_listen = "127.0.0.1:${ports.api}"
site_listen = "127.0.0.1:${ports.site}"
grpc_listen = "127.0.0.1:${ports.grpc}"
database = "sqlite://${path.join(dir, 'users.sqlite3')}"
demo_users = false
${control}

[gateway]
ws_listen = "127.0.0.1:${ports.ws}"
tcp_listen = "off"
grpc_listen = "127.0.0.1:${ports.gw}"
shards = 1
driver = "${process.env.GOCHAT_TEST_DRIVER || 'epoll'}"
${gateway}
`;
}

/** Whether something accepts connections on this loopback port. */
export function portOpen(port) {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    s.on('connect', () => { s.destroy(); resolve(true); });
    s.on('error', () => resolve(false));
  });
}

/** Waits until `check()` (sync or async) is true, or throws after `ms`. */
export async function until(what, check, ms = 15000) {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (await check()) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`not true in time: ${what}`);
}

/** Starts `bin --config config up` with its log appended to `log`, and waits until each of
 * `ports` accepts connections. */
export async function startGochat({ bin, config, log, ports }) {
  const proc = spawn(bin, ['--config', config, 'up'], { stdio: ['ignore', 'ignore', openSync(log, 'a')] });
  let exit = null;
  proc.once('exit', (code, signal) => { exit = code ?? signal; });
  await until('gochat up listens', async () => {
    if (exit !== null) throw new Error(`gochat up exited (${exit}); its log: ${log}`);
    return (await Promise.all(ports.map(portOpen))).every(Boolean);
  }, 30000);
  return proc;
}

/** Stops a process of `startGochat`: SIGTERM (it drains), SIGKILL after 10 s. */
export async function stopGochat(proc) {
  if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
  const exited = new Promise((r) => proc.once('exit', r));
  proc.kill('SIGTERM');
  await Promise.race([exited, new Promise((r) => setTimeout(r, 10000))]);
  if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
}
