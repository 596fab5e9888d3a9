#!/usr/bin/env bash
# Runs orch's fuzz targets (docs/fuzzing.md), one after the other, each for SECONDS
# (default 60). Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz
# --locked`).
#
#   fuzz/run.sh                  # every target, 60 s each
#   fuzz/run.sh 180 plan_yaml    # one target for 3 minutes
#
# New inputs go to fuzz/scratch/<target>/ (not committed; later runs start from it), the
# committed seeds in fuzz/corpus/<target>/ are only read. A crash, panic, timeout or OOM
# is saved in fuzz/artifacts/<target>/ and makes the script exit 1 once every target ran;
# replay one with `cargo +nightly fuzz run TARGET fuzz/artifacts/TARGET/crash-...`.
# Each target's libFuzzer output is in fuzz/scratch/logs/<target>.log.
set -euo pipefail

cd "$(dirname "$0")/.."
secs=${1:-60}
shift || true

if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    echo "fuzz/run.sh: the nightly Rust toolchain is missing (see \`rustup toolchain list\`);" >&2
    echo "cargo fuzz needs it for the sanitizer and coverage flags" >&2
    exit 1
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "fuzz/run.sh: cargo-fuzz is missing: cargo install cargo-fuzz --locked" >&2
    exit 1
fi

if [ $# -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo +nightly fuzz list)
fi

cargo +nightly fuzz build
mkdir -p fuzz/scratch/logs
failed=()
summary=()
for t in "${targets[@]}"; do
    dict=fuzz/dicts/$t.dict
    case $t in plan_*) dict=fuzz/dicts/plan.dict ;; esac
    args=(-max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1)
    [ -f "$dict" ] && args+=(-dict="$dict")
    mkdir -p "fuzz/scratch/$t"
    log=fuzz/scratch/logs/$t.log
    echo "fuzz/run.sh: $t for ${secs}s"
    if cargo +nightly fuzz run "$t" "fuzz/scratch/$t" "fuzz/corpus/$t" -- "${args[@]}" >"$log" 2>&1; then
        status=ok
    else
        status=FAILED
        failed+=("$t")
        grep -E '^(thread|==[0-9]+==ERROR|SUMMARY|artifact_prefix|Test unit written)' "$log" | head -20 >&2 || true
    fi
    # The last status line: "#N DONE cov: C ft: F corp: ... exec/s: E rss: ...".
    last=$(grep -E '^#[0-9]+' "$log" | tail -1 || true)
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    summary+=("$(printf '%-14s %-6s runs=%-9s %s' "$t" "$status" "${runs:-?}" \
        "$(echo "$last" | grep -oE '(cov|ft|corp|exec/s): [^ ]+' | tr '\n' ' ')")")
done

printf '%s\n' "fuzz/run.sh: ${secs}s per target" "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz/run.sh: FAILED: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
    exit 1
fi
