//! What an idle connection keeps on the heap in a shard, plain WebSocket against `wss://` (TLS
//! 1.3): a thousand of each brought live in memory (handshake, upgrade, auth, a ping each way,
//! the wss one cut mid-record, a room broadcast), their clients dropped, and the shard's live
//! heap counted by an allocator that tallies what is asked of it (requested sizes, without the
//! allocator's own overhead). Run with `--nocapture` to see the figures.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use gochat_gateway::protocol::tls::TlsSession;
use gochat_gateway::shard::{Framed, Shard, ShardLimits};
use gochat_gateway::testkit::tls::{client_input, client_output, live_wss};
use gochat_gateway::testkit::{client_frame, live_ws, written};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// The system allocator, counting live bytes and allocations.
struct Counting;

static BYTES: AtomicI64 = AtomicI64::new(0);
static BLOCKS: AtomicI64 = AtomicI64::new(0);

// SAFETY: every call is passed on to the system allocator unchanged; only counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is the system allocator's.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            BYTES.fetch_add(layout.size() as i64, Ordering::Relaxed);
            BLOCKS.fetch_add(1, Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            BYTES.fetch_add(layout.size() as i64, Ordering::Relaxed);
            BLOCKS.fetch_add(1, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator (so from the system's) with `layout`.
        unsafe { System.dealloc(ptr, layout) };
        BYTES.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        BLOCKS.fetch_sub(1, Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as `dealloc`, and `new_size` is the caller's to vouch for.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            BYTES.fetch_add(new_size as i64 - layout.size() as i64, Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live() -> (i64, i64) {
    (BYTES.load(Ordering::Relaxed), BLOCKS.load(Ordering::Relaxed))
}

fn configs() -> (Arc<ServerConfig>, Arc<ClientConfig>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap().self_signed(&key).unwrap();
    let provider = gochat_runtime::tls::provider();
    let mut server = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], PrivateKeyDer::try_from(key.serialize_der()).unwrap())
        .unwrap();
    server.ticketer = rustls::crypto::ring::Ticketer::new().unwrap();
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from(cert.der().to_vec())).unwrap();
    let mut client = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    // The clients' ticket cache lives on while their connections are dropped: not counted.
    client.resumption = rustls::client::Resumption::disabled();
    (Arc::new(server), Arc::new(client))
}

const N: u64 = 1000;

/// Heap bytes and allocations per idle connection in a shard holding `N` of them.
fn per_connection(tls: bool) -> (f64, f64) {
    let (server, client) = configs();
    let mut shard = Shard::new(0, 1, ShardLimits::default(), 0);
    shard.set_tls(server);
    // One of each first: what a shard allocates once (tables, scratch) is not per connection.
    let warm = |shard: &mut Shard, user: u64| {
        let (key, client) = if tls {
            let (key, mut c) = live_wss(shard, &client, user, 1);
            // A message each way, the client's cut mid-record.
            c.writer().write_all(&client_frame(true, 9, b"ping")).unwrap();
            let mut bytes = client_output(&mut c);
            let (head, tail) = bytes.split_at_mut(3);
            shard.on_data(key, head, 0);
            shard.on_data(key, tail, 0);
            client_input(&mut c, &written(shard, key));
            (key, Some(c))
        } else {
            let (key, _) = live_ws(shard, user, 1);
            shard.on_data(key, &mut client_frame(true, 9, b"ping"), 0);
            written(shard, key);
            (key, None)
        };
        (key, client)
    };
    let first = warm(&mut shard, 0);
    let room = Framed::encode(&[br#"{"op":3,"msg":"hi"}"#]);
    let broadcast = |shard: &mut Shard, keys: &[u32]| {
        shard.on_command(gochat_gateway::shard::Command::Room { room_id: 1, frames: room.clone() });
        for &key in keys {
            written(shard, key);
        }
    };
    broadcast(&mut shard, &[first.0]);
    let mut keys = Vec::with_capacity(N as usize + 1);
    keys.push(first.0);
    let before = live();
    for user in 1..=N {
        let (key, client) = warm(&mut shard, user);
        drop(client);
        keys.push(key);
    }
    broadcast(&mut shard, &keys);
    shard.take_effects().for_each(drop);
    let after = live();
    let n = N as f64;
    ((after.0 - before.0) as f64 / n, (after.1 - before.1) as f64 / n)
}

#[test]
fn an_idle_wss_connection_keeps_its_tls_state_and_nothing_else() {
    let (ws_bytes, ws_blocks) = per_connection(false);
    let (wss_bytes, wss_blocks) = per_connection(true);
    println!("size_of TlsSession: {} B", std::mem::size_of::<TlsSession>());
    println!(
        "size_of rustls UnbufferedServerConnection: {} B (buffered ServerConnection: {} B)",
        std::mem::size_of::<rustls::server::UnbufferedServerConnection>(),
        std::mem::size_of::<rustls::ServerConnection>()
    );
    println!("heap per idle connection, ws: {ws_bytes:.0} B in {ws_blocks:.1} allocations");
    println!("heap per idle connection, wss: {wss_bytes:.0} B in {wss_blocks:.1} allocations");
    println!("wss over ws: {:.0} B in {:.1} allocations", wss_bytes - ws_bytes, wss_blocks - ws_blocks);
    // The session (a TLS 1.3 connection's keys, IVs, sequence numbers and traffic secrets, and
    // two empty buffers) and its entry in the shard's table: no rustls connection, no buffer.
    assert!(std::mem::size_of::<TlsSession>() <= 288);
    assert!(
        wss_bytes - ws_bytes < 300.0,
        "an idle wss connection costs {wss_bytes:.0} B, ws {ws_bytes:.0} B"
    );
}
