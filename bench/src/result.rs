//! A run's result: the machine, the build, every parameter and every figure, as JSON.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub kernel: String,
    pub memory_gib: f64,
    pub open_files_limit: u64,
}

impl Machine {
    pub fn current() -> Self {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|c| {
                c.lines()
                    .find(|l| l.starts_with("model name"))
                    .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
            })
            .unwrap_or_default();
        let kernel =
            std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string();
        Self {
            cpu,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            kernel,
            memory_gib: crate::server::meminfo_kb("MemTotal:") as f64 / 1024.0 / 1024.0,
            open_files_limit: gochat_runtime::os::open_files_limit().map_or(0, |(_, hard)| hard),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunResult {
    pub scenario: String,
    /// Label of the server setup, e.g. the gateway driver.
    pub label: String,
    pub started_at: String,
    pub machine: Machine,
    pub toolchain: String,
    pub commit: String,
    pub params: BTreeMap<String, Value>,
    pub figures: BTreeMap<String, Value>,
    /// Things the reader must know: the client was the bottleneck, connections failed, …
    pub notes: Vec<String>,
}

impl RunResult {
    pub fn new(scenario: &str, label: &str) -> Self {
        Self {
            scenario: scenario.to_string(),
            label: label.to_string(),
            started_at: std::process::Command::new("date")
                .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .unwrap_or_default(),
            machine: Machine::current(),
            toolchain: command_line("rustc", &["--version"]),
            commit: build_commit(),
            params: BTreeMap::new(),
            figures: BTreeMap::new(),
            notes: Vec::new(),
        }
    }

    pub fn param(&mut self, k: &str, v: impl Serialize) {
        self.params.insert(k.to_string(), serde_json::to_value(v).expect("serializes"));
    }

    pub fn figure(&mut self, k: &str, v: impl Serialize) {
        self.figures.insert(k.to_string(), serde_json::to_value(v).expect("serializes"));
    }

    pub fn print(&self) {
        println!(
            "\n{} [{}] on {} ({} cores), {}",
            self.scenario, self.label, self.machine.cpu, self.machine.cores, self.machine.kernel
        );
        let width = self.figures.keys().map(String::len).max().unwrap_or(0);
        for (k, v) in &self.figures {
            println!("  {k:width$}  {}", crate::report::show(v));
        }
        for n in &self.notes {
            println!("  note: {n}");
        }
    }
}

/// The commit the bench binary was built from, recorded at build time (so a copy of the binary
/// run outside the checkout still knows it).
fn build_commit() -> String {
    gochat_runtime::metrics::process::build().1.to_string()
}

fn command_line(cmd: &str, args: &[&str]) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}
