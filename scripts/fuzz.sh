#!/usr/bin/env bash
# Builds the cargo-fuzz targets of fuzz/ and runs each for a bounded time (issue 6).
#
#   scripts/fuzz.sh [TARGET...]        default: every target of fuzz/Cargo.toml
#   FUZZ_SECS=60                       seconds per target (libFuzzer -max_total_time)
#   FUZZ_ARGS="-max_len=8192"          extra libFuzzer flags
#   FUZZ_SANITIZER=address             or `none` (CI): same libFuzzer coverage feedback, no ASan
#                                      shadow memory; a much cheaper build (see fuzz/README.md)
#   PUA_FUZZ_SKIP_KNOWN=1              targets skip the already reported bugs (see the
#                                      targets' skip_known) to look for other ones
#
# cargo-fuzz needs nightly-only rustc flags (-Zsanitizer, sancov passes); the stable toolchain
# accepts them with RUSTC_BOOTSTRAP=1. The build uses its own target dir per sanitizer
# (fuzz/target/san-<sanitizer>): the sanitizer flags make it useless to share with the normal
# build, and two sanitizers in one dir would rebuild each other's artifacts every time.
#
# The seed corpus fuzz/corpus/<target>/ is read only; new inputs go to fuzz/target/corpus/
# (kept between runs, not committed). A crash leaves its input in fuzz/artifacts/<target>/;
# minimize it with `cargo fuzz tmin <target> <file>` and keep it in fuzz/regressions/<target>/.
# Inputs under fuzz/regressions/<target>/ are replayed first (they must no longer crash).
#
# Exit status: 0 when no target crashed, 1 otherwise. One summary line per target.
set -uo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
FUZZ_SECS=${FUZZ_SECS:-60}
FUZZ_SANITIZER=${FUZZ_SANITIZER:-address}
# `cargo fuzz run` rebuilds when its flags differ from the build's: pass the same ones to both.
FLAGS=(-s "$FUZZ_SANITIZER" --target-dir "$ROOT/fuzz/target/san-$FUZZ_SANITIZER")
export RUSTC_BOOTSTRAP=1
# The workspace's shared CARGO_TARGET_DIR must not be used for sanitizer builds.
unset CARGO_TARGET_DIR

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz not found: installing it (cargo install cargo-fuzz)" >&2
    cargo install --locked cargo-fuzz || exit 1
fi

if [ $# -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cd fuzz && cargo fuzz list)
fi

echo "building ${#targets[@]} fuzz target(s) (sanitizer: $FUZZ_SANITIZER)..." >&2
build_start=$SECONDS
if ! (cd fuzz && cargo fuzz build "${FLAGS[@]}"); then
    echo "fuzz build failed" >&2
    exit 1
fi
echo "fuzz build: $((SECONDS - build_start)) s" >&2

logs=$ROOT/fuzz/target/logs
mkdir -p "$logs"
failed=0
summary=()
for t in "${targets[@]}"; do
    work=$ROOT/fuzz/target/corpus/$t
    seeds=$ROOT/fuzz/corpus/$t
    mkdir -p "$work" "$seeds"
    log=$logs/$t.log
    status=ok

    # Known reproducers must not crash any more.
    regs=$ROOT/fuzz/regressions/$t
    if [ -d "$regs" ] && [ -n "$(ls -A "$regs" 2>/dev/null)" ]; then
        if ! (cd fuzz && cargo fuzz run "${FLAGS[@]}" "$t" "$regs"/* -- -runs=1) >"$logs/$t.regressions.log" 2>&1; then
            status="REGRESSION (see $logs/$t.regressions.log)"
            failed=1
        fi
    fi

    echo "fuzzing $t for ${FUZZ_SECS}s..." >&2
    # shellcheck disable=SC2086 # FUZZ_ARGS is a list of flags
    if ! (cd fuzz && cargo fuzz run "${FLAGS[@]}" "$t" "$work" "$seeds" -- \
        -max_total_time="$FUZZ_SECS" -timeout=10 -print_final_stats=1 ${FUZZ_ARGS:-}) \
        >"$log" 2>&1; then
        artifact=$(grep -ao 'Test unit written to [^ ]*' "$log" | tail -1 | sed 's/Test unit written to //')
        if [ "$status" = ok ]; then
            status="CRASH ${artifact:-(see $log)}"
        else
            status="REGRESSION+CRASH ${artifact:-(see $log)}"
        fi
        failed=1
    fi
    runs=$(grep -ao 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -ao '[0-9]*$' | tail -1)
    eps=$(grep -ao 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -ao '[0-9]*$' | tail -1)
    last=$(grep -aE '^#[0-9]+' "$log" | tail -1)
    cov=$(grep -ao 'cov: [0-9]*' <<<"$last" | grep -ao '[0-9]*')
    ft=$(grep -ao 'ft: [0-9]*' <<<"$last" | grep -ao '[0-9]*')
    corp=$(grep -ao 'corp: [0-9]*' <<<"$last" | grep -ao '[0-9]*')
    line=$(printf '%-12s %-8s execs=%s exec/s=%s cov=%s ft=%s corpus=%s' \
        "$t" "${status%% *}" "${runs:-?}" "${eps:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}")
    [ "$status" != ok ] && line="$line  ${status#* }"
    summary+=("$line")
    echo "$line"
done

echo "---- fuzz summary (${FUZZ_SECS}s per target, logs in fuzz/target/logs) ----"
printf '%s\n' "${summary[@]}"
exit $failed
