#!/usr/bin/env bash
# deploy/docker/compose.yml brought up for real, and a message delivered through it: the image
# of deploy/docker/Dockerfile (with the gochat binary the suite built, GOCHAT_BINARY=prebuilt;
# its compiling stage is run too, from the repository, with a stand-in for cargo), PostgreSQL,
# Redis, etcd, 2 controls, 2 gateways, 2 workers and Prometheus. Then: users register on a
# control, connect to both gateways, and get a private message from each control and a room
# message; the gateways start while one control is still down (they wait for any one); every
# role answers its health check and Prometheus scrapes all six.
#
# No image registry is reachable here, so every image is made locally: a Debian root file
# system from Debian's packages (mmdebstrap, about 60 s once per Docker engine: the imported
# image is kept, named by its package list) is the base of gochat's image and of stand-ins for
# the public images the compose file names (stand-ins.Dockerfile; Debian's PostgreSQL 15,
# Redis 7, etcd 3.4, Prometheus 2.42). Grafana is not in Debian: its service is left out (its
# files are checked by validate.sh). Starts a Docker engine when none runs (Debian's docker.io),
# and stops it after.
#
# usage: tests/deploy/compose.sh [GOCHAT_BINARY]   (default target/debug/gochat, a build with
#        --features etcd)
set -euo pipefail
cd "$(dirname "$0")/../.."
start=$SECONDS
gochat=${1:-target/debug/gochat}
work=target/deploy
mkdir -p "$work"
tools=$(tests/deploy/tools.sh)
export DOCKER_BUILDKIT=1
# Debian's docker.io client builds with its own BuildKit; a newer client without buildx cannot.
docker=/usr/bin/docker

# The gateways ask for 1048576 open files; a machine that may not raise its limit gives its own.
hard=$(ulimit -Hn)
NOFILE=$([ "$hard" = unlimited ] || ((hard > 1048576)) && echo 1048576 || echo "$hard")
export NOFILE

dockerd_pid=
project="gochat-compose-test"
compose=("$tools/docker-compose" -p "$project" --project-directory deploy/docker
    -f deploy/docker/compose.yml -f tests/deploy/compose.test.yml)
finish() {
    local status=$?
    if ((status)) && [ -x "$tools/docker-compose" ] && [ -S /var/run/docker.sock ]; then
        echo "--- compose.sh failed; services and their last log lines:" >&2
        "${compose[@]}" ps -a >&2 || true
        "${compose[@]}" logs --no-color --tail 30 >&2 || true
    fi
    "${compose[@]}" down -v -t 5 >/dev/null 2>&1 || true
    if [ -n "$dockerd_pid" ]; then
        kill "$dockerd_pid" 2>/dev/null || true
        wait "$dockerd_pid" 2>/dev/null || true
    fi
    exit $status
}
trap finish EXIT

# A Docker engine: this machine's, or one started here (and stopped at exit).
if ! $docker info >/dev/null 2>&1; then
    if ! command -v dockerd >/dev/null || [ ! -x $docker ]; then
        apt-get update -qq && apt-get install -y -qq docker.io >/dev/null
    fi
    dockerd >"$work/dockerd.log" 2>&1 &
    dockerd_pid=$!
    for _ in $(seq 120); do $docker info >/dev/null 2>&1 && break; sleep 0.5; done
    $docker info >/dev/null 2>&1 || { tail -20 "$work/dockerd.log" >&2; exit 1; }
fi

# The base image: Debian bookworm with the services' packages, from the machine's apt mirror.
packages=ca-certificates,wget,redis-server,postgresql-15,etcd-server,etcd-client,prometheus
# (Prometheus's web UI scripts left out: 216 MB the API does not need.)
key=$(echo "$packages no-javascript" | sha256sum | cut -c1-12)
rootfs="$work/rootfs-bookworm-$key.tar"
base="gochat-test/debian:$key"
if ! $docker image inspect "$base" >/dev/null 2>&1; then
    if [ ! -f "$rootfs" ]; then
        command -v mmdebstrap >/dev/null || { apt-get update -qq && apt-get install -y -qq mmdebstrap >/dev/null; }
        mirror=$(sed -n 's/^URIs: *\(\S*debian\)$/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)
        mmdebstrap --quiet --variant=minbase --include="$packages" \
            --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
            --dpkgopt='path-exclude=/usr/share/locale/*' \
            --dpkgopt='path-exclude=/usr/share/javascript/*' --dpkgopt='path-exclude=/usr/share/nodejs/*' \
            bookworm "${rootfs%.tar}.part.tar" "${mirror:-http://deb.debian.org/debian}"
        mv "${rootfs%.tar}.part.tar" "$rootfs"
    fi
    $docker import "$rootfs" "$base" >/dev/null
    # The engine's image store is the cache from here on (for later checkouts too); base images
    # of other package lists are not needed any more.
    rm -f "$rootfs"
    # (grep finds nothing on an engine with no other: not a failure under pipefail.)
    $docker images --format '{{.Repository}}:{{.Tag}}' | { grep '^gochat-test/' || true; } \
        | { grep -v ":$key\$" || true; } | xargs -r $docker rmi -f >/dev/null
fi
echo "compose.sh: base image ready at $((SECONDS - start)) s"

# gochat's image, from the production Dockerfile with the suite's binary, and the stand-ins.
printf '[discovery]\nkind = "etcd"\n' > "$work/etcd.toml"
if ! why=$(RUST_BACKTRACE=0 "$gochat" --config "$work/etcd.toml" --check 2>&1); then
    echo "compose.sh: $gochat cannot run the compose configs: $(head -1 <<<"$why")" >&2
    exit 1
fi
rm -rf "$work/image" && mkdir "$work/image"
strip -o "$work/image/gochat" "$gochat"
image="gochat-rs:compose-test"
$docker build -q -f deploy/docker/Dockerfile --build-arg GOCHAT_BINARY=prebuilt \
    --build-arg BASE_IMAGE="$base" -t "$image" "$work/image" >/dev/null
for service in postgres redis etcd prometheus rust; do
    $docker build -q -f tests/deploy/stand-ins.Dockerfile --target "$service" \
        --build-arg BASE_IMAGE="$base" -t "gochat-test/$service:$key" tests/deploy >/dev/null
done
# The Dockerfile's own build stage too, from the repository, with a stand-in for cargo.
$docker build -q -f deploy/docker/Dockerfile --build-arg RUST_IMAGE="gochat-test/rust:$key" \
    --build-arg BASE_IMAGE="$base" -t gochat-rs:compose-test-compiled . >/dev/null
said=$($docker run --rm gochat-rs:compose-test-compiled)
[ "$said" = "cargo stand-in: build --release --locked --features etcd -p gochat" ] \
    || { echo "compose.sh: the Dockerfile's build stage: $said" >&2; exit 1; }
export GOCHAT_IMAGE="$image" POSTGRES_IMAGE="gochat-test/postgres:$key" \
    REDIS_IMAGE="gochat-test/redis:$key" ETCD_IMAGE="gochat-test/etcd:$key" \
    PROMETHEUS_IMAGE="gochat-test/prometheus:$key"
echo "compose.sh: images built at $((SECONDS - start)) s"

"${compose[@]}" down -v -t 1 >/dev/null 2>&1 || true
# Everything but control-2 (and Grafana): the gateways start on one control.
services=(postgres redis etcd control-1 control-ready gateway-1 gateway-2 worker-1 worker-2 prometheus)
"${compose[@]}" up -d --no-build --quiet-pull --wait --wait-timeout 180 "${services[@]}" 2>/dev/null \
    || { echo "compose.sh: the cluster did not come up healthy without control-2" >&2; exit 1; }
at() { "${compose[@]}" port "$1" "$2"; }
python3 tests/deploy/deliver.py --api "http://$(at control-1 7070)" \
    --ws "ws://$(at gateway-1 7000)/ws" --ws "ws://$(at gateway-2 7000)/ws"
echo "compose.sh: up on one control, delivered at $((SECONDS - start)) s"

"${compose[@]}" up -d --no-build --wait --wait-timeout 120 control-2 2>/dev/null \
    || { echo "compose.sh: control-2 did not come up healthy" >&2; exit 1; }
python3 tests/deploy/deliver.py --api "http://$(at control-1 7070)" --api "http://$(at control-2 7070)" \
    --ws "ws://$(at gateway-1 7000)/ws" --ws "ws://$(at gateway-2 7000)/ws"

# Prometheus scrapes every role (scrape_interval 10 s).
python3 - "http://$(at prometheus 9090)" <<'PY'
import json, sys, time, urllib.request
want = {f"{r}-{i}:9100" for r in ("control", "gateway", "worker") for i in (1, 2)}
deadline = time.monotonic() + 60
while True:
    with urllib.request.urlopen(sys.argv[1] + "/api/v1/targets", timeout=10) as res:
        targets = json.load(res)["data"]["activeTargets"]
    up = {t["labels"]["instance"] for t in targets if t["health"] == "up"}
    if want <= up:
        roles = sorted({t["labels"]["role"] for t in targets})
        print(f"prometheus: all {len(want)} gochat targets up (roles {', '.join(roles)})")
        break
    if time.monotonic() > deadline:
        sys.exit(f"FAILED: prometheus targets not up: {sorted(want - up)}; {targets}")
    time.sleep(1)
PY
"${compose[@]}" down -v -t 5 >/dev/null 2>&1
echo "compose.sh: ok in $((SECONDS - start)) s"
