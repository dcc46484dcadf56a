//! Drives a shard without sockets, as a client would: for tests, benchmarks and fuzzers.

use crate::protocol::Transport;
use crate::shard::{AuthedUser, Command, Effect, Shard};

/// A WebSocket upgrade request for `/ws`.
pub const UPGRADE: &[u8] = b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// A masked client frame, as a browser would send it.
pub fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut out = vec![(fin as u8) << 7 | opcode];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n < 65536 => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// What is queued for `key` (up to 64 buffers), as one byte string, marked written.
pub fn written(s: &mut Shard, key: u32) -> Vec<u8> {
    let mut dirty = Vec::new();
    s.take_dirty(&mut dirty);
    let Some(out) = s.out_mut(key) else { return Vec::new() };
    let mut iov = [std::io::IoSlice::new(&[]); 64];
    let n = out.io_slices(&mut iov);
    let bytes: Vec<u8> = iov[..n].iter().flat_map(|s| s.iter().copied()).collect();
    s.wrote(key, bytes.len());
    bytes
}

/// Opens a WebSocket and authenticates it as `user` in `room` (logic's answer included);
/// returns its key and id, with the handshake reply already written.
pub fn live_ws(s: &mut Shard, user: u64, room: u64) -> (u32, u64) {
    live_ws_with_token(s, user, room, &format!("t{user}"))
}

/// [`live_ws`] with the token the client sends.
pub fn live_ws_with_token(s: &mut Shard, user: u64, room: u64, token: &str) -> (u32, u64) {
    live_ws_upgraded(s, user, room, token, UPGRADE)
}

/// [`live_ws`] with the upgrade request the client sends (its subprotocols, its extensions).
pub fn live_ws_upgraded(s: &mut Shard, user: u64, room: u64, token: &str, upgrade: &[u8]) -> (u32, u64) {
    let (key, id) = s.open(Transport::WebSocket, 0);
    s.on_data(key, &mut upgrade.to_vec(), 0);
    let auth = format!(r#"{{"authToken":"{token}","roomId":{room}}}"#);
    s.on_data(key, &mut client_frame(true, 1, auth.as_bytes()), 0);
    let effects: Vec<_> = s.take_effects().collect();
    let auth =
        Effect::Auth { key, conn_id: id, token: token.to_string(), room_id: room, since: None, acks: false };
    assert_eq!(effects, vec![auth]);
    let ok = AuthedUser { user_id: user, user_name: format!("u{user}"), ..AuthedUser::default() };
    s.on_command(Command::AuthDone { key, conn_id: id, result: Ok(Box::new(ok)) });
    let out = written(s, key);
    assert!(out.starts_with(b"HTTP/1.1 101"));
    (key, id)
}

/// `wss://` in memory: a rustls client talking to a shard's TLS connection.
pub mod tls {
    use std::io::{Read, Write};
    use std::sync::Arc;

    use rustls::pki_types::ServerName;
    use rustls::{ClientConfig, ClientConnection};

    use super::{client_frame, written, UPGRADE};
    use crate::shard::{AuthedUser, Command, Effect, Shard};

    /// A client for `localhost`.
    pub fn client(config: &Arc<ClientConfig>) -> ClientConnection {
        let name = ServerName::try_from("localhost").expect("a valid name");
        ClientConnection::new(config.clone(), name).expect("a client config that works")
    }

    /// What the client has to send.
    pub fn client_output(c: &mut ClientConnection) -> Vec<u8> {
        let mut out = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut out).expect("writing to a Vec");
        }
        out
    }

    /// Feeds server bytes to the client; returns the plaintext it got. Panics when the client
    /// refuses them.
    pub fn client_input(c: &mut ClientConnection, mut bytes: &[u8]) -> Vec<u8> {
        let mut plain = Vec::new();
        while !bytes.is_empty() {
            c.read_tls(&mut bytes).expect("reading from a slice");
            c.process_new_packets().expect("the client takes what the server sent");
            let mut buf = [0u8; 4096];
            while let Ok(n) = c.reader().read(&mut buf) {
                if n == 0 {
                    break;
                }
                plain.extend_from_slice(&buf[..n]);
            }
        }
        plain
    }

    /// Opens a wss connection on `s` (which serves TLS) and runs its handshake; returns its key,
    /// id and the client.
    pub fn handshake(s: &mut Shard, config: &Arc<ClientConfig>) -> (u32, u64, ClientConnection) {
        let (key, id) = s.open_tls(0).expect("the shard serves TLS");
        let mut c = client(config);
        while c.is_handshaking() {
            s.on_data(key, &mut client_output(&mut c), 0);
            client_input(&mut c, &written(s, key));
        }
        // The client's Finished (and the server's session tickets).
        s.on_data(key, &mut client_output(&mut c), 0);
        client_input(&mut c, &written(s, key));
        (key, id, c)
    }

    /// Sends `plain` from the client; returns the plaintext the shard answered.
    pub fn send(s: &mut Shard, key: u32, c: &mut ClientConnection, plain: &[u8]) -> Vec<u8> {
        c.writer().write_all(plain).expect("writing to the client's buffer");
        s.on_data(key, &mut client_output(c), 0);
        client_input(c, &written(s, key))
    }

    /// A wss connection through the handshake, the upgrade and auth (logic's answer included),
    /// live as `user` in `room`; returns its key and the client.
    pub fn live_wss(
        s: &mut Shard,
        config: &Arc<ClientConfig>,
        user: u64,
        room: u64,
    ) -> (u32, ClientConnection) {
        let (key, id, mut c) = handshake(s, config);
        assert!(send(s, key, &mut c, UPGRADE).starts_with(b"HTTP/1.1 101"));
        let auth = format!(r#"{{"authToken":"t{user}","roomId":{room}}}"#);
        send(s, key, &mut c, &client_frame(true, 1, auth.as_bytes()));
        let token = format!("t{user}");
        let effects: Vec<_> = s.take_effects().collect();
        let want = Effect::Auth { key, conn_id: id, token, room_id: room, since: None, acks: false };
        assert_eq!(effects, vec![want]);
        let ok = AuthedUser { user_id: user, user_name: format!("u{user}"), ..AuthedUser::default() };
        s.on_command(Command::AuthDone { key, conn_id: id, result: Ok(Box::new(ok)) });
        let reply = client_input(&mut c, &written(s, key));
        assert!(String::from_utf8_lossy(&reply).contains("\"op\":7"));
        (key, c)
    }
}
