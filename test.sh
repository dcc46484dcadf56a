#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, and every test. The gateway's
# end-to-end tests run once per driver this machine supports (GOCHAT_TEST_DRIVER).
set -euo pipefail
cd "$(dirname "$0")"

# A clean checkout builds once: incremental caches would only take disk.
[ -n "${CI:-}" ] && export CARGO_INCREMENTAL=0

# Redis runs on this machine kind (127.0.0.1:6379); start one where it does not. Tests use keys
# of their own and delete them.
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
    command -v redis-server >/dev/null || { apt-get update -qq && apt-get install -y -qq redis-server; }
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
    for _ in $(seq 50); do redis-cli ping >/dev/null 2>&1 && break; sleep 0.1; done
fi

# A Redis Cluster of three primaries and three replicas on loopback (ports 7100-7105), for the
# stores' and the queue's tests on a cluster (REDIS_CLUSTER_URL); one already there is used.
export REDIS_CLUSTER_URL="${REDIS_CLUSTER_URL:-$(.ci/redis-cluster.sh)}"

# PostgreSQL too (127.0.0.1:5432, postgres trusted from there); the user-store test makes and
# drops a database. A server answering there is left as it is; otherwise .ci/postgres.sh installs
# the server when missing, makes or starts its cluster and trusts postgres (.ci/postgres.test.sh
# tests that logic).
.ci/postgres.test.sh
.ci/postgres.sh

# etcd (discovery tests and the local cluster start their own), protoc (the etcd client's
# build needs it; the default build, without the etcd feature, does not), and ip (the bench's
# agents test makes network namespaces).
missing=()
command -v etcd >/dev/null || missing+=(etcd-server)
command -v protoc >/dev/null || missing+=(protobuf-compiler)
command -v psql >/dev/null || missing+=(postgresql-client)
command -v valgrind >/dev/null || missing+=(valgrind)
command -v chromium >/dev/null || missing+=(chromium)
command -v ip >/dev/null || missing+=(iproute2)
if ((${#missing[@]})); then
    apt-get update -qq && apt-get install -y -qq "${missing[@]}"
fi

# The Autobahn TestSuite's cases, run by kosoku from PyPI, in a virtualenv of the build folder.
if [ ! -x target/kosoku/bin/kosoku ]; then
    python3 -m venv target/kosoku && target/kosoku/bin/pip install --quiet kosoku==0.1.0
fi
export KOSOKU="$PWD/target/kosoku/bin/kosoku"

# The two other builds, the fuzz targets' (instrumented, in fuzz/target) and the release build of
# the perf gate, run from here in the background as idle work (SCHED_IDLE: only on the CPU the
# lints and the tests leave idle, linking or waiting on sockets and timers); the steps that need
# them wait for them below. Their output: target/background-builds.log. They stay in this
# session (a session of their own would be a scheduler autogroup of its own, which shares the
# CPU equally whatever the priority), in a process group of their own (job control, `set -m`)
# that is ended if this script ends first.
set -m
chrt --idle 0 bash -c 'fuzz/run.sh --dev --build-only &&
    cargo build --release --locked -p gochat -p gochat-bench -p gochat-perf' >target/background-builds.log 2>&1 &
builds=$!
set +m
trap 'kill -- -"$builds" 2>/dev/null || true' EXIT

cargo fmt --all -- --check
cargo fmt --manifest-path fuzz/Cargo.toml -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo clippy --workspace --all-targets --locked --features gochat/etcd -- -D warnings

# Every test binary, and target/debug/gochat, built once: the cargo test below takes these same
# flags, as one with other packages, features or targets (even `--test e2e`) would resolve the
# workspace's features otherwise and build its crates again. $e2e: the end-to-end test binary.
test_flags=(--workspace --locked --features gochat/etcd)
e2e=$(cargo test "${test_flags[@]}" --no-run --message-format=json-render-diagnostics |
    python3 -c 'import json, sys
for m in map(json.loads, sys.stdin):
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "e2e" and m["executable"]:
        print(m["executable"])')
[ -x "$e2e" ] || { echo "test.sh: no end-to-end test binary in cargo's output" >&2; exit 1; }

# The gateway drivers to test: epoll, and io_uring where this machine runs it. Under CI a
# machine without io_uring fails here, before the tests run, unless GOCHAT_SKIP_IO_URING says
# why it may test epoll only (.ci/drivers.sh; .ci/drivers.test.sh tests that choice).
.ci/drivers.test.sh
drivers=$(.ci/drivers.sh target/debug/gochat --driver io_uring --check)

# The benchmark peer's recipe, without gochat itself (its refusals, and the network namespace
# `run` makes and removes); bench/peers/README.md has the full run.
bench/peers/gochat.test.sh

# The deploy files, offline: systemd units and sysctl settings, the Kubernetes base and overlays
# against the Kubernetes schemas, the compose file against the compose schema (tests/deploy/).
tests/deploy/validate.sh target/debug/gochat

GOCHAT_TEST_DRIVER=epoll cargo test "${test_flags[@]}"
# Under io_uring, the end-to-end tests' modules that drive the gateway (tests/e2e/), by name; the
# binary itself, as cargo runs it (from the package's folder, here). The local cluster on a Redis
# Cluster runs once: what it adds is the store's, not the gateway driver's.
if [[ "$drivers" == *io_uring* ]]; then
    GOCHAT_TEST_DRIVER=io_uring "$e2e" sockets:: floods:: drivers:: cluster:: autobahn:: tls:: rooms:: \
        recovery:: kept:: binary:: metrics:: abuse:: compat:: server_api:: compression:: \
        --skip cluster::a_cluster_on_a_redis_cluster
fi

# deploy/docker/compose.yml up on a Docker engine (started here when none runs) with the
# Dockerfile's image of the binary built above, and a message delivered through it; the base
# image is made from Debian's packages once per Docker engine: about 80 s then, 30 s a run after.
tests/deploy/compose.sh target/debug/gochat

# The JavaScript client library (clients/js/): unit tests, and end-to-end tests over JSON and
# gochat-pb against a real `gochat up` (node:test only, nothing from npm).
GOCHAT_TEST_DRIVER="${drivers##*,}" node --experimental-websocket --test clients/js/test/*.test.mjs

# The web page in headless Chromium (Debian's), driven by playwright-core from npm, against a
# real `gochat up`; screenshots land in test-artifacts/.
(cd tests/browser && npm ci --no-audit --no-fund --loglevel=error && GOCHAT_TEST_DRIVER="${drivers##*,}" node browser.test.mjs)

# From here on, the background builds.
wait "$builds" || { tail -n 60 target/background-builds.log; echo "test.sh: a background build failed (target/background-builds.log)" >&2; exit 1; }

# Every fuzz target for a short run from its committed seeds, built without optimizations
# (fuzz/run.sh; longer, optimized runs and their figures are in fuzz/README.md).
fuzz/run.sh --dev 10

# The performance gate: instruction counts of the hot paths against perf/baseline.json, then a
# short macro run of both drivers (ratios and bounds). `perf update` rewrites the baseline.
(ulimit -n "$(ulimit -Hn)" && ./target/release/perf check --drivers "$drivers")
