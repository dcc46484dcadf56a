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
    pub threshold_pct: f64,
}

impl Row {
    pub fn change_pct(&self) -> Option<f64> {
        self.baseline.map(|b| (self.now as f64 - b as f64) / b.max(1) as f64 * 100.0)
    }

    /// Grew beyond its threshold, or has no baseline yet.
    pub fn failed(&self) -> bool {
        self.change_pct().is_none_or(|c| c > self.threshold_pct)
    }
}

pub fn compare(baseline: &Baseline, measured: &[(String, u64)]) -> Vec<Row> {
    measured
        .iter()
        .map(|(name, now)| {
            let entry = baseline.benchmarks.get(name);
            Row {
                name: name.clone(),
                baseline: entry.map(|e| e.instructions),
                now: *now,
                threshold_pct: entry.and_then(|e| e.threshold_pct).unwrap_or(baseline.threshold_pct),
            }
        })
        .collect()
}

/// A markdown table: benchmark, baseline, now, change, verdict.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| benchmark | baseline (instr/op) | now (instr/op) | change | limit | |\n|---|---:|---:|---:|---:|---|\n",
    );
    for r in rows {
        let (base, change) = match (r.baseline, r.change_pct()) {
            (Some(b), Some(c)) => (b.to_string(), format!("{c:+.2}%")),
            _ => ("—".into(), "new".into()),
        };
        let verdict = if r.failed() { "FAIL" } else { "ok" };
        out.push_str(&format!(
            "| {} | {base} | {} | {change} | +{:.1}% | {verdict} |\n",
            r.name, r.now, r.threshold_pct
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn baseline() -> Baseline {
        let mut b = Baseline { threshold_pct: 3.0, benchmarks: BTreeMap::new(), smoke: None };
        b.benchmarks.insert("a".into(), Entry { instructions: 1000, threshold_pct: None });
        b.benchmarks.insert("b".into(), Entry { instructions: 1000, threshold_pct: Some(10.0) });
        b
    }

    #[test]
    fn growth_beyond_the_threshold_fails_and_a_drop_passes() {
        let rows = compare(&baseline(), &[("a".into(), 1031), ("b".into(), 1090), ("c".into(), 5)]);
        assert!(rows[0].failed(), "3.1% over a 3% limit");
        assert!(!rows[1].failed(), "9% under its own 10% limit");
        assert!(rows[2].failed(), "no baseline: update it on purpose");
        let rows = compare(&baseline(), &[("a".into(), 1030), ("a".into(), 500)]);
        assert!(!rows[0].failed() && !rows[1].failed());
        let t = table(&compare(&baseline(), &[("a".into(), 1100)]));
        assert!(t.contains("| a | 1000 | 1100 | +10.00% | +3.0% | FAIL |"), "{t}");
    }
}
