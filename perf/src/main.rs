//! `perf`: the performance regression gate.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use gochat_perf::baseline::{self, Baseline, Entry};
use gochat_perf::{callgrind, smoke, workloads};

#[derive(Parser)]
#[command(about = "Instruction-count regression gate for gochat-rs's hot paths, plus a macro smoke run")]
struct Cli {
    /// The committed baseline.
    #[arg(long, global = true, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/baseline.json"))]
    baseline: PathBuf,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Count every benchmark, compare with the baseline, run the macro smoke; fail on a
    /// regression, or on a drop in a count the baseline has not recorded yet.
    Check {
        /// Allowed growth in percent (default: the baseline's, 3%; a benchmark's own wins), and so the
        /// allowed drop where the baseline sets none.
        #[arg(long)]
        threshold: Option<f64>,
        /// Skip the macro smoke run (instruction counts only).
        #[arg(long)]
        no_smoke: bool,
        /// Where the release `gochat` and `bench` binaries are, for the smoke run.
        #[arg(long, default_value = "target/release")]
        bin_dir: PathBuf,
        /// Gateway drivers the smoke run compares.
        #[arg(long, value_delimiter = ',', default_value = "epoll,io_uring")]
        drivers: Vec<String>,
    },
    /// Count every benchmark and rewrite the baseline's counts (thresholds and bounds stay).
    Update,
    /// The benchmarks and what each measures.
    List,
    /// Run one workload (what callgrind runs).
    #[command(hide = true)]
    Run { name: String },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("perf: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn count_all() -> anyhow::Result<Vec<(String, u64)>> {
    let exe = std::env::current_exe().context("finding this binary")?;
    workloads::ALL
        .iter()
        .map(|w| {
            eprintln!("counting {} …", w.name);
            Ok((w.name.to_string(), callgrind::instructions(&exe, w.name)?))
        })
        .collect()
}

fn run(cli: Cli) -> anyhow::Result<bool> {
    match cli.command {
        Cmd::Run { name } => {
            workloads::find(&name).with_context(|| format!("no workload {name:?} (perf list)"))?.run();
            Ok(true)
        }
        Cmd::List => {
            for w in workloads::ALL {
                println!("{:<24} {}", w.name, w.what);
            }
            Ok(true)
        }
        Cmd::Update => {
            // A missing baseline starts afresh; one that does not parse is an error, not a reset.
            let mut base = if cli.baseline.exists() {
                Baseline::load(&cli.baseline)?
            } else {
                Baseline { threshold_pct: 3.0, ..Baseline::default() }
            };
            let counts = count_all()?;
            println!("{}", baseline::table(&baseline::compare(&base, &counts)));
            base.benchmarks.retain(|name, _| counts.iter().any(|(n, _)| n == name));
            for (name, instructions) in counts {
                let own = base.benchmarks.get(&name);
                let (threshold_pct, max_drop_pct) =
                    (own.and_then(|e| e.threshold_pct), own.and_then(|e| e.max_drop_pct));
                base.benchmarks.insert(name, Entry { instructions, threshold_pct, max_drop_pct });
            }
            base.save(&cli.baseline)?;
            println!("baseline written: {}", cli.baseline.display());
            Ok(true)
        }
        Cmd::Check { threshold, no_smoke, bin_dir, drivers } => {
            let started = std::time::Instant::now();
            let mut base = Baseline::load(&cli.baseline)?;
            if let Some(t) = threshold {
                base.threshold_pct = t;
            }
            let rows = baseline::compare(&base, &count_all()?);
            println!("{}", baseline::table(&rows));
            print!("{}", baseline::advice(&rows));
            let mut ok = rows.iter().all(|r| !r.failed());
            if !no_smoke {
                let bounds = base.smoke.as_ref().context("the baseline has no smoke bounds")?;
                let drivers: Vec<&str> = drivers.iter().map(String::as_str).collect();
                let checks = smoke::run(&bin_dir, &drivers, bounds)?;
                println!("{}", smoke::table(&checks));
                ok &= checks.iter().all(|c| c.ok);
            }
            println!(
                "perf check {} in {:.0} s",
                if ok { "passed" } else { "FAILED" },
                started.elapsed().as_secs_f64()
            );
            Ok(ok)
        }
    }
}
