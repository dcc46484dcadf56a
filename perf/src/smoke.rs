//! A short macro run of `bench` against a fresh local cluster per gateway driver. It checks
//! ratios and bounds, which hold on a noisy machine, not absolute times: a design regression
//! (a driver falling behind, memory per connection growing) fails it; machine noise does not.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use gochat_bench::targets::Spread;
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
    // Fan-out and private messages in three rounds each (`--runs 3`: epoll, io_uring, epoll, …);
    // a fan-out run is 3.5M deliveries (seconds of gateway CPU, so /proc's 10 ms ticks average
    // out). A driver's throughput and p99 are the medians of its three runs, so one run slowed
    // (or sped up) by a neighbour's burst does not decide a check.
    let fanout: &[&str] =
        &["fanout", "--rooms", "100", "--members", "100", "--users", "200", "--messages", "35000"];
    let connections: &[&str] =
        &["connections", "-n", "10000", "--rooms", "100", "--users", "200", "--hold", "2"];
    let private: &[&str] = &["private", "--users", "200", "--messages", "3000", "--rate", "1000"];
    let runs = RUNS.to_string();
    let rounds = ["--runs", runs.as_str()];
    let scenarios: [(&[&str], &[&str]); 3] = [(&rounds, fanout), (&[], connections), (&rounds, private)];
    for (options, args) in scenarios {
        let status = Command::new(&bench)
            .arg("--spawn")
            .arg(&gochat)
            .args(["--drivers", &drivers.join(","), "--quiet", "--out"])
            .arg(&out)
            .args(options)
            .args(args)
            .status()
            .with_context(|| format!("running {}", bench.display()))?;
        if !status.success() {
            bail!("bench {} failed ({status})", args[0]);
        }
    }
    let results = read_results(&out)?;
    let _ = std::fs::remove_dir_all(&out);
    let figure = |scenario: &str, driver: &str, key: &str, of_runs: OfRuns| {
        figure(&results, scenario, driver, key, of_runs)
    };
    let mut checks = Vec::new();
    for driver in drivers {
        let loss = figure("fanout", driver, "loss", OfRuns::Worst)?;
        checks.push(Check {
            what: format!("fan-out loss, {driver}"),
            value: loss,
            bound: "= 0".into(),
            ok: loss == 0.0,
        });
        let rss = figure("connections", driver, "gateway_rss_bytes_per_conn", OfRuns::Worst)?;
        let max = *bounds.max_rss_bytes_per_conn.get(*driver).context("no RSS bound for this driver")?;
        checks.push(Check {
            what: format!("gateway RSS per idle connection (B), {driver}"),
            value: rss,
            bound: format!("≤ {max}"),
            ok: rss <= max,
        });
    }
    for driver in drivers {
        let n = runs_of(&results, "private", driver, "latency_p99_ms");
        if n != RUNS {
            bail!("{n} private-message runs of {driver} completed, not {RUNS}");
        }
        let p99 = figure("private", driver, "latency_p99_ms", OfRuns::Median)?;
        let max = bounds.max_private_p99_ms;
        checks.push(Check {
            what: format!("private messages at 1,000/s, p99 (ms), {driver} (median of {RUNS} runs)"),
            value: p99,
            bound: format!("≤ {max}"),
            ok: p99 <= max,
        });
    }
    if drivers.contains(&"epoll") && drivers.contains(&"io_uring") {
        let key = "deliveries_per_gateway_cpu_s";
        for driver in ["epoll", "io_uring"] {
            // bench skips a round whose cluster did not start: a median of fewer is not the check.
            let n = runs_of(&results, "fanout", driver, key);
            if n != RUNS {
                bail!("{n} fan-out runs of {driver} completed, not {RUNS}");
            }
        }
        let ratio = figure("fanout", "io_uring", key, OfRuns::Median)?
            / figure("fanout", "epoll", key, OfRuns::Median)?.max(1.0);
        let min = bounds.min_uring_over_epoll_fanout;
        checks.push(Check {
            what: format!("fan-out deliveries per gateway CPU-s, io_uring / epoll (medians of {RUNS} runs)"),
            value: (ratio * 1000.0).round() / 1000.0,
            bound: format!("≥ {min}"),
            ok: ratio >= min,
        });
    }
    Ok(checks)
}

/// Rounds of the fan-out and private-message scenarios per `perf check` (bench's `--runs`).
const RUNS: usize = 3;

/// How a driver's runs of a scenario reduce to the figure a check reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OfRuns {
    /// The median (of an even count, the mean of the middle two): for throughput.
    Median,
    /// The highest: for loss, memory and latency, where higher is worse.
    Worst,
}

/// How many of one driver's runs of a scenario have the figure `key`.
fn runs_of(results: &[Value], scenario: &str, driver: &str, key: &str) -> usize {
    results
        .iter()
        .filter(|r| r["scenario"] == scenario && r["label"] == driver && r["figures"][key].is_number())
        .count()
}

/// A figure of one driver's runs of a scenario, reduced as `of_runs` says.
fn figure(
    results: &[Value],
    scenario: &str,
    driver: &str,
    key: &str,
    of_runs: OfRuns,
) -> anyhow::Result<f64> {
    let values: Vec<f64> = results
        .iter()
        .filter(|r| r["scenario"] == scenario && r["label"] == driver)
        .filter_map(|r| r["figures"][key].as_f64())
        .collect();
    if values.is_empty() {
        bail!("no {key} in the {scenario} results for {driver}");
    }
    let spread = Spread::of(&values).with_context(|| format!("no finite {key} for {driver}"))?;
    Ok(match of_runs {
        OfRuns::Worst => spread.max,
        OfRuns::Median => spread.median,
    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(scenario: &str, driver: &str, key: &str, value: f64) -> Value {
        json!({ "scenario": scenario, "label": driver, "figures": { key: value } })
    }

    #[test]
    fn throughput_is_the_median_of_the_runs_and_the_bounds_read_the_worst() {
        let key = "deliveries_per_gateway_cpu_s";
        let results = vec![
            run("fanout", "epoll", key, 900_000.0),
            run("fanout", "io_uring", key, 700_000.0),
            run("fanout", "epoll", key, 1_200_000.0),
            run("fanout", "io_uring", key, 1_000_000.0),
            run("fanout", "epoll", key, 1_000_000.0),
            run("fanout", "io_uring", key, 950_000.0),
            run("fanout", "epoll", "loss", 0.0),
            run("fanout", "epoll", "loss", 3.0),
            run("fanout", "epoll", "loss", 0.0),
        ];
        let f = |driver, key, of_runs| figure(&results, "fanout", driver, key, of_runs).unwrap();
        assert_eq!(f("epoll", key, OfRuns::Median), 1_000_000.0, "not the best run, 1.2M");
        assert_eq!(f("io_uring", key, OfRuns::Median), 950_000.0);
        assert_eq!(f("epoll", "loss", OfRuns::Worst), 3.0, "a loss in any run counts");
        let two = [run("fanout", "epoll", key, 800_000.0), run("fanout", "epoll", key, 1_000_000.0)];
        assert_eq!(figure(&two, "fanout", "epoll", key, OfRuns::Median).unwrap(), 900_000.0);
        assert!(figure(&results, "fanout", "epoll", "nothing", OfRuns::Median).is_err());
        assert!(figure(&results, "latency", "epoll", key, OfRuns::Worst).is_err());
        assert_eq!(runs_of(&results, "fanout", "io_uring", key), 3);
        assert_eq!(runs_of(&two, "fanout", "epoll", key), 2);
    }
}
