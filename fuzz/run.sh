#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 20), starting from the committed seeds in
# fuzz/corpus/<target>/; fails if any target crashes, panics, leaks, hangs or allocates without
# bound. What the fuzzer learns goes to fuzz/generated/<target>/ and a failing input to
# fuzz/artifacts/<target>/ (both ignored by git); replay one with
#   RUSTC_BOOTSTRAP=1 cargo fuzz run --codegen-units 16 <target> fuzz/artifacts/<target>/<file>
#
# usage: fuzz/run.sh [--dev] [--build-only] [SECONDS] [TARGET...]
#   --dev         build without optimizations: a third of the build time, fewer inputs a second,
#                 overflow checks on (./test.sh's short runs); long runs want the default.
#   --build-only  build the targets and stop.
set -euo pipefail
cd "$(dirname "$0")/.."
dev=() build_only=
while (($#)); do
    case $1 in
    --dev) dev=(--dev) ;;
    --build-only) build_only=1 ;;
    *) break ;;
    esac
    shift
done
secs="${1:-20}"
shift $(($# > 0 ? 1 : 0))

command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --version 0.13.2
# The toolchain is stable; this lets it take the nightly flags cargo-fuzz passes (sanitizer
# coverage, AddressSanitizer).
export RUSTC_BOOTSTRAP=1
# 16 codegen units instead of cargo-fuzz's 1, so a big crate's code generation is not left to
# one core.
build=(--codegen-units 16 "${dev[@]}")

targets=("$@")
((${#targets[@]})) || mapfile -t targets < <(cargo fuzz list)
cargo fuzz build "${build[@]}"
[ -z "$build_only" ] || exit 0

failed=()
for target in "${targets[@]}"; do
    mkdir -p "fuzz/generated/$target" "fuzz/artifacts/$target"
    log="fuzz/artifacts/$target/last-run.log"
    # -malloc_limit_mb: one allocation over 64 MiB is a failure (inputs are a few KiB);
    # -timeout: one input taking over 10 s is a hang.
    if cargo fuzz run "${build[@]}" "$target" "fuzz/generated/$target" "fuzz/corpus/$target" -- \
        -max_total_time="$secs" -timeout=10 -malloc_limit_mb=64 -rss_limit_mb=2048 \
        -print_final_stats=1 >"$log" 2>&1; then
        echo "$target: $(grep -m1 -P '\tDONE ' "$log" | tr -s '\t ' ' ')"
    else
        failed+=("$target")
        echo "$target: FAILED (log: $log)"
        grep -E -A30 "panicked|ERROR: |SUMMARY" "$log" | head -60 || tail -40 "$log"
    fi
done
if ((${#failed[@]})); then
    echo "fuzz targets failed: ${failed[*]}"
    exit 1
fi
