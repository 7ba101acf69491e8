#!/usr/bin/env bash
# quarter_arm.sh: guided vs unguided throughput with an ARM a quarter the base's size (issue 6's
# ≥ 0.75× target at concurrency 16), on two random Llama fixtures sharing SmolLM2's tokenizer and
# its 49k vocabulary:
#   base  hidden 768, 12 layers, MLP 2048, 12 heads / 4 KV heads: 151M parameters, 113M MACs per token
#   ARM   hidden 384,  6 layers, MLP 1024,  6 heads / 2 KV heads:  47M parameters,  28M MACs per token
# (compute per token, which is what a decode step costs, is 4.0× smaller for the ARM; the
# untied 49k embeddings make the parameter ratio 3.2×). Release build, each worker on
# CANDLE_NUM_THREADS=$THREADS, everything on this machine's cores.
#
# Usage: benchmarks/quarter_arm.sh [WORKDIR]   (env: REQUESTS=32 MAX_TOKENS=64 CONCURRENCY=1,16 THREADS=1
#        WIRE=full|sparse: the router's --logits-wire; default: the router's default)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

WORK="${1:-target/quarter-arm}"
WIRE="${WIRE:-}"
REQUESTS="${REQUESTS:-32}"
MAX_TOKENS="${MAX_TOKENS:-64}"
CONCURRENCY="${CONCURRENCY:-1,16}"
THREADS="${THREADS:-1}"
BIN="${BIN:-target/release}"
GENARM="$BIN/genarm"

say() { printf '\n== quarter_arm: %s\n' "$*" >&2; }

say "building (release)"
cargo build --release --workspace --bins
mkdir -p "$WORK/models"
[[ -f "$WORK/models/base-151m/model.safetensors" ]] ||
    "$BIN/genarm-fixtures" --sized base-151m:768:2048:12:12:4:49152 "$WORK/models"
[[ -f "$WORK/models/arm-47m/model.safetensors" ]] ||
    "$BIN/genarm-fixtures" --sized arm-47m:384:1024:6:6:2:49152 "$WORK/models"
# The fixtures' own tokenizer has only a few hundred ids (workers send logits for the tokenizer's
# ids only), so both models get SmolLM2's tokenizer: a real 49,152-id vocabulary on the wire and in
# the router's fusion. Its special ids (0 <|endoftext|>, 1 <|im_start|>, 2 <|im_end|>) are the
# fixtures' too.
GGUF="$("$GENARM" demo --fetch-only)"
[[ -f "$WORK/smollm2-hf/tokenizer.json" ]] || "$GENARM" merge --model "$GGUF" --out "$WORK/smollm2-hf"
for m in base-151m arm-47m; do
    cp "$WORK/smollm2-hf/tokenizer.json" "$WORK/smollm2-hf/tokenizer_config.json" "$WORK/models/$m/"
done
"$GENARM" demo-prompts --out "$WORK/prompts"

say "launching base-151m + arm-47m"
CANDLE_NUM_THREADS="$THREADS" launch_cluster "$WORK/launch.log" \
    --base "$WORK/models/base-151m" --rm "arm=$WORK/models/arm-47m" ${WIRE:+"--router-arg=--logits-wire=$WIRE"}

say "genarm bench (concurrency $CONCURRENCY, unguided and guided)"
"$GENARM" bench --url "$URL" --prompts "$WORK/prompts/eval.jsonl" --concurrency "$CONCURRENCY" \
    --max-tokens "$MAX_TOKENS" --temperature 0 --guidance arm=1 --compare-unguided \
    --requests "$REQUESTS" --warmup 2 --seed 0 --out "$WORK/bench"
stop_cluster
cat "$WORK/bench/bench.md"
