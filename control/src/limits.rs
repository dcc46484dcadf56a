//! Rate limits of the REST API: token buckets per client IP (login, register) and per user
//! (pushes), in this process's memory.
//!
//! Memory is bounded: each limiter keeps its buckets in two generations. Using a bucket moves it
//! to the current one; the current one becomes the previous (and the previous is dropped) when
//! it holds half the allowed entries, or when a whole refill period has passed. A bucket dropped
//! for age was idle long enough to be full again, so forgetting it changes nothing; one dropped
//! for room (a flood of new addresses or users) starts over full, so a flood can only weaken the
//! limit of the least recently seen clients, never grow memory or refuse clients it never saw.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::HeaderMap;

use crate::ControlConfig;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

struct Generations<K> {
    current: HashMap<K, Bucket>,
    previous: HashMap<K, Bucket>,
    started: Instant,
}

/// How fast buckets fill, and how much they hold.
#[derive(Debug, Clone, Copy)]
struct Rate {
    /// Tokens per second; 0: no limit.
    per_sec: f64,
    burst: f64,
    /// How long an empty bucket takes to fill.
    refill: Duration,
}

impl Rate {
    fn new(per_sec: f64, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        let refill = if per_sec > 0.0 { Duration::from_secs_f64(burst / per_sec) } else { Duration::MAX };
        Self { per_sec, burst, refill }
    }
}

/// One token bucket per key.
pub struct Limiter<K> {
    /// Whether there is a limit, read without the lock.
    on: AtomicBool,
    max_entries: usize,
    buckets: Mutex<(Rate, Generations<K>)>,
    refused: AtomicU64,
}

impl<K: Hash + Eq + Copy> Limiter<K> {
    /// `rate` tokens per second up to `burst`, at most `max_entries` keys remembered; a rate of
    /// 0 limits nothing.
    pub(crate) fn new(rate: f64, burst: u32, max_entries: usize) -> Self {
        let generations =
            Generations { current: HashMap::new(), previous: HashMap::new(), started: Instant::now() };
        Self {
            on: AtomicBool::new(rate > 0.0),
            max_entries: max_entries.max(2),
            buckets: Mutex::new((Rate::new(rate, burst), generations)),
            refused: AtomicU64::new(0),
        }
    }

    pub(crate) fn is_on(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    /// A new rate and burst (a config reload); buckets keep their tokens, up to the new burst.
    pub(crate) fn set(&self, rate: f64, burst: u32) {
        self.buckets.lock().unwrap_or_else(|p| p.into_inner()).0 = Rate::new(rate, burst);
        self.on.store(rate > 0.0, Ordering::Relaxed);
    }

    /// Takes a token from `key`'s bucket; when it has none, how long until it has one.
    pub(crate) fn take(&self, key: K) -> Result<(), Duration> {
        if !self.is_on() {
            return Ok(());
        }
        let now = Instant::now();
        let mut guard = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let (rate, g) = &mut *guard;
        if rate.per_sec <= 0.0 {
            return Ok(());
        }
        if g.current.len() >= self.max_entries / 2 || now.duration_since(g.started) >= rate.refill {
            g.previous = std::mem::take(&mut g.current);
            g.started = now;
        }
        let full = Bucket { tokens: rate.burst, at: now };
        let seen = g.previous.remove(&key).unwrap_or(full);
        let bucket = g.current.entry(key).or_insert(seen);
        let tokens =
            (bucket.tokens + now.duration_since(bucket.at).as_secs_f64() * rate.per_sec).min(rate.burst);
        bucket.at = now;
        if tokens >= 1.0 {
            bucket.tokens = tokens - 1.0;
            return Ok(());
        }
        bucket.tokens = tokens;
        let per_sec = rate.per_sec;
        drop(guard);
        self.refused.fetch_add(1, Ordering::Relaxed);
        Err(Duration::from_secs_f64((1.0 - tokens) / per_sec))
    }

    /// Returns a token taken for a request that turned out not to count (a login that
    /// succeeded, for a limit on failures), up to the burst.
    pub(crate) fn give_back(&self, key: K) {
        if !self.is_on() {
            return;
        }
        let mut guard = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let (rate, g) = &mut *guard;
        if let Some(bucket) = g.current.get_mut(&key).or_else(|| g.previous.get_mut(&key)) {
            bucket.tokens = (bucket.tokens + 1.0).min(rate.burst);
        }
    }

    /// Requests refused since start.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Keys remembered now.
    pub fn entries(&self) -> usize {
        let guard = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        guard.1.current.len() + guard.1.previous.len()
    }
}

/// A client address as a limiter key: IPv4 (also IPv4-mapped IPv6) whole, IPv6 by its /64,
/// the block one subscriber usually holds, so rotating through it gains nothing.
pub(crate) fn client_key(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => u128::from(v4.to_ipv6_mapped()),
            None => u128::from(v6) & !u128::from(u64::MAX),
        },
    }
}

/// The REST API's limits.
pub struct RateLimits {
    /// Login attempts per client address.
    pub login: Limiter<u128>,
    /// Failed logins per account name, from any address ([`RateLimits::account_key`]), but
    /// those of clients the account has logged in from ([`KnownClients`]).
    pub login_account: Limiter<u64>,
    /// Per account, the client addresses it last logged in from: an attack on the account from
    /// elsewhere does not lock its owner out.
    pub(crate) known_clients: KnownClients,
    /// Keys account names for `login_account`, so names of an attacker's choosing cannot be
    /// made to share a bucket with someone else's.
    account_keys: std::collections::hash_map::RandomState,
    /// Registrations per client address.
    pub register: Limiter<u128>,
    /// Pushes (`push`, `pushRoom`, `count`, `getRoomInfo`) per user.
    pub push: Limiter<u64>,
}

impl RateLimits {
    pub(crate) fn new(cfg: &ControlConfig) -> Self {
        let n = cfg.rate_limit_entries;
        Self {
            login: Limiter::new(f64::from(cfg.login_per_minute) / 60.0, cfg.login_burst, n),
            login_account: Limiter::new(
                f64::from(cfg.login_failures_per_account_per_minute) / 60.0,
                cfg.login_failures_per_account_burst,
                n,
            ),
            account_keys: Default::default(),
            known_clients: KnownClients::new(n),
            register: Limiter::new(f64::from(cfg.register_per_minute) / 60.0, cfg.register_burst, n),
            push: Limiter::new(f64::from(cfg.push_per_second), cfg.push_burst, n),
        }
    }

    /// Takes the rates and bursts of `cfg` (a config reload).
    pub(crate) fn reconfigure(&self, cfg: &ControlConfig) {
        self.login.set(f64::from(cfg.login_per_minute) / 60.0, cfg.login_burst);
        self.login_account.set(
            f64::from(cfg.login_failures_per_account_per_minute) / 60.0,
            cfg.login_failures_per_account_burst,
        );
        self.register.set(f64::from(cfg.register_per_minute) / 60.0, cfg.register_burst);
        self.push.set(f64::from(cfg.push_per_second), cfg.push_burst);
    }
}

impl RateLimits {
    /// The `login_account` key of a name typed at login: neither its compatibility form (a
    /// fullwidth `ａｄｍｉｎ` logs in as `admin`) nor its case makes another account to guess.
    pub(crate) fn account_key(&self, user_name: &str) -> u64 {
        use std::hash::BuildHasher;
        self.account_keys.hash_one(crate::names::nfkc(user_name).to_lowercase())
    }
}

/// The client addresses each account last logged in from, a few per account, bounded in
/// accounts as the limiters are (two generations).
pub(crate) struct KnownClients {
    max_entries: usize,
    /// The current generation and the previous one: account → its clients, latest first.
    accounts: Mutex<[HashMap<u64, Vec<u128>>; 2]>,
}

impl KnownClients {
    /// Addresses remembered per account.
    const PER_ACCOUNT: usize = 4;

    pub(crate) fn new(max_entries: usize) -> Self {
        Self { max_entries: max_entries.max(2), accounts: Mutex::default() }
    }

    /// Whether `account` has logged in from `client`.
    pub(crate) fn knows(&self, account: u64, client: u128) -> bool {
        let guard = self.accounts.lock().unwrap_or_else(|p| p.into_inner());
        let [current, previous] = &*guard;
        current.get(&account).or_else(|| previous.get(&account)).is_some_and(|c| c.contains(&client))
    }

    /// `account` logged in from `client`.
    pub(crate) fn remember(&self, account: u64, client: u128) {
        let mut guard = self.accounts.lock().unwrap_or_else(|p| p.into_inner());
        let [current, previous] = &mut *guard;
        if current.len() >= self.max_entries / 2 && !current.contains_key(&account) {
            *previous = std::mem::take(current);
        }
        let seen = previous.remove(&account).unwrap_or_default();
        let clients = current.entry(account).or_insert(seen);
        clients.retain(|c| *c != client);
        clients.insert(0, client);
        clients.truncate(Self::PER_ACCOUNT);
    }
}

/// A network in CIDR notation (`10.0.0.0/8`), or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl std::str::FromStr for IpNet {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not an address or a network like 10.0.0.0/8");
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => {
                (a.parse::<IpAddr>().map_err(|_| bad())?, Some(p.parse::<u8>().map_err(|_| bad())?))
            }
            None => (s.parse::<IpAddr>().map_err(|_| bad())?, None),
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        if prefix > max {
            return Err(bad());
        }
        Ok(Self { addr, prefix })
    }
}

impl IpNet {
    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let masked = |bits: u128, width: u8| {
            let keep = u32::from(self.prefix);
            if keep == 0 {
                0
            } else {
                bits >> (u32::from(width) - keep)
            }
        };
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                masked(u32::from(n).into(), 32) == masked(u32::from(a).into(), 32)
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => masked(n.into(), 128) == masked(a.into(), 128),
            _ => false,
        }
    }
}

/// Which peers are proxies whose `X-Forwarded-For` names the client.
#[derive(Debug, Clone, Default)]
pub(crate) struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// Parses the config's list (validated before).
    pub(crate) fn new(list: &[String]) -> Result<Self, String> {
        list.iter().map(|s| s.parse()).collect::<Result<_, _>>().map(Self)
    }

    pub(crate) fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|n| n.contains(ip))
    }

    /// The client's address: the peer's, unless the peer is a trusted proxy; then the nearest
    /// address in `X-Forwarded-For` that is not one (what clients write further left is not
    /// to be believed).
    pub(crate) fn client(&self, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
        let mut client = peer.ip();
        if !self.trusts(client) {
            return client;
        }
        let hops: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .collect();
        for hop in hops.iter().rev() {
            let Ok(ip) = hop.trim().parse::<IpAddr>() else { break };
            client = ip;
            if !self.trusts(ip) {
                break;
            }
        }
        client
    }
}

/// What a refused client is told: whole seconds, at least one.
pub(crate) fn retry_secs(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let l = Limiter::new(10.0, 3, 100);
        for _ in 0..3 {
            assert!(l.take(1u64).is_ok());
        }
        let wait = l.take(1).unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_millis(100), "{wait:?}");
        assert!(l.take(2).is_ok(), "keys are separate");
        std::thread::sleep(Duration::from_millis(120));
        assert!(l.take(1).is_ok(), "refilled");
        assert_eq!(l.refused(), 1);
    }

    #[test]
    fn a_token_given_back_is_taken_again_up_to_the_burst() {
        let l = Limiter::new(1.0 / 60.0, 2, 100);
        l.take(1u64).unwrap();
        l.give_back(1);
        l.give_back(1);
        l.take(1).unwrap();
        l.take(1).unwrap();
        assert!(l.take(1).is_err(), "never more than the burst");
    }

    #[test]
    fn accounts_remember_their_last_clients_within_a_bound() {
        let known = KnownClients::new(100);
        known.remember(1, 10);
        assert!(known.knows(1, 10) && !known.knows(1, 11) && !known.knows(2, 10));
        for client in 11..=14 {
            known.remember(1, client);
        }
        assert!(!known.knows(1, 10), "the oldest of five is forgotten");
        assert!(known.knows(1, 11) && known.knows(1, 14));
        for account in 100..10_000 {
            known.remember(account, 1);
        }
        let guard = known.accounts.lock().unwrap();
        assert!(guard[0].len() + guard[1].len() <= 100);
    }

    #[test]
    fn a_rate_of_zero_limits_nothing() {
        let l = Limiter::new(0.0, 0, 100);
        assert!((0..10_000).all(|_| l.take(1u64).is_ok()));
        assert_eq!(l.entries(), 0, "and remembers nothing");
    }

    #[test]
    fn a_flood_of_keys_stays_within_its_bound_and_active_clients_keep_their_bucket() {
        let l = Limiter::new(1.0 / 60.0, 2, 1000);
        l.take(u128::MAX).unwrap();
        l.take(u128::MAX).unwrap();
        assert!(l.take(u128::MAX).is_err());
        for k in 0..100_000u128 {
            let _ = l.take(k);
            assert!(l.entries() <= 1000);
            // A client still active through the flood stays limited.
            if k % 200 == 0 {
                assert!(l.take(u128::MAX).is_err(), "the active client's bucket was forgotten at {k}");
            }
        }
    }

    #[test]
    fn idle_buckets_are_forgotten_once_full_again() {
        let l = Limiter::new(100.0, 1, 1000);
        for k in 0..10u64 {
            l.take(k).unwrap();
        }
        std::thread::sleep(Duration::from_millis(30));
        l.take(100).unwrap();
        std::thread::sleep(Duration::from_millis(30));
        l.take(101).unwrap();
        assert!(l.entries() <= 2, "idle full buckets dropped: {}", l.entries());
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_64_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_key(a), client_key(b));
        assert_ne!(client_key(a), client_key(c));
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(client_key(v4), client_key(mapped));
        assert_ne!(client_key(v4), client_key("192.0.2.8".parse().unwrap()));
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let proxies = TrustedProxies::new(&["10.0.0.0/8".into(), "fd00::1".into()]).unwrap();
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", "203.0.113.9, 198.51.100.1".parse().unwrap());
        h.append("x-forwarded-for", "10.1.2.3".parse().unwrap());
        let peer = |s: &str| SocketAddr::new(s.parse().unwrap(), 1);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        // Through two trusted hops, the first untrusted one from the right is the client.
        assert_eq!(proxies.client(peer("10.0.0.1"), &h), ip("198.51.100.1"));
        assert_eq!(proxies.client(peer("::ffff:10.0.0.1"), &h), ip("198.51.100.1"));
        assert_eq!(proxies.client(peer("fd00::1"), &h), ip("198.51.100.1"));
        // An untrusted peer is the client, whatever it claims.
        assert_eq!(proxies.client(peer("192.0.2.1"), &h), ip("192.0.2.1"));
        // A trusted peer without the header, or with garbage in it, is taken as it is.
        assert_eq!(proxies.client(peer("10.0.0.1"), &HeaderMap::new()), ip("10.0.0.1"));
        let mut junk = HeaderMap::new();
        junk.append("x-forwarded-for", "unknown".parse().unwrap());
        assert_eq!(proxies.client(peer("10.0.0.1"), &junk), ip("10.0.0.1"));
        assert!(TrustedProxies::new(&["10.0.0.0/33".into()]).is_err());
        assert!(TrustedProxies::new(&["proxy.local".into()]).is_err());
        assert!("0.0.0.0/0".parse::<IpNet>().unwrap().contains(ip("8.8.8.8")));
    }

    #[test]
    fn retry_is_whole_seconds_rounded_up() {
        assert_eq!(retry_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_secs(Duration::from_secs(6)), 6);
        assert_eq!(retry_secs(Duration::from_millis(6001)), 7);
    }
}
