//! gochat's REST API as the bench uses it: users in bulk, pushes at a rate.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use serde_json::{json, Value};
use tokio::sync::Semaphore;

#[derive(Clone)]
pub struct Api {
    base: String,
    http: reqwest::Client,
}

/// A logged-in bench user.
#[derive(Debug, Clone)]
pub struct User {
    pub id: u64,
    pub token: String,
}

impl Api {
    pub fn new(base: &str) -> Self {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .timeout(Duration::from_secs(30))
            .build()
            .expect("http client");
        Self { base: base.trim_end_matches('/').to_string(), http }
    }

    /// Calls a route; the envelope's `data` when `code` is 0.
    pub async fn call(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        let res: Value = self
            .http
            .post(format!("{}{path}", self.base))
            .body(body.to_string())
            .send()
            .await
            .with_context(|| format!("POST {}{path}", self.base))?
            .json()
            .await?;
        match res["code"].as_i64() {
            Some(0) => Ok(res["data"].clone()),
            _ => Err(anyhow!("{path}: {} ({})", res["message"], res["code"])),
        }
    }

    /// Registers (or logs in, when the name exists) `n` users named `prefix0…`.
    pub async fn users(&self, prefix: &str, n: usize, concurrency: usize) -> anyhow::Result<Vec<User>> {
        let gate = Arc::new(Semaphore::new(concurrency.max(1)));
        let mut tasks = Vec::with_capacity(n);
        for i in 0..n {
            let (api, gate, name) = (self.clone(), gate.clone(), format!("{prefix}{i}"));
            tasks.push(tokio::spawn(async move {
                let _permit = gate.acquire().await;
                // A server may fail a few of many concurrent logins (gochat's session store
                // does): tried again, as a user would.
                let mut tries = 0;
                loop {
                    tries += 1;
                    match api.user(&name).await {
                        Err(e) if tries < 4 => {
                            tokio::time::sleep(Duration::from_millis(100 << tries)).await;
                            if tries == 1 {
                                eprintln!("user {name}: {e:#}; trying again");
                            }
                        }
                        done => return done,
                    }
                }
            }));
        }
        let mut users = Vec::with_capacity(n);
        for t in tasks {
            users.push(t.await??);
        }
        Ok(users)
    }

    /// Registers `name` (or logs it in, when it exists) and finds its id.
    async fn user(&self, name: &str) -> anyhow::Result<User> {
        let creds = json!({"userName": name, "passWord": "bench-password"});
        let token = match self.call("/user/register", creds.clone()).await {
            Ok(t) => t,
            Err(_) => self.call("/user/login", creds).await?,
        };
        let token = token.as_str().context("token is a string")?.to_string();
        let me = self.call("/user/checkAuth", json!({"authToken": token})).await?;
        Ok(User { id: me["userId"].as_u64().context("userId")?, token })
    }

    pub async fn push_room(&self, token: &str, room: u64, msg: &str) -> anyhow::Result<()> {
        self.call("/push/pushRoom", json!({"authToken": token, "roomId": room, "msg": msg})).await.map(drop)
    }

    /// Asks for the room's online count, which the server broadcasts to the room as op 4: a
    /// message into the room that stores nothing (the probe of `AuthSignal::Probe`).
    pub async fn count(&self, token: &str, room: u64) -> anyhow::Result<()> {
        self.call("/push/count", json!({"authToken": token, "roomId": room})).await.map(drop)
    }

    pub async fn push_user(&self, token: &str, to: u64, msg: &str) -> anyhow::Result<()> {
        self.call(
            "/push/push",
            json!({"authToken": token, "toUserId": to.to_string(), "roomId": 1, "msg": msg}),
        )
        .await
        .map(drop)
    }
}

/// What a pump did.
#[derive(Debug, Clone, Copy, Default)]
pub struct Pumped {
    pub sent: u64,
    pub failed: u64,
    pub elapsed: Duration,
}

/// Calls `send(seq)` `count` times, at `rate` per second (as fast as possible when `None`),
/// with at most `in_flight` calls outstanding.
pub async fn pump<F, Fut>(count: u64, rate: Option<f64>, in_flight: usize, send: F) -> Pumped
where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let gate = Arc::new(Semaphore::new(in_flight.max(1)));
    let failed = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for seq in 0..count {
        if let Some(rate) = rate {
            let due = started + Duration::from_secs_f64(seq as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
        }
        let permit = gate.clone().acquire_owned().await.expect("semaphore open");
        let (fut, failed) = (send(seq), failed.clone());
        tasks.push(tokio::spawn(async move {
            if let Err(e) = fut.await {
                if failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < 3 {
                    eprintln!("push failed: {e:#}");
                }
            }
            drop(permit);
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let failed = failed.load(std::sync::atomic::Ordering::Relaxed);
    Pumped { sent: count - failed, failed, elapsed: started.elapsed() }
}
