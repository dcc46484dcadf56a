//! The driver on real loopback sockets, its loop turned by the test.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use super::*;
use crate::protocol::Transport;
use crate::shard::ShardLimits;
use crate::testkit::{client_frame, UPGRADE};

struct Harness {
    d: Driver,
    inbox: Arc<Inbox>,
    addr: SocketAddr,
    _effects: mpsc::UnboundedReceiver<(u32, Effect)>,
}

fn harness(limits: ShardLimits) -> Harness {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let inbox = Arc::new(Inbox::new(64).unwrap());
    let (effects, rx) = mpsc::unbounded_channel();
    let shard = Shard::new(0, 1, limits, 0);
    let endpoint = Endpoint::plain(Transport::WebSocket);
    let d = Driver::new(shard, vec![(listener, endpoint)], &inbox, effects, Clock::start()).unwrap();
    Harness { d, inbox, addr, _effects: rx }
}

impl Harness {
    /// Turns the loop until `done` holds; fails after 10 s.
    fn until(&mut self, what: &str, mut done: impl FnMut(&Driver) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done(&self.d) {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            self.turn();
        }
    }

    /// One turn that waits 5 ms at most.
    fn turn(&mut self) {
        self.d.turn(&self.inbox, Some(Instant::now() + Duration::from_millis(5))).unwrap();
    }

    /// A client connected and accepted, with its shard key.
    fn connect(&mut self) -> (TcpStream, u32) {
        let client = TcpStream::connect(self.addr).unwrap();
        self.accepted(client)
    }

    /// `client`, connected to the listener, once accepted; with its shard key.
    fn accepted(&mut self, client: TcpStream) -> (TcpStream, u32) {
        let before = self.d.shard.len();
        self.until("the connection is accepted", |d| d.shard.len() > before);
        let gen = self.d.next_gen;
        let key = self.d.conns.iter().position(|c| c.gen == gen && c.fd.is_some()).unwrap();
        (client, key as u32)
    }
}

/// Reads everything the peer sends until its end of stream (or an error), counting it in `seen`.
fn read_all(mut stream: TcpStream, seen: Arc<AtomicUsize>) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut got = Vec::new();
        let mut buf = [0; 16 * 1024];
        while let Ok(n @ 1..) = stream.read(&mut buf) {
            got.extend_from_slice(&buf[..n]);
            seen.fetch_add(n, Ordering::SeqCst);
        }
        got
    })
}

/// Waits until the socket has input (or its end), 5 s at most.
fn wait_readable(fd: &OwnedFd) {
    let mut p = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd.
    assert_eq!(unsafe { libc::poll(&mut p, 1, 5000) }, 1, "the socket never became readable");
}

#[test]
fn input_past_the_read_budget_is_all_read() {
    let mut h = harness(ShardLimits::default());
    // A small scratch buffer, so that the read budget takes less than the socket buffers hold:
    // the rest, arrived under one edge, is only read because the connection is served again.
    h.d.scratch = vec![0; 1024].into_boxed_slice();
    let (client, _) = h.connect();
    let reader = read_all(client.try_clone().unwrap(), Arc::default());
    let mut writer = client.try_clone().unwrap();
    let sent = std::thread::spawn(move || {
        writer.write_all(UPGRADE).unwrap();
        // Unsolicited pongs: read and ignored by the shard, so nothing closes the connection.
        let pong = client_frame(true, 0xA, &[7; 125]);
        let bulk: Vec<u8> = pong.iter().copied().cycle().take(pong.len() * 17_000).collect();
        writer.write_all(&bulk).unwrap();
        writer.shutdown(Shutdown::Write).unwrap();
        bulk.len()
    });
    h.until("the client's end of stream is read", |d| d.shard.is_empty());
    assert!(sent.join().unwrap() > 2 * 1024 * 1024);
    let got = reader.join().unwrap();
    assert!(got.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&got));
    assert!(got.ends_with(b"\r\n\r\n"), "the handshake's answer and nothing else (no close): {got:?}");
    assert!(h.d.lingering.is_empty(), "gone at the peer's end, not closed by us");
}

#[test]
fn output_past_what_the_socket_takes_is_all_written() {
    let mut limits = ShardLimits { max_outbound_bytes: 64 << 20, ..ShardLimits::default() };
    limits.protocol.echo_path = Some("/echo".into());
    let mut h = harness(limits);
    // Small socket buffers, far from holding all the echoes. The client's receive buffer is set
    // before it connects: shrunk on an established connection, it can leave the window closed
    // for as long as TCP's persist timer backs off (seconds), whatever the server does.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(16 * 1024).unwrap();
    socket.connect(&h.addr.into()).unwrap();
    let (client, key) = h.accepted(socket.into());
    let server = socket2::SockRef::from(h.d.conns[key as usize].fd.as_ref().unwrap());
    server.set_send_buffer_size(16 * 1024).unwrap();
    let mut writer = client.try_clone().unwrap();
    let upgrade = String::from_utf8_lossy(UPGRADE).replace("GET /ws ", "GET /echo ");
    writer.write_all(upgrade.as_bytes()).unwrap();
    h.until("the upgrade is answered", |d| d.shard.stats().sends.load(Ordering::Relaxed) > 0);
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0];
        (&client).read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"));
    // Echoed frames, written while the client does not read: the socket fills, and only its
    // EPOLLOUT edges get the rest out.
    let (frames, payload) = (256, 8 * 1024);
    let frame = client_frame(true, 2, &vec![1; payload]);
    let sent = std::thread::spawn(move || {
        for _ in 0..frames {
            writer.write_all(&frame).unwrap();
        }
    });
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(200) {
        h.turn();
    }
    let seen = Arc::new(AtomicUsize::new(0));
    let reader = read_all(client, seen.clone());
    let expected = frames * (4 + payload);
    h.until("every echo is read", |_| seen.load(Ordering::SeqCst) >= expected);
    sent.join().unwrap();
    assert_eq!(seen.load(Ordering::SeqCst), expected);
    h.d.gone(key);
    reader.join().unwrap();
}

#[test]
fn a_stale_event_for_a_reused_key_is_ignored() {
    let mut h = harness(ShardLimits::default());
    let (first, key) = h.connect();
    let old = h.d.conns[key as usize].gen;
    drop(first);
    h.until("the first connection is gone", |d| d.shard.is_empty());
    let (second, again) = h.connect();
    assert_eq!(again, key, "the shard reuses the key");
    let new = h.d.conns[key as usize].gen;
    assert_ne!(old, new);
    // The second peer's end of stream waits on its socket, unread.
    second.shutdown(Shutdown::Write).unwrap();
    wait_readable(h.d.conns[key as usize].fd.as_ref().unwrap());
    // An event of the first connection (e.g. one taken in the same wait as the first's
    // close): not the second's, so its socket is not read.
    h.d.dispatch(event_data(Kind::Conn, key as usize, old), IN | RDHUP, &h.inbox);
    assert_eq!(h.d.shard.len(), 1, "the stale event was ignored");
    h.d.dispatch(event_data(Kind::Conn, key as usize, new), IN | RDHUP, &h.inbox);
    assert!(h.d.shard.is_empty(), "the second connection's own event reads its end of stream");
}

/// Opens a connection the shard refuses (an upgrade to an unknown path) and waits until it
/// lingers; returns the client and the response it read up to our end of stream.
fn refused(h: &mut Harness) -> (TcpStream, Vec<u8>) {
    let (mut client, _) = h.connect();
    let lingering = h.d.lingering.len();
    let upgrade = String::from_utf8_lossy(UPGRADE).replace("GET /ws ", "GET /nope ");
    client.write_all(upgrade.as_bytes()).unwrap();
    h.until("the refused connection lingers", |d| d.lingering.len() > lingering);
    assert!(h.d.shard.is_empty());
    let mut got = Vec::new();
    client.read_to_end(&mut got).unwrap();
    (client, got)
}

#[test]
fn a_closed_socket_lingers_until_the_peer_closes() {
    let mut h = harness(ShardLimits::default());
    let (mut client, got) = refused(&mut h);
    assert!(got.starts_with(b"HTTP/1.1 4"), "{}", String::from_utf8_lossy(&got));
    // What the peer still sends is read and discarded, then its close closes ours.
    client.write_all(&[0; 100_000]).unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    h.until("the lingering socket closes", |d| d.lingering.is_empty());
}

#[test]
fn a_closed_socket_lingers_until_its_deadline() {
    let mut h = harness(ShardLimits::default());
    let (_client, _) = refused(&mut h);
    h.d.expire_lingering(Instant::now() + LINGER / 2);
    assert_eq!(h.d.lingering.len(), 1, "before its deadline");
    h.d.expire_lingering(Instant::now() + LINGER);
    assert!(h.d.lingering.is_empty(), "closed at its deadline");
    assert!(h.d.linger_deadlines.is_empty());
}

const OUT_OF_DESCRIPTORS: &str = "GOCHAT_TEST_OUT_OF_DESCRIPTORS";

#[test]
fn accepting_pauses_while_out_of_descriptors() {
    if std::env::var_os(OUT_OF_DESCRIPTORS).is_none() {
        // The descriptor limit is the whole process': lowered in a child running only this test.
        let name = "driver::epoll::tests::accepting_pauses_while_out_of_descriptors";
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", name, "--test-threads=1", "--nocapture"])
            .env(OUT_OF_DESCRIPTORS, "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{text}");
        assert!(text.contains("1 passed"), "the child ran the test: {text}");
        return;
    }
    let mut h = harness(ShardLimits::default());
    let clients: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(h.addr).unwrap()).collect();
    // The lowest free descriptor is the limit: none is left for an accepted socket.
    let lowest = OwnedFd::from(std::fs::File::open("/dev/null").unwrap()).as_raw_fd();
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one rlimit into `limit`.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) }, 0);
    let set = |soft: u64| {
        let l = libc::rlimit { rlim_cur: soft, rlim_max: limit.rlim_max };
        // SAFETY: setrlimit reads one rlimit.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &l) }, 0);
    };
    set(lowest as u64);

    h.turn();
    let l = &h.d.listeners[0];
    assert!(l.paused_until.is_some(), "paused at EMFILE");
    assert_eq!(l.backoff, ACCEPT_PAUSE * 2, "the next pause is twice as long");
    assert!(h.d.shard.is_empty());
    // No spinning: the loop sleeps through the pause, then tries again and pauses longer.
    let start = Instant::now();
    h.d.turn(&h.inbox, None).unwrap();
    assert!(start.elapsed() >= ACCEPT_PAUSE / 2, "waited for the pause: {:?}", start.elapsed());
    assert_eq!(h.d.listeners[0].backoff, ACCEPT_PAUSE * 4);
    assert!(h.d.shard.is_empty());

    set(limit.rlim_cur);
    h.until("the waiting connections are accepted", |d| d.shard.len() == clients.len());
    assert_eq!(h.d.listeners[0].backoff, ACCEPT_PAUSE, "reset by an accept");
    assert!(h.d.listeners[0].paused_until.is_none());
}
