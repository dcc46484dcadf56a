//! The committed baseline (`perf/baseline.json`), the comparison and its table.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Baseline {
    /// Allowed growth, in percent, for benchmarks without a threshold of their own.
    pub threshold_pct: f64,
    /// Allowed drop, in percent, for benchmarks without one of their own; by default a
    /// benchmark's growth threshold. A larger drop fails until the baseline records it, so
    /// later growth is measured from the saving, not from the old count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_drop_pct: Option<f64>,
    pub benchmarks: BTreeMap<String, Entry>,
    /// Bounds of the macro smoke run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smoke: Option<crate::smoke::Bounds>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// Instructions per operation.
    pub instructions: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold_pct: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_drop_pct: Option<f64>,
}

impl Baseline {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }

    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let mut text = serde_json::to_string_pretty(self)?;
        text.push('\n');
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
    }
}

/// One benchmark's comparison.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub name: String,
    pub baseline: Option<u64>,
    pub now: u64,
    /// Allowed growth, in percent.
    pub threshold_pct: f64,
    /// Allowed drop, in percent.
    pub max_drop_pct: f64,
}

/// How a benchmark's count compares with its baseline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Within its limits.
    Ok,
    /// Grew beyond its threshold: a regression.
    Grew,
    /// Dropped beyond its limit: a saving the baseline must record (`perf update`), or later
    /// growth up to the old count would pass unseen.
    Dropped,
    /// No baseline yet: record it on purpose.
    New,
}

impl Row {
    pub fn change_pct(&self) -> Option<f64> {
        self.baseline.map(|b| (self.now as f64 - b as f64) / b.max(1) as f64 * 100.0)
    }

    pub fn verdict(&self) -> Verdict {
        match self.change_pct() {
            None => Verdict::New,
            Some(c) if c > self.threshold_pct => Verdict::Grew,
            Some(c) if -c > self.max_drop_pct => Verdict::Dropped,
            Some(_) => Verdict::Ok,
        }
    }

    /// Grew beyond its threshold, dropped beyond its limit, or has no baseline yet.
    pub fn failed(&self) -> bool {
        self.verdict() != Verdict::Ok
    }
}

pub fn compare(baseline: &Baseline, measured: &[(String, u64)]) -> Vec<Row> {
    measured
        .iter()
        .map(|(name, now)| {
            let entry = baseline.benchmarks.get(name);
            let threshold_pct = entry.and_then(|e| e.threshold_pct).unwrap_or(baseline.threshold_pct);
            Row {
                name: name.clone(),
                baseline: entry.map(|e| e.instructions),
                now: *now,
                threshold_pct,
                max_drop_pct: entry
                    .and_then(|e| e.max_drop_pct)
                    .or(baseline.max_drop_pct)
                    .unwrap_or(threshold_pct),
            }
        })
        .collect()
}

/// A markdown table: benchmark, baseline, now, change, limits, verdict.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| benchmark | baseline (instr/op) | now (instr/op) | change | limits | |\n|---|---:|---:|---:|---:|---|\n",
    );
    for r in rows {
        let (base, change) = match (r.baseline, r.change_pct()) {
            (Some(b), Some(c)) => (b.to_string(), format!("{c:+.2}%")),
            _ => ("—".into(), "new".into()),
        };
        let verdict = match r.verdict() {
            Verdict::Ok => "ok",
            Verdict::Grew => "FAIL",
            Verdict::Dropped => "FAIL: dropped, run `perf update`",
            Verdict::New => "FAIL: new, run `perf update`",
        };
        out.push_str(&format!(
            "| {} | {base} | {} | {change} | +{:.1}% / −{:.1}% | {verdict} |\n",
            r.name, r.now, r.threshold_pct, r.max_drop_pct
        ));
    }
    out
}

/// What to do about the rows that failed, beyond the table; empty when none did.
pub fn advice(rows: &[Row]) -> String {
    let names = |v: Verdict| -> Vec<&str> {
        rows.iter().filter(|r| r.verdict() == v).map(|r| r.name.as_str()).collect()
    };
    let mut out = String::new();
    let grew = names(Verdict::Grew);
    if !grew.is_empty() {
        out.push_str(&format!(
            "Grew beyond its threshold: {}. Find the cost, or if it is on purpose, run `perf update` \
             and commit perf/baseline.json with the change.\n",
            grew.join(", ")
        ));
    }
    let dropped = names(Verdict::Dropped);
    if !dropped.is_empty() {
        out.push_str(&format!(
            "Dropped by more than allowed: {}. Record the saving: run `perf update` and commit \
             perf/baseline.json, so later growth is measured from the new count.\n",
            dropped.join(", ")
        ));
    }
    let new = names(Verdict::New);
    if !new.is_empty() {
        out.push_str(&format!(
            "No baseline: {}. Run `perf update` and commit perf/baseline.json.\n",
            new.join(", ")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn baseline() -> Baseline {
        let mut b = Baseline { threshold_pct: 3.0, ..Baseline::default() };
        b.benchmarks
            .insert("a".into(), Entry { instructions: 1000, threshold_pct: None, max_drop_pct: None });
        b.benchmarks
            .insert("b".into(), Entry { instructions: 1000, threshold_pct: Some(10.0), max_drop_pct: None });
        b.benchmarks
            .insert("c".into(), Entry { instructions: 1000, threshold_pct: None, max_drop_pct: Some(20.0) });
        b
    }

    fn verdicts(b: &Baseline, measured: &[(&str, u64)]) -> Vec<Verdict> {
        let measured: Vec<(String, u64)> = measured.iter().map(|(n, c)| (n.to_string(), *c)).collect();
        compare(b, &measured).iter().map(Row::verdict).collect()
    }

    #[test]
    fn growth_beyond_the_threshold_fails() {
        let b = baseline();
        assert_eq!(verdicts(&b, &[("a", 1031)]), [Verdict::Grew], "3.1% over a 3% limit");
        assert_eq!(verdicts(&b, &[("a", 1030)]), [Verdict::Ok], "3.0% is within it");
        assert_eq!(verdicts(&b, &[("b", 1090)]), [Verdict::Ok], "9% under its own 10% limit");
        assert_eq!(verdicts(&b, &[("b", 1101)]), [Verdict::Grew]);
        assert_eq!(verdicts(&b, &[("new", 5)]), [Verdict::New], "no baseline: update it on purpose");
        let t = table(&compare(&b, &[("a".into(), 1100)]));
        assert!(t.contains("| a | 1000 | 1100 | +10.00% | +3.0% / −3.0% | FAIL |"), "{t}");
    }

    #[test]
    fn a_small_drop_passes_and_a_large_one_fails_until_the_baseline_records_it() {
        let b = baseline();
        assert_eq!(verdicts(&b, &[("a", 970)]), [Verdict::Ok], "3.0% down, within the growth threshold");
        assert_eq!(verdicts(&b, &[("a", 969)]), [Verdict::Dropped], "3.1% down");
        assert_eq!(verdicts(&b, &[("a", 500)]), [Verdict::Dropped]);
        assert_eq!(verdicts(&b, &[("b", 910)]), [Verdict::Ok], "its own threshold bounds its drop too");
        assert_eq!(verdicts(&b, &[("b", 899)]), [Verdict::Dropped]);
        assert_eq!(verdicts(&b, &[("c", 800)]), [Verdict::Ok], "its own drop limit");
        assert_eq!(verdicts(&b, &[("c", 799)]), [Verdict::Dropped]);
        let mut wider = baseline();
        wider.max_drop_pct = Some(9.0);
        assert_eq!(
            verdicts(&wider, &[("a", 910), ("a", 909), ("c", 799)]),
            [Verdict::Ok, Verdict::Dropped, Verdict::Dropped]
        );
        let rows = compare(&b, &[("a".into(), 900)]);
        let t = table(&rows);
        assert!(
            t.contains("| a | 1000 | 900 | -10.00% | +3.0% / −3.0% | FAIL: dropped, run `perf update` |"),
            "{t}"
        );
        let advice = advice(&rows);
        assert!(
            advice.contains("Dropped by more than allowed: a. Record the saving: run `perf update`"),
            "{advice}"
        );
        assert_eq!(super::advice(&compare(&b, &[("a".into(), 1000)])), "", "nothing to do");
    }

    #[test]
    fn the_baseline_keeps_its_drop_limits_through_a_round_trip() {
        let mut b = baseline();
        b.max_drop_pct = Some(5.0);
        let text = serde_json::to_string(&b).unwrap();
        let back: Baseline = serde_json::from_str(&text).unwrap();
        assert_eq!(back.max_drop_pct, Some(5.0));
        assert_eq!(back.benchmarks["c"].max_drop_pct, Some(20.0));
        assert!(!serde_json::to_string(&baseline()).unwrap().contains("\"max_drop_pct\":null"));
        let committed =
            Baseline::load(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/baseline.json"))).unwrap();
        assert!(!committed.benchmarks.is_empty() && committed.smoke.is_some());
    }
}
