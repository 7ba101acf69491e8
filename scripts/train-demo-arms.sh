#!/usr/bin/env bash
# train-demo-arms.sh: rebuilds the two demo ARMs from scratch, exactly as committed under
# demo/arms/{upbeat,concise}:
#   1. the demo base (SmolLM2-135M-Instruct GGUF, fetched and checksummed by `genarm demo --fetch-only`);
#   2. the training prompts (`genarm demo-prompts`: topics disjoint from the evaluation prompts);
#   3. SAMPLES responses per prompt sampled from the base through a local cluster, scored by the
#      deterministic demo scorers (crates/genarm-demo/src/scorers.rs), (best, worst) pairs per
#      objective (`genarm make-pairs`; for `concise` only a response that ended by itself may be
#      chosen: trained on truncated "short" ones, the ARM learned to answer with dots);
#   4. `genarm train-arm` per objective (LoRA on the base; PEFT adapter written to demo/arms/NAME).
# Every step is seeded. Takes about an hour on 2 CPU cores (sampling ~15 min, training ~45 min). Usage: scripts/train-demo-arms.sh [WORKDIR]
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

WORK="${1:-target/demo-recipe}"
PROMPTS="${PROMPTS:-360}"          # training prompts used (of 640)
SAMPLES="${SAMPLES:-4}"            # responses per prompt; pairs = (best, worst)
MAX_TOKENS="${MAX_TOKENS:-64}"     # response length cap when sampling
TEMPERATURE="${TEMPERATURE:-0.8}"
EPOCHS="${EPOCHS:-1}"
LORA_RANK="${LORA_RANK:-8}"
LORA_ALPHA="${LORA_ALPHA:-16}"
LR="${LR:-1e-3}"
BETA_R="${BETA_R:-0.05}"
BIN="${BIN:-target/debug}"
BACKBONE_ID="HuggingFaceTB/SmolLM2-135M-Instruct"

say() { printf '\n== train-demo-arms: %s\n' "$*" >&2; }

say "building"
cargo build --workspace --bins
GENARM="$BIN/genarm"
GGUF="$("$GENARM" demo --fetch-only)"
mkdir -p "$WORK"

say "prompts -> $WORK/prompts"
"$GENARM" demo-prompts --out "$WORK/prompts"

say "sampling the base on $PROMPTS prompts x $SAMPLES"
LOG="$WORK/launch.log"
launch_cluster "$LOG" --base "$GGUF"
"$GENARM" make-pairs --url "$URL" --prompts "$WORK/prompts/train.jsonl" --limit "$PROMPTS" \
    --samples "$SAMPLES" --max-tokens "$MAX_TOKENS" --temperature "$TEMPERATURE" --seed 1 \
    --concurrency 16 --require-finished concise --out "$WORK/pairs"
stop_cluster

# Both ARMs train at once, one thread each (as the committed adapters were made: the thread
# count changes float summation order, so it is part of the recipe).
PIDS=()
declare -A EPOCHS_OF=([upbeat]="$EPOCHS" [concise]=3)   # concise has ~100 pairs, upbeat ~300
for NAME in upbeat concise; do
    say "training the $NAME ARM (log: $WORK/train-$NAME.log)"
    "$GENARM" train-arm --model "$GGUF" --base-name "$BACKBONE_ID" \
        --data "$WORK/pairs/pairs-$NAME.jsonl" --out "$WORK/arms/$NAME" --overwrite \
        --beta-r "$BETA_R" --lora-rank "$LORA_RANK" --lora-alpha "$LORA_ALPHA" --lr "$LR" \
        --warmup-steps 5 --epochs "${EPOCHS_OF[$NAME]}" --batch-size 4 --eval-steps 0 --seed 1 --threads 1 \
        >"$WORK/train-$NAME.log" 2>&1 &
    PIDS+=($!)
done
for PID in "${PIDS[@]}"; do wait "$PID"; done
for NAME in upbeat concise; do
    mkdir -p "demo/arms/$NAME"
    cp "$WORK/arms/$NAME/adapter_config.json" "$WORK/arms/$NAME/adapter_model.safetensors" \
       "$WORK/arms/$NAME/train_summary.json" "demo/arms/$NAME/"
done
say "done: demo/arms/upbeat and demo/arms/concise"
