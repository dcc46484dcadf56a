//! Fleets run on threads of this process, in worker processes (`bench worker`), since one
//! process may hold at most ~20k sockets here, or in worker processes an agent on another
//! machine starts (`bench agent`). Either way the coordinator sees the same handle.
//!
//! Worker process protocol: the first stdin line is the `FleetSpec` as JSON; each later line is
//! a `Cmd`; each answer is one `Snapshot` as a JSON line on stdout. An agent's TCP connection
//! carries the same lines, and a [`Refusal`] line instead of a snapshot when it cannot go on.

use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use tokio::sync::mpsc;

use crate::agent::Refusal;
use crate::engine::{self, Cmd, FleetSpec, Snapshot};

/// How long connecting to an agent may take.
const AGENT_CONNECT: Duration = Duration::from_secs(5);
/// How long an agent may take to answer: a dead machine sends no reset.
const AGENT_REPLY: Duration = Duration::from_secs(120);

pub enum Fleet {
    Thread {
        cmds: mpsc::UnboundedSender<Cmd>,
        replies: std::sync::mpsc::Receiver<Snapshot>,
        thread: Option<std::thread::JoinHandle<()>>,
    },
    Process {
        child: Child,
        stdin: ChildStdin,
        stdout: BufReader<ChildStdout>,
    },
    /// A worker process an agent started (`bench agent`), over TCP.
    Remote {
        /// The agent's address as given, for errors.
        agent: String,
        reader: BufReader<TcpStream>,
        writer: TcpStream,
    },
}

impl Fleet {
    pub fn thread(spec: FleetSpec) -> Self {
        let (cmds, rx) = mpsc::unbounded_channel();
        let (tx, replies) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("bench-fleet".into())
            .spawn(move || {
                engine::run(spec, rx, |s| {
                    let _ = tx.send(s);
                })
            })
            .expect("spawn fleet thread");
        Self::Thread { cmds, replies, thread: Some(thread) }
    }

    /// Starts `exe worker` and hands it `spec`.
    pub fn process(exe: &std::path::Path, spec: &FleetSpec) -> anyhow::Result<Self> {
        let mut child = Command::new(exe)
            .arg("worker")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting worker {}", exe.display()))?;
        let mut stdin = child.stdin.take().expect("piped");
        let stdout = BufReader::new(child.stdout.take().expect("piped"));
        writeln!(stdin, "{}", serde_json::to_string(spec)?)?;
        Ok(Self::Process { child, stdin, stdout })
    }

    /// Connects to the agent at `agent` (`host:port`) and hands it `spec`.
    pub fn remote(agent: &str, spec: &FleetSpec) -> anyhow::Result<Self> {
        let addrs = agent.to_socket_addrs().with_context(|| format!("agent {agent}: no such address"))?;
        let mut failed = None;
        let mut stream = None;
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, AGENT_CONNECT) {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => failed = Some(e),
            }
        }
        let Some(writer) = stream else {
            let why = failed.map_or_else(|| "no address".into(), |e| e.to_string());
            bail!(
                "cannot connect to agent {agent}: {why} (is `bench agent --listen {agent}` running there?)"
            );
        };
        // One small line each way per poll: no waiting for delayed acknowledgements.
        writer.set_nodelay(true)?;
        writer.set_read_timeout(Some(AGENT_REPLY))?;
        writer.set_write_timeout(Some(AGENT_REPLY))?;
        let mut line = serde_json::to_vec(spec)?;
        line.push(b'\n');
        let mut w = &writer;
        w.write_all(&line).with_context(|| format!("agent {agent}: sending the fleet spec"))?;
        let reader = BufReader::new(writer.try_clone()?);
        Ok(Self::Remote { agent: agent.to_string(), reader, writer })
    }

    fn ask(&mut self, cmd: Cmd) -> anyhow::Result<Snapshot> {
        match self {
            Self::Thread { cmds, replies, .. } => {
                cmds.send(cmd).map_err(|_| anyhow!("fleet thread ended"))?;
                replies.recv().map_err(|_| anyhow!("fleet thread ended"))
            }
            Self::Process { stdin, stdout, .. } => {
                writeln!(stdin, "{}", serde_json::to_string(&cmd)?)?;
                let mut line = String::new();
                if stdout.read_line(&mut line)? == 0 {
                    return Err(anyhow!("worker process ended"));
                }
                Ok(serde_json::from_str(&line)?)
            }
            Self::Remote { agent, reader, writer } => {
                let talk = |reader: &mut BufReader<TcpStream>, writer: &mut TcpStream| {
                    let mut line = serde_json::to_string(&cmd)?;
                    line.push('\n');
                    writer.write_all(line.as_bytes())?;
                    line.clear();
                    match reader.read_line(&mut line) {
                        Ok(0) => bail!("it closed the connection"),
                        Ok(_) => {}
                        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                            bail!("no answer within {AGENT_REPLY:?}")
                        }
                        Err(e) => return Err(e.into()),
                    }
                    if let Ok(Refusal { error }) = serde_json::from_str(&line) {
                        bail!("{error}");
                    }
                    Ok(serde_json::from_str::<Snapshot>(&line)?)
                };
                talk(reader, writer).with_context(|| format!("agent {agent}"))
            }
        }
    }

    /// The worker process's pid (none for a thread, or a worker on an agent).
    pub fn pid(&self) -> Option<u32> {
        match self {
            Self::Thread { .. } | Self::Remote { .. } => None,
            Self::Process { child, .. } => Some(child.id()),
        }
    }

    pub fn snapshot(&mut self) -> anyhow::Result<Snapshot> {
        self.ask(Cmd::Snapshot)
    }

    /// Closes the fleet's connections; returns its last snapshot.
    pub fn quit(mut self) -> anyhow::Result<Snapshot> {
        let last = self.ask(Cmd::Quit);
        match &mut self {
            Self::Thread { thread, .. } => {
                if let Some(t) = thread.take() {
                    let _ = t.join();
                }
            }
            Self::Process { child, .. } => {
                let _ = child.wait();
            }
            // The agent ends and reaps the worker when the connection closes (on drop).
            Self::Remote { .. } => {}
        }
        last
    }
}

/// The `bench worker` process: one fleet, driven over stdin/stdout.
pub fn worker_main() -> anyhow::Result<()> {
    let mut first = String::new();
    std::io::stdin().read_line(&mut first)?;
    let spec: FleetSpec = serde_json::from_str(&first).context("no fleet spec on stdin")?;
    let (cmds, rx) = mpsc::unbounded_channel();
    let reader = std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            match serde_json::from_str::<Cmd>(&line) {
                Ok(cmd) => {
                    if cmds.send(cmd).is_err() || cmd == Cmd::Quit {
                        break;
                    }
                }
                Err(e) => eprintln!("worker: bad command {line:?}: {e}"),
            }
        }
        let _ = cmds.send(Cmd::Quit);
    });
    let stdout = std::io::stdout();
    engine::run(spec, rx, |s| {
        let mut out = stdout.lock();
        let _ = writeln!(out, "{}", serde_json::to_string(&s).expect("snapshot serializes"));
        let _ = out.flush();
    });
    drop(reader);
    Ok(())
}
