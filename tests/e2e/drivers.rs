//! What a driver must survive: a peer that resets while output is in flight, and running out of
//! descriptors at accept. Runs under the driver named by `GOCHAT_TEST_DRIVER`.

use crate::common;

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{eventually, KillOnDrop, Server};
use gochat_proto::wire;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn a_peer_reset_with_output_in_flight_leaves_the_others_unharmed() {
    let _heavy = common::heavy().await;
    let s = Server::start().await;
    let (a, b) = (s.user("a").await, s.user("b").await);
    let reader = common::raw_ws(s.up.gateway.ws_addr, &a.token, 20).await;
    let mut ws = s.ws(&b, 20).await;
    // Fill the socket of a peer that never reads.
    let big = "x".repeat(9000);
    for _ in 0..60 {
        assert_eq!(s.push_room(&b, 20, &big).await["code"], 0);
    }
    for _ in 0..60 {
        assert_eq!(ws.recv_op(wire::OP_ROOM_SEND).await["msg"].as_str().map(str::len), Some(9000));
    }
    // Reset it (RST, not FIN) while its output is queued or in flight.
    socket2::SockRef::from(&reader).set_linger(Some(Duration::ZERO)).unwrap();
    drop(reader);
    eventually("the reset connection is gone", || async { s.up.gateway_conns() == 1 }).await;
    s.push_room(&b, 20, "after the reset").await;
    assert_eq!(ws.recv_op(wire::OP_ROOM_SEND).await["msg"], "after the reset");
    s.shutdown().await;
}

fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r).to_string();
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

#[tokio::test]
async fn out_of_descriptors_at_accept_pauses_then_recovers() {
    let _heavy = common::heavy().await;
    let dir = std::env::temp_dir().join(common::unique(&format!("gochat-emfile-{}-", std::process::id())));
    std::fs::create_dir_all(&dir).unwrap();
    let [api, grpc, ws, gw] = [(); 4].map(|_| common::free_port());
    let driver = std::env::var("GOCHAT_TEST_DRIVER").unwrap_or_else(|_| "epoll".into());
    let config = format!(
        "[gateway]\nws_listen = \"127.0.0.1:{ws}\"\ngrpc_listen = \"127.0.0.1:{gw}\"\nshards = 1\ndriver = \"{driver}\"\n\
         [control]\napi_listen = \"127.0.0.1:{api}\"\ngrpc_listen = \"127.0.0.1:{grpc}\"\ndatabase = \"sqlite://{db}\"\n",
        db = dir.join("u.sqlite3").display()
    );
    let mut config = config.replace("[gateway]\n", "[gateway]\ntcp_listen = \"127.0.0.1:0\"\n");
    config.push_str("site_listen = \"127.0.0.1:0\"\n");
    let path = dir.join("c.toml");
    std::fs::write(&path, config).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gochat"));
    let log = dir.join("up.log");
    cmd.args(["--config", path.to_str().unwrap(), "up"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    // SAFETY: setrlimit between fork and exec touches only the child.
    #[allow(unsafe_code)]
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit { rlim_cur: 96, rlim_max: 96 };
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            Ok(())
        });
    }
    // Killed however the test ends, so a failed assertion leaves no server behind.
    let mut child = KillOnDrop(cmd.spawn().unwrap());
    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{api}/user/login");
    eventually("gochat up answers", || async { http.post(&url).body("{}").send().await.is_ok() }).await;
    let base = format!("http://127.0.0.1:{api}");
    let login = common::post(&base, "/user/login", json!({"userName": "demo", "passWord": "111111"})).await;
    let token = login["data"].as_str().unwrap().to_string();
    drop(http);

    // More connections than the process has descriptors for.
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], ws).into();
    let mut flood = Vec::new();
    for _ in 0..150 {
        if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr)).await {
            flood.push(s);
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (c0, t0) = (cpu_secs(child.0.id()), Instant::now());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let busy = (cpu_secs(child.0.id()) - c0) / t0.elapsed().as_secs_f64();
    assert!(busy < 0.5, "the gateway spins at {:.0}% CPU while out of descriptors", busy * 100.0);
    drop(flood);

    // Descriptors are back: a real client gets in and is served.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut reached = false;
    while Instant::now() < deadline && !reached {
        if let Ok(Ok(_s)) = tokio::time::timeout(Duration::from_secs(5), async {
            let s = common::raw_ws(addr, &token, 1).await;
            Ok::<_, ()>(s)
        })
        .await
        {
            reached = true;
        } else {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    gochat_runtime::os::signal(child.0.id(), libc::SIGINT).unwrap();
    let _ = child.0.wait();
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_dir_all(dir);
    assert!(
        logged.contains("accept paused"),
        "the flood never ran the gateway out of descriptors:\n{logged}"
    );
    assert!(reached, "no client was served after the flood ended");
}

#[tokio::test]
async fn a_peer_that_never_closes_is_cut_off_after_the_linger() {
    let mut cfg = common::test_config();
    cfg.gateway.auth_timeout_secs = 1;
    let s = Server::start_with(cfg).await;
    let mut peer = TcpStream::connect(s.up.gateway.ws_addr).await.unwrap();
    // Never authenticates: the gateway closes its side after the auth timeout.
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(common::WAIT, peer.read(&mut buf)).await.unwrap().unwrap();
    assert_eq!(n, 0, "the gateway closed its side");
    // While the gateway lingers, what the peer sends is read and dropped: no reset, so writing
    // keeps working.
    peer.write_all(b"late").await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    peer.write_all(b"still fine").await.expect("no reset while the gateway lingers");
    // After the linger deadline the gateway has cancelled its read and closed the socket: the
    // next bytes are answered with a reset, and writing after that fails.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let _ = peer.write_all(b"later").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after = peer.write_all(b"again").await;
    assert!(
        matches!(&after, Err(e) if matches!(e.kind(), std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe)),
        "expected a reset, got {after:?}"
    );
    s.shutdown().await;
}
