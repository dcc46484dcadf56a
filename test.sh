#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, and every test. The gateway's socket
# tests run under each driver this machine supports (GOCHAT_TEST_DRIVER).
set -euo pipefail
cd "$(dirname "$0")"

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
GOCHAT_TEST_DRIVER=epoll cargo test --workspace --locked
