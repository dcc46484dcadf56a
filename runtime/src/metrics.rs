//! Prometheus metrics, written by hand in the text exposition format: counters, lock-free
//! histograms, and the admin listener that serves `GET /metrics` for every role.

use std::fmt::{Display, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

/// Bucket bounds, in seconds, of every latency histogram: 0.5 ms to 30 s.
pub const LATENCY_SECONDS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// A count that only goes up.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }

    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Durations in fixed buckets, without locks. Each observation adds to one bucket (the last
/// one holds what is above every bound) and to the sum; the count is the buckets' total, so a
/// scrape's `_count` always equals its `+Inf` bucket.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// `bounds` in microseconds, compared against observations.
    bounds_us: Box<[u64]>,
    buckets: Box<[AtomicU64]>,
    /// In microseconds: a u64 of them holds half a million years of summed latency.
    sum_us: AtomicU64,
}

impl Histogram {
    /// `bounds` in seconds, increasing.
    pub fn new(bounds: &'static [f64]) -> Self {
        assert!(bounds.windows(2).all(|w| w[0] < w[1]), "bucket bounds must increase");
        Self {
            bounds,
            bounds_us: bounds.iter().map(|b| (b * 1e6).round() as u64).collect(),
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_us: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        // Prometheus buckets are "less than or equal": a value at a bound is in its bucket.
        let bucket = self.bounds_us.partition_point(|&b| b < us);
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }
}

/// A metric family's type.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// A scrape's body, family by family.
#[derive(Debug, Default)]
pub struct Text(String);

impl Text {
    /// A family's `# HELP` and `# TYPE` lines; its samples follow.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) -> &mut Self {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {}", kind.name());
        self
    }

    /// One sample: `name{labels} value`.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) -> &mut Self {
        self.0.push_str(name);
        self.labels(labels, None);
        let _ = writeln!(self.0, " {value}");
        self
    }

    /// A histogram's samples: cumulative `_bucket`s up to `+Inf`, `_sum` in seconds, `_count`.
    pub fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &Histogram) -> &mut Self {
        let mut total = 0;
        let les = h.bounds.iter().map(|b| b.to_string()).chain(["+Inf".to_string()]);
        for (le, bucket) in les.zip(h.buckets.iter()) {
            total += bucket.load(Ordering::Relaxed);
            let _ = write!(self.0, "{name}_bucket");
            self.labels(labels, Some(&le));
            let _ = writeln!(self.0, " {total}");
        }
        let sum = h.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        self.sample(&format!("{name}_sum"), labels, sum);
        self.sample(&format!("{name}_count"), labels, total)
    }

    pub fn finish(self) -> String {
        self.0
    }

    fn labels(&mut self, labels: &[(&str, &str)], le: Option<&str>) {
        if labels.is_empty() && le.is_none() {
            return;
        }
        self.0.push('{');
        let all = labels.iter().copied().chain(le.map(|le| ("le", le)));
        for (i, (key, value)) in all.enumerate() {
            if i > 0 {
                self.0.push(',');
            }
            let _ = write!(self.0, "{key}=\"{}\"", escape_label(value));
        }
        self.0.push('}');
    }
}

/// A label value as the text format writes it: backslash, double quote and newline escaped.
fn escape_label(value: &str) -> std::borrow::Cow<'_, str> {
    if !value.contains(['\\', '"', '\n']) {
        return value.into();
    }
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n").into()
}

/// A role's admin listener: `GET /metrics` answers with what `render` writes, until dropped.
#[derive(Debug)]
pub struct Exporter {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

/// Whether a role is ready for traffic; `Err` says why not, in a few words.
pub type Ready = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// A [`Ready`] from an async closure.
pub fn ready<F, Fut>(check: F) -> Ready
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    Arc::new(move || Box::pin(check()))
}

/// How long `/readyz` waits for a role's check before it answers that it is not ready.
const READY_WITHIN: Duration = Duration::from_secs(2);

impl Exporter {
    /// Binds `addr` and serves, on the current tokio runtime: `GET /metrics` (what `render`
    /// gives, then the process's own metrics and the build), `GET /healthz` (the process
    /// answers) and `GET /readyz` (what `ready` says). `role` names it in logs and labels.
    pub async fn start<F>(
        addr: SocketAddr,
        role: &'static str,
        render: F,
        ready: Ready,
    ) -> std::io::Result<Self>
    where
        F: Fn() -> String + Clone + Send + Sync + 'static,
    {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let json = |status: StatusCode, body: serde_json::Value| {
            (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
        };
        let app = Router::new()
            .route(
                "/metrics",
                get(move || {
                    let mut body = render();
                    body.push_str(&process::render(role));
                    async move { ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response() }
                }),
            )
            .route("/healthz", get(move || async move { json(StatusCode::OK, serde_json::json!({"status": "alive", "role": role})) }))
            .route(
                "/readyz",
                get(move || {
                    let check = ready();
                    async move {
                        let verdict = match tokio::time::timeout(READY_WITHIN, check).await {
                            Ok(verdict) => verdict,
                            Err(_) => Err(format!("no answer within {READY_WITHIN:?}")),
                        };
                        match verdict {
                            Ok(()) => json(StatusCode::OK, serde_json::json!({"status": "ready", "role": role})),
                            Err(reason) => json(
                                StatusCode::SERVICE_UNAVAILABLE,
                                serde_json::json!({"status": "not ready", "role": role, "reason": reason}),
                            ),
                        }
                    }
                }),
            );
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "{role} admin listener stopped");
            }
        });
        tracing::info!(%addr, "{role} admin at /metrics, /healthz, /readyz");
        Ok(Self { addr, task })
    }
}

/// The process's own metrics, as Prometheus' client libraries name them, and the build.
pub mod process {
    use super::{Kind, Text};

    /// This build's version, and its commit when it was built from a git checkout.
    pub fn build() -> (&'static str, &'static str) {
        (env!("CARGO_PKG_VERSION"), env!("GOCHAT_COMMIT"))
    }

    /// A `/proc` file of this process, as text (empty where there is none).
    fn proc_file(name: &str) -> String {
        std::fs::read_to_string(format!("/proc/self/{name}")).unwrap_or_default()
    }

    pub fn render(role: &str) -> String {
        let mut text = Text::default();
        let stat = proc_file("stat");
        // The fields after the command's closing parenthesis: state is the first (field 3).
        let fields: Vec<&str> =
            stat.rsplit_once(')').map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
        let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<f64>().ok());
        // SAFETY: sysconf reads a constant of the system.
        let (ticks, page) = unsafe { (libc::sysconf(libc::_SC_CLK_TCK), libc::sysconf(libc::_SC_PAGESIZE)) };
        let ticks = if ticks > 0 { ticks as f64 } else { 100.0 };
        if let (Some(utime), Some(stime)) = (field(14), field(15)) {
            let name = "process_cpu_seconds_total";
            text.family(name, Kind::Counter, "Total user and system CPU time spent in seconds.").sample(
                name,
                &[],
                (utime + stime) / ticks,
            );
        }
        let boot = proc_stat_btime();
        if let (Some(start), Some(boot)) = (field(22), boot) {
            let name = "process_start_time_seconds";
            text.family(name, Kind::Gauge, "Start time of the process since unix epoch in seconds.").sample(
                name,
                &[],
                boot + start / ticks,
            );
        }
        if let Some(resident) =
            proc_file("statm").split_whitespace().nth(1).and_then(|p| p.parse::<f64>().ok())
        {
            let name = "process_resident_memory_bytes";
            text.family(name, Kind::Gauge, "Resident memory size in bytes.").sample(
                name,
                &[],
                resident * page as f64,
            );
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            let name = "process_open_fds";
            text.family(name, Kind::Gauge, "Number of open file descriptors.").sample(name, &[], fds.count());
        }
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit writes one rlimit into the struct it is given.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
            let name = "process_max_fds";
            text.family(name, Kind::Gauge, "Maximum number of open file descriptors.").sample(
                name,
                &[],
                limit.rlim_cur,
            );
        }
        let (version, commit) = build();
        let name = "gochat_build_info";
        text.family(name, Kind::Gauge, "The build: its version and commit, and the role it runs.").sample(
            name,
            &[("version", version), ("commit", commit), ("role", role)],
            1,
        );
        text.finish()
    }

    /// When the machine booted, in seconds since the unix epoch.
    fn proc_stat_btime() -> Option<f64> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        stat.lines().find_map(|l| l.strip_prefix("btime ")).and_then(|b| b.trim().parse().ok())
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rendered(h: &Histogram) -> String {
        let mut text = Text::default();
        text.family("t_seconds", Kind::Histogram, "Test.").histogram("t_seconds", &[("role", "x")], h);
        text.finish()
    }

    #[test]
    fn a_value_at_a_bound_is_in_that_bucket_and_buckets_are_cumulative() {
        static BOUNDS: &[f64] = &[0.001, 0.01, 0.1];
        let h = Histogram::new(BOUNDS);
        for ms in [0, 1, 2, 10, 100, 101, 5000] {
            h.observe(Duration::from_millis(ms));
        }
        h.observe(Duration::from_micros(999));
        assert_eq!(
            rendered(&h),
            "# HELP t_seconds Test.\n# TYPE t_seconds histogram\n\
             t_seconds_bucket{role=\"x\",le=\"0.001\"} 3\n\
             t_seconds_bucket{role=\"x\",le=\"0.01\"} 5\n\
             t_seconds_bucket{role=\"x\",le=\"0.1\"} 6\n\
             t_seconds_bucket{role=\"x\",le=\"+Inf\"} 8\n\
             t_seconds_sum{role=\"x\"} 5.214999\n\
             t_seconds_count{role=\"x\"} 8\n"
        );
    }

    #[test]
    fn concurrent_observations_are_all_counted() {
        let h = std::sync::Arc::new(Histogram::new(LATENCY_SECONDS));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let h = h.clone();
                std::thread::spawn(move || {
                    for i in 0..10_000u64 {
                        h.observe(Duration::from_micros((i * 37 + t) % 40_000_000));
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        let text = rendered(&h);
        let counts: Vec<u64> = text
            .lines()
            .filter(|l| l.starts_with("t_seconds_bucket"))
            .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
            .collect();
        assert!(counts.windows(2).all(|w| w[0] <= w[1]), "cumulative: {counts:?}");
        assert_eq!(counts.last(), Some(&40_000));
    }

    #[test]
    fn label_values_and_help_are_escaped() {
        assert_eq!(escape_label("gateway-1"), "gateway-1");
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        let mut text = Text::default();
        text.family("n_total", Kind::Counter, "Two\nlines \\ here.")
            .sample("n_total", &[("id", "x\"y"), ("shard", "0")], 3)
            .sample("up", &[], 1);
        assert_eq!(
            text.finish(),
            "# HELP n_total Two\\nlines \\\\ here.\n# TYPE n_total counter\nn_total{id=\"x\\\"y\",shard=\"0\"} 3\nup 1\n"
        );
    }
}
