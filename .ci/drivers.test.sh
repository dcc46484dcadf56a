#!/usr/bin/env bash
# Tests of .ci/drivers.sh: which drivers it picks, and when a machine without io_uring fails CI.
# test.sh runs it; it takes a few milliseconds.
set -uo pipefail
cd "$(dirname "$0")"

failures=0
# expect STATUS STDOUT STDERR_PART ENV... -- PROBE...
expect() {
    local status=$1 out=$2 err=$3
    shift 3
    local env=()
    while [ "$1" != -- ]; do env+=("$1"); shift; done
    shift
    local got_out got_err got_status errfile
    errfile=$(mktemp)
    got_out=$(env -u CI -u GOCHAT_SKIP_IO_URING "${env[@]}" ./drivers.sh "$@" 2>"$errfile")
    got_status=$?
    got_err=$(<"$errfile")
    rm -f "$errfile"
    if [ "$got_status" != "$status" ] || [ "$got_out" != "$out" ] || [[ "$got_err" != *"$err"* ]]; then
        echo "FAIL: ${env[*]} $*: got status $got_status, stdout '$got_out', stderr '$got_err';" \
            "expected $status, '$out', stderr with '$err'" >&2
        failures=$((failures + 1))
    fi
}
unavailable=(sh -c 'echo "Error: gateway: this kernel has no io_uring" >&2; exit 1')

expect 0 epoll,io_uring '' -- true
expect 0 epoll,io_uring '' CI=1 -- true
expect 0 epoll,io_uring 'GOCHAT_SKIP_IO_URING is set' CI=1 GOCHAT_SKIP_IO_URING=why -- true
# Outside CI a machine without io_uring tests epoll only, and says so.
expect 0 epoll 'SKIPPED: the gateway tests and perf bounds under io_uring: this kernel has no io_uring' \
    -- "${unavailable[@]}"
# Under CI it fails, saying why and how to opt out...
expect 1 '' 'FAILED: CI tests both gateway drivers, and this machine cannot run io_uring: this kernel has no io_uring' \
    CI=true -- "${unavailable[@]}"
expect 1 '' 'set GOCHAT_SKIP_IO_URING' CI=1 GOCHAT_SKIP_IO_URING= -- "${unavailable[@]}"
# ...unless the opt-out gives a reason, which is printed.
expect 0 epoll '(GOCHAT_SKIP_IO_URING: runner seccomp blocks it): this kernel has no io_uring' \
    CI=1 'GOCHAT_SKIP_IO_URING=runner seccomp blocks it' -- "${unavailable[@]}"
expect 2 '' usage --

if ((failures)); then
    echo ".ci/drivers.test.sh: $failures failed" >&2
    exit 1
fi
echo ".ci/drivers.test.sh: ok"
