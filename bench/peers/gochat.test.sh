#!/usr/bin/env bash
# Tests of gochat.sh that need no gochat: its refusals, and `run`'s namespace (only lo, its
# exit status, nothing left behind). test.sh runs it; it takes about a second. With
# GOCHAT_SNAPSHOT set (a snapshot of LockGit/gochat, which CI does not have), it also builds
# gochat from it, starts it in a namespace, runs `check` and stops it.
set -uo pipefail
cd "$(dirname "$0")"
script="$PWD/gochat.sh"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failures=0

# expect STATUS PATTERN CMD...: CMD exits with STATUS and prints (stdout+stderr) PATTERN.
expect() {
    local want=$1 pattern=$2 out status=0
    shift 2
    out=$("$@" 2>&1) || status=$?
    if [[ $status != "$want" ]] || ! grep -qE -- "$pattern" <<<"$out"; then
        echo "FAIL: $* -> exit $status (want $want), output:" >&2
        sed 's/^/  | /' <<<"$out" >&2
        failures=$((failures + 1))
    fi
}

export GOCHAT_PEER_BUILD=$tmp/build GOCHAT_PEER_RUN=$tmp/run
expect 2 "usage" "$script"
expect 2 "unknown command" "$script" frobnicate
expect 1 "not a git directory|no such|does not exist|not found" "$script" build "$tmp/nothing-here"
expect 0 "" "$script" stop
if [[ $(ip -o link | wc -l) -gt 1 ]]; then
    expect 1 "interfaces besides lo" "$script" start
fi

if [[ $(id -u) == 0 ]] && command -v ip >/dev/null; then
    before=$(ip netns list | grep -c '^gochat-bench-' || true)
    expect 0 "^1$" "$script" run sh -c 'ip -o link | wc -l'
    expect 0 "LOOPBACK,UP" "$script" run ip -o link show lo
    expect 3 "" "$script" run sh -c 'exit 3'
    # Inside, start refuses nothing about the namespace, only the missing build.
    expect 1 "no build in" "$script" run "$script" start
    expect 1 "usage" "$script" run
    after=$(ip netns list | grep -c '^gochat-bench-' || true)
    if [[ $before != "$after" ]]; then
        echo "FAIL: run left a namespace behind ($before before, $after after)" >&2
        failures=$((failures + 1))
    fi
elif [[ -n ${CI:-} ]]; then
    echo "FAIL: run needs root and ip (iproute2) under CI" >&2
    failures=$((failures + 1))
else
    echo "skipped: gochat.sh run needs root and ip (iproute2)" >&2
fi

if [[ -n ${GOCHAT_SNAPSHOT:-} ]]; then
    expect 0 "built" "$script" build "$GOCHAT_SNAPSHOT"
    expect 0 "check: ok" "$script" run bash -c "'$script' start && '$script' check; s=\$?; '$script' stop; exit \$s"
fi

if ((failures > 0)); then
    echo "gochat.test.sh: $failures failed" >&2
    exit 1
fi
echo "gochat.test.sh: ok"
