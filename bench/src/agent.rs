//! `bench agent`: runs client fleets for a coordinator on another machine (`bench --agents`).
//!
//! Each TCP connection the agent accepts carries one fleet in the worker line protocol
//! ([`crate::worker`]): the `FleetSpec` line, then `Cmd` lines, each answered by a `Snapshot`
//! line. For each, the agent starts a `bench worker` process of its own executable and relays
//! lines both ways, so every fleet is its own process with its own descriptor limit, as
//! locally. When the coordinator's connection ends, for whatever reason, the worker's stdin is
//! closed (it quits on that) and the worker is reaped; the agent serves the next run.
//!
//! Input the worker would not take (not JSON, not a fleet spec, not a command) is answered with
//! one [`Refusal`] line and the connection closed. There is no authentication: the agent must
//! listen only on a private benchmark network.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use crate::engine::{Cmd, FleetSpec};

/// What an agent answers instead of a snapshot when it cannot go on; the connection closes
/// after it. (A snapshot has no `error` field, so the two cannot be mistaken.)
#[derive(Debug, Serialize, Deserialize)]
pub struct Refusal {
    pub error: String,
}

/// The longest fleet spec line taken: a spec is ~100 bytes a connection, 15,000 connections a
/// fleet, so this is far above any real one and only stops a runaway sender.
const SPEC_LIMIT: u64 = 256 << 20;
/// The longest command line taken.
const CMD_LIMIT: u64 = 4 << 10;
/// How long a worker has to exit once its stdin is closed, before it is killed.
const WORKER_GRACE: Duration = Duration::from_secs(10);

/// The agent's source addresses, handed out in turn to the fleets whose spec names none.
struct Sources {
    ips: Vec<Ipv4Addr>,
    next: AtomicUsize,
}

impl Sources {
    fn pick(&self) -> Option<Ipv4Addr> {
        (!self.ips.is_empty()).then(|| self.ips[self.next.fetch_add(1, Ordering::Relaxed) % self.ips.len()])
    }
}

/// Listens on `listen` and serves fleets until killed.
pub fn serve(listen: SocketAddr, sources: Vec<Ipv4Addr>) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("own executable")?;
    let listener = TcpListener::bind(listen).with_context(|| format!("listening on {listen}"))?;
    let shown: Vec<String> = sources.iter().map(Ipv4Addr::to_string).collect();
    eprintln!(
        "bench agent: listening on {} (no authentication: a private benchmark network only){}",
        listener.local_addr()?,
        if shown.is_empty() { String::new() } else { format!(", sources {}", shown.join(",")) }
    );
    let sources = Arc::new(Sources { ips: sources, next: AtomicUsize::new(0) });
    let exe: Arc<Path> = exe.into();
    let ids = AtomicU64::new(1);
    loop {
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors, or a connection reset before it was taken: not fatal.
                eprintln!("bench agent: accept: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let id = ids.fetch_add(1, Ordering::Relaxed);
        let (exe, sources) = (exe.clone(), sources.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("fleet-{id}"))
            .spawn(move || fleet(id, stream, &exe, &sources));
        if let Err(e) = spawned {
            eprintln!("bench agent: fleet {id}: no thread for it: {e}");
        }
    }
}

/// One coordinator connection, start to end; logs what became of it.
fn fleet(id: u64, stream: TcpStream, exe: &Path, sources: &Sources) {
    let peer = stream.peer_addr().map_or_else(|_| "?".into(), |a| a.to_string());
    let _ = stream.set_nodelay(true);
    // A coordinator whose machine died sends no FIN: keep-alive probes end its fleet.
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(60))
        .with_interval(Duration::from_secs(10));
    let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive);
    match relay(id, &peer, stream, exe, sources) {
        Ok(end) => eprintln!("bench agent: fleet {id} for {peer} ended: {end}"),
        Err(e) => eprintln!("bench agent: connection {id} from {peer} started no fleet: {e:#}"),
    }
}

/// The socket's write half, shared by the relay from the worker and the refusals.
type Writer = Arc<Mutex<TcpStream>>;

fn send(writer: &Writer, line: &[u8]) -> io::Result<()> {
    let mut w = writer.lock().unwrap_or_else(|e| e.into_inner());
    w.write_all(line)
}

/// Tells the coordinator why, and closes the connection; returns the reason for the log.
fn refuse(writer: &Writer, why: String) -> anyhow::Error {
    let mut line = serde_json::to_vec(&Refusal { error: why.clone() }).unwrap_or_default();
    line.push(b'\n');
    let _ = send(writer, &line);
    let _ = writer.lock().unwrap_or_else(|e| e.into_inner()).shutdown(Shutdown::Both);
    anyhow::anyhow!(why)
}

/// Starts the fleet's worker and relays until the coordinator or the worker is done. `Err` when
/// no worker was started; `Ok` says how the fleet ended.
fn relay(id: u64, peer: &str, stream: TcpStream, exe: &Path, sources: &Sources) -> anyhow::Result<String> {
    let writer: Writer = Arc::new(Mutex::new(stream.try_clone()?));
    let mut reader = BufReader::new(stream);
    let line = match read_line(&mut reader, SPEC_LIMIT) {
        Ok(Some(line)) => line,
        Ok(None) => bail!("closed before sending a fleet spec"),
        Err(e) if e.kind() == io::ErrorKind::InvalidData => return Err(refuse(&writer, e.to_string())),
        Err(e) => bail!("reading the fleet spec: {e}"),
    };
    let (line, spec) = match prepare(&line, sources) {
        Ok(prepared) => prepared,
        Err(e) => return Err(refuse(&writer, format!("{e:#}"))),
    };
    let mut child = match Command::new(exe)
        .arg("worker")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
    {
        Ok(child) => child,
        Err(e) => {
            return Err(refuse(&writer, format!("the agent cannot start a worker ({}): {e}", exe.display())))
        }
    };
    let mut stdin = child.stdin.take().expect("piped");
    let stdout = child.stdout.take().expect("piped");
    if let Err(e) = stdin.write_all(line.as_bytes()).and_then(|()| stdin.write_all(b"\n")) {
        let _ = child.kill();
        let _ = child.wait();
        return Err(refuse(&writer, format!("the worker did not take the fleet spec: {e}")));
    }
    eprintln!(
        "bench agent: fleet {id} for {peer} started: {} connections to {}{}, worker pid {}",
        spec.conns.len(),
        spec.ws,
        spec.source_ip.map(|ip| format!(" from {ip}")).unwrap_or_default(),
        child.id()
    );

    // Worker → coordinator. When the worker's output ends before the coordinator is done with
    // it, the worker died: say so, and close the connection (which also ends the loop below).
    let ending = Arc::new(AtomicBool::new(false));
    let up = {
        let (writer, ending) = (writer.clone(), ending.clone());
        std::thread::Builder::new().name(format!("fleet-{id}-up")).spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(mut line) = line else { break };
                line.push('\n');
                // After the coordinator left, the worker's last snapshot goes nowhere.
                let _ = send(&writer, line.as_bytes());
            }
            let died = !ending.load(Ordering::SeqCst);
            if died {
                let _ = refuse(&writer, "the fleet's worker process ended (see the agent's log)".into());
            }
            died
        })
    };
    let up = match up {
        Ok(up) => up,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(refuse(&writer, format!("the agent has no thread for the fleet: {e}")));
        }
    };

    // Coordinator → worker.
    let why = commands(&mut reader, &mut stdin, &writer, &ending);
    ending.store(true, Ordering::SeqCst);
    // The worker quits on the end of its stdin (after answering a Quit, if one came).
    drop(stdin);
    let status = reap(&mut child);
    let died = up.join().unwrap_or(true);
    let _ = writer.lock().unwrap_or_else(|e| e.into_inner()).shutdown(Shutdown::Both);
    let why = if died { "the worker process ended first".into() } else { why };
    Ok(format!("{why}; worker {}", status.map_or_else(|e| format!("not reaped: {e}"), |s| s.to_string())))
}

/// Relays commands to the worker until the coordinator quits, leaves or sends something the
/// worker would not take; returns which.
fn commands(
    reader: &mut impl BufRead,
    stdin: &mut ChildStdin,
    writer: &Writer,
    ending: &AtomicBool,
) -> String {
    loop {
        let line = match read_line(reader, CMD_LIMIT) {
            Ok(Some(line)) => line,
            Ok(None) => return "the coordinator closed the connection".into(),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                ending.store(true, Ordering::SeqCst);
                return format!("refused: {}", refuse(writer, e.to_string()));
            }
            Err(e) => return format!("the connection failed: {e}"),
        };
        let cmd = match serde_json::from_str::<Cmd>(&line) {
            Ok(cmd) => cmd,
            Err(e) => {
                ending.store(true, Ordering::SeqCst);
                return format!("refused: {}", refuse(writer, format!("not a command: {e}")));
            }
        };
        if cmd == Cmd::Quit {
            ending.store(true, Ordering::SeqCst);
        }
        if stdin.write_all(line.as_bytes()).and_then(|()| stdin.write_all(b"\n")).is_err() {
            // The worker is gone; the relay from it says so to the coordinator.
            return "the worker process ended".into();
        }
        if cmd == Cmd::Quit {
            return "the coordinator quit".into();
        }
    }
}

/// Checks that `line` is a fleet spec and, when it names no source address and the agent has
/// some, sets the next one. Returns the line for the worker and the spec as read. The line goes
/// on as it came (or with only `source_ip` set), so fields this build does not know pass through.
fn prepare(line: &str, sources: &Sources) -> anyhow::Result<(String, FleetSpec)> {
    let mut value: serde_json::Value = serde_json::from_str(line).context("the fleet spec is not JSON")?;
    let mut spec: FleetSpec = serde_json::from_value(value.clone()).context("not a fleet spec")?;
    if spec.source_ip.is_some() {
        return Ok((line.to_string(), spec));
    }
    match sources.pick() {
        None => Ok((line.to_string(), spec)),
        Some(ip) => {
            value["source_ip"] = serde_json::Value::String(ip.to_string());
            spec.source_ip = Some(ip);
            Ok((value.to_string(), spec))
        }
    }
}

/// One line (without its newline), `None` at the end of the stream; `InvalidData` when it is
/// longer than `limit` or not UTF-8.
fn read_line(reader: &mut impl BufRead, limit: u64) -> io::Result<Option<String>> {
    let mut buf = Vec::new();
    let n = reader.by_ref().take(limit).read_until(b'\n', &mut buf)?;
    match buf.pop() {
        None => Ok(None),
        Some(b'\n') => String::from_utf8(buf)
            .map(Some)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "the line is not UTF-8")),
        Some(_) if n as u64 >= limit => {
            Err(io::Error::new(io::ErrorKind::InvalidData, format!("a line longer than {limit} bytes")))
        }
        // Closed in the middle of a line.
        Some(_) => Ok(None),
    }
}

/// Waits for the worker to exit, killing it after [`WORKER_GRACE`].
fn reap(child: &mut Child) -> io::Result<ExitStatus> {
    let deadline = Instant::now() + WORKER_GRACE;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("bench agent: worker {} did not exit within {WORKER_GRACE:?}; killed", child.id());
    let _ = child.kill();
    child.wait()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources(ips: &[Ipv4Addr]) -> Sources {
        Sources { ips: ips.to_vec(), next: AtomicUsize::new(0) }
    }

    /// A spec with a field this build does not know.
    const SPEC: &str = concat!(
        r#"{"ws":"10.0.0.1:7000","path":"/ws","source_ip":null,"conns":[{"token":"t","room":1}],"#,
        r#""connect_concurrency":4,"client":{"binary":false,"acks":false},"later_field":[1,2]}"#
    );

    #[test]
    fn a_spec_passes_through_with_the_agents_source_set_in_turn() {
        let none = sources(&[]);
        assert_eq!(prepare(SPEC, &none).unwrap().0, SPEC, "verbatim without sources");
        let two = sources(&[Ipv4Addr::new(10, 0, 1, 1), Ipv4Addr::new(10, 0, 1, 2)]);
        let picked: Vec<_> = (0..3)
            .map(|_| {
                let (line, spec) = prepare(SPEC, &two).unwrap();
                let v: serde_json::Value = serde_json::from_str(&line).unwrap();
                assert_eq!(v["later_field"], serde_json::json!([1, 2]), "unknown fields pass through");
                assert_eq!(v["source_ip"], serde_json::json!(spec.source_ip.unwrap().to_string()));
                spec.source_ip.unwrap().octets()[3]
            })
            .collect();
        assert_eq!(picked, [1, 2, 1]);
        let own = SPEC.replace(r#""source_ip":null"#, r#""source_ip":"10.0.2.2""#);
        assert_eq!(prepare(&own, &two).unwrap().0, own, "the coordinator's own choice wins");
    }

    #[test]
    fn bad_specs_are_refused_with_a_reason() {
        let none = sources(&[]);
        let e = format!("{:#}", prepare("hello", &none).unwrap_err());
        assert!(e.contains("not JSON"), "{e}");
        let e = format!("{:#}", prepare(r#"{"ws":1}"#, &none).unwrap_err());
        assert!(e.contains("not a fleet spec"), "{e}");
    }

    #[test]
    fn lines_are_bounded() {
        let mut r = io::Cursor::new(b"abc\ndef".to_vec());
        assert_eq!(read_line(&mut r, 100).unwrap().as_deref(), Some("abc"));
        assert_eq!(read_line(&mut r, 100).unwrap(), None, "a torn last line is the end");
        let mut r = io::Cursor::new(vec![b'x'; 200]);
        assert_eq!(read_line(&mut r, 100).unwrap_err().kind(), io::ErrorKind::InvalidData);
        let mut r = io::Cursor::new(b"\xff\n".to_vec());
        assert_eq!(read_line(&mut r, 100).unwrap_err().kind(), io::ErrorKind::InvalidData);
    }
}
