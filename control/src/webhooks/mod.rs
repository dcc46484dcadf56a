//! Webhooks: user, room and message events POSTed to the URLs of `[[control.webhooks]]`, in
//! signed JSON batches, by a background task per URL.
//!
//! Logic raises events where its state operations see them happen (so each happens once in a
//! cluster, on the control that made it) and hands them to [`Webhooks::emit`], which only tries
//! to put them on each interested hook's bounded queue: a full queue drops the event (counted,
//! logged at most every 10 s), and nothing on the path of messages or connections ever waits
//! for a receiver.
//!
//! - [`config`]: the settings of a hook, validated.
//! - [`event`]: the events and their JSON.
//! - `deliver`: batching, signing, sending, retrying.

pub mod config;
mod deliver;
pub mod event;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use gochat_runtime::metrics::{Counter, Histogram, Kind, Text, LATENCY_SECONDS};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

pub(crate) use self::config::validate_all;
pub use self::config::{EventKind, WebhookConfig};
pub use self::deliver::{signature, SIGNATURE_HEADER};
pub use self::event::{Event, What};

/// How often a hook logs that it drops events or gives batches up, at most.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// The configured hooks and their counts.
pub struct Webhooks {
    active: RwLock<Active>,
    /// The union of the active hooks' event kinds, read without the lock.
    wants: AtomicU8,
    /// Counts by URL label, kept over reloads so they only grow.
    counts: Mutex<BTreeMap<String, Arc<HookCounts>>>,
}

#[derive(Default)]
struct Active {
    configs: Vec<WebhookConfig>,
    hooks: Vec<Hook>,
}

struct Hook {
    label: String,
    events: u8,
    queue: mpsc::Sender<Arc<Event>>,
    counts: Arc<HookCounts>,
    /// Its sender; it ends once `queue` is dropped and what was in it is sent.
    task: JoinHandle<()>,
}

/// What one hook counts.
#[derive(Debug)]
pub(crate) struct HookCounts {
    /// Events put on its queue, dropped for a full queue, and taken off it into batches.
    queued: Counter,
    dropped: Counter,
    taken: Counter,
    /// Events delivered, and given up with their batch.
    sent: Counter,
    failed: Counter,
    batches_sent: Counter,
    batches_failed: Counter,
    /// Attempts after a batch's first.
    retries: Counter,
    /// A batch's first attempt → the receiver accepted it.
    batch_seconds: Histogram,
    /// When drops, and batches given up, were last logged.
    drop_log: LogEvery,
    fail_log: LogEvery,
}

impl Default for HookCounts {
    fn default() -> Self {
        Self {
            queued: Counter::default(),
            dropped: Counter::default(),
            taken: Counter::default(),
            sent: Counter::default(),
            failed: Counter::default(),
            batches_sent: Counter::default(),
            batches_failed: Counter::default(),
            retries: Counter::default(),
            batch_seconds: Histogram::new(LATENCY_SECONDS),
            drop_log: LogEvery::default(),
            fail_log: LogEvery::default(),
        }
    }
}

/// A hook's counts at one moment (see the `gochat_control_webhook_*` metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HookStats {
    pub queued: u64,
    pub dropped: u64,
    pub sent: u64,
    pub failed: u64,
    pub batches_sent: u64,
    pub batches_failed: u64,
    pub retries: u64,
}

/// Says yes at most once per [`LOG_EVERY`], for logs that could otherwise flood.
#[derive(Debug)]
struct LogEvery {
    since: Instant,
    /// When it last said yes, in ms after `since` (plus one: 0 is never).
    last: AtomicU64,
}

impl Default for LogEvery {
    fn default() -> Self {
        Self { since: Instant::now(), last: AtomicU64::new(0) }
    }
}

impl LogEvery {
    fn due(&self) -> bool {
        let now = self.since.elapsed().as_millis() as u64 + 1;
        let last = self.last.load(Ordering::Relaxed);
        (last == 0 || now.saturating_sub(last) >= LOG_EVERY.as_millis() as u64)
            && self.last.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
    }
}

impl Webhooks {
    /// Starts a sender for each of `configs` (validated already); needs a tokio runtime when
    /// there is any.
    pub fn new(configs: &[WebhookConfig]) -> Self {
        let hooks = Self { active: RwLock::default(), wants: AtomicU8::new(0), counts: Mutex::default() };
        if !configs.is_empty() {
            hooks.reconfigure(configs);
        }
        hooks
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Active> {
        self.active.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Active> {
        self.active.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a new list of hooks, when it differs: the new ones start empty; the old ones
    /// still send what they had queued, then end. A hook that cannot start (its `ca_file` went
    /// away since validation) is left out, logged.
    pub fn reconfigure(&self, configs: &[WebhookConfig]) {
        if self.read().configs == configs {
            return;
        }
        // Built before taking the lock (reading CA files): events keep flowing meanwhile.
        let mut hooks = Vec::new();
        for cfg in configs {
            let counts =
                self.counts.lock().unwrap_or_else(|p| p.into_inner()).entry(cfg.label()).or_default().clone();
            let sender = match deliver::Sender::new(cfg, counts.clone()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "webhook not started");
                    continue;
                }
            };
            let (queue, rx) = mpsc::channel(cfg.queue_size);
            let events = cfg.events.iter().fold(0, |bits, k| bits | k.bit());
            hooks.push(Hook {
                label: cfg.label(),
                events,
                queue,
                counts,
                task: tokio::spawn(sender.run(rx)),
            });
        }
        let wants = hooks.iter().fold(0, |bits, h| bits | h.events);
        tracing::info!(hooks = hooks.len(), "webhooks configured");
        // The old hooks are dropped with their queues: their senders finish what they hold.
        *self.write() = Active { configs: configs.to_vec(), hooks };
        self.wants.store(wants, Ordering::Relaxed);
    }

    /// Whether any hook takes events of `kind`: when none does, nothing is built.
    pub fn wants(&self, kind: EventKind) -> bool {
        self.wants.load(Ordering::Relaxed) & kind.bit() != 0
    }

    /// Puts `event` on the queue of every hook that takes its kind, without waiting: a full
    /// queue drops it.
    pub fn emit(&self, event: Event) {
        let bit = event.what.kind().bit();
        let event = Arc::new(event);
        for hook in self.read().hooks.iter().filter(|h| h.events & bit != 0) {
            if hook.queue.try_send(event.clone()).is_ok() {
                hook.counts.queued.inc();
                continue;
            }
            hook.counts.dropped.inc();
            if hook.counts.drop_log.due() {
                let dropped = hook.counts.dropped.get();
                tracing::warn!(url = %hook.label, dropped, "webhook queue full: events dropped");
            }
        }
    }

    /// The counts of the hook whose URL is `label` (as [`WebhookConfig::label`] writes it).
    pub fn stats(&self, label: &str) -> Option<HookStats> {
        let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let c = counts.get(label)?;
        Some(HookStats {
            queued: c.queued.get(),
            dropped: c.dropped.get(),
            sent: c.sent.get(),
            failed: c.failed.get(),
            batches_sent: c.batches_sent.get(),
            batches_failed: c.batches_failed.get(),
            retries: c.retries.get(),
        })
    }

    /// Stops taking events; gives the senders until `grace` is over to send what they hold,
    /// then stops them.
    pub async fn shutdown(&self, grace: Duration) {
        let hooks = std::mem::take(&mut *self.write()).hooks;
        self.wants.store(0, Ordering::Relaxed);
        let deadline = tokio::time::Instant::now() + grace;
        for Hook { mut task, .. } in hooks {
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                tracing::warn!("a webhook still had events to send at shutdown; they are dropped");
                task.abort();
            }
        }
    }

    /// The `gochat_control_webhook_*` families, one series per hook URL (and result).
    pub(crate) fn render(&self, text: &mut Text, control: (&str, &str)) {
        let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if counts.is_empty() {
            return;
        }
        let events = "gochat_control_webhook_events_total";
        text.family(
            events,
            Kind::Counter,
            "Webhook events by result: queued, dropped (queue full), sent, failed (batch given up).",
        );
        for (url, c) in counts.iter() {
            for (result, counter) in
                [("queued", &c.queued), ("dropped", &c.dropped), ("sent", &c.sent), ("failed", &c.failed)]
            {
                text.sample(events, &[control, ("url", url), ("result", result)], counter.get());
            }
        }
        let batches = "gochat_control_webhook_batches_total";
        text.family(batches, Kind::Counter, "Webhook batches by result: sent, failed (given up).");
        for (url, c) in counts.iter() {
            for (result, counter) in [("sent", &c.batches_sent), ("failed", &c.batches_failed)] {
                text.sample(batches, &[control, ("url", url), ("result", result)], counter.get());
            }
        }
        let retries = "gochat_control_webhook_retries_total";
        text.family(retries, Kind::Counter, "Webhook attempts after a batch's first.");
        for (url, c) in counts.iter() {
            text.sample(retries, &[control, ("url", url)], c.retries.get());
        }
        let queue = "gochat_control_webhook_queue_events";
        text.family(queue, Kind::Gauge, "Webhook events waiting in the queue.");
        for (url, c) in counts.iter() {
            text.sample(queue, &[control, ("url", url)], c.queued.get().saturating_sub(c.taken.get()));
        }
        let seconds = "gochat_control_webhook_batch_seconds";
        text.family(
            seconds,
            Kind::Histogram,
            "Webhook batches: first attempt to accepted, retries included.",
        );
        for (url, c) in counts.iter() {
            text.histogram(seconds, &[control, ("url", url)], &c.batch_seconds);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_every_says_yes_once_per_period() {
        let log = LogEvery::default();
        assert!(log.due(), "the first time");
        assert!(!log.due(), "not again at once");
        // One that last said yes a period and a second ago.
        let since = Instant::now().checked_sub(LOG_EVERY + Duration::from_secs(1)).unwrap();
        let log = LogEvery { since, last: AtomicU64::new(1) };
        assert!(log.due(), "after the period");
        assert!(!log.due(), "and then not again at once");
    }

    #[tokio::test]
    async fn no_hook_wants_nothing_and_emitting_to_none_is_a_no_op() {
        let hooks = Webhooks::new(&[]);
        for kind in [EventKind::User, EventKind::Room, EventKind::Message] {
            assert!(!hooks.wants(kind));
        }
        hooks.emit(Event { id: 1, time: 1, what: What::UserOffline { user_id: 1 } });
        let mut text = Text::default();
        hooks.render(&mut text, ("control", "c"));
        assert_eq!(text.finish(), "", "no series without hooks");
    }

    #[tokio::test]
    async fn wants_follows_the_configured_kinds_and_reloads() {
        let mut cfg = WebhookConfig::new("http://127.0.0.1:9/", "0123456789abcdef");
        cfg.events = vec![EventKind::Message];
        let hooks = Webhooks::new(std::slice::from_ref(&cfg));
        assert!(hooks.wants(EventKind::Message) && !hooks.wants(EventKind::User));
        cfg.events = vec![EventKind::User, EventKind::Room];
        hooks.reconfigure(std::slice::from_ref(&cfg));
        assert!(
            !hooks.wants(EventKind::Message) && hooks.wants(EventKind::User) && hooks.wants(EventKind::Room)
        );
        hooks.reconfigure(&[]);
        assert!(!hooks.wants(EventKind::User));
        hooks.shutdown(Duration::from_secs(1)).await;
    }
}
