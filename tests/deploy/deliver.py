#!/usr/bin/env python3
"""Registers two users, connects one socket to each gateway and delivers messages through the
cluster compose.sh brought up: a private message from each control's REST API to the user on
the other gateway, and a room message to both. Only the standard library: REST over urllib,
a WebSocket client of its own (RFC 6455, what the gateway needs).

usage: deliver.py --api URL [--api URL] --ws URL --ws URL
"""
import argparse
import base64
import json
import os
import socket
import struct
import sys
import time
import urllib.parse
import urllib.request

WAIT = 20.0


def api(base, path, body):
    req = urllib.request.Request(base + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=WAIT) as res:
        envelope = json.load(res)
    if envelope.get("code") != 0:
        raise AssertionError(f"{path}: {envelope}")
    return envelope["data"]


class Ws:
    """A WebSocket client: text frames out (masked), text frames in."""

    def __init__(self, url):
        u = urllib.parse.urlsplit(url)
        self.sock = socket.create_connection((u.hostname, u.port), timeout=WAIT)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {u.path or '/'} HTTP/1.1\r\nHost: {u.netloc}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                           "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise AssertionError(f"{url}: closed during the handshake")
            head += chunk
        head, self.buf = head.split(b"\r\n\r\n", 1)
        if b" 101 " not in head.split(b"\r\n")[0]:
            raise AssertionError(f"{url}: {head.decode(errors='replace')}")

    def send(self, obj):
        data = json.dumps(obj).encode()
        mask = os.urandom(4)
        n = len(data)
        head = struct.pack("!BB", 0x81, 0x80 | n) if n < 126 else struct.pack("!BBH", 0x81, 0xFE, n)
        self.sock.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))

    def _read(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise AssertionError("the gateway closed the socket")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def recv(self):
        b0, b1 = self._read(2)
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", self._read(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", self._read(8))[0]
        payload = self._read(n)
        opcode = b0 & 0x0F
        if opcode == 0x8:
            raise AssertionError(f"closed by the gateway: {payload[2:].decode(errors='replace')}")
        if opcode == 0x9:  # ping: answer, and read on
            self.sock.sendall(struct.pack("!BB", 0x8A, 0x80 | len(payload)) + b"\0\0\0\0" + payload)
            return self.recv()
        return json.loads(payload)

    def wait_for(self, what, pred):
        deadline = time.monotonic() + WAIT
        seen = []
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                frame = self.recv()
            except socket.timeout:
                break
            if pred(frame):
                return frame
            seen.append(frame)
        raise AssertionError(f"no {what} within {WAIT} s; got {seen}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--api", action="append", required=True, help="a control's REST API")
    p.add_argument("--ws", action="append", required=True, help="a gateway's WebSocket URL")
    a = p.parse_args()
    if len(a.ws) != 2:
        p.error("two gateways")
    stamp = f"{os.getpid()}{int(time.time()) % 100000}"
    users = []
    for name, ws_url in zip(("alice", "bob"), a.ws):
        name = f"{name}{stamp}"
        token = api(a.api[0], "/user/register", {"userName": name, "passWord": "compose-1"})
        uid = api(a.api[0], "/user/checkAuth", {"authToken": token})["userId"]
        ws = Ws(ws_url)
        ws.send({"authToken": token, "roomId": 1})
        ok = ws.wait_for("auth reply (op 7)", lambda f: f.get("op") == 7)
        assert ok["userId"] == uid, ok
        users.append({"name": name, "token": token, "id": uid, "ws": ws, "at": ws_url})
        print(f"{name} (user {uid}) connected to {ws_url}")
    # A private message from each control, each to the user on the other gateway.
    for i, base in enumerate(a.api):
        sender, to = users[i % 2], users[(i + 1) % 2]
        text = f"private {i} via {base}"
        api(base, "/push/push", {"authToken": sender["token"], "msg": text, "toUserId": to["id"]})
        got = to["ws"].wait_for(f"private message at {to['at']}", lambda f: f.get("msg") == text)
        assert got.get("op") == 2, got
        print(f"delivered: {sender['name']} -> {to['name']} through {base} to {to['at']}")
    # A room message reaches the members on both gateways.
    text = "to the room"
    api(a.api[-1], "/push/pushRoom", {"authToken": users[0]["token"], "roomId": 1, "msg": text})
    for u in users:
        got = u["ws"].wait_for(f"room message at {u['at']}", lambda f: f.get("msg") == text)
        assert got.get("op") == 3, got
    print(f"delivered: a room message to both gateways through {a.api[-1]}")


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(f"FAILED: {e}", file=sys.stderr)
        sys.exit(1)
