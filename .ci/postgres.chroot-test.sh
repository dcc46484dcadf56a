#!/usr/bin/env bash
# .ci/postgres.sh on a fresh Debian 12: a bookworm minbase chroot (debootstrap) with nothing of
# PostgreSQL. Needs root, debootstrap and the Debian mirror; takes about two minutes, so test.sh
# does not run it (.ci/postgres.test.sh checks the script's logic there, in a second).
#
# The chroot shares this machine's network, where a server may hold 5432, and a chroot starts no
# services while packages install (policy-rc.d, as in build chroots). On the first port no
# server answers (5432 on a machine without one), the script installs the server from the
# mirror, whose install makes its cluster on that same port, stopped: as a fresh CI machine has
# it. On the next free port there is no cluster: the script makes one. On each: postgres gets in
# from this machine without a password and reaches the chroot's cluster, its pg_hba.conf trusts
# postgres once, a second run says nothing, and once stopped the cluster is started again.
# Everything it started is stopped and the chroot removed, however it ends.
#
# usage: .ci/postgres.chroot-test.sh   (DEBIAN_MIRROR: default http://deb.debian.org/debian)
set -euo pipefail
cd "$(dirname "$0")"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
dir=$(mktemp -d /var/tmp/gochat-pg-chroot.XXXXXX)
chmod 755 "$dir" # its root: mktemp's 700 keeps user postgres out of everything
trust='host all postgres 127.0.0.1/32 trust'

in_chroot() {
    chroot "$dir" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 "$@"
}

cleanup() {
    set +e
    if [ -x "$dir/usr/bin/pg_lsclusters" ]; then
        in_chroot pg_lsclusters --no-header | while read -r version name _ status _; do
            if [[ "$status" == online* ]]; then
                in_chroot pg_ctlcluster --skip-systemctl-redirect "$version" "$name" stop
            fi
        done
    fi
    for m in dev/pts dev proc; do
        if mountpoint -q "$dir/$m"; then umount "$dir/$m"; fi
    done
    rm -rf --one-file-system "$dir" "$dir.log"
}
trap cleanup EXIT

fail() {
    echo "FAILED: $*" >&2
    in_chroot pg_lsclusters >&2 || true
    exit 1
}

# The chroot's cluster on a port, as "VERSION NAME STATUS DATA_DIRECTORY".
cluster_on() {
    in_chroot pg_lsclusters --no-header | awk -v port="$1" '$3 == port { print $1, $2, $4, $6 }'
}

# The first port from $1 on that no server here answers on and no cluster of the chroot has.
free_port() {
    local port=$1
    while pg_isready -q -h 127.0.0.1 -p "$port" || [ -n "$(cluster_on "$port" 2>/dev/null)" ]; do
        port=$((port + 1))
    done
    echo "$port"
}

# The script on PORT, then what the file's header says.
check() {
    local port=$1 version name status datadir answer hba said
    in_chroot bash /root/postgres.sh "$port" || fail "the script on $port"
    read -r version name status datadir <<<"$(cluster_on "$port")"
    [[ "${status:-}" == online* ]] || fail "no cluster of the chroot online on $port"
    answer=$(psql -w "postgres://postgres@127.0.0.1:$port/postgres" -Atc "select current_setting('data_directory')") ||
        fail "postgres does not get in on $port"
    [ "$answer" = "$datadir" ] || fail "$port reaches $answer, not the chroot's $datadir"
    hba="$dir/etc/postgresql/$version/$name/pg_hba.conf"
    [ "$(grep -cxF "$trust" "$hba")" = 1 ] || fail "$hba does not trust postgres once"
    said=$(in_chroot bash /root/postgres.sh "$port" 2>&1) || fail "the second run on $port"
    [ -z "$said" ] || fail "the second run on $port did something: $said"
    in_chroot pg_ctlcluster --skip-systemctl-redirect "$version" "$name" stop
    in_chroot bash /root/postgres.sh "$port" || fail "the run on $port after a stop"
    psql -w "postgres://postgres@127.0.0.1:$port/postgres" -Atc 'select 1' >/dev/null || fail "$port after a restart"
    [ "$(grep -cxF "$trust" "$hba")" = 1 ] || fail "$hba after a restart"
    echo "port $port: cluster $version/$name: ok" >&2
}

echo "debootstrap bookworm (minbase) into $dir" >&2
if ! debootstrap --variant=minbase bookworm "$dir" "$mirror" >"$dir.log" 2>&1; then
    tail -20 "$dir.log" >&2
    fail "debootstrap"
fi
mount -t proc proc "$dir/proc"
mount --bind /dev "$dir/dev"
mount --bind /dev/pts "$dir/dev/pts"
cp /etc/resolv.conf "$dir/etc/resolv.conf"
printf '#!/bin/sh\nexit 101\n' >"$dir/usr/sbin/policy-rc.d"
chmod +x "$dir/usr/sbin/policy-rc.d"
cp postgres.sh "$dir/root/postgres.sh"
if in_chroot sh -c 'command -v pg_isready || command -v psql || [ -e /usr/lib/postgresql ]'; then
    fail "the chroot already has PostgreSQL"
fi

first=$(free_port 5432)
echo "port $first: install the server, start the install's cluster" >&2
check "$first"
[ "$(cluster_on "$first" | cut -d' ' -f2)" = main ] || fail "the install made no main cluster on $first"
second=$(free_port $((first + 1)))
echo "port $second: a cluster of its own" >&2
check "$second"
[ "$(cluster_on "$second" | cut -d' ' -f2)" = "port$second" ] || fail "no cluster port$second"
echo ".ci/postgres.chroot-test.sh: ok" >&2
