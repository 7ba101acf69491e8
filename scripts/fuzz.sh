#!/usr/bin/env bash
# fuzz.sh: runs every cargo-fuzz target of fuzz/ for N seconds each (not part of CI). See the
# "Fuzzing" section of docs/security.md for the targets and what they check.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]     # default: 60 seconds, every target
#
# Needs the nightly toolchain (`rustup toolchain install nightly`); installs cargo-fuzz if missing.
# Builds into fuzz/target (never the workspace's target/). Each target starts from its committed
# seed corpus fuzz/corpus/TARGET; new inputs go to fuzz/target/corpus/TARGET (not committed) and
# crashes to fuzz/artifacts/TARGET/ — rerun one with
#   cargo +nightly fuzz run [--features model] TARGET fuzz/artifacts/TARGET/crash-...
#
# Environment:
#   GENARM_FUZZ_JOBS     targets run at once (default 1)
#   GENARM_FUZZ_RSS_MB   libFuzzer -rss_limit_mb (default 2048)
#   GENARM_FUZZ_MODEL    1 also builds and runs gguf_header and safetensors_dir (pulls candle: a
#                        much longer first build)
set -euo pipefail

cd "$(dirname "$0")/.."
secs="${1:-60}"
shift || true
rss="${GENARM_FUZZ_RSS_MB:-2048}"
jobs="${GENARM_FUZZ_JOBS:-1}"

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz.sh: the nightly toolchain is missing; install it with: rustup toolchain install nightly" >&2
    exit 1
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

features=()
targets=(chat_template detokenize step_reply request_json)
if [[ "${GENARM_FUZZ_MODEL:-0}" == 1 ]]; then
    features=(--features model)
    targets+=(gguf_header safetensors_dir)
fi
if [[ $# -gt 0 ]]; then
    targets=("$@")
    for t in "$@"; do
        if [[ "$t" == gguf_header || "$t" == safetensors_dir ]]; then
            features=(--features model)
        fi
    done
fi

cargo +nightly fuzz build -O "${features[@]}"

run_one() {
    local t="$1" work="fuzz/target/corpus/$1"
    mkdir -p "$work"
    echo "== $t: ${secs}s" >&2
    cargo +nightly fuzz run -O "${features[@]}" "$t" "$work" "fuzz/corpus/$t" -- \
        -max_total_time="$secs" -rss_limit_mb="$rss" -timeout=30 -print_final_stats=1 \
        >"fuzz/target/$t.log" 2>&1 || { echo "== $t FAILED: see fuzz/target/$t.log and fuzz/artifacts/$t/" >&2; return 1; }
    grep -E '^(stat::number_of_executed_units|stat::average_exec_per_sec|Done)' "fuzz/target/$t.log" | sed "s/^/$t: /" >&2 || true
}

failed=0
running=0
for t in "${targets[@]}"; do
    run_one "$t" &
    running=$((running + 1))
    if [[ $running -ge $jobs ]]; then
        wait -n || failed=1
        running=$((running - 1))
    fi
done
while [[ $running -gt 0 ]]; do
    wait -n || failed=1
    running=$((running - 1))
done
exit $failed
