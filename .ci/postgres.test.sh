#!/usr/bin/env bash
# Tests of .ci/postgres.sh against stand-ins for Debian's PostgreSQL tools (apt-get,
# pg_lsclusters, pg_createcluster, pg_ctlcluster, pg_isready, psql) that keep their clusters in
# a folder and record the calls that change something. test.sh runs it; it takes about a second.
# The real thing, on a fresh Debian: .ci/postgres.chroot-test.sh.
set -uo pipefail
cd "$(dirname "$0")"
script="$PWD/postgres.sh"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failures=0
trust="host all postgres 127.0.0.1/32 trust"

# The stand-ins. State, under $S: clusters ("VERSION NAME PORT STATUS" lines), conf/ (as
# /etc/postgresql), lib/ (as /usr/lib/postgresql), trusted-VERSION-NAME (the cluster read a
# trust line at its last start or reload), deaf (clusters never answer), foreign-PORT (a server
# that is not a cluster here answers on PORT), postinst-starts (installing starts the new
# cluster, as in a container without policy-rc.d), calls (what changed something).
mkdir -p "$tmp/tools"
stub() {
    { echo '#!/bin/bash'; echo 'set -u'; cat; } >"$tmp/tools/$1"
    chmod +x "$tmp/tools/$1"
}
stub pg_lsclusters <<'EOF'
while read -r v n p s; do echo "$v $n $p $s postgres /var/lib/postgresql/$v/$n /var/log/pg-$v-$n.log"; done <"$S/clusters"
EOF
stub pg_isready <<'EOF'
port=5432; while (($#)); do [ "$1" = -p ] && port=$2; shift; done
[ -e "$S/foreign-$port" ] && exit 0
[ ! -e "$S/deaf" ] && grep -q "^[^ ]* [^ ]* $port online" "$S/clusters"
EOF
stub psql <<'EOF'
port=5432; while (($#)); do [ "$1" = -p ] && port=$2; shift; done
pg_isready -p "$port" || exit 2
[ -e "$S/foreign-$port" ] && exit 2
read -r v n _ < <(grep "^[^ ]* [^ ]* $port " "$S/clusters")
[ -e "$S/trusted-$v-$n" ]
EOF
stub pg_createcluster <<'EOF'
echo "pg_createcluster $*" >>"$S/calls"
[ "$1" = -p ] || exit 2
echo "$3 $4 $2 down" >>"$S/clusters"
mkdir -p "$S/conf/$3/$4"
printf 'local all postgres peer\nhost all all 127.0.0.1/32 scram-sha-256\n' >"$S/conf/$3/$4/pg_hba.conf"
EOF
stub pg_ctlcluster <<'EOF'
echo "pg_ctlcluster $*" >>"$S/calls"
[ "$1" = --skip-systemctl-redirect ] || exit 2
case $4 in
start) sed -i "s/^$2 $3 \([0-9]*\) down$/$2 $3 \1 online/" "$S/clusters" ;;
reload) ;;
*) exit 2 ;;
esac
rm -f "$S/trusted-$2-$3"
if grep -qxF "host all postgres 127.0.0.1/32 trust" "$S/conf/$2/$3/pg_hba.conf"; then touch "$S/trusted-$2-$3"; fi
EOF
stub apt-get <<'EOF'
echo "apt-get $*" >>"$S/calls"
[ "$1" = update ] && exit 0
[ "$*" = "install -y -qq --no-install-recommends postgresql" ] || exit 100
for t in pg_lsclusters pg_isready psql pg_createcluster pg_ctlcluster; do cp "$S/tools/$t" "$S/bin/"; done
mkdir -p "$S/lib/15/bin" && touch "$S/lib/15/bin/postgres" && chmod +x "$S/lib/15/bin/postgres"
# Debian's postinst: a main cluster on the first port no cluster has, started where allowed.
grep -q " 5432 " "$S/clusters" || pg_createcluster -p 5432 15 main
[ -e "$S/postinst-starts" ] && pg_ctlcluster --skip-systemctl-redirect 15 main start
exit 0
EOF

# A machine: `machine fresh` has none of PostgreSQL; `machine installed [VERSION...]` has the
# tools and servers of those versions (15 by default), and no cluster yet.
machine() {
    S="$tmp/m$((++machines))"
    mkdir -p "$S/bin" "$S/conf" "$S/lib"
    cp -r "$tmp/tools" "$S/tools"
    : >"$S/clusters"
    : >"$S/calls"
    local tool
    for tool in bash awk basename cat cp chmod dirname grep mkdir rm sed sleep sort tail touch; do
        ln -s "$(command -v "$tool")" "$S/bin/$tool"
    done
    cp "$S/tools/apt-get" "$S/bin/"
    if [ "$1" = installed ]; then
        shift
        cp "$S"/tools/pg_* "$S/tools/psql" "$S/bin/"
        local v
        for v in "${@:-15}"; do
            mkdir -p "$S/lib/$v/bin" && touch "$S/lib/$v/bin/postgres" && chmod +x "$S/lib/$v/bin/postgres"
        done
    fi
}
machines=0

# cluster VERSION NAME PORT STATUS [trusted]
cluster() {
    echo "$1 $2 $3 $4" >>"$S/clusters"
    mkdir -p "$S/conf/$1/$2"
    printf 'local all postgres peer\nhost all all 127.0.0.1/32 scram-sha-256\n' >"$S/conf/$1/$2/pg_hba.conf"
    if [ "${5:-}" = trusted ]; then
        sed -i "1i $trust" "$S/conf/$1/$2/pg_hba.conf"
        touch "$S/trusted-$1-$2"
    fi
}

# run [PORT]: runs the script on the machine; sets status, err, calls (and clears them).
run() {
    local errfile="$S/stderr"
    env -i S="$S" PATH="$S/bin" PG_CONF_ROOT="$S/conf" PG_LIB_ROOT="$S/lib" PG_WAIT_SECS=0 \
        "$BASH" "$script" "$@" 2>"$errfile"
    status=$?
    err=$(<"$errfile")
    calls=$(<"$S/calls")
    : >"$S/calls"
}

# expect WHAT STATUS CALLS [STDERR_PART]
expect() {
    if [ "$status" != "$2" ] || [ "$calls" != "$3" ] || [[ "$err" != *"${4:-}"* ]]; then
        echo "FAIL: $1: got status $status, calls '$calls', stderr '$err';" \
            "expected $2, '$3', stderr with '${4:-}'" >&2
        failures=$((failures + 1))
    fi
}

# trusted_once WHAT VERSION NAME: the trust line is in the cluster's pg_hba.conf once, ahead of
# the lines asking for a password.
trusted_once() {
    local hba="$S/conf/$2/$3/pg_hba.conf"
    if [ "$(grep -cxF "$trust" "$hba")" != 1 ] || [ "$(grep -v '^#' "$hba" | head -1)" != "$trust" ]; then
        echo "FAIL: $1: $hba is:" >&2
        cat "$hba" >&2
        failures=$((failures + 1))
    fi
}

start="pg_ctlcluster --skip-systemctl-redirect"
install=$'apt-get update -qq\napt-get install -y -qq --no-install-recommends postgresql'

machine installed
cluster 15 main 5432 online trusted
run
expect "a server that answers is left alone" 0 ""
[ "$(cat "$S/conf/15/main/pg_hba.conf")" = "$trust"$'\nlocal all postgres peer\nhost all all 127.0.0.1/32 scram-sha-256' ] ||
    { echo "FAIL: the answering server's pg_hba.conf changed" >&2; failures=$((failures + 1)); }

machine installed
cluster 15 main 5432 online
run
expect "a server that asks for a password is left alone too, with a note" 0 "" "does not let postgres in"
[ "$(grep -c trust "$S/conf/15/main/pg_hba.conf")" = 0 ] ||
    { echo "FAIL: the password-asking server's pg_hba.conf changed" >&2; failures=$((failures + 1)); }

machine fresh
run
expect "a fresh machine gets the server, its cluster trusting postgres, started" 0 \
    "$install"$'\npg_createcluster -p 5432 15 main\n'"$start 15 main start"
trusted_once "a fresh machine" 15 main
run
expect "then a second run changes nothing" 0 ""

machine fresh
touch "$S/postinst-starts"
run
expect "a fresh machine whose install starts the cluster: reloaded with the trust line" 0 \
    "$install"$'\npg_createcluster -p 5432 15 main\n'"$start 15 main start"$'\n'"$start 15 main reload"
trusted_once "install starts the cluster" 15 main

machine installed
cluster 15 main 5432 down
run
expect "a stopped cluster is trusted and started" 0 "$start 15 main start"
sed -i 's/ online$/ down/' "$S/clusters"
run
expect "and started again after a stop, adding nothing" 0 "$start 15 main start"
trusted_once "a stopped cluster, twice" 15 main

machine installed
cluster 15 main 5432 online
run 5499
expect "a port no cluster has gets a cluster of its own" 0 \
    "pg_createcluster -p 5499 15 port5499"$'\n'"$start 15 port5499 start"
trusted_once "a cluster of its own" 15 port5499
[ "$(grep -c trust "$S/conf/15/main/pg_hba.conf")" = 0 ] ||
    { echo "FAIL: the other cluster's pg_hba.conf changed" >&2; failures=$((failures + 1)); }

machine installed 13 15
run
expect "servers without a cluster: main, of the newest version" 0 \
    "pg_createcluster -p 5432 15 main"$'\n'"$start 15 main start"

machine installed
cluster 15 main 5432 down
touch "$S/deaf"
run
expect "a cluster that never answers fails, saying so" 1 "$start 15 main start" \
    "FAILED: PostgreSQL cluster 15/main does not let postgres in on 127.0.0.1:5432"

machine fresh
touch "$S/foreign-5433"
run 5433
expect "a server seen once the client tools are in, with no cluster here, is left alone" 0 \
    "$install"$'\npg_createcluster -p 5432 15 main' "does not let postgres in"

if ((failures)); then
    echo ".ci/postgres.test.sh: $failures failed" >&2
    exit 1
fi
echo ".ci/postgres.test.sh: ok"
