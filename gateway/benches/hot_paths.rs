//! Wall-time micro-benches of the gateway's hot paths, for humans (`cargo bench -p
//! gochat-gateway`); the regression gate counts instructions instead (`perf`).

use std::hint::black_box;
use std::io::IoSlice;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use gochat_gateway::shard::{Command, Framed, Inbox, Shard, ShardLimits};
use gochat_gateway::testkit::live_ws;

/// A gochat room message (op 3) of typical size.
const BODY: &[u8] = br#"{"code":0,"msg":"hello everyone, how is it going today?","fromUserId":1234,"fromUserName":"alice","toUserId":0,"toUserName":"","roomId":7,"op":3,"createTime":"2026-11-27 01:02:03","msgId":"123456789012345678"}"#;

fn frame_encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("frame_encode");
    for n in [1usize, 16] {
        let bodies = vec![BODY; n];
        g.throughput(Throughput::Bytes((BODY.len() * n) as u64));
        g.bench_function(format!("{n}_bodies"), |b| b.iter(|| Framed::encode(black_box(&bodies))));
    }
    g.finish();
}

/// A shard with `members` live WebSockets in room 7.
fn shard_with_room(members: u64) -> (Shard, Vec<u32>) {
    let limits = ShardLimits { max_outbound_bytes: 1 << 20, ..ShardLimits::default() };
    let mut shard = Shard::new(0, 1, limits, 0);
    let keys = (0..members).map(|user| live_ws(&mut shard, user, 7).0).collect();
    (shard, keys)
}

/// What a driver does after a room command: take the dirty connections, gather each one's
/// buffers, and mark them written (the socket send itself is the kernel's, not measured here).
fn flush(shard: &mut Shard, dirty: &mut Vec<u32>) -> usize {
    shard.take_dirty(dirty);
    let mut bytes = 0;
    for &key in dirty.iter() {
        let Some(out) = shard.out_mut(key) else { continue };
        let mut iov = [IoSlice::new(&[]); 8];
        let n = out.io_slices(&mut iov);
        let len: usize = iov[..n].iter().map(|s| s.len()).sum();
        shard.wrote(key, len);
        bytes += len;
    }
    dirty.clear();
    bytes
}

fn room_fanout(c: &mut Criterion) {
    let mut g = c.benchmark_group("room_fanout");
    let (mut shard, _) = shard_with_room(1000);
    let frames = Framed::encode(&[BODY]);
    let mut dirty = Vec::with_capacity(1000);
    g.throughput(Throughput::Elements(1000));
    g.bench_function("1k_members", |b| {
        b.iter(|| {
            shard.on_command(Command::Room { room_id: 7, frames: frames.clone() });
            black_box(flush(&mut shard, &mut dirty))
        })
    });
    g.finish();
}

fn inbox_handoff(c: &mut Criterion) {
    let mut g = c.benchmark_group("inbox_handoff");
    let inbox = Inbox::new(4096).expect("eventfd");
    let frames = Framed::encode(&[BODY]);
    g.throughput(Throughput::Elements(64));
    g.bench_function("64_commands", |b| {
        b.iter_batched(
            || frames.clone(),
            |frames| {
                for room_id in 0..64 {
                    let _ = inbox.push(Command::Room { room_id, frames: frames.clone() });
                }
                let mut n = 0;
                inbox.drain(64, |cmd| {
                    n += 1;
                    black_box(cmd);
                });
                n
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, frame_encode, room_fanout, inbox_handoff);
criterion_main!(benches);
