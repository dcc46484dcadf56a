#!/usr/bin/env bash
# A PostgreSQL server for the tests on 127.0.0.1:PORT (default 5432) that lets user postgres
# in from 127.0.0.1 without a password (the tests connect to
# postgres://postgres@127.0.0.1:5432/postgres, test-services/src/lib.rs).
#
# A server already answering there is left as it is (with a note when it asks postgres for a
# password). Otherwise, with Debian's tools: the server is installed when missing (apt-get
# install postgresql); the cluster on that port is made when there is none (named main when that
# name is free, else portPORT); its pg_hba.conf gets one line first, trusting postgres from
# 127.0.0.1 (added once); and it is started, or reloaded when it was running. Running it again
# changes nothing.
#
# usage: .ci/postgres.sh [PORT]
# For its tests (.ci/postgres.test.sh): PG_CONF_ROOT (default /etc/postgresql), PG_LIB_ROOT
# (default /usr/lib/postgresql) and PG_WAIT_SECS (how long it waits for the server, default 30).
set -euo pipefail
port="${1:-5432}"
conf_root="${PG_CONF_ROOT:-/etc/postgresql}"
lib_root="${PG_LIB_ROOT:-/usr/lib/postgresql}"
wait_secs="${PG_WAIT_SECS:-30}"
trust="host all postgres 127.0.0.1/32 trust"

answers() {
    command -v pg_isready >/dev/null && pg_isready -q -h 127.0.0.1 -p "$port"
}

lets_postgres_in() {
    command -v psql >/dev/null &&
        psql -w -h 127.0.0.1 -p "$port" -U postgres -d postgres -Atqc 'select 1' >/dev/null 2>&1
}

# A server answering there is left as it is, with a note when it asks postgres for a password.
leave_as_is() {
    if ! lets_postgres_in; then
        echo "note: the PostgreSQL server on 127.0.0.1:$port does not let postgres in without a" \
            "password, as the tests connect (set POSTGRES_ADMIN_URL for another server); left as it is" >&2
    fi
    exit 0
}

if answers; then
    leave_as_is
fi

# The newest server version installed.
server_version() {
    local v
    for v in "$lib_root"/*/bin/postgres; do
        if [ -x "$v" ]; then
            basename "$(dirname "$(dirname "$v")")"
        fi
    done | sort -V | tail -1
}

if ! command -v pg_createcluster >/dev/null || ! command -v pg_isready >/dev/null ||
    [ -z "$(server_version)" ]; then
    echo "PostgreSQL: installing the server (Debian's postgresql)" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null
fi

# The cluster on the port, as "VERSION NAME STATUS".
cluster=$(pg_lsclusters --no-header | awk -v port="$port" '$3 == port { print $1, $2, $4; exit }')
if [ -z "$cluster" ] && answers; then
    # No cluster here has the port, yet a server answers on it (one pg_isready was missing to
    # see before): not ours to configure.
    leave_as_is
fi
if [ -z "$cluster" ]; then
    version=$(server_version)
    name=main
    if [ -e "$conf_root/$version/main" ]; then
        name="port$port"
    fi
    echo "PostgreSQL: creating cluster $version/$name on port $port" >&2
    pg_createcluster -p "$port" "$version" "$name" >/dev/null
    cluster="$version $name down"
fi
read -r version name status <<<"$cluster"

# First match wins: the line goes ahead of the defaults that ask for a password. Written in
# place, so the file keeps its owner and mode.
hba="$conf_root/$version/$name/pg_hba.conf"
changed=
if ! grep -qxF "$trust" "$hba"; then
    echo "PostgreSQL: trusting postgres from 127.0.0.1 in $hba" >&2
    rest=$(cat "$hba")
    printf '# The test suite connects as postgres without a password (.ci/postgres.sh).\n%s\n%s\n' \
        "$trust" "$rest" >"$hba"
    changed=1
fi

if [[ "$status" == online* ]]; then
    if [ -n "$changed" ]; then
        pg_ctlcluster --skip-systemctl-redirect "$version" "$name" reload
    fi
else
    echo "PostgreSQL: starting cluster $version/$name (port $port)" >&2
    pg_ctlcluster --skip-systemctl-redirect "$version" "$name" start
fi
deadline=$((SECONDS + wait_secs))
until answers && lets_postgres_in; do
    if ((SECONDS >= deadline)); then
        echo "FAILED: PostgreSQL cluster $version/$name does not let postgres in on 127.0.0.1:$port" \
            "without a password (see pg_lsclusters and its log)" >&2
        exit 1
    fi
    sleep 0.1
done
