#!/usr/bin/env bash
# prefix_cache.sh: TTFT of requests sharing a 1,024-token system prompt, with the workers' prefix
# cache off (--no-prefix-cache) and on, in one run (issue 15's first target: ≥ 5× lower TTFT).
# SmolLM2-135M-Instruct (GGUF) is the base and, guided at weight 1, also the ARM, so both models
# cache; requests go one at a time (concurrency 1), greedy, 8 output tokens, after 1 warm-up
# request that fills the cache. Release build unless BIN says otherwise.
#
# Usage: benchmarks/prefix_cache.sh [WORKDIR]   (env: REQUESTS=8 MAX_TOKENS=8 THREADS=2
#        BIN=target/release NO_BUILD=1: skip the build)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

WORK="${1:-target/prefix-cache}"
REQUESTS="${REQUESTS:-8}"
MAX_TOKENS="${MAX_TOKENS:-8}"
THREADS="${THREADS:-2}"
BIN="${BIN:-target/release}"
GENARM="$BIN/genarm"

say() { printf '\n== prefix_cache: %s\n' "$*" >&2; }

if [[ -z "${NO_BUILD:-}" ]]; then
    say "building (release)"
    cargo build --release --workspace --bins
fi
mkdir -p "$WORK"
GGUF="$("$GENARM" demo --fetch-only)"

# One system text of about 1,024 SmolLM2 tokens (a ~4,100-character paragraph), then a different
# question per request: the shared part is the chat template's header and the system text.
python3 - "$WORK/prompts.jsonl" <<'EOF'
import json, sys
system = ("You are a patient assistant for a small library. Visitors ask about opening hours, "
          "borrowing rules, lost cards, quiet rooms and the children's corner. ") * 34
questions = ["When do you open on Sunday?", "How many books may I borrow?", "I lost my card.",
             "Is there a quiet room?", "Can children borrow films?", "Do you print documents?",
             "How long is a loan?", "Can I renew online?"]
with open(sys.argv[1], "w") as f:
    for q in questions:
        f.write(json.dumps({"prompt": system + "\n\nQuestion: " + q}) + "\n")
EOF

run() {
    local label="$1"
    shift
    say "launching ($label)"
    CANDLE_NUM_THREADS="$THREADS" launch_cluster "$WORK/launch-$label.log" \
        --base "$GGUF" --rm "helpful=$GGUF" --worker-arg=--kv-capacity-tokens=32768 "$@"
    say "genarm bench ($label)"
    "$GENARM" bench --url "$URL" --prompts "$WORK/prompts.jsonl" --concurrency 1 \
        --max-tokens "$MAX_TOKENS" --temperature 0 --guidance helpful=1 \
        --requests "$REQUESTS" --warmup 1 --seed 0 --out "$WORK/$label"
    stop_cluster
}

run uncached --worker-arg=--no-prefix-cache
run cached

python3 - "$WORK" <<'EOF'
import json, sys
work = sys.argv[1]
def ttft(label):
    r = json.load(open(f"{work}/{label}/bench.json"))["runs"][0]
    return r["ttft"]["p50"], r["ttft"]["p95"]
(u50, u95), (c50, c95) = ttft("uncached"), ttft("cached")
print("| prefix cache | TTFT p50 | TTFT p95 |")
print("|---|---|---|")
print(f"| off | {u50*1e3:.0f} ms | {u95*1e3:.0f} ms |")
print(f"| on | {c50*1e3:.0f} ms | {c95*1e3:.0f} ms |")
print(f"\nTTFT p50 off/on: {u50/c50:.1f}x")
EOF
