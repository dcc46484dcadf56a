//! Result files → a markdown table and SVG bar charts.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde_json::Value;

use crate::result::RunResult;

/// A figure as a table cell.
pub fn show(v: &Value) -> String {
    match v {
        Value::Number(n) => match n.as_f64() {
            Some(f) if f.fract() != 0.0 => format!("{f:.3}"),
            Some(f) if n.is_f64() => format!("{f:.0}"),
            _ => n.to_string(),
        },
        Value::Null => "–".into(),
        other => other.to_string(),
    }
}

/// The figures worth a chart, per scenario.
const CHARTED: &[&str] = &[
    "gateway_rss_bytes_per_conn",
    "all_in_bytes_per_conn",
    "connect_rate_per_s",
    "idle_cpu_us_per_conn_per_s",
    "deliveries_per_s",
    "deliveries_per_gateway_cpu_s",
    "latency_p99_ms",
    "latency_p999_ms",
];

/// Writes `report.md` and one SVG per charted figure into `out`; returns the markdown.
pub fn write(results: &[RunResult], out: &Path) -> anyhow::Result<String> {
    std::fs::create_dir_all(out)?;
    let mut md = String::new();
    let mut by_scenario: BTreeMap<&str, Vec<&RunResult>> = BTreeMap::new();
    for r in results {
        by_scenario.entry(&r.scenario).or_default().push(r);
    }
    for (scenario, runs) in by_scenario {
        let first = runs[0];
        let _ = writeln!(
            md,
            "### {scenario}\n\n{} ({} cores, {:.0} GiB), kernel {}, {}, commit {}\n",
            first.machine.cpu,
            first.machine.cores,
            first.machine.memory_gib,
            first.machine.kernel,
            first.toolchain,
            first.commit
        );
        let mut keys: Vec<&String> = Vec::new();
        for r in &runs {
            for k in r.params.keys().chain(r.figures.keys()) {
                if !keys.contains(&k) {
                    keys.push(k);
                }
            }
        }
        let _ = write!(md, "| |");
        for r in &runs {
            let _ = write!(md, " {} |", run_name(r));
        }
        let _ = write!(md, "\n|---|");
        for _ in &runs {
            let _ = write!(md, "---:|");
        }
        md.push('\n');
        for k in keys {
            let _ = write!(md, "| {k} |");
            for r in &runs {
                let v = r.figures.get(k).or_else(|| r.params.get(k)).map(show).unwrap_or_default();
                let _ = write!(md, " {v} |");
            }
            md.push('\n');
        }
        for r in &runs {
            for n in &r.notes {
                let _ = writeln!(md, "\n- {}: {n}", run_name(r));
            }
        }
        md.push('\n');
        for figure in CHARTED {
            let bars: Vec<(String, f64)> = runs
                .iter()
                .filter_map(|r| r.figures.get(*figure).and_then(Value::as_f64).map(|v| (run_name(r), v)))
                .collect();
            if bars.is_empty() {
                continue;
            }
            let file = format!("{scenario}-{figure}.svg");
            std::fs::write(out.join(&file), bar_chart(&format!("{scenario}: {figure}"), &bars))?;
            let _ = writeln!(md, "![{scenario} {figure}]({file})");
        }
        md.push('\n');
    }
    std::fs::write(out.join("report.md"), &md)?;
    Ok(md)
}

fn run_name(r: &RunResult) -> String {
    let param = |k: &str| r.params.get(k).map(show);
    let mut name = format!("{} n={}", r.label, param("connections").unwrap_or_default());
    if let Some(g) = param("gateway_processes").filter(|g| g != "1") {
        name.push_str(&format!(" gw={g}"));
    }
    if let Some(d) = param("distribution").filter(|d| d != "\"uniform\"") {
        name.push_str(&format!(" {}", d.trim_matches('"')));
    }
    name
}

/// A horizontal bar chart, one bar per run.
pub fn bar_chart(title: &str, bars: &[(String, f64)]) -> String {
    let max = bars.iter().map(|b| b.1).fold(0.0, f64::max).max(1e-9);
    let (row, left, width) = (28.0, 220.0, 360.0);
    let height = 40.0 + row * bars.len() as f64;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <text x=\"8\" y=\"20\" font-weight=\"bold\">{}</text>\n",
        left + width + 120.0,
        escape(title)
    );
    for (i, (label, v)) in bars.iter().enumerate() {
        let y = 32.0 + row * i as f64;
        let w = width * v / max;
        let _ = writeln!(
            svg,
            "<text x=\"8\" y=\"{}\">{}</text><rect x=\"{left}\" y=\"{y}\" width=\"{w:.1}\" height=\"{}\" fill=\"#3b82f6\"/>\
             <text x=\"{}\" y=\"{}\">{}</text>",
            y + 15.0,
            escape(label),
            row - 8.0,
            left + w + 6.0,
            y + 15.0,
            show(&serde_json::json!(v))
        );
    }
    svg.push_str("</svg>\n");
    svg
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_has_a_table_and_charts() {
        let mut a = RunResult::new("connections", "epoll");
        a.param("connections", 10);
        a.figure("gateway_rss_bytes_per_conn", 900.0);
        let mut b = RunResult::new("connections", "io_uring");
        b.param("connections", 10);
        b.figure("gateway_rss_bytes_per_conn", 450.0);
        let dir = std::env::temp_dir().join(format!("bench-report-{}", std::process::id()));
        let md = write(&[a, b], &dir).unwrap();
        assert!(md.contains("| gateway_rss_bytes_per_conn | 900 | 450 |"), "{md}");
        let svg = std::fs::read_to_string(dir.join("connections-gateway_rss_bytes_per_conn.svg")).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("io_uring n=10"));
        let _ = std::fs::remove_dir_all(dir);
    }
}
