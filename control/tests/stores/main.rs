//! Control's state stores, behind their interfaces, as one test binary: every scenario runs
//! against the in-memory store and against a real Redis (`REDIS_URL`, default 127.0.0.1:6379)
//! under keys of its own, deleted afterwards. Without Redis outside CI the Redis half is skipped,
//! and said so (gochat-test-services).

mod common;

mod history;
mod state;
