#!/usr/bin/env bash
# compare.sh: genarm vs the reference GenARM decoding loop, side by side, from one run.
#   - the same models: the demo base (SmolLM2-135M-Instruct GGUF) and the demo `upbeat` ARM
#     (its LoRA adapter), exported to HF format for transformers with `genarm merge`;
#   - the same prompts (the demo's evaluation prompts), the same token counts (--ignore-eos on
#     both sides is not available in the OpenAI API, so both stop at EOS or MAX_TOKENS and the
#     tokens actually generated are counted), greedy decoding, guidance weight ALPHA;
#   - genarm: `genarm bench` at concurrency 1 and 16 against a local `genarm launch` cluster;
#   - reference: benchmarks/reference_loop.py (transformers + torch on CPU, one prompt at a time).
# Prints the ratios. Installs torch + transformers from PyPI into a venv at the versions pinned in
# scripts/goldens-requirements.txt (about 3 GB, not in CI).
#
# Usage: benchmarks/compare.sh [WORKDIR]   (env: PROMPTS=16 MAX_TOKENS=64 ALPHA=1 THREADS=2)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

WORK="${1:-target/compare}"
PROMPTS="${PROMPTS:-16}"
MAX_TOKENS="${MAX_TOKENS:-64}"
ALPHA="${ALPHA:-1}"
THREADS="${THREADS:-2}"
BIN="${BIN:-target/release}"
VENV="${REFERENCE_VENV:-${GENARM_CACHE_DIR:-$HOME/.cache/genarm}/reference-venv}"

say() { printf '\n== compare: %s\n' "$*" >&2; }

say "building genarm (release)"
cargo build --release --workspace --bins
GENARM="$BIN/genarm"
GGUF="$("$GENARM" demo --fetch-only)"
ARM_ADAPTER="demo/arms/upbeat"
mkdir -p "$WORK"

say "exporting the models to HF format"
[[ -f "$WORK/base-hf/config.json" ]] || "$GENARM" merge --model "$GGUF" --out "$WORK/base-hf"
[[ -f "$WORK/arm-hf/config.json" ]] || "$GENARM" merge --model "$GGUF" --lora "$ARM_ADAPTER" --out "$WORK/arm-hf"
"$GENARM" demo-prompts --out "$WORK/prompts"
head -n "$PROMPTS" "$WORK/prompts/eval.jsonl" > "$WORK/prompts.jsonl"

say "torch + transformers at the versions of scripts/goldens-requirements.txt in $VENV (PyPI, ~3 GB once)"
ensure_pinned_venv "$VENV" scripts/goldens-requirements.txt

say "genarm: launching base + upbeat ARM"
LOG="$WORK/launch.log"
CANDLE_NUM_THREADS="$THREADS" launch_cluster "$LOG" --base "$GGUF" --rm "upbeat=$GGUF" \
    --lora "upbeat=$ARM_ADAPTER"

say "genarm bench (concurrency 1 and 16, unguided and guided)"
"$GENARM" bench --url "$URL" --prompts "$WORK/prompts.jsonl" --concurrency 1,16 \
    --max-tokens "$MAX_TOKENS" --temperature 0 --guidance "upbeat=$ALPHA" --compare-unguided \
    --requests "$PROMPTS" --warmup 2 --out "$WORK/bench"
stop_cluster

say "reference loop (guided, one prompt at a time; then unguided)"
"$VENV/bin/python" benchmarks/reference_loop.py --base "$WORK/base-hf" --arm "$WORK/arm-hf:$ALPHA" \
    --prompts "$WORK/prompts.jsonl" --max-tokens "$MAX_TOKENS" --threads "$THREADS" --out "$WORK/ref_guided.json"
"$VENV/bin/python" benchmarks/reference_loop.py --base "$WORK/base-hf" \
    --prompts "$WORK/prompts.jsonl" --max-tokens "$MAX_TOKENS" --threads "$THREADS" --out "$WORK/ref_unguided.json"

python3 - "$WORK" <<'PY'
import json, sys
work = sys.argv[1]
bench = json.load(open(f"{work}/bench/bench.json"))
ref_g = json.load(open(f"{work}/ref_guided.json"))
ref_u = json.load(open(f"{work}/ref_unguided.json"))
def genarm(c, guided):
    for r in bench["runs"]:
        if r["concurrency"] == c and r["mode"] == ("guided" if guided else "unguided"):
            return r["output_tokens_per_s"]
    raise SystemExit(f"no bench run at concurrency {c} guided={guided}")
print()
print("| loop | ARMs | concurrency | tokens/s | vs reference |")
print("|---|---|---|---|---|")
for guided, ref in ((False, ref_u), (True, ref_g)):
    arms = 1 if guided else 0
    print(f"| reference (transformers) | {arms} | 1 (serial) | {ref['tokens_per_s']:.2f} | 1.00x |")
    for c in (1, 16):
        g = genarm(c, guided)
        print(f"| genarm | {arms} | {c} | {g:.2f} | {g / ref['tokens_per_s']:.2f}x |")
PY
