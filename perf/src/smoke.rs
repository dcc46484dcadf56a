//! A short macro run of `bench` against a fresh local cluster per gateway driver. It checks
//! ratios and bounds, which hold on a noisy machine, not absolute times: a design regression
//! (a driver falling behind, memory per connection growing) fails it; machine noise does not.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `smoke` in `perf/baseline.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bounds {
    /// io_uring's fan-out deliveries per gateway CPU-second over epoll's, at least.
    pub min_uring_over_epoll_fanout: f64,
    /// Gateway RSS per idle connection, at most, per driver.
    pub max_rss_bytes_per_conn: std::collections::BTreeMap<String, f64>,
    /// p99 latency of private messages at 1,000 a second through the embedded default, at most,
    /// in ms: a stall on the way (Nagle's delay on an internal socket put it near 90 ms) fails.
    pub max_private_p99_ms: f64,
}

/// One check's outcome.
#[derive(Debug, Clone)]
pub struct Check {
    pub what: String,
    pub value: f64,
    pub bound: String,
    pub ok: bool,
}

/// Runs the scenarios with `bench` and `gochat` from `bin_dir`; `drivers` those to compare.
pub fn run(bin_dir: &Path, drivers: &[&str], bounds: &Bounds) -> anyhow::Result<Vec<Check>> {
    let out = std::env::temp_dir().join(format!("gochat-perf-smoke-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out)?;
    let (bench, gochat) = (bin_dir.join("bench"), bin_dir.join("gochat"));
    for b in [&bench, &gochat] {
        if !b.is_file() {
            bail!("no {} (build: cargo build --release --locked -p gochat -p gochat-bench)", b.display());
        }
    }
    // Fan-out twice, 5M deliveries each (seconds of gateway CPU, so /proc's 10 ms ticks and a
    // neighbour's burst average out); each driver's best run counts.
    let fanout: &[&str] =
        &["fanout", "--rooms", "100", "--members", "100", "--users", "200", "--messages", "50000"];
    let private: &[&str] = &["private", "--users", "200", "--messages", "5000", "--rate", "1000"];
    let scenarios: [&[&str]; 4] = [
        fanout,
        fanout,
        &["connections", "-n", "10000", "--rooms", "100", "--users", "200", "--hold", "2"],
        private,
    ];
    for args in scenarios {
        let status = Command::new(&bench)
            .arg("--spawn")
            .arg(&gochat)
            .args(["--drivers", &drivers.join(","), "--quiet", "--out"])
            .arg(&out)
            .args(args)
            .status()
            .with_context(|| format!("running {}", bench.display()))?;
        if !status.success() {
            bail!("bench {} failed ({status})", args[0]);
        }
    }
    let results = read_results(&out)?;
    let _ = std::fs::remove_dir_all(&out);
    // The highest of a driver's runs of a scenario: the best throughput, and the worst loss.
    let figure = |scenario: &str, driver: &str, key: &str| -> anyhow::Result<f64> {
        let values: Vec<f64> = results
            .iter()
            .filter(|r| r["scenario"] == scenario && r["label"] == driver)
            .filter_map(|r| r["figures"][key].as_f64())
            .collect();
        values
            .into_iter()
            .reduce(f64::max)
            .with_context(|| format!("no {key} in the {scenario} results for {driver}"))
    };
    let mut checks = Vec::new();
    for driver in drivers {
        let loss = figure("fanout", driver, "loss")?;
        checks.push(Check {
            what: format!("fan-out loss, {driver}"),
            value: loss,
            bound: "= 0".into(),
            ok: loss == 0.0,
        });
        let rss = figure("connections", driver, "gateway_rss_bytes_per_conn")?;
        let max = *bounds.max_rss_bytes_per_conn.get(*driver).context("no RSS bound for this driver")?;
        checks.push(Check {
            what: format!("gateway RSS per idle connection (B), {driver}"),
            value: rss,
            bound: format!("≤ {max}"),
            ok: rss <= max,
        });
    }
    for driver in drivers {
        let p99 = figure("private", driver, "latency_p99_ms")?;
        let max = bounds.max_private_p99_ms;
        checks.push(Check {
            what: format!("private messages at 1,000/s, p99 (ms), {driver}"),
            value: p99,
            bound: format!("≤ {max}"),
            ok: p99 <= max,
        });
    }
    if drivers.contains(&"epoll") && drivers.contains(&"io_uring") {
        let key = "deliveries_per_gateway_cpu_s";
        let ratio = figure("fanout", "io_uring", key)? / figure("fanout", "epoll", key)?.max(1.0);
        let min = bounds.min_uring_over_epoll_fanout;
        checks.push(Check {
            what: "fan-out deliveries per gateway CPU-s, io_uring / epoll".into(),
            value: (ratio * 1000.0).round() / 1000.0,
            bound: format!("≥ {min}"),
            ok: ratio >= min,
        });
    }
    Ok(checks)
}

fn read_results(dir: &Path) -> anyhow::Result<Vec<Value>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path: PathBuf = entry?.path();
        if path.extension().is_some_and(|e| e == "json") {
            out.push(serde_json::from_str(&std::fs::read_to_string(&path)?)?);
        }
    }
    Ok(out)
}

pub fn table(checks: &[Check]) -> String {
    let mut out = String::from("| macro check | value | bound | |\n|---|---:|---|---|\n");
    for c in checks {
        out.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            c.what,
            c.value,
            c.bound,
            if c.ok { "ok" } else { "FAIL" }
        ));
    }
    out
}
