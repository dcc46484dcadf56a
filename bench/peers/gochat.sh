#!/usr/bin/env bash
# Builds and runs gochat (the Go original, LockGit/gochat) as a benchmark peer of gochat-rs.
# See bench/peers/README.md for why each step is the way it is.
set -euo pipefail

SELF=$(basename "$0")
INVOKED=$0
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

BUILD_DIR=${GOCHAT_PEER_BUILD:-$REPO_ROOT/target/peers/gochat}
RUN_DIR=${GOCHAT_PEER_RUN:-/tmp/gochat-peer}
MODE=${GOCHAT_PEER_MODE:-dev}
API_PORT=${GOCHAT_PEER_API_PORT:-7070}
WS_PORT=${GOCHAT_PEER_WS_PORT:-7000}
REDIS_PORT=${GOCHAT_PEER_REDIS_PORT:-16379}
ETCD_PORT=${GOCHAT_PEER_ETCD_PORT:-12379}
WAIT_SECS=${GOCHAT_PEER_WAIT:-60}
STOP_SECS=${GOCHAT_PEER_STOP_WAIT:-5}
for v in API_PORT WS_PORT REDIS_PORT ETCD_PORT WAIT_SECS:WAIT STOP_SECS:STOP_WAIT; do
    var=${v%%:*} env=GOCHAT_PEER_${v#*:}
    if [[ ! ${!var} =~ ^[0-9]{1,5}$ ]]; then
        printf '%s: error: %s must be a number, not "%s"\n' "$SELF" "$env" "${!var}" >&2
        exit 2
    fi
done
ETCD_PEER_PORT=$((10#$ETCD_PORT + 1))
# Ports gochat's config fixes that we keep: logic RPC, the two connect layers' RPC, the TCP gateway.
FIXED_PORTS=(6900 6901 6912 6913 6914 6915 7001 7002)

usage() {
    cat <<EOF
usage: $SELF COMMAND [ARGS]

  build SNAPSHOT     build gochat offline from SNAPSHOT (a bare git dir or a source dir)
                     into \$GOCHAT_PEER_BUILD (default: target/peers/gochat)
  start              start a fresh gochat (Redis, etcd, logic, connect_websocket, connect_tcp,
                     task, api) in \$GOCHAT_PEER_RUN (default: /tmp/gochat-peer); must run in a
                     network namespace with only lo (see 'run'); prints api=, ws=, pids=,
                     gateway_pids= lines
  stop               stop every process 'start' started
  check              smoke test of a started gochat: register, WebSocket auth, room push (op 3),
                     count (op 4), private push (op 2)
  run [--] CMD ARGS  run CMD in a fresh network namespace that has only loopback, then delete it
                     (and end whatever CMD left running in it); exits with CMD's status

example:
  $INVOKED build /work/.mirror/LockGit+gochat/repo
  $INVOKED run bash -c '$INVOKED start && $INVOKED check && target/release/bench ...; $INVOKED stop'

environment: GOCHAT_PEER_BUILD, GOCHAT_PEER_RUN, GOCHAT_PEER_MODE (dev|prod, default dev),
  GOCHAT_PEER_API_PORT (7070), GOCHAT_PEER_WS_PORT (7000), GOCHAT_PEER_REDIS_PORT (16379),
  GOCHAT_PEER_ETCD_PORT (12379, and the next port for etcd's peer URL),
  GOCHAT_PEER_WAIT (seconds to wait for each process to be ready, 60),
  GOCHAT_PEER_STOP_WAIT (seconds between SIGTERM and SIGKILL, 5)
EOF
}

say() { printf '%s: %s\n' "$SELF" "$*" >&2; }
die() {
    say "error: $*"
    exit 1
}

# ---------------------------------------------------------------------------------------------
# build

ensure_toolchain() {
    local missing=()
    command -v go >/dev/null || missing+=(golang-go)
    command -v gcc >/dev/null || missing+=(gcc)
    [[ -f /usr/include/sqlite3.h ]] || missing+=(libsqlite3-dev)
    ((${#missing[@]} == 0)) && return 0
    if [[ $(id -u) != 0 ]] || ! command -v apt-get >/dev/null; then
        die "missing ${missing[*]}; install them (Debian: apt-get install -y ${missing[*]})"
    fi
    say "installing ${missing[*]}"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}" >&2; then
        DEBIAN_FRONTEND=noninteractive apt-get update >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}" >&2 ||
            die "could not install ${missing[*]}"
    fi
}

# Extracts SNAPSHOT into $1. A bare git snapshot may lack some blobs (the SQLite amalgamation in
# particular): those paths are left out, and the build links the system SQLite instead.
extract_snapshot() {
    local snap=$1 dest=$2
    if git --git-dir="$snap" rev-parse --verify -q 'HEAD^{commit}' >/dev/null 2>&1; then
        local commit missing=() excludes=()
        commit=$(git --git-dir="$snap" rev-parse 'HEAD^{commit}')
        # Every blob of HEAD's tree that the object store cannot produce ("OID missing").
        local blobs
        blobs=$(git --git-dir="$snap" ls-tree -r -z HEAD |
            awk -v RS='\0' -F'\t' '{ split($1, m, " "); if (m[2] == "blob") print m[3] "\t" $2 }')
        mapfile -t missing < <(
            paste <(cut -f1 <<<"$blobs" | git --git-dir="$snap" cat-file --batch-check) \
                <(cut -f2- <<<"$blobs") | awk -F'\t' '$1 ~ / missing$/ { print $2 }'
        )
        local p
        for p in "${missing[@]}"; do
            say "note: the snapshot lacks $p; building without it"
            excludes+=(":(exclude,literal)$p")
        done
        # git archive still reports the excluded missing blobs on stderr; its exit status and
        # tar's are what count.
        git --git-dir="$snap" archive --format=tar HEAD -- . "${excludes[@]}" 2>"$dest.archive.err" |
            tar -x -C "$dest" || {
            cat "$dest.archive.err" >&2
            die "could not extract $snap"
        }
        rm -f "$dest.archive.err"
        printf 'snapshot=%s\ncommit=%s\nmissing=%s\n' "$snap" "$commit" "${missing[*]:-}" \
            >"$dest.SOURCE"
    elif [[ -f $snap/main.go && -f $snap/go.mod ]]; then
        tar -C "$snap" --exclude=./.git -cf - . | tar -x -C "$dest"
        printf 'snapshot=%s\ncommit=\nmissing=\n' "$snap" >"$dest.SOURCE"
    else
        die "$snap is neither a git directory with a HEAD commit nor a gochat source directory"
    fi
    [[ -f $dest/go.mod && -f $dest/main.go && -d $dest/vendor ]] ||
        die "$snap does not look like gochat (no go.mod, main.go or vendor/)"
    grep -q '^module gochat$' "$dest/go.mod" || die "$snap: go.mod is not module gochat"
}

cmd_build() {
    (($# == 1)) || die "usage: $SELF build SNAPSHOT"
    local snap
    snap=$(cd "$1" 2>/dev/null && pwd) || die "no such directory: $1"
    ensure_toolchain
    mkdir -p "$BUILD_DIR"
    BUILD_DIR=$(cd "$BUILD_DIR" && pwd)
    local src=$BUILD_DIR/src
    rm -rf "$src.new" "$src.new.SOURCE"
    mkdir -p "$src.new"
    extract_snapshot "$snap" "$src.new"
    rm -rf "$src"
    mv "$src.new" "$src"
    say "building $(go version | cut -d' ' -f3-) in $src (offline, vendored modules)"
    # -trimpath makes config.go's runtime.Caller path "gochat/config/config.go", so gochat reads
    # its config from ./gochat/config/$RUN_MODE relative to its working directory (see start).
    # libsqlite3: the vendored go-sqlite3 links the system SQLite instead of its amalgamation.
    (cd "$src" && nice env GOFLAGS=-mod=vendor GOPROXY=off GOSUMDB=off GO111MODULE=on \
        GOWORK=off GOTOOLCHAIN=local GOENV=off CGO_ENABLED=1 \
        GOCACHE="$BUILD_DIR/gocache" GOPATH="$BUILD_DIR/gopath" \
        go build -trimpath -tags libsqlite3 -o "$BUILD_DIR/gochat.bin.new" .) ||
        die "go build failed"
    mv -f "$BUILD_DIR/gochat.bin.new" "$BUILD_DIR/gochat.bin"
    mv -f "$src.new.SOURCE" "$BUILD_DIR/SOURCE"
    rm -rf "$BUILD_DIR/config" "$BUILD_DIR/db"
    cp -a "$src/config" "$BUILD_DIR/config"
    mkdir -p "$BUILD_DIR/db"
    cp "$src/db/gochat.sqlite3" "$BUILD_DIR/db/gochat.sqlite3"
    say "built $BUILD_DIR/gochat.bin"
}

# ---------------------------------------------------------------------------------------------
# processes

# Field 22 of /proc/PID/stat (start time): with the PID, it names one process, so a recorded PID
# that was reused by another process is never signalled.
proc_start() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    local fields
    read -ra fields <<<"${stat##*) }"
    printf '%s\n' "${fields[19]}"
}

# Alive, and not a zombie waiting for a parent that is not us.
proc_alive() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [[ ${stat:0:1} != Z ]]
}

# Waits up to $1 seconds while any of the "PID:NAME" entries after it still runs; prints those
# that do.
wait_gone() {
    local deadline=$((SECONDS + $1)) entry left
    shift
    while :; do
        left=()
        for entry in "$@"; do proc_alive "${entry%%:*}" && left+=("$entry"); done
        if ((${#left[@]} == 0 || SECONDS >= deadline)); then
            ((${#left[@]} == 0)) || printf '%s\n' "${left[@]}"
            return 0
        fi
        sleep 0.1
    done
}

# Stops the processes listed in $RUN_DIR/pids (lines: NAME PID STARTTIME), last started first.
stop_recorded() {
    local file=$RUN_DIR/pids
    [[ -f $file ]] || return 0
    local lines=() live=() left=() name pid st i entry
    mapfile -t lines <"$file"
    for ((i = ${#lines[@]} - 1; i >= 0; i--)); do
        read -r name pid st <<<"${lines[i]}"
        [[ -n ${pid:-} ]] || continue
        if proc_alive "$pid" && [[ $(proc_start "$pid") == "$st" ]]; then
            kill -TERM "$pid" 2>/dev/null || true
            live+=("$pid:$name")
        fi
    done
    mapfile -t left < <(wait_gone "$STOP_SECS" "${live[@]}")
    for entry in "${left[@]}"; do
        say "${entry#*:} (pid ${entry%%:*}) still runs ${STOP_SECS}s after SIGTERM; sending SIGKILL"
        kill -KILL "${entry%%:*}" 2>/dev/null || true
    done
    mapfile -t left < <(wait_gone 5 "${left[@]}")
    ((${#left[@]} == 0)) || say "still running after SIGKILL: ${left[*]}"
    # They are not our children: give their parent (init, once start has exited) a moment to reap
    # them, so that no entry of theirs is left in ps.
    local deadline=$((SECONDS + 3))
    for entry in "${live[@]}"; do
        while [[ -e /proc/${entry%%:*} ]] && ((SECONDS < deadline)); do sleep 0.1; done
    done
    rm -f "$file"
}

# Starts NAME detached (own session, no stdin), logging to $RUN_DIR/logs/NAME.log, and records it.
launch() {
    local name=$1
    shift
    (cd "$RUN_DIR" && exec setsid "$@" </dev/null >"$RUN_DIR/logs/$name.log" 2>&1) &
    local pid=$!
    local st
    st=$(proc_start "$pid") || st=0
    printf '%s %s %s\n' "$name" "$pid" "$st" >>"$RUN_DIR/pids"
    LAST_PID=$pid
}

FAILED=
fail_process() {
    local name=$1 why=$2
    FAILED=1
    say "error: $name $why"
    if [[ -f $RUN_DIR/logs/$name.log ]]; then
        say "last lines of $RUN_DIR/logs/$name.log:"
        tail -n 30 "$RUN_DIR/logs/$name.log" >&2
    fi
    exit 1
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

redis_ping() {
    (
        exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
        printf 'PING\r\n' >&3
        IFS= read -r -t 2 reply <&3 || exit 1
        [[ $reply == +PONG* ]]
    ) 2>/dev/null
}

# Waits until `CHECK...` succeeds while the process NAME (pid PID) stays alive.
wait_ready() {
    local name=$1 pid=$2 what=$3
    shift 3
    local deadline=$((SECONDS + WAIT_SECS))
    until "$@"; do
        proc_alive "$pid" || fail_process "$name" "exited before $what"
        ((SECONDS < deadline)) || fail_process "$name" "did not get ready ($what) in ${WAIT_SECS}s"
        sleep 0.1
    done
}

ports_open() {
    local p
    for p in "$@"; do port_open "$p" || return 1; done
}

log_has_all() {
    local file=$1 pat
    shift
    for pat in "$@"; do grep -sqF -- "$pat" "$file" || return 1; done
}

api_answers() {
    local code
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 -H 'Content-Type: application/json' \
        -d '{"authToken":"readiness-probe"}' "http://127.0.0.1:$API_PORT/user/checkAuth") || return 1
    [[ $code == 200 ]]
}

require_isolated_netns() {
    local links
    links=$(ip -o link show | awk -F': ' '{ sub(/@.*/, "", $2); print $2 }' | sort -u | tr '\n' ' ')
    if [[ $links != "lo " ]]; then
        die "this network namespace has interfaces besides lo (${links% }); gochat's API binds every
  interface and serves an unauthenticated pprof, so start runs only inside an isolated namespace:
  $INVOKED run -- bash -c '$INVOKED start && ...'"
    fi
    ip -o link show lo | grep -q 'LOWER_UP' || die "lo is down in this namespace (ip link set lo up)"
}

# gochat's dev config with every bind on 127.0.0.1 and Redis and etcd pointed at ours.
write_config() {
    local from=$BUILD_DIR/config/$MODE to=$RUN_DIR/gochat/config/$MODE
    [[ -d $from ]] || die "no config for mode $MODE in $BUILD_DIR/config"
    mkdir -p "$to"
    cp "$from"/*.toml "$to"/
    sed -i -E \
        -e 's/0\.0\.0\.0/127.0.0.1/g' \
        -e 's/localhost/127.0.0.1/g' \
        -e "s/127\.0\.0\.1:6379/127.0.0.1:$REDIS_PORT/g" \
        -e "s/127\.0\.0\.1:2379/127.0.0.1:$ETCD_PORT/g" \
        -e "s/127\.0\.0\.1:7000\"/127.0.0.1:$WS_PORT\"/" \
        -e "s/^(listenPort *= *)7070/\\1$API_PORT/" \
        "$to"/*.toml
    # The edits above assume gochat's shipped config; refuse one they did not fully cover.
    if grep -nE '0\.0\.0\.0|localhost|:6379\b|:2379\b' "$to"/*.toml >&2; then
        die "the config in $from has addresses this script does not rewrite (above)"
    fi
    grep -q "redisAddress = \"127.0.0.1:$REDIS_PORT\"" "$to/common.toml" &&
        grep -q "host = \"127.0.0.1:$ETCD_PORT\"" "$to/common.toml" &&
        grep -q "bind = \"127.0.0.1:$WS_PORT\"" "$to/connect.toml" &&
        grep -q "listenPort = $API_PORT" "$to/api.toml" ||
        die "the config in $from is not laid out as expected (common/connect/api.toml)"
}

cmd_start() {
    (($# == 0)) || die "usage: $SELF start"
    [[ $MODE == dev || $MODE == prod ]] || die "GOCHAT_PEER_MODE must be dev or prod, not $MODE"
    require_isolated_netns
    local bin=$BUILD_DIR/gochat.bin
    [[ -x $bin && -f $BUILD_DIR/db/gochat.sqlite3 ]] || die "no build in $BUILD_DIR; run: $INVOKED build SNAPSHOT"
    command -v redis-server >/dev/null || die "redis-server not found (Debian: apt-get install -y redis-server)"
    command -v etcd >/dev/null || die "etcd not found (Debian: apt-get install -y etcd-server)"
    command -v curl >/dev/null || die "curl not found"
    if [[ -f $RUN_DIR/pids ]]; then
        local name pid st
        while read -r name pid st; do
            if proc_alive "$pid" && [[ $(proc_start "$pid") == "$st" ]]; then
                die "$name (pid $pid) of an earlier start still runs; run: $SELF stop"
            fi
        done <"$RUN_DIR/pids"
    fi
    local p
    for p in "$API_PORT" "$WS_PORT" "$REDIS_PORT" "$ETCD_PORT" "$ETCD_PEER_PORT" "${FIXED_PORTS[@]}"; do
        port_open "$p" && die "port $p on 127.0.0.1 is already in use"
    done

    # The run dir is removed whole: only one that an earlier start made (or an empty one).
    if [[ -e $RUN_DIR && ! -f $RUN_DIR/.gochat-peer-run ]] &&
        [[ ! -d $RUN_DIR || -n $(ls -A "$RUN_DIR") ]]; then
        die "$RUN_DIR exists and was not made by $SELF start; remove it or set GOCHAT_PEER_RUN"
    fi
    rm -rf "$RUN_DIR"
    mkdir -p "$RUN_DIR"/{logs,redis,etcd,db}
    touch "$RUN_DIR/.gochat-peer-run"
    RUN_DIR=$(cd "$RUN_DIR" && pwd)
    cp "$BUILD_DIR/db/gochat.sqlite3" "$RUN_DIR/db/gochat.sqlite3"
    write_config
    trap 'if [[ -n $FAILED || $? != 0 ]]; then say "stopping what was started"; stop_recorded; fi' EXIT

    launch redis redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --dir "$RUN_DIR/redis" \
        --save '' --appendonly no --daemonize no --logfile ''
    wait_ready redis "$LAST_PID" "answering PING on $REDIS_PORT" redis_ping "$REDIS_PORT"

    launch etcd etcd --name gochat-peer --data-dir "$RUN_DIR/etcd/data" \
        --listen-client-urls "http://127.0.0.1:$ETCD_PORT" \
        --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
        --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
        --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
        --initial-cluster "gochat-peer=http://127.0.0.1:$ETCD_PEER_PORT" \
        --initial-cluster-state new
    wait_ready etcd "$LAST_PID" "healthy on $ETCD_PORT" \
        eval "curl -fs --max-time 2 http://127.0.0.1:$ETCD_PORT/health | grep -q '\"health\":\"true\"'"

    # Each layer registers in etcd before it listens, so a listening RPC port means registered.
    # The task layer reads the connect layers from etcd once at start: it comes after them.
    local env=(env "RUN_MODE=$MODE")
    launch logic "${env[@]}" "$bin" -module logic
    wait_ready logic "$LAST_PID" "listening on 6900, 6901" ports_open 6900 6901
    launch connect_websocket "${env[@]}" "$bin" -module connect_websocket
    wait_ready connect_websocket "$LAST_PID" "listening on 6912, 6913, $WS_PORT" \
        ports_open 6912 6913 "$WS_PORT"
    launch connect_tcp "${env[@]}" "$bin" -module connect_tcp
    wait_ready connect_tcp "$LAST_PID" "listening on 6914, 6915, 7001, 7002" \
        ports_open 6914 6915 7001 7002
    launch task "${env[@]}" "$bin" -module task
    wait_ready task "$LAST_PID" "finding both connect layers in etcd" \
        log_has_all "$RUN_DIR/logs/task.log" "serverType is:ws" "serverType is:tcp"
    launch api "${env[@]}" "$bin" -module api
    wait_ready api "$LAST_PID" "answering HTTP on $API_PORT" api_answers

    local pids gateway
    pids=$(awk '{print $2}' "$RUN_DIR/pids" | paste -sd,)
    # The process holding the WebSocket connections: what the bench calls the gateway.
    gateway=$(awk '$1 == "connect_websocket" {print $2}' "$RUN_DIR/pids")
    printf 'api=http://127.0.0.1:%s\nws=127.0.0.1:%s\npids=%s\ngateway_pids=%s\n' \
        "$API_PORT" "$WS_PORT" "$pids" "$gateway" | tee "$RUN_DIR/endpoints"
    trap - EXIT
}

cmd_stop() {
    (($# == 0)) || die "usage: $SELF stop"
    stop_recorded
}

# ---------------------------------------------------------------------------------------------
# run

NETNS=
cleanup_netns() {
    [[ -n $NETNS ]] || return 0
    local pids=()
    mapfile -t pids < <(ip netns pids "$NETNS" 2>/dev/null)
    if ((${#pids[@]} > 0)); then
        # Everything in the namespace was started by CMD; nothing may outlive it there.
        say "ending ${#pids[@]} process(es) left in network namespace $NETNS"
        kill -TERM "${pids[@]}" 2>/dev/null || true
        local deadline=$((SECONDS + STOP_SECS))
        while ((SECONDS < deadline)) && [[ -n $(ip netns pids "$NETNS" 2>/dev/null) ]]; do sleep 0.1; done
        mapfile -t pids < <(ip netns pids "$NETNS" 2>/dev/null)
        ((${#pids[@]} == 0)) || kill -KILL "${pids[@]}" 2>/dev/null || true
    fi
    ip netns delete "$NETNS" 2>/dev/null || say "could not delete network namespace $NETNS"
    NETNS=
}

cmd_run() {
    [[ ${1:-} == -- ]] && shift
    (($# > 0)) || die "usage: $SELF run [--] CMD ARGS..."
    [[ $(id -u) == 0 ]] || die "run needs root (ip netns)"
    NETNS=gochat-bench-$$-$RANDOM
    trap cleanup_netns EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    ip netns add "$NETNS" || die "could not create network namespace $NETNS"
    ip netns exec "$NETNS" ip link set lo up
    local status=0
    ip netns exec "$NETNS" "$@" || status=$?
    return "$status"
}

# ---------------------------------------------------------------------------------------------
# check

cmd_check() {
    (($# == 0)) || die "usage: $SELF check"
    local endpoints=$RUN_DIR/endpoints
    [[ -f $endpoints ]] || die "no $endpoints; run: $SELF start"
    command -v python3 >/dev/null || die "python3 not found"
    local api ws
    api=$(sed -n 's/^api=//p' "$endpoints")
    ws=$(sed -n 's/^ws=//p' "$endpoints")
    python3 - "$api" "$ws" <<'PY'
# Smoke test with the standard library only: a minimal WebSocket client (RFC 6455, text frames).
import base64, json, os, socket, struct, sys, time, urllib.request

api, ws = sys.argv[1], sys.argv[2]
host, port = ws.rsplit(":", 1)
DEADLINE = 10.0


def fail(msg):
    print(f"check: FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def post(path, body):
    req = urllib.request.Request(api + path, json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read())


class Ws:
    def __init__(self):
        self.s = socket.create_connection((host, int(port)), timeout=5)
        key = base64.b64encode(os.urandom(16)).decode()
        self.s.sendall((f"GET /ws HTTP/1.1\r\nHost: {ws}\r\nUpgrade: websocket\r\n"
                        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                        "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            chunk = self.s.recv(4096)
            if not chunk:
                fail("WebSocket handshake: connection closed")
            self.buf += chunk
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        if not head.startswith(b"HTTP/1.1 101"):
            fail(f"WebSocket handshake: {head.splitlines()[0]!r}")

    def send_text(self, text):
        data, mask = text.encode(), os.urandom(4)
        n = len(data)
        hdr = bytes([0x81]) + (bytes([0x80 | n]) if n < 126 else
                               bytes([0x80 | 126]) + struct.pack(">H", n))
        self.s.sendall(hdr + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))

    def _need(self, n, until):
        while len(self.buf) < n:
            self.s.settimeout(max(0.01, until - time.monotonic()))
            try:
                chunk = self.s.recv(65536)
            except socket.timeout:
                return False
            if not chunk:
                fail("the server closed the WebSocket")
            self.buf += chunk
        return True

    def frame(self, until):
        """The next text frame's payload, or None at the deadline."""
        while True:
            if not self._need(2, until):
                return None
            b0, b1 = self.buf[0], self.buf[1]
            n, off = b1 & 0x7F, 2
            if n == 126:
                if not self._need(4, until):
                    return None
                n, off = struct.unpack(">H", self.buf[2:4])[0], 4
            elif n == 127:
                if not self._need(10, until):
                    return None
                n, off = struct.unpack(">Q", self.buf[2:10])[0], 10
            if not self._need(off + n, until):
                return None
            payload, self.buf = self.buf[off:off + n], self.buf[off + n:]
            op = b0 & 0x0F
            if op == 0x8:
                fail("the server closed the WebSocket")
            if op == 0x9:  # ping: answer as a client must
                self.s.sendall(bytes([0x8A, 0x80 | len(payload)]) + b"\0\0\0\0" + payload)
            if op == 0x1:
                return payload.decode()

    def next_op(self, op, until, pred=lambda m: True):
        """The next frame with this op (and pred), or None at the deadline."""
        while True:
            text = self.frame(until)
            if text is None:
                return None
            if not text:
                continue  # gochat sends an empty frame to a room when a member leaves
            msg = json.loads(text)
            if msg.get("op") == op and pred(msg):
                return msg

    def expect(self, op, what, pred=lambda m: True):
        msg = self.next_op(op, time.monotonic() + DEADLINE, pred)
        if msg is None:
            fail(f"no op {op} frame ({what}) within {DEADLINE:.0f}s")
        return msg


tag = f"{os.getpid()}{int(time.time()) % 100000}"
users = []
for i in (1, 2):
    name = f"chk{tag}u{i}"
    r = post("/user/register", {"userName": name, "passWord": "p"})
    if r.get("code") != 0 or not r.get("data"):
        fail(f"register {name}: {r}")
    users.append((name, r["data"]))
print(f"check: registered {users[0][0]}, {users[1][0]}")
info = post("/user/checkAuth", {"authToken": users[1][1]})
if info.get("code") != 0:
    fail(f"checkAuth: {info}")
uid2 = info["data"]["userId"]

room = 1
socks = []
for name, token in users:
    s = Ws()
    s.send_text(json.dumps({"authToken": token, "roomId": room}))
    socks.append(s)
# gochat does not answer the auth frame: a socket is in the room once a room-info broadcast
# (op 5, /push/getRoomInfo) reaches it.
until = time.monotonic() + DEADLINE
for s in socks:
    while True:
        post("/push/getRoomInfo", {"authToken": users[0][1], "roomId": room})
        if s.next_op(5, min(until, time.monotonic() + 0.3)) is not None:
            break
        if time.monotonic() >= until:
            fail(f"a socket got no room info (op 5) within {DEADLINE:.0f}s of its auth frame")
print("check: both sockets authenticated and in room 1 (op 5 received)")

r = post("/push/pushRoom", {"authToken": users[0][1], "roomId": room, "msg": "hi"})
if r.get("code") != 0:
    fail(f"pushRoom: {r}")
for (name, _), s in zip(users, socks):
    m = s.expect(3, "room message", lambda m: m.get("msg") == "hi")
    if m.get("fromUserName") != users[0][0]:
        fail(f"room message with fromUserName {m.get('fromUserName')!r}")
print(f"check: op 3 room message 'hi' reached both sockets: {json.dumps(m)}")

r = post("/push/count", {"authToken": users[0][1], "roomId": room})
if r.get("code") != 0:
    fail(f"count: {r}")
for s in socks:
    m = s.expect(4, "room count")
print(f"check: op 4 room count reached both sockets: {json.dumps(m)}")

r = post("/push/push", {"authToken": users[0][1], "roomId": room, "toUserId": str(uid2),
                        "msg": "psst"})
if r.get("code") != 0:
    fail(f"push: {r}")
m = socks[1].expect(2, "private message", lambda m: m.get("msg") == "psst")
print(f"check: op 2 private message reached user 2: {json.dumps(m)}")
print("check: ok")
PY
}

# ---------------------------------------------------------------------------------------------

case ${1:-} in
build | start | stop | check | run)
    cmd=$1
    shift
    "cmd_$cmd" "$@"
    ;;
-h | --help | help)
    usage
    ;;
"")
    usage >&2
    exit 2
    ;;
*)
    say "unknown command: $1"
    usage >&2
    exit 2
    ;;
esac
