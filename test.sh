#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, and every test. The gateway's
# end-to-end tests run once per driver this machine supports (GOCHAT_TEST_DRIVER).
set -euo pipefail
cd "$(dirname "$0")"

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
GOCHAT_TEST_DRIVER=epoll cargo test --workspace --locked
if why=$(cargo run --quiet --locked -- --driver io_uring --check 2>&1); then
    GOCHAT_TEST_DRIVER=io_uring cargo test --locked --test sockets --test drivers
else
    echo "SKIPPED: the gateway tests under io_uring: ${why##*: }"
fi
