//! etcd discovery against a real etcd (the `etcd` binary, or `$ETCD_BIN`) started by each test on
//! free ports with its own data directory.
#![cfg(feature = "etcd")]

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use gochat::discovery::{self, DiscoveryConfig, DiscoveryKind, Members, Registration, Role};
use gochat_control::ids::node_of;

use gochat_test_services::{require, Service};

/// One etcd server; killed and its data directory removed on drop.
struct Etcd {
    child: Option<Child>,
    dir: PathBuf,
    client_port: u16,
    peer_port: u16,
}

impl Etcd {
    async fn start() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "gochat-etcd-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut etcd = Self { child: None, dir, client_port: free_port(), peer_port: free_port() };
        etcd.spawn().await;
        etcd
    }

    /// Starts the process (on the same ports and data directory every time) and waits until it
    /// answers.
    async fn spawn(&mut self) {
        assert!(self.child.is_none(), "etcd already running");
        let client = format!("http://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("etcd.log")).unwrap();
        let bin = std::env::var("ETCD_BIN").unwrap_or_else(|_| "etcd".into());
        let child = Command::new(&bin)
            .arg("--name=test")
            .arg(format!("--data-dir={}", self.dir.join("data").display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=test={peer}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin:?} (install etcd-server or set ETCD_BIN): {e}"));
        self.child = Some(child);
        let endpoint = self.endpoint();
        let ready = try_eventually(Duration::from_secs(20), || async {
            let mut c = etcd_client::Client::connect([endpoint.as_str()], None).await.ok()?;
            tokio::time::timeout(Duration::from_secs(1), c.get("ready?", None)).await.ok()?.ok()
        })
        .await;
        if ready.is_none() {
            let log = std::fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default();
            panic!("etcd did not become ready; its log:\n{log}");
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    fn config(&self, lease_ttl_secs: u64) -> DiscoveryConfig {
        DiscoveryConfig {
            kind: DiscoveryKind::Etcd,
            etcd_endpoints: vec![self.endpoint()],
            prefix: "/gochat-test".into(),
            lease_ttl_secs,
        }
    }

    async fn client(&self) -> etcd_client::Client {
        etcd_client::Client::connect([self.endpoint()], None).await.unwrap()
    }

    /// The value and lease of `key`, if present.
    async fn get(&self, key: &str) -> Option<(String, i64)> {
        let resp = self.client().await.get(key, None).await.unwrap();
        resp.kvs().first().map(|kv| (kv.value_str().unwrap().to_owned(), kv.lease()))
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    gochat_runtime::launch::free_addr().expect("a free loopback port").port()
}

fn init_tracing() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// Polls `f` until it gives `Some`, or `None` after `within`.
async fn try_eventually<T, F, Fut>(within: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn eventually<T, F, Fut>(what: &str, within: Duration, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    try_eventually(within, f).await.unwrap_or_else(|| panic!("not within {within:?}: {what}"))
}

/// Waits until the watched members are exactly `want`.
async fn members_become(members: &Members, want: &[(&str, &str)], within: Duration) {
    let want: BTreeMap<String, String> = want.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let seen = try_eventually(within, || {
        let ok = *members.borrow() == want;
        async move { ok.then_some(()) }
    })
    .await;
    assert!(seen.is_some(), "members not {want:?} within {within:?}; last seen {:?}", *members.borrow());
}

const PROMPTLY: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_see_members_come_and_shut_down_members_go_at_once() {
    init_tracing();
    require!(Service::Etcd);
    let etcd = Etcd::start().await;
    // A 30 s lease: disappearing within PROMPTLY can only be the revoke.
    let cfg = etcd.config(30);
    let gateways = discovery::watch(&cfg, Role::Gateway).await.unwrap();
    let workers = discovery::watch(&cfg, Role::Worker).await.unwrap();
    assert!(gateways.borrow().is_empty());

    let g1 = Registration::start(&cfg, Role::Gateway, "g-1", "http://127.0.0.1:7101").await.unwrap();
    let g2 = Registration::start(&cfg, Role::Gateway, "g-2", "http://127.0.0.1:7102").await.unwrap();
    let w1 = Registration::start(&cfg, Role::Worker, "w-1", "http://127.0.0.1:7201").await.unwrap();
    members_become(
        &gateways,
        &[("g-1", "http://127.0.0.1:7101"), ("g-2", "http://127.0.0.1:7102")],
        PROMPTLY,
    )
    .await;
    members_become(&workers, &[("w-1", "http://127.0.0.1:7201")], PROMPTLY).await;
    assert_eq!(
        etcd.get("/gochat-test/gateway/g-1").await.map(|(v, _)| v).as_deref(),
        Some("http://127.0.0.1:7101")
    );

    // A watcher started later reads the members already there.
    let late = discovery::watch(&cfg, Role::Gateway).await.unwrap();
    assert_eq!(late.borrow().len(), 2);

    g1.shutdown().await;
    assert_eq!(etcd.get("/gochat-test/gateway/g-1").await, None, "revoked on shutdown");
    members_become(&gateways, &[("g-2", "http://127.0.0.1:7102")], PROMPTLY).await;
    members_become(&late, &[("g-2", "http://127.0.0.1:7102")], PROMPTLY).await;
    members_become(&workers, &[("w-1", "http://127.0.0.1:7201")], PROMPTLY).await;

    g2.shutdown().await;
    w1.shutdown().await;
    members_become(&gateways, &[], PROMPTLY).await;
    members_become(&workers, &[], PROMPTLY).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_dies_without_shutdown_disappears_within_the_lease_ttl() {
    init_tracing();
    require!(Service::Etcd);
    let etcd = Etcd::start().await;
    let ttl = 2;
    let cfg = etcd.config(ttl);
    let gateways = discovery::watch(&cfg, Role::Gateway).await.unwrap();
    let g1 = Registration::start(&cfg, Role::Gateway, "g-1", "http://127.0.0.1:7101").await.unwrap();
    members_become(&gateways, &[("g-1", "http://127.0.0.1:7101")], PROMPTLY).await;
    // Outlive a few keep-alive periods first: the lease is being refreshed.
    let alive = Instant::now() + Duration::from_secs(2 * ttl);
    while Instant::now() < alive {
        assert!(etcd.get("/gochat-test/gateway/g-1").await.is_some(), "a kept-alive member stays");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Dropping the handle stops the keep-alive without revoking, as a crash would.
    drop(g1);
    let died = Instant::now();
    assert!(etcd.get("/gochat-test/gateway/g-1").await.is_some(), "not revoked: it must expire");
    // etcd checks for expired leases every 500 ms.
    members_become(&gateways, &[], Duration::from_secs(ttl) + Duration::from_millis(1500)).await;
    assert!(
        died.elapsed() >= Duration::from_millis(500),
        "gone in {:?}: revoked, not expired",
        died.elapsed()
    );
    assert_eq!(etcd.get("/gochat-test/gateway/g-1").await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_and_watches_survive_an_etcd_restart() {
    init_tracing();
    require!(Service::Etcd);
    let mut etcd = Etcd::start().await;
    let ttl = 2;
    let cfg = etcd.config(ttl);
    let gateways = discovery::watch(&cfg, Role::Gateway).await.unwrap();
    let g1 = Registration::start(&cfg, Role::Gateway, "g-1", "http://127.0.0.1:7101").await.unwrap();
    members_become(&gateways, &[("g-1", "http://127.0.0.1:7101")], PROMPTLY).await;
    let (_, first_lease) = etcd.get("/gochat-test/gateway/g-1").await.unwrap();

    etcd.kill();
    // The outage: the watcher keeps the last known members...
    let outage = Instant::now() + Duration::from_secs(1);
    while Instant::now() < outage {
        assert_eq!(gateways.borrow().get("g-1").map(String::as_str), Some("http://127.0.0.1:7101"));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    etcd.restart().await;
    assert_eq!(gateways.borrow().get("g-1").map(String::as_str), Some("http://127.0.0.1:7101"));

    // ...the registration comes back under a new lease...
    let new_lease = eventually("g-1 re-registered under a new lease", Duration::from_secs(15), || async {
        match etcd.get("/gochat-test/gateway/g-1").await {
            Some((addr, lease)) if lease != first_lease && lease != 0 => {
                assert_eq!(addr, "http://127.0.0.1:7101");
                Some(lease)
            }
            _ => None,
        }
    })
    .await;
    // ...and is kept alive there, past a few lease TTLs.
    let kept = Instant::now() + Duration::from_secs(2 * ttl + 1);
    while Instant::now() < kept {
        let (_, lease) = etcd.get("/gochat-test/gateway/g-1").await.expect("g-1 stays registered");
        assert_eq!(lease, new_lease);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The watcher follows changes made after the restart.
    let g2 = Registration::start(&cfg, Role::Gateway, "g-2", "http://127.0.0.1:7102").await.unwrap();
    members_become(
        &gateways,
        &[("g-1", "http://127.0.0.1:7101"), ("g-2", "http://127.0.0.1:7102")],
        Duration::from_secs(15),
    )
    .await;
    g1.shutdown().await;
    members_become(&gateways, &[("g-2", "http://127.0.0.1:7102")], PROMPTLY).await;
    g2.shutdown().await;
    members_become(&gateways, &[], PROMPTLY).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_id_overwrites_and_the_old_holder_cannot_delete_it() {
    init_tracing();
    require!(Service::Etcd);
    let etcd = Etcd::start().await;
    let cfg = etcd.config(30);
    let gateways = discovery::watch(&cfg, Role::Gateway).await.unwrap();
    let old = Registration::start(&cfg, Role::Gateway, "g-1", "http://10.0.0.1:7100").await.unwrap();
    members_become(&gateways, &[("g-1", "http://10.0.0.1:7100")], PROMPTLY).await;
    // A restarted process with the same id, before the old lease expired.
    let new = Registration::start(&cfg, Role::Gateway, "g-1", "http://10.0.0.2:7100").await.unwrap();
    members_become(&gateways, &[("g-1", "http://10.0.0.2:7100")], PROMPTLY).await;
    // Revoking the old lease no longer touches the key.
    old.shutdown().await;
    assert_eq!(
        etcd.get("/gochat-test/gateway/g-1").await.map(|(v, _)| v).as_deref(),
        Some("http://10.0.0.2:7100")
    );
    new.shutdown().await;
    members_become(&gateways, &[], PROMPTLY).await;
}

#[tokio::test]
async fn an_unreachable_etcd_fails_start_clearly() {
    init_tracing();
    let cfg = DiscoveryConfig {
        kind: DiscoveryKind::Etcd,
        etcd_endpoints: vec![format!("http://127.0.0.1:{}", free_port())],
        ..Default::default()
    };
    let started = Instant::now();
    let err = Registration::start(&cfg, Role::Control, "c-1", "http://127.0.0.1:7000").await.unwrap_err();
    let err = format!("{err:#}");
    assert!(err.contains("cannot register control \"c-1\" in etcd at http://127.0.0.1:"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    let err = format!("{:#}", discovery::watch(&cfg, Role::Gateway).await.unwrap_err());
    assert!(err.contains("cannot read gateway members from etcd"), "{err}");
}

/// `n` control ids that prefer the same node id (`node_of`), found by trying names.
fn colliding_control_ids(n: usize) -> Vec<String> {
    let mut by_node: HashMap<u16, Vec<String>> = HashMap::new();
    (0u32..)
        .find_map(|i| {
            let id = format!("control-{i}");
            let same = by_node.entry(node_of(&id)).or_default();
            same.push(id);
            (same.len() == n).then(|| same.clone())
        })
        .expect("a collision among 2^32 names")
}

fn node_id_key(n: u16) -> String {
    format!("/gochat-test/node-ids/{n}")
}

/// The value, lease and create revision of `key`, if present.
async fn get_with_revision(etcd: &Etcd, key: &str) -> Option<(String, i64, i64)> {
    let resp = etcd.client().await.get(key, None).await.unwrap();
    resp.kvs().first().map(|kv| (kv.value_str().unwrap().to_owned(), kv.lease(), kv.create_revision()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controls_that_prefer_one_node_id_claim_different_ones_and_a_freed_one_is_taken_again() {
    init_tracing();
    require!(Service::Etcd);
    let etcd = Etcd::start().await;
    let cfg = etcd.config(30);
    let ids = colliding_control_ids(3);
    let preferred = node_of(&ids[0]);
    let (first, first_node) = Registration::claim_node_id(&cfg, &ids[0]).await.unwrap();
    let (second, second_node) = Registration::claim_node_id(&cfg, &ids[1]).await.unwrap();
    assert_eq!(first_node, preferred);
    assert_eq!(second_node, (preferred + 1) % 1024, "the next free number");
    let (holder, lease) = etcd.get(&node_id_key(first_node)).await.unwrap();
    assert_eq!(holder, ids[0]);
    assert_eq!(etcd.get(&node_id_key(second_node)).await.unwrap().0, ids[1]);

    // The address is announced later, on the lease that holds the node id.
    let controls = discovery::watch(&cfg, Role::Control).await.unwrap();
    assert!(controls.borrow().is_empty(), "nothing announced before announce()");
    first.announce("http://10.0.0.1:6900").await.unwrap();
    members_become(&controls, &[(&ids[0], "http://10.0.0.1:6900")], PROMPTLY).await;
    assert_eq!(
        etcd.get(&format!("/gochat-test/control/{}", ids[0])).await,
        Some(("http://10.0.0.1:6900".into(), lease))
    );

    // Revoking the lease frees the number for the next control that prefers it.
    first.shutdown().await;
    assert_eq!(etcd.get(&node_id_key(first_node)).await, None);
    members_become(&controls, &[], PROMPTLY).await;
    let (third, third_node) = Registration::claim_node_id(&cfg, &ids[2]).await.unwrap();
    assert_eq!(third_node, first_node);
    assert_eq!(etcd.get(&node_id_key(third_node)).await.unwrap().0, ids[2]);
    second.shutdown().await;
    third.shutdown().await;
    assert_eq!(etcd.get(&node_id_key(second_node)).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_lease_gets_the_same_node_id_back() {
    init_tracing();
    require!(Service::Etcd);
    let mut etcd = Etcd::start().await;
    // Long enough that the lease outlives the etcd restart below.
    let cfg = etcd.config(10);
    let (control, node_id) = Registration::claim_node_id(&cfg, "c-1").await.unwrap();
    control.announce("http://10.0.0.1:6900").await.unwrap();
    let key = node_id_key(node_id);
    let member = "/gochat-test/control/c-1";
    let (_, first_lease, _) = get_with_revision(&etcd, &key).await.unwrap();

    // The lease ends behind the control's back (as when it expires): both keys go with it, and
    // re-registering creates them again, with the same number, on a new lease. The next
    // keep-alive (every TTL/3) finds out.
    etcd.client().await.lease_revoke(first_lease).await.unwrap();
    let within = Duration::from_secs(cfg.lease_ttl_secs / 3) + PROMPTLY;
    // The address is put last: once it is back too, the registration is complete.
    let (second_lease, created) = eventually("both keys back on a new lease", within, || async {
        let (holder, lease, created) = get_with_revision(&etcd, &key).await?;
        let addr = etcd.get(member).await?;
        (lease != first_lease && addr == ("http://10.0.0.1:6900".into(), lease)).then(|| {
            assert_eq!(holder, "c-1");
            (lease, created)
        })
    })
    .await;

    // An etcd restart breaks the keep-alive stream while the lease lives on: the number moves from
    // the old lease to the new one (the same key: its create revision stays).
    etcd.restart().await;
    let third_lease = eventually("the node id moved to a new lease", Duration::from_secs(15), || async {
        match get_with_revision(&etcd, &key).await {
            Some((holder, lease, again)) if lease != second_lease => {
                assert_eq!((holder.as_str(), again), ("c-1", created), "moved, not created again");
                Some(lease)
            }
            _ => None,
        }
    })
    .await;
    assert_eq!(etcd.get(member).await, Some(("http://10.0.0.1:6900".into(), third_lease)));
    let lost = tokio::time::timeout(Duration::from_secs(1), control.node_id_lost()).await;
    assert!(lost.is_err(), "the node id is still this control's");
    control.shutdown().await;
    assert_eq!(etcd.get(&key).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_id_taken_while_the_lease_was_lost_is_reported_and_left_alone() {
    init_tracing();
    require!(Service::Etcd);
    let etcd = Etcd::start().await;
    let cfg = etcd.config(6);
    let (control, node_id) = Registration::claim_node_id(&cfg, "c-1").await.unwrap();
    control.announce("http://10.0.0.1:6900").await.unwrap();
    let key = node_id_key(node_id);
    let (_, lease) = etcd.get(&key).await.unwrap();
    // Another control takes the number (the key leaves c-1's lease), then c-1's lease is lost.
    let mut client = etcd.client().await;
    client.put(key.as_str(), "c-2", None).await.unwrap();
    client.lease_revoke(lease).await.unwrap();
    let within = Duration::from_secs(cfg.lease_ttl_secs / 3) + PROMPTLY;
    tokio::time::timeout(within, control.node_id_lost()).await.expect("the loss is reported");
    assert_eq!(etcd.get(&key).await, Some(("c-2".into(), 0)), "not taken back");
    // The control is still found while it stops.
    let controls = discovery::watch(&cfg, Role::Control).await.unwrap();
    members_become(&controls, &[("c-1", "http://10.0.0.1:6900")], PROMPTLY).await;
    control.shutdown().await;
    assert_eq!(etcd.get(&key).await.map(|(holder, _)| holder).as_deref(), Some("c-2"));
}
