#!/usr/bin/env bash
# wire_dtype.sh: what --logits-dtype bf16/f16 (2 bytes per logit on the wire instead of 4) costs in
# output quality and buys in speed, on SmolLM2-135M guided by the demo `upbeat` ARM.
#   1. Greedy parity: the same PROMPTS chat prompts, greedy, MAX_TOKENS tokens, unguided and guided
#      (upbeat=1), once per entry of DTYPES (the default runs f32 twice: the second run is the
#      noise floor, since batch composition can change f32 rounding); a completion is at parity
#      when its text equals the first f32 run's. Also reports the mean length of the common
#      prefix (in characters) of those that differ.
#   2. Speed: `genarm bench` at concurrency 16, unguided and guided, per dtype (wire bytes, router
#      overhead and tokens/s from the router's per-step accounting).
# On the full-row wire (--logits-wire full): the sparse wire sends f32 certificates whatever
# --logits-dtype says.
# Usage: benchmarks/wire_dtype.sh [WORKDIR]   (env: PROMPTS=64 MAX_TOKENS=64 DTYPES="f32 bf16 f16 f32" THREADS=1)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

WORK="${1:-target/wire-dtype}"
PROMPTS="${PROMPTS:-64}"
MAX_TOKENS="${MAX_TOKENS:-64}"
DTYPES="${DTYPES:-f32 bf16 f16 f32}"
THREADS="${THREADS:-1}"
BIN="${BIN:-target/release}"
GENARM="$BIN/genarm"

say() { printf '\n== wire_dtype: %s\n' "$*" >&2; }

say "building (release)"
cargo build --release --workspace --bins
GGUF="$("$GENARM" demo --fetch-only)"
mkdir -p "$WORK"
"$GENARM" demo-prompts --out "$WORK/prompts"
head -n "$PROMPTS" "$WORK/prompts/eval.jsonl" >"$WORK/prompts.jsonl"

RUNS=()
for dtype in $DTYPES; do
    run="$dtype-${#RUNS[@]}"
    RUNS+=("$run")
    if [[ -f "$WORK/greedy-$run.json" && -f "$WORK/bench-$run/bench.json" ]]; then
        say "run $run: kept from an earlier invocation (delete $WORK/greedy-$run.json to redo it)"
        continue
    fi
    say "--logits-dtype $dtype (run $run)"
    CANDLE_NUM_THREADS="$THREADS" launch_cluster "$WORK/launch-$run.log" --base "$GGUF" \
        --rm "upbeat=$GGUF" --lora "upbeat=demo/arms/upbeat" --router-arg="--logits-dtype=$dtype" --router-arg="--logits-wire=full"
    python3 - "$URL" "$WORK/prompts.jsonl" "$MAX_TOKENS" "$WORK/greedy-$run.json" <<'PY'
import json, sys, urllib.request
from concurrent.futures import ThreadPoolExecutor
url, prompts_file, max_tokens, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
prompts = [json.loads(l)["prompt"] for l in open(prompts_file) if l.strip()]
with urllib.request.urlopen(url + "/v1/models", timeout=60) as r:
    model = next(m["id"] for m in json.load(r)["data"] if m.get("role") != "reward")
def complete(job):
    prompt, guided = job
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0, "guidance": {"rewards": {"upbeat": 1.0} if guided else {}}}
    req = urllib.request.Request(url + "/v1/chat/completions", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.load(r)["choices"][0]["message"]["content"]
jobs = [(p, g) for g in (False, True) for p in prompts]
with ThreadPoolExecutor(16) as pool:
    texts = list(pool.map(complete, jobs))
json.dump({"unguided": texts[:len(prompts)], "guided": texts[len(prompts):]}, open(out, "w"), indent=1)
PY
    "$GENARM" bench --url "$URL" --prompts "$WORK/prompts.jsonl" --concurrency 16 \
        --max-tokens "$MAX_TOKENS" --temperature 0 --guidance upbeat=1 --compare-unguided \
        --requests 32 --warmup 2 --seed 0 --out "$WORK/bench-$run"
    stop_cluster
done

python3 - "$WORK" "${RUNS[@]}" <<'PY'
import json, os, sys
work, runs = sys.argv[1], sys.argv[2:]
first_f32 = next(r for r in runs if r.startswith("f32-"))
ref = json.load(open(f"{work}/greedy-{first_f32}.json"))
print(f"\nReference: run {first_f32}.")
print("\n| run | mode | greedy parity with f32 | mean common prefix of the others (chars / of) | tok/s at c16 | router overhead | wire bytes / token |")
print("|---|---|---|---|---|---|---|")
for d in runs:
    got = json.load(open(f"{work}/greedy-{d}.json"))
    bench = json.load(open(f"{work}/bench-{d}/bench.json"))
    for mode in ("unguided", "guided"):
        pairs = list(zip(ref[mode], got[mode]))
        same = sum(a == b for a, b in pairs)
        prefixes = [(len(os.path.commonprefix([a, b])), len(a)) for a, b in pairs if a != b]
        pre = (f"{sum(p for p, _ in prefixes) / len(prefixes):.0f} / {sum(n for _, n in prefixes) / len(prefixes):.0f}"
               if prefixes else "-")
        run = next(r for r in bench["runs"] if r["mode"] == mode)
        acc = run.get("step_accounting") or {}
        def fmt(key, scale=1.0, unit=""):
            v = acc.get(key)
            return "n/a" if v is None else f"{v * scale:,.1f}{unit}"
        print(f"| {d} | {mode} | {same}/{len(pairs)} ({100 * same / len(pairs):.1f}%) | {pre} | "
              f"{run['output_tokens_per_s']:.1f} | {fmt('mean_router_overhead_s', 1e3, ' ms')} | {fmt('wire_bytes_per_token')} |")
PY
