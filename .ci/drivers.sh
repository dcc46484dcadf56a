#!/usr/bin/env bash
# The gateway drivers the suite tests under, printed as a list for --drivers: "epoll,io_uring"
# when PROBE succeeds, else "epoll". PROBE (the rest of the command line) is a command that
# fails, saying why, where this machine cannot run io_uring (test.sh passes
# `gochat --driver io_uring --check`).
#
# Under CI (CI set and non-empty) io_uring is required: a runner without it fails, unless
# GOCHAT_SKIP_IO_URING holds the reason it may test epoll only (e.g. "the runner's seccomp
# profile blocks io_uring"), which is printed. Outside CI a machine without it tests epoll only
# and says so.
#
# usage: .ci/drivers.sh PROBE...
set -uo pipefail
(($#)) || { echo "usage: $0 PROBE..." >&2; exit 2; }

if why=$("$@" 2>&1); then
    if [ -n "${GOCHAT_SKIP_IO_URING:-}" ]; then
        echo "note: GOCHAT_SKIP_IO_URING is set, but this machine runs io_uring: testing it too" >&2
    fi
    echo epoll,io_uring
    exit 0
fi
why="${why##*: }"
if [ -n "${GOCHAT_SKIP_IO_URING:-}" ]; then
    echo "SKIPPED: the gateway tests and perf bounds under io_uring (GOCHAT_SKIP_IO_URING: $GOCHAT_SKIP_IO_URING): $why" >&2
elif [ -n "${CI:-}" ]; then
    echo "FAILED: CI tests both gateway drivers, and this machine cannot run io_uring: $why" >&2
    echo "Run CI where io_uring works, or set GOCHAT_SKIP_IO_URING to the reason to test epoll only." >&2
    exit 1
else
    echo "SKIPPED: the gateway tests and perf bounds under io_uring: $why" >&2
fi
echo epoll
