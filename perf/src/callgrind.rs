//! One workload under valgrind's callgrind, collecting only inside the measured region.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context};

use crate::workloads::ITERATIONS;

/// Instructions per operation of workload `name`, run by `exe` (this binary, `perf run NAME`).
pub fn instructions(exe: &Path, name: &str) -> anyhow::Result<u64> {
    let out_file = std::env::temp_dir().join(format!("gochat-perf-{}-{name}.callgrind", std::process::id()));
    let out = Command::new("valgrind")
        .args([
            "--tool=callgrind",
            "--collect-atstart=no",
            "--toggle-collect=*gate_region*",
            &format!("--callgrind-out-file={}", out_file.display()),
        ])
        .arg(exe)
        .args(["run", name])
        .output()
        .context("running valgrind (Debian: apt-get install valgrind)")?;
    if !out.status.success() {
        bail!("callgrind on {name} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let text =
        std::fs::read_to_string(&out_file).with_context(|| format!("reading {}", out_file.display()))?;
    let _ = std::fs::remove_file(&out_file);
    let total = text
        .lines()
        .find_map(|l| l.strip_prefix("totals:").or_else(|| l.strip_prefix("summary:")))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .context("no instruction total in the callgrind output")?;
    if total == 0 {
        bail!("callgrind counted nothing in {name}'s measured region (was gate_region inlined?)");
    }
    Ok(total / ITERATIONS)
}
