#!/usr/bin/env bash
# A Redis Cluster of three primaries and three replicas on loopback, for the tests that run the
# stores and the queue on a cluster (REDIS_CLUSTER_URL). A cluster already answering on these
# ports is left as it is. Usage: .ci/redis-cluster.sh [FIRST_PORT] (default 7100; it takes six).
# Prints the URL to reach it. The nodes keep nothing on disk; `--stop` ends them.
set -euo pipefail
first=${1:-7100}
[ "$first" = --stop ] && first=${2:-7100}
ports=($(seq "$first" $((first + 5))))
dir=${REDIS_CLUSTER_DIR:-/tmp/gochat-redis-cluster-$first}

if [ "${1:-}" = --stop ]; then
    for p in "${ports[@]}"; do redis-cli -p "$p" shutdown nosave >/dev/null 2>&1 || true; done
    exit 0
fi

url="redis+cluster://$(printf '127.0.0.1:%s,' "${ports[@]}" | sed 's/,$//')"
ok() { [ "$(redis-cli -p "$1" cluster info 2>/dev/null | tr -d '\r' | awk -F: '/^cluster_state/{print $2}')" = ok ]; }
# A replica that never synced with its primary cannot take over: wait for each one's link.
synced() { redis-cli -p "$1" info replication 2>/dev/null | tr -d '\r' | grep -qE '^role:master|^master_link_status:up'; }
if ok "${ports[0]}"; then echo "$url"; exit 0; fi

mkdir -p "$dir"
for p in "${ports[@]}"; do
    redis-cli -p "$p" shutdown nosave >/dev/null 2>&1 || true
    rm -f "$dir/nodes-$p.conf"
    redis-server --port "$p" --bind 127.0.0.1 --daemonize yes --dir "$dir" \
        --cluster-enabled yes --cluster-config-file "nodes-$p.conf" --cluster-node-timeout 2000 \
        --repl-diskless-sync-delay 0 --save "" --appendonly no --logfile "$dir/redis-$p.log" >/dev/null
done
for p in "${ports[@]}"; do
    for _ in $(seq 50); do redis-cli -p "$p" ping >/dev/null 2>&1 && break; sleep 0.1; done
done
redis-cli --cluster create $(printf '127.0.0.1:%s ' "${ports[@]}") --cluster-replicas 1 --cluster-yes >"$dir/create.log" 2>&1 ||
    { cat "$dir/create.log" >&2; exit 1; }
for p in "${ports[@]}"; do
    for _ in $(seq 100); do ok "$p" && synced "$p" && break; sleep 0.1; done
    ok "$p" && synced "$p" || { echo "redis-cluster.sh: node $p never reported cluster_state:ok and its link up" >&2; exit 1; }
done
echo "$url"
