#!/usr/bin/env bash
# soak.sh: issue 6's soak test. SmolLM2-135M guided by the demo `upbeat` ARM at concurrency 8 for
# DURATION seconds (default 600) after a WARMUP-second warm-up (default 120), sampling the RSS of
# every service process (router, base-worker, rm-worker) every 10 s. Passes when no request
# failed and no service's RSS at the end exceeds its RSS after the warm-up by more than 5%.
# Writes $WORK/rss.csv, $WORK/bench*/ and prints a table.
#
# Usage: benchmarks/soak.sh [WORKDIR]   (env: DURATION=600 WARMUP=120 CONCURRENCY=8 MAX_TOKENS=64 THREADS=1)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

WORK="${1:-target/soak}"
DURATION="${DURATION:-600}"
WARMUP="${WARMUP:-120}"
CONCURRENCY="${CONCURRENCY:-8}"
MAX_TOKENS="${MAX_TOKENS:-64}"
THREADS="${THREADS:-1}"
BIN="${BIN:-target/release}"
GENARM="$BIN/genarm"

say() { printf '\n== soak: %s\n' "$*" >&2; }

say "building (release)"
cargo build --release --workspace --bins
GGUF="$("$GENARM" demo --fetch-only)"
mkdir -p "$WORK"
"$GENARM" demo-prompts --out "$WORK/prompts"

say "launching SmolLM2-135M + upbeat ARM"
CANDLE_NUM_THREADS="$THREADS" launch_cluster "$WORK/launch.log" --base "$GGUF" --rm "upbeat=$GGUF" \
    --lora "upbeat=demo/arms/upbeat"

# The services are the launcher's children (each in its own process group).
services() { pgrep -P "$LAUNCH_PID" | while read -r pid; do
    name="$(cat "/proc/$pid/comm" 2>/dev/null)" || continue
    printf '%s %s\n' "$pid" "$name"
done; }
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

bench() {  # bench SECONDS OUTDIR
    "$GENARM" bench --url "$URL" --prompts "$WORK/prompts/eval.jsonl" --concurrency "$CONCURRENCY" \
        --max-tokens "$MAX_TOKENS" --temperature 1 --guidance upbeat=1 --duration "$1" --warmup 0 \
        --seed 0 --out "$2"
}

say "warm-up: ${WARMUP} s at concurrency $CONCURRENCY"
bench "$WARMUP" "$WORK/bench-warmup"

mapfile -t SERVICES < <(services)
if ((${#SERVICES[@]} < 3)); then
    echo "expected a router and two workers under the launcher (pid $LAUNCH_PID), found: ${SERVICES[*]}" >&2
    exit 1
fi
echo "t_s,pid,service,rss_kib" >"$WORK/rss.csv"
declare -A BASE
for s in "${SERVICES[@]}"; do
    read -r pid name <<<"$s"
    BASE[$pid]="$(rss_kib "$pid")"
    echo "0,$pid,$name,${BASE[$pid]}" >>"$WORK/rss.csv"
done

say "soak: ${DURATION} s at concurrency $CONCURRENCY, RSS every 10 s"
bench "$DURATION" "$WORK/bench" &
BENCH_PID=$!
start=$SECONDS
while kill -0 "$BENCH_PID" 2>/dev/null; do
    sleep 10
    for s in "${SERVICES[@]}"; do
        read -r pid name <<<"$s"
        echo "$((SECONDS - start)),$pid,$name,$(rss_kib "$pid")" >>"$WORK/rss.csv"
    done
done
bench_rc=0
wait "$BENCH_PID" || bench_rc=$?
stop_cluster

python3 - "$WORK/rss.csv" "$bench_rc" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
bench_rc = int(sys.argv[2])
ok = bench_rc == 0 and len({r["pid"] for r in rows}) >= 3
print("\n| service | RSS after warm-up (MiB) | peak (MiB) | at the end (MiB) | growth |")
print("|---|---|---|---|---|")
for pid in dict.fromkeys(r["pid"] for r in rows):
    mine = [r for r in rows if r["pid"] == pid and int(r["rss_kib"]) > 0]
    base, end = int(mine[0]["rss_kib"]), int(mine[-1]["rss_kib"])
    peak = max(int(r["rss_kib"]) for r in mine)
    growth = (end - base) / base
    ok &= growth <= 0.05
    print(f"| {mine[0]['service']} | {base / 1024:.1f} | {peak / 1024:.1f} | {end / 1024:.1f} | {growth * 100:+.2f}% |")
print(f"\nbench exit code {bench_rc} (non-zero: some request failed); verdict: {'PASS' if ok else 'FAIL'}")
sys.exit(0 if ok else 1)
PY
