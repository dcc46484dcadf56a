//! The process's log on stderr: text for people (the default), or JSON lines for collectors
//! (`--log-format json`, `GOCHAT_LOG_FORMAT=json`). Levels and targets come from `RUST_LOG`
//! (default `info`) either way.
//!
//! A JSON record is one object on one line:
//! `{"time":"2025-01-02T03:04:05.678901Z","level":"INFO","target":"gochat_control::server",
//! "message":"control listening","fields":{"api_addr":"127.0.0.1:7070","https":false}}`,
//! with `"spans":[{"name":…,"fields":{…}},…]` (outermost first) when the event happened inside
//! spans. Numbers and booleans stay JSON numbers and booleans; anything else is its text.
//! Records forwarded from the `log` crate carry their own target.

use std::fmt;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

/// How log records are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One line of text per record (tracing's default format).
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Installs the process's subscriber, writing to stderr in `format`. With JSON, a panic is
/// logged as an `ERROR` record too, so that every line stays JSON.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let fmt = tracing_subscriber::fmt().with_writer(std::io::stderr).with_env_filter(filter);
    match format {
        LogFormat::Text => fmt.init(),
        LogFormat::Json => {
            fmt.with_ansi(false).fmt_fields(JsonFields::new()).event_format(JsonLines).init();
            std::panic::set_hook(Box::new(|info| {
                let thread = std::thread::current();
                tracing::error!(target: "panic", thread = thread.name().unwrap_or("unnamed"), "{info}");
            }));
        }
    }
}

/// The JSON event format: one object per event, on one line. Span fields need the subscriber's
/// field formatter to be [`JsonFields`].
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut time = String::new();
        SystemTime.format_time(&mut Writer::new(&mut time))?;
        let meta = event.metadata();
        let mut fields = Fields::default();
        event.record(&mut fields);
        let target = fields.log_target.unwrap_or_else(|| meta.target().to_owned());
        // Written by hand for the order: time, level, target, message, fields, spans.
        let mut line = format!(
            "{{\"time\":{},\"level\":{},\"target\":{},\"message\":{},\"fields\":{}",
            json(&time)?,
            json(&meta.level().as_str())?,
            json(&target)?,
            json(&fields.message.unwrap_or_default())?,
            json(&fields.map)?,
        );
        if let Some(scope) = ctx.event_scope() {
            let spans: Vec<Value> = scope
                .from_root()
                .map(|span| {
                    let extensions = span.extensions();
                    let fields = extensions
                        .get::<FormattedFields<N>>()
                        .and_then(|f| serde_json::from_str::<Map<String, Value>>(f).ok())
                        .unwrap_or_default();
                    serde_json::json!({"name": span.name(), "fields": fields})
                })
                .collect();
            line.push_str(",\"spans\":");
            line.push_str(&json(&spans)?);
        }
        line.push('}');
        writeln!(writer, "{line}")
    }
}

/// `value` as JSON text.
fn json<T: serde::Serialize + ?Sized>(value: &T) -> Result<String, fmt::Error> {
    serde_json::to_string(value).map_err(|_| fmt::Error)
}

/// An event's fields: its message apart, the `log` crate's metadata taken out.
#[derive(Default)]
struct Fields {
    message: Option<String>,
    log_target: Option<String>,
    map: Map<String, Value>,
}

impl Fields {
    fn put(&mut self, field: &Field, value: Value) {
        match field.name() {
            "message" => {
                self.message = Some(match value {
                    Value::String(s) => s,
                    other => other.to_string(),
                })
            }
            "log.target" => self.log_target = value.as_str().map(str::to_owned),
            "log.module_path" | "log.file" | "log.line" => {}
            name => {
                self.map.insert(name.to_owned(), value);
            }
        }
    }
}

impl Visit for Fields {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(
            field,
            serde_json::Number::from_f64(value).map_or_else(|| value.to_string().into(), Value::Number),
        );
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, value.into());
    }

    fn record_i128(&mut self, field: &Field, value: i128) {
        self.put(field, i64::try_from(value).map_or_else(|_| value.to_string().into(), Value::from));
    }

    fn record_u128(&mut self, field: &Field, value: u128) {
        self.put(field, u64::try_from(value).map_or_else(|_| value.to_string().into(), Value::from));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, value.into());
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value.into());
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, value.to_string().into());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, format!("{value:?}").into());
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The lines `f` logs.
    fn lines(f: impl FnOnce()) -> String {
        let buffer = Buffer::default();
        let out = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || out.clone())
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .fmt_fields(JsonFields::new())
            .event_format(JsonLines)
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        assert!(text.ends_with('\n'), "{text}");
        text
    }

    /// The records `f` logs, in JSON.
    fn records(f: impl FnOnce()) -> Vec<Value> {
        lines(f).lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect()
    }

    #[test]
    fn keys_come_in_a_fixed_order() {
        let line = lines(|| {
            let span = tracing::info_span!("s");
            let _s = span.enter();
            tracing::info!(z = 1, a = 2, "m");
        });
        let at = |key: &str| line.find(&format!("\"{key}\":")).unwrap_or_else(|| panic!("{key} in {line}"));
        let order: Vec<usize> = ["time", "level", "target", "message", "fields", "spans"].map(at).to_vec();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{line}");
    }

    #[test]
    fn an_event_is_one_object_with_its_fields_typed() {
        let err = std::io::Error::other("disk on fire");
        let r = records(|| {
            tracing::warn!(target: "gochat::test", port = 7070u16, delta = -3i64, ok = true, ratio = 0.5,
                addr = %"127.0.0.1:1", list = ?[1, 2], error = &err as &dyn std::error::Error,
                "two\nlines \"quoted\" {}", 42);
        });
        assert_eq!(r.len(), 1);
        let r = &r[0];
        assert_eq!(r.as_object().unwrap().len(), 5, "no spans outside a span: {r}");
        assert_eq!(r["level"], "WARN");
        assert_eq!(r["target"], "gochat::test");
        assert_eq!(r["message"], "two\nlines \"quoted\" 42");
        let time = r["time"].as_str().unwrap();
        assert!(time.len() > 20 && time.ends_with('Z') && time.as_bytes()[10] == b'T', "{time}");
        assert_eq!(
            r["fields"],
            serde_json::json!({"port": 7070, "delta": -3, "ok": true, "ratio": 0.5, "addr": "127.0.0.1:1",
                "list": "[1, 2]", "error": "disk on fire"})
        );
    }

    #[test]
    fn events_in_spans_carry_the_spans_fields_outermost_first() {
        let r = records(|| {
            let conn = tracing::info_span!("conn", id = 7u64, peer = %"10.0.0.1:5000");
            let _conn = conn.enter();
            let auth = tracing::debug_span!("auth", user = tracing::field::Empty);
            auth.record("user", "alice");
            let _auth = auth.enter();
            tracing::info!("joined");
        });
        assert_eq!(
            r[0]["spans"],
            serde_json::json!([
                {"name": "conn", "fields": {"id": 7, "peer": "10.0.0.1:5000"}},
                {"name": "auth", "fields": {"user": "alice"}},
            ])
        );
        assert_eq!(r[0]["message"], "joined");
        assert_eq!(r[0]["fields"], serde_json::json!({}));
    }

    #[test]
    fn an_event_without_a_message_has_an_empty_one() {
        let r = records(|| tracing::error!(code = 3));
        assert_eq!((r[0]["message"].as_str(), &r[0]["fields"]), (Some(""), &serde_json::json!({"code": 3})));
    }
}
