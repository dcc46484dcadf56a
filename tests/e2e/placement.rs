//! Where the gateway's shard threads run: within the CPUs the process may use, pinned only
//! when the gateway has a shard for each of them. Gateways as processes under `taskset`.

use crate::common;

use std::process::{Command, Stdio};

use common::KillOnDrop;

/// `gochat up` with `shards` shards, on free ports, limited to `cpus` (a `taskset` list).
fn up_on(cpus: &str, shards: usize) -> (KillOnDrop, std::path::PathBuf) {
    let [api, grpc, ws, gw_grpc] = [(); 4].map(|_| common::free_port());
    let dir = std::env::temp_dir().join(common::unique(&format!("gochat-placement-{}-", std::process::id())));
    std::fs::create_dir_all(&dir).unwrap();
    let config = format!(
        "[gateway]\nws_listen = \"127.0.0.1:{ws}\"\ntcp_listen = \"off\"\ngrpc_listen = \"127.0.0.1:{gw_grpc}\"\n\
         shards = {shards}\n[control]\napi_listen = \"127.0.0.1:{api}\"\nsite_listen = \"off\"\n\
         grpc_listen = \"127.0.0.1:{grpc}\"\ndatabase = \"sqlite::memory:\"\n"
    );
    let path = dir.join("gochat.toml");
    std::fs::write(&path, config).unwrap();
    let child = Command::new("taskset")
        .args(["-c", cpus, env!("CARGO_BIN_EXE_gochat"), "--config", path.to_str().unwrap(), "up"])
        .env_remove("GOCHAT_CONFIG")
        .env_remove("GOCHAT_SHARDS")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(KillOnDrop)
        .expect("taskset runs");
    (child, dir)
}

/// The CPUs each shard thread of process `pid` may run on (`Cpus_allowed_list`), by thread
/// name, once it has `shards` of them.
async fn shard_cpus(pid: u32, shards: usize) -> Vec<(String, String)> {
    let mut found = Vec::new();
    common::eventually("the shard threads started", || {
        found.clear();
        for task in std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten() {
            let name = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            if !name.starts_with("gochat-shard") {
                continue;
            }
            let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
            let cpus = status.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:")).unwrap_or("");
            found.push((name.trim().to_string(), cpus.trim().to_string()));
        }
        // A thread pins itself first thing: give it the moment it takes.
        std::thread::sleep(std::time::Duration::from_millis(50));
        std::future::ready(found.len() == shards)
    })
    .await;
    found
}

fn two_cpus() -> bool {
    let ok = std::thread::available_parallelism().map_or(1, |n| n.get()) >= 2;
    assert!(ok || std::env::var_os("CI").is_none(), "CI runs on a machine with two CPUs");
    ok
}

#[tokio::test]
async fn a_gateway_limited_to_one_cpu_keeps_every_shard_on_it() {
    if !two_cpus() {
        return;
    }
    // Before: shard i pinned itself to CPU i of the machine, whatever the process was allowed.
    let (child, dir) = up_on("1", 2);
    for (thread, cpus) in shard_cpus(child.0.id(), 2).await {
        assert_eq!(cpus, "1", "{thread} runs on {cpus}");
    }
    drop(child);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn single_shard_gateways_sharing_cpus_do_not_stack_on_one() {
    if !two_cpus() {
        return;
    }
    // Before: every gateway's shard 0 pinned itself to CPU 0.
    let (first, dir1) = up_on("0,1", 1);
    let (second, dir2) = up_on("0,1", 1);
    for child in [&first, &second] {
        for (thread, cpus) in shard_cpus(child.0.id(), 1).await {
            assert_eq!(cpus, "0-1", "{thread} is pinned to {cpus}: the scheduler cannot spread them");
        }
    }
    drop((first, second));
    let _ = (std::fs::remove_dir_all(dir1), std::fs::remove_dir_all(dir2));
}
