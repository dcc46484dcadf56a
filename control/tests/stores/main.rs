//! Control's state stores, behind their interfaces, as one test binary: every scenario runs
//! against the in-memory store and against a real Redis (`REDIS_URL`, default 127.0.0.1:6379)
//! under keys of its own, deleted afterwards. Without Redis outside CI the Redis half is skipped,
//! and said so (tests/e2e/services.rs).

mod common;
// The root crate's end-to-end tests' rule for missing services, shared rather than copied.
#[path = "../../../tests/e2e/services.rs"]
// `require!` unused: these tests skip only their Redis half; `pub` as the root crate's tests use it.
#[allow(unused_macros, unused_imports, unreachable_pub)]
mod services;

mod history;
mod state;
