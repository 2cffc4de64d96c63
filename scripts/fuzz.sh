#!/usr/bin/env bash
# Runs every fuzz target (or those named) for a set time each: scripts/fuzz.sh [SECONDS] [TARGET...]
# Default 600 s per target. Works on the stable toolchain: libFuzzer's coverage
# instrumentation (sancov) is enabled with stable -C flags; no sanitizer (ASan needs nightly,
# and safe Rust gets bounds and overflow checks from -Cdebug-assertions -Coverflow-checks).
# Seeds: fuzz/seeds/TARGET (committed); the growing corpus and any crash inputs go to
# fuzz/target/corpus/TARGET and fuzz/target/artifacts/TARGET. A crash fails the script.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds=${1:-600}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(pdu canonical_json sync_filter xmatrix server_name thumbnail content_disposition room_content)
fi

triple=$(rustc -vV | sed -n 's/^host: //p')
# As cargo-fuzz sets them (`cargo fuzz run -s none`). --target keeps the flags off build
# scripts and proc macros.
export RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares -Cdebug-assertions -Coverflow-checks"
cargo build --release --target "$triple" --bins

for target in "${targets[@]}"; do
    corpus=target/corpus/$target
    artifacts=target/artifacts/$target
    mkdir -p "$corpus" "$artifacts"
    echo "== $target: ${seconds}s"
    start=$(date +%s)
    # -timeout: an input running over 10 s counts as a hang; -rss_limit_mb: unbounded
    # allocation counts as a crash.
    "target/$triple/release/$target" "$corpus" "seeds/$target" \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
        -artifact_prefix="$artifacts/" -print_final_stats=1 2>&1 | tail -n 25
    echo "== $target ran $(( $(date +%s) - start ))s"
done
