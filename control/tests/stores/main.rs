//! Control's state stores, behind their interfaces, as one test binary: every scenario runs
//! against the in-memory store, a real Redis (`REDIS_URL`, default 127.0.0.1:6379) and a real
//! Redis Cluster (`REDIS_CLUSTER_URL`, which `./test.sh` starts), under keys of its own,
//! deleted afterwards. Without them outside CI those halves are skipped, and said so
//! (gochat-test-services).

mod common;

mod history;
mod state;
