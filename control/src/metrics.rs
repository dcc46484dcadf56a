//! Prometheus metrics on control's admin listener: REST requests by route and gochat code and
//! their durations, server API calls, messages enqueued, rate-limit refusals, socket
//! authentications and gateway sweeps.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use gochat_proto::queue::queue_message::Target;
use gochat_proto::rest::Route;
use gochat_runtime::metrics::{Counter, Histogram, Kind, Text, LATENCY_SECONDS};

use crate::api::{CODE_FAIL, CODE_SESSION, CODE_SUCCESS, CODE_UNKNOWN};
use crate::http::Connections;
use crate::limits::RateLimits;
use crate::logic::Logic;

/// Requests to any path but gochat's routes are labelled `other`, so the label stays bounded.
const OTHER: usize = Route::ALL.len();

/// The gochat codes, as labelled; `none` is an answer without an envelope (a CORS preflight).
const CODES: [(i64, &str); 4] =
    [(CODE_SUCCESS, "0"), (CODE_FAIL, "1"), (CODE_UNKNOWN, "-1"), (CODE_SESSION, "40000")];
const NO_CODE: usize = CODES.len();

/// The gochat code a REST response carries, left on it for [`track`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Code(pub(crate) i64);

/// REST requests by route and code, and their durations by route.
#[derive(Debug)]
pub(crate) struct Requests {
    counts: [[Counter; CODES.len() + 1]; OTHER + 1],
    durations: [Histogram; OTHER + 1],
}

impl Default for Requests {
    fn default() -> Self {
        Self {
            counts: Default::default(),
            durations: std::array::from_fn(|_| Histogram::new(LATENCY_SECONDS)),
        }
    }
}

impl Requests {
    fn record(&self, path: &str, code: Option<i64>, took: Duration) {
        let route = Route::parse(path).map_or(OTHER, |r| r as usize);
        let code = code.and_then(|c| CODES.iter().position(|(known, _)| *known == c)).unwrap_or(NO_CODE);
        self.counts[route][code].inc();
        self.durations[route].observe(took);
    }
}

/// A middleware layer over the REST router: counts and times every request.
pub(crate) async fn track(State(requests): State<Arc<Requests>>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let path = req.uri().path().to_string();
    let res = next.run(req).await;
    requests.record(&path, res.extensions().get::<Code>().map(|c| c.0), started.elapsed());
    res
}

/// The target kind of an enqueued message, labelled `kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TargetKind {
    Room,
    User,
    SessionEnd,
    Everyone,
    Disconnect,
    Kick,
}

impl TargetKind {
    /// Every kind, in the order the counters are kept and rendered.
    const ALL: [Self; 6] =
        [Self::Room, Self::User, Self::SessionEnd, Self::Everyone, Self::Disconnect, Self::Kick];

    fn of(target: &Target) -> Self {
        match target {
            Target::RoomId(_) => Self::Room,
            Target::UserId(_) => Self::User,
            Target::SessionEnd(_) => Self::SessionEnd,
            Target::Everyone(_) => Self::Everyone,
            Target::Disconnect(_) => Self::Disconnect,
            Target::Kick(_) => Self::Kick,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Room => "room",
            Self::User => "user",
            Self::SessionEnd => "session_end",
            Self::Everyone => "everyone",
            Self::Disconnect => "disconnect",
            Self::Kick => "kick",
        }
    }
}

/// How a socket's join of a room with history went, labelled `result`: no recovery asked,
/// everything missed recovered, or told to reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JoinResult {
    Fresh,
    Recovered,
    Reload,
}

impl JoinResult {
    /// Every result, in the order the counters are kept and rendered.
    const ALL: [Self; 3] = [Self::Fresh, Self::Recovered, Self::Reload];

    /// The result of a join whose recovery was `recovered` (see [`Recovery`]).
    ///
    /// [`Recovery`]: crate::history::Recovery
    pub(crate) fn of(recovered: Option<bool>) -> Self {
        match recovered {
            None => Self::Fresh,
            Some(true) => Self::Recovered,
            Some(false) => Self::Reload,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Fresh => "fresh",
            Self::Recovered => "recovered",
            Self::Reload => "reload",
        }
    }
}

/// What became of private messages, labelled `result`: kept, refused for a user who has as many
/// kept as they may (`inbox_size`), acknowledged, handed out at connect or after an
/// acknowledgement, refused for the sender's full share of a user's (`inbox_per_sender`), for a
/// full store (or sent unkept to a user online), or for the sender's full share of the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeptResult {
    Kept,
    Full,
    Acknowledged,
    HandedOut,
    SenderShare,
    StoreFull,
    SenderTotal,
}

impl KeptResult {
    /// Every result, in the order the counters are kept and rendered.
    const ALL: [Self; 7] = [
        Self::Kept,
        Self::Full,
        Self::Acknowledged,
        Self::HandedOut,
        Self::SenderShare,
        Self::StoreFull,
        Self::SenderTotal,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::Kept => "kept",
            Self::Full => "full",
            Self::Acknowledged => "acknowledged",
            Self::HandedOut => "handed_out",
            Self::SenderShare => "sender_share",
            Self::StoreFull => "store_full",
            Self::SenderTotal => "sender_total",
        }
    }
}

/// What logic counts as it works.
#[derive(Debug, Default)]
pub struct LogicCounts {
    /// By [`TargetKind`].
    enqueued: [Counter; TargetKind::ALL.len()],
    /// By [`TargetKind`].
    enqueue_failures: [Counter; TargetKind::ALL.len()],
    pub socket_auths_accepted: Counter,
    pub socket_auths_refused: Counter,
    /// Sockets refused because their user had `max_connections_per_user` open.
    pub user_connections_refused: Counter,
    /// Gateways whose lease ran out and whose connections were forgotten.
    pub(crate) gateways_swept: Counter,
    /// Sockets that joined a room with history, by [`JoinResult`].
    joins: [Counter; JoinResult::ALL.len()],
    /// Private messages, by [`KeptResult`].
    kept: [Counter; KeptResult::ALL.len()],
}

impl LogicCounts {
    /// A message for `target` was enqueued, or refused by the queue.
    pub(crate) fn enqueue(&self, target: &Target, ok: bool) {
        let counters = if ok { &self.enqueued } else { &self.enqueue_failures };
        counters[TargetKind::of(target) as usize].inc();
    }

    /// A socket joined a room with history.
    pub(crate) fn join(&self, result: JoinResult) {
        self.joins[result as usize].inc();
    }

    /// `n` private messages came to `result`.
    pub(crate) fn kept(&self, result: KeptResult, n: u64) {
        self.kept[result as usize].add(n);
    }
}

/// How a server API call ended, as labelled `outcome`: `ok`, or an error's kind.
const API_OUTCOMES: [&str; 10] = [
    "ok",
    "off",
    "bad_request",
    "unauthorized",
    "forbidden",
    "not_found",
    "too_large",
    "too_many_requests",
    "unavailable",
    "method_not_allowed",
];
/// The server API's transports, labelled `transport`.
pub(crate) const API_HTTP: usize = 0;
pub(crate) const API_GRPC: usize = 1;
const API_TRANSPORTS: [&str; 2] = ["http", "grpc"];
const API_METHODS: usize = crate::server_api::Method::ALL.len();

/// Server API calls by transport, method and outcome, and their durations by method.
#[derive(Debug)]
pub struct ApiCounts {
    calls: [[[Counter; API_OUTCOMES.len()]; API_METHODS]; API_TRANSPORTS.len()],
    durations: [Histogram; API_METHODS],
}

impl Default for ApiCounts {
    fn default() -> Self {
        Self {
            calls: Default::default(),
            durations: std::array::from_fn(|_| Histogram::new(LATENCY_SECONDS)),
        }
    }
}

impl ApiCounts {
    /// A call of `method` over `transport` ([`API_HTTP`], [`API_GRPC`]) ended with `outcome`
    /// (`ok` or an error's kind).
    pub(crate) fn record(
        &self,
        transport: usize,
        method: crate::server_api::Method,
        outcome: &str,
        took: Duration,
    ) {
        let m = method as usize;
        let o = API_OUTCOMES.iter().position(|known| *known == outcome).unwrap_or(0);
        self.calls[transport][m][o].inc();
        self.durations[m].observe(took);
    }

    /// Calls of `method` over `transport` that ended with `outcome`.
    pub fn calls(&self, transport: usize, method: crate::server_api::Method, outcome: &str) -> u64 {
        API_OUTCOMES
            .iter()
            .position(|known| *known == outcome)
            .map_or(0, |o| self.calls[transport][method as usize][o].get())
    }

    fn render(&self, text: &mut Text, control: (&str, &str)) {
        let calls = "gochat_control_api_calls_total";
        text.family(calls, Kind::Counter, "Server API calls by transport, method and outcome.");
        for (t, transport) in API_TRANSPORTS.iter().enumerate() {
            for method in crate::server_api::Method::ALL {
                for (o, outcome) in API_OUTCOMES.iter().enumerate() {
                    let labels =
                        [control, ("transport", transport), ("method", method.name()), ("outcome", outcome)];
                    text.sample(calls, &labels, self.calls[t][method as usize][o].get());
                }
            }
        }
        let duration = "gochat_control_api_call_duration_seconds";
        text.family(duration, Kind::Histogram, "Server API call durations by method.");
        for method in crate::server_api::Method::ALL {
            text.histogram(duration, &[control, ("method", method.name())], &self.durations[method as usize]);
        }
    }
}

/// What `/metrics` reads.
#[derive(Clone)]
pub(crate) struct Metrics {
    pub(crate) control_id: Arc<str>,
    pub requests: Arc<Requests>,
    pub logic: Arc<Logic>,
    pub limits: Arc<RateLimits>,
    pub connections: Arc<Connections>,
    pub server_api: Arc<crate::server_api::ServerApi>,
}

impl Metrics {
    pub(crate) fn render(&self) -> String {
        let mut text = Text::default();
        let control = ("control", &*self.control_id);
        let routes = || Route::ALL.map(Route::path).into_iter().chain(["other"]).enumerate();
        let requests = "gochat_control_requests_total";
        text.family(requests, Kind::Counter, "REST requests by route and gochat code.");
        for (r, route) in routes() {
            let codes = CODES.iter().map(|(_, label)| *label).chain(["none"]);
            for (c, code) in codes.enumerate() {
                let labels = [control, ("route", route), ("code", code)];
                text.sample(requests, &labels, self.requests.counts[r][c].get());
            }
        }
        let duration = "gochat_control_request_duration_seconds";
        text.family(duration, Kind::Histogram, "REST request durations by route.");
        for (r, route) in routes() {
            text.histogram(duration, &[control, ("route", route)], &self.requests.durations[r]);
        }
        let counts = &self.logic.counts;
        for (name, help, counters) in [
            ("gochat_control_enqueued_total", "Messages enqueued, by target kind.", &counts.enqueued),
            (
                "gochat_control_enqueue_failures_total",
                "Messages the queue refused, by target kind.",
                &counts.enqueue_failures,
            ),
        ] {
            text.family(name, Kind::Counter, help);
            for kind in TargetKind::ALL {
                text.sample(name, &[control, ("kind", kind.label())], counters[kind as usize].get());
            }
        }
        self.server_api.counts.render(&mut text, control);
        let limited = "gochat_control_rate_limited_total";
        text.family(limited, Kind::Counter, "REST requests refused by a rate limit.");
        let limits = &self.limits;
        let refused = [
            ("login", limits.login.refused()),
            ("login_account", limits.login_account.refused()),
            ("register", limits.register.refused()),
            ("push", limits.push.refused()),
            ("api_key", self.server_api.refused()),
        ];
        for (limit, refused) in refused {
            text.sample(limited, &[control, ("limit", limit)], refused);
        }
        let auths = "gochat_control_socket_auths_total";
        text.family(auths, Kind::Counter, "Socket authentications (ConnOpen) by result.");
        for (result, counter) in
            [("accepted", &counts.socket_auths_accepted), ("refused", &counts.socket_auths_refused)]
        {
            text.sample(auths, &[control, ("result", result)], counter.get());
        }
        let joins = "gochat_control_room_joins_total";
        text.family(joins, Kind::Counter, "Socket joins of rooms with history, by result.");
        for result in JoinResult::ALL {
            text.sample(joins, &[control, ("result", result.label())], counts.joins[result as usize].get());
        }
        let kept = "gochat_control_kept_messages_total";
        text.family(
            kept,
            Kind::Counter,
            "Private messages kept for their user, refused (inbox full, sender's share full, store full, sender's share of the store full), acknowledged, handed out.",
        );
        for result in KeptResult::ALL {
            text.sample(kept, &[control, ("result", result.label())], counts.kept[result as usize].get());
        }
        let http = &self.connections;
        let open = "gochat_control_http_connections";
        text.family(open, Kind::Gauge, "HTTP connections open (REST API and page).").sample(
            open,
            &[control],
            http.open(),
        );
        let cap = "gochat_control_http_connections_max";
        text.family(cap, Kind::Gauge, "HTTP connections this control holds at most.").sample(
            cap,
            &[control],
            http.cap(),
        );
        let closed = "gochat_control_http_refused_total";
        text.family(closed, Kind::Counter, "HTTP connections refused (503) or cut off, by reason.");
        for (reason, counter) in [
            ("full", &http.refused_full),
            ("per_address", &http.refused_per_address),
            ("header_timeout", &http.header_timeouts),
            ("body_timeout", &http.body_timeouts),
            ("write_timeout", &http.write_timeouts),
        ] {
            text.sample(closed, &[control, ("reason", reason)], counter.get());
        }
        let (history, kept) = self.logic.kept_bytes();
        for (name, help, bytes) in [
            ("gochat_control_history_bytes", "Bytes of room history kept in this process.", history),
            ("gochat_control_inbox_bytes", "Bytes of private messages kept in this process.", kept),
        ] {
            if let Some(bytes) = bytes {
                text.family(name, Kind::Gauge, help).sample(name, &[control], bytes);
            }
        }
        let capped = "gochat_control_user_connections_refused_total";
        text.family(capped, Kind::Counter, "Sockets refused: their user had max_connections_per_user open.")
            .sample(capped, &[control], counts.user_connections_refused.get());
        let swept = "gochat_control_gateways_swept_total";
        text.family(swept, Kind::Counter, "Gateways whose lease ran out: their connections were forgotten.")
            .sample(swept, &[control], counts.gateways_swept.get());
        self.logic.webhooks().render(&mut text, control);
        text.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_the_published_ones_in_their_order() {
        assert_eq!(
            TargetKind::ALL.map(TargetKind::label),
            ["room", "user", "session_end", "everyone", "disconnect", "kick"]
        );
        assert_eq!(JoinResult::ALL.map(JoinResult::label), ["fresh", "recovered", "reload"]);
        assert_eq!(
            KeptResult::ALL.map(KeptResult::label),
            ["kept", "full", "acknowledged", "handed_out", "sender_share", "store_full", "sender_total"]
        );
        // Counters are indexed by discriminant: `ALL` must list them in that order.
        assert!(KeptResult::ALL.iter().enumerate().all(|(i, r)| *r as usize == i));
        assert!(JoinResult::ALL.iter().enumerate().all(|(i, r)| *r as usize == i));
        assert!(TargetKind::ALL.iter().enumerate().all(|(i, r)| *r as usize == i));
        let methods = crate::server_api::Method::ALL;
        assert!(methods.iter().enumerate().all(|(i, m)| *m as usize == i));
    }

    #[test]
    fn requests_are_counted_by_known_route_and_code() {
        let r = Requests::default();
        r.record("/push/pushRoom", Some(CODE_SUCCESS), Duration::from_millis(3));
        r.record("/push/pushRoom", Some(CODE_SESSION), Duration::from_millis(3));
        r.record("/nope/../user/login", Some(CODE_FAIL), Duration::from_millis(1));
        r.record("/user/login", None, Duration::ZERO);
        let (push_room, login) = (Route::PushRoom as usize, Route::Login as usize);
        assert_eq!(r.counts[push_room][0].get(), 1);
        assert_eq!(r.counts[push_room][3].get(), 1);
        assert_eq!(r.counts[OTHER][1].get(), 1, "unknown paths are one label");
        assert_eq!(r.counts[login][NO_CODE].get(), 1, "a preflight has no code");
    }
}
