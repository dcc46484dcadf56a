#!/bin/sh
# Stands in for cargo in the Dockerfile's build stage (stand-ins.Dockerfile, target rust), so
# the test runs that stage (its packages, the copied sources, the cache mounts) without a
# release build: it checks it is run in the repository's sources without build output (the
# .dockerignore), then leaves a gochat that says it is this stand-in.
set -eu
[ -f Cargo.lock ] && [ -f gateway/Cargo.toml ] && [ -f deploy/docker/Dockerfile ] \
    || { echo "cargo stand-in: not in the repository's sources: $(pwd)" >&2; exit 1; }
[ ! -e target/debug ] && [ ! -e .git ] \
    || { echo "cargo stand-in: the build context holds build output or .git" >&2; exit 1; }
command -v protoc >/dev/null || { echo "cargo stand-in: no protoc" >&2; exit 1; }
mkdir -p target/release
printf '#!/bin/sh\necho "cargo stand-in: %s"\n' "$*" > target/release/gochat
chmod +x target/release/gochat
