//! Fleets run on threads of this process or in worker processes (`bench worker`), since one
//! process may hold at most ~20k sockets here. Either way the coordinator sees the same handle.
//!
//! Worker process protocol: the first stdin line is the `FleetSpec` as JSON; each later line is
//! a `Cmd`; each answer is one `Snapshot` as a JSON line on stdout.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use anyhow::{anyhow, Context};
use tokio::sync::mpsc;

use crate::engine::{self, Cmd, FleetSpec, Snapshot};

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
        }
    }

    /// The worker process's pid (none for a thread).
    pub fn pid(&self) -> Option<u32> {
        match self {
            Self::Thread { .. } => None,
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
