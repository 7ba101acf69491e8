#!/usr/bin/env bash
# production_shape.sh: the router at production shape — batch 16…256, 0–2 ARMs, a 49k or 128k
# vocabulary — over simulated GPU workers (genarm-sim-worker: the real worker protocol, logit
# rows recorded from SmolLM2-135M and the demo ARMs, a fixed simulated forward time), so that what
# is measured is the router: the wire, (de)serialization, fusion, sampling and scheduling.
#
# Per cell of the grid (wire × batch × ARMs × vocab × sampling) it starts one simulated base and N
# simulated ARM workers (same --seed) and one router (--max-batch-size = batch), drives exactly
# `batch` concurrent streamed chat completions with `genarm bench` (one request per stream per
# round, MAX_TOKENS tokens each: ≥ MAX_TOKENS − 2 steps at full batch), and reports the step wall,
# the router overhead (step wall − slowest worker forward), fusion + sampling, wire bytes per
# step, tokens/s and its ratio to the same cell with 0 ARMs, and the sparse wire's fallback rate;
# and the CPU time the router and the simulated workers used per step (from /proc), since on one
# small machine they share the cores that a deployment gives them separately.
# Every figure but tokens/s comes from the router's /metrics (genarm bench's per-step accounting).
#
# Usage: benchmarks/production_shape.sh [--out DIR] [--no-build]
#   QUICK=1            the validation grid: batch 16, vocab 49152, 0 and 1 ARMs, greedy
#   BATCHES="16 64 128 256"  ARMS="0 1 2"  VOCABS="49152 128256"
#   SAMPLINGS="greedy t0.7-p0.9 t1.0"     (tT[-pP]: temperature T, top_p P)
#   WIRES=auto         `full`, plus `sparse` when `genarm-router --help` lists --logits-wire;
#                      or an explicit list, e.g. WIRES=full
#   FORWARD_MS=25 FORWARD_MS_PER_SEQ=0   simulated forward: a + b·batch ms
#   MAX_TOKENS=64 ROUNDS=1 WARMUP=       tokens per request, measured requests per stream,
#                                        warm-up requests per cell (default min(batch, 16))
#   LOGITS_DTYPE=f32 SEED=0 CANDIDATES=  (CANDIDATES: --sparse-candidates, when the router has it)
#   REFINE=            --sparse-refine-candidates (0: whole rows at once), when the router has it
#   RECORD_PROMPTS=20 RECORD_TOKENS=16   rows recorded once (20 × 16 = 320 positions), cached in
#                                        ${GENARM_CACHE_DIR:-~/.cache/genarm}/sim-rows-<hash>.safetensors
#   BIN=target/release  GENARM_MODEL=<the SmolLM2 GGUF>  SERVICE_TIMEOUT=180 (seconds per wait)
#   RESUME=1           keep DIR's finished cells (cells.jsonl) and run only the others
# Writes DIR (default target/production_shape/): production_shape.json (every cell's figures,
# the grid, the rows file and provenance), production_shape.md (the table), and per cell its
# bench.json (genarm bench, with its own provenance), the router's final /metrics and every log.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
COMMAND_LINE=("$0" "$@")

OUT="target/production_shape"
BUILD=1
while [[ $# -gt 0 ]]; do
    case "$1" in
    --out) OUT="${2:?--out needs a directory}"; shift 2 ;;
    --out=*) OUT="${1#--out=}"; shift ;;
    --no-build) BUILD=0; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "production_shape.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

if [[ "${QUICK:-0}" == 1 ]]; then
    : "${BATCHES:=16}" "${ARMS:=0 1}" "${VOCABS:=49152}" "${SAMPLINGS:=greedy}"
fi
BATCHES="${BATCHES:-16 64 128 256}"
ARMS="${ARMS:-0 1 2}"
VOCABS="${VOCABS:-49152 128256}"
SAMPLINGS="${SAMPLINGS:-greedy t0.7-p0.9 t1.0}"
WIRES="${WIRES:-auto}"
FORWARD_MS="${FORWARD_MS:-25}"
FORWARD_MS_PER_SEQ="${FORWARD_MS_PER_SEQ:-0}"
MAX_TOKENS="${MAX_TOKENS:-64}"
ROUNDS="${ROUNDS:-1}"
WARMUP="${WARMUP:-}"
LOGITS_DTYPE="${LOGITS_DTYPE:-f32}"
SEED="${SEED:-0}"
CANDIDATES="${CANDIDATES:-}"
REFINE="${REFINE:-}"
RECORD_PROMPTS="${RECORD_PROMPTS:-20}"
RECORD_TOKENS="${RECORD_TOKENS:-16}"
BIN="${BIN:-target/release}"
SERVICE_TIMEOUT="${SERVICE_TIMEOUT:-180}"
CACHE="${GENARM_CACHE_DIR:-$HOME/.cache/genarm}"
GENARM_MODEL="${GENARM_MODEL:-$CACHE/smollm2-135m-instruct.gguf}"
PROMPT_FILE="demo/data/eval.jsonl"
ARM_NAMES=(upbeat concise) # the recorded ARMs, in the order cells use them

say() { printf '== production_shape: %s\n' "$*" >&2; }
die() { printf 'production_shape: error: %s\n' "$*" >&2; exit 1; }

# ---- processes: each service is its own process group, listed in $PIDS_FILE; they are stopped
# on any exit of this script, and a watchdog stops them should the script be killed outright.
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
PIDS_FILE="$OUT/.pids"
: >"$PIDS_FILE"
SERVICES=() # "pid name log" of the running cell's services

kill_groups() { # SIG PID...: signal each process group
    local sig="$1" pid
    shift
    for pid in "$@"; do kill "-$sig" -- "-$pid" 2>/dev/null || true; done
}

stop_services() { # TERM every running service, poll until gone (10 s), then KILL
    local pids=() entry pid deadline
    for entry in "${SERVICES[@]}"; do pids+=("${entry%% *}"); done
    [[ ${#pids[@]} -gt 0 ]] || return 0
    kill_groups TERM "${pids[@]}"
    deadline=$((SECONDS + 10))
    for pid in "${pids[@]}"; do
        while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
    done
    kill_groups KILL "${pids[@]}"
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    SERVICES=()
    : >"$PIDS_FILE"
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM HUP
    ((rc == 0)) || printf 'production_shape: stopped with status %s (the cells done so far are in %s; RESUME=1 runs the rest)\n' "$rc" "$OUT/cells.jsonl" >&2
    stop_services
    [[ -n "${WATCHDOG:-}" ]] && kill -TERM -- "-$WATCHDOG" 2>/dev/null
    rm -f "$PIDS_FILE"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

# The watchdog: its own session, polls this script's pid; once it is gone (even by SIGKILL), it
# kills every process group still listed.
setsid bash -c 'while kill -0 "$1" 2>/dev/null; do sleep 1; done
    [[ -f "$2" ]] && while read -r pid; do kill -KILL -- "-$pid" 2>/dev/null; done <"$2"' \
    watchdog "$$" "$PIDS_FILE" </dev/null >/dev/null 2>&1 &
WATCHDOG=$!

log_tail() { # LOG: the last lines of a service log, indented
    sed 's/^/    | /' <(tail -n 40 "$1") >&2
}

# start_service NAME LOG CMD...: starts CMD in its own process group with stdout+stderr in LOG.
start_service() {
    local name="$1" log="$2"
    shift 2
    setsid "$@" </dev/null >"$log" 2>&1 &
    local pid=$!
    echo "$pid" >>"$PIDS_FILE"
    SERVICES+=("$pid $name $log")
    LAST_PID=$pid
}

# check_services: fails loudly when a service of the cell has exited.
check_services() {
    local entry pid name log
    for entry in "${SERVICES[@]}"; do
        read -r pid name log <<<"$entry"
        if ! kill -0 "$pid" 2>/dev/null; then
            local rc=0
            wait "$pid" 2>/dev/null || rc=$?
            printf 'production_shape: error: %s (pid %s) exited with status %s; its log %s ends:\n' \
                "$name" "$pid" "$rc" "$log" >&2
            log_tail "$log"
            exit 1
        fi
    done
}

# wait_listening NAME PID LOG KIND: polls LOG for `GENARM_LISTENING KIND <addr>` (SERVICE_TIMEOUT
# seconds at most) and sets ADDR.
wait_listening() {
    local name="$1" pid="$2" log="$3" kind="$4" deadline=$((SECONDS + SERVICE_TIMEOUT))
    ADDR=""
    while ((SECONDS < deadline)); do
        ADDR="$(sed -n "s/^GENARM_LISTENING $kind \\([^ ]*\\)\$/\\1/p" "$log" | head -1)"
        [[ -n "$ADDR" ]] && return 0
        check_services
        sleep 0.1
    done
    printf 'production_shape: error: %s (pid %s) printed no GENARM_LISTENING line in %s s; its log %s ends:\n' \
        "$name" "$pid" "$SERVICE_TIMEOUT" "$log" >&2
    log_tail "$log"
    exit 1
}

# wait_ready URL LOG: polls URL/ready until 200 (SERVICE_TIMEOUT seconds at most).
wait_ready() {
    local url="$1" log="$2" deadline=$((SECONDS + SERVICE_TIMEOUT)) code
    while ((SECONDS < deadline)); do
        code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$url/ready" || true)"
        [[ "$code" == 200 ]] && return 0
        check_services
        sleep 0.2
    done
    printf 'production_shape: error: the router at %s did not become ready in %s s (last /ready: %s); its log %s ends:\n' \
        "$url" "$SERVICE_TIMEOUT" "$code" "$log" >&2
    log_tail "$log"
    exit 1
}

CLK_TCK="$(getconf CLK_TCK)"
cpu_ms() { # PID: the user + system CPU time of the process (all its threads) so far, in ms
    local stat
    stat="$(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null)" || { echo 0; return 0; }
    awk -v tck="$CLK_TCK" '{printf "%.0f\n", ($12 + $13) * 1000 / tck}' <<<"$stat"
}
steps_total() { # URL: the router's genarm_steps_total
    curl -sf --max-time 30 "$1/metrics" | awk '$1 == "genarm_steps_total" {printf "%.0f\n", $2}'
}

# ---- build, once
for tool in curl jq python3 sha256sum setsid; do
    command -v "$tool" >/dev/null || die "$tool is needed"
done
if [[ "$BUILD" == 1 ]]; then
    say "building release binaries (genarm-router, genarm-sim-worker, genarm)"
    CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}" cargo build --release --bins \
        -p genarm-router -p genarm-sim-worker -p genarm-cli
fi
for b in genarm-router genarm-sim-worker genarm-sim-record genarm; do
    [[ -x "$BIN/$b" ]] || die "$BIN/$b is missing: build it (cargo build --release --bins -p genarm-router -p genarm-sim-worker -p genarm-cli) or drop --no-build"
done

# ---- which wires
ROUTER_HELP="$("$BIN/genarm-router" --help)"
HAS_WIRE_FLAG=0
grep -q -- '--logits-wire' <<<"$ROUTER_HELP" && HAS_WIRE_FLAG=1
if [[ "$WIRES" == auto ]]; then
    WIRES=full
    [[ "$HAS_WIRE_FLAG" == 1 ]] && WIRES="full sparse"
fi
for w in $WIRES; do
    [[ "$w" == full || "$HAS_WIRE_FLAG" == 1 ]] ||
        die "WIRES names $w but $BIN/genarm-router --help lists no --logits-wire (rebuild, or WIRES=full)"
done
HAS_CANDIDATES_FLAG=0
grep -q -- '--sparse-candidates' <<<"$ROUTER_HELP" && HAS_CANDIDATES_FLAG=1
[[ -z "$CANDIDATES" || "$HAS_CANDIDATES_FLAG" == 1 ]] ||
    die "CANDIDATES=$CANDIDATES but the router lists no --sparse-candidates"
[[ -z "$REFINE" ]] || grep -q -- '--sparse-refine-candidates' <<<"$ROUTER_HELP" ||
    die "REFINE=$REFINE but the router lists no --sparse-refine-candidates (rebuild)"

# ---- rows, recorded once and cached by the hash of their inputs
[[ -f "$GENARM_MODEL" ]] || die "no base model at $GENARM_MODEL (run scripts/fetch-smollm2.sh, or set GENARM_MODEL)"
ARM_ARGS=()
for a in "${ARM_NAMES[@]}"; do
    [[ -d "demo/arms/$a" ]] || die "demo/arms/$a is missing"
    ARM_ARGS+=(--arm "$a=demo/arms/$a")
done
mkdir -p "$CACHE"
ROWS_KEY="$({
    echo "prompts=$RECORD_PROMPTS tokens=$RECORD_TOKENS arms=${ARM_NAMES[*]}"
    sha256sum "$GENARM_MODEL" | cut -d' ' -f1
    head -n "$RECORD_PROMPTS" "$PROMPT_FILE" | sha256sum
    find "${ARM_NAMES[@]/#/demo/arms/}" -type f -not -name '.*' | LC_ALL=C sort | xargs sha256sum
    sha256sum crates/genarm-sim-worker/src/bin/genarm-sim-record.rs crates/genarm-sim-worker/src/rows.rs
} | sha256sum | cut -c1-16)"
ROWS="$CACHE/sim-rows-$ROWS_KEY.safetensors"
if [[ -s "$ROWS" ]]; then
    say "rows: $ROWS (cached)"
else
    say "recording rows ($RECORD_PROMPTS prompts × $RECORD_TOKENS tokens; base + ${ARM_NAMES[*]}) into $ROWS"
    "$BIN/genarm-sim-record" --model "$GENARM_MODEL" "${ARM_ARGS[@]}" --prompts "$PROMPT_FILE" \
        --max-prompts "$RECORD_PROMPTS" --answer-tokens "$RECORD_TOKENS" --out "$ROWS.tmp" \
        2>"$OUT/sim-record.log" || { log_tail "$OUT/sim-record.log"; die "genarm-sim-record failed"; }
    mv "$ROWS.tmp" "$ROWS"
fi
ROWS_SHA="$(sha256sum "$ROWS" | cut -d' ' -f1)"

# ---- provenance
GIT_COMMIT="$(git rev-parse HEAD 2>/dev/null || echo null)"
GIT_DIRTY=null
if [[ "$GIT_COMMIT" != null ]]; then
    GIT_DIRTY=false
    [[ -n "$(git status --porcelain 2>/dev/null)" ]] && GIT_DIRTY=true
fi
LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
CELLS_FILE="$OUT/cells.jsonl"
[[ "${RESUME:-0}" == 1 && -f "$CELLS_FILE" ]] || : >"$CELLS_FILE"
jq -n --arg commit "$GIT_COMMIT" --argjson dirty "$GIT_DIRTY" --arg host "$(uname -srm)" \
    --argjson cpus "$(nproc)" --arg load "$LOAD_BEFORE" --arg rows "$ROWS" --arg rows_sha "$ROWS_SHA" \
    --arg model "$GENARM_MODEL" --arg arms "${ARM_NAMES[*]}" --arg prompts "$PROMPT_FILE" \
    --argjson record_prompts "$RECORD_PROMPTS" --argjson record_tokens "$RECORD_TOKENS" \
    --arg wires "$WIRES" --arg batches "$BATCHES" --arg grid_arms "$ARMS" --arg vocabs "$VOCABS" \
    --arg samplings "$SAMPLINGS" --argjson forward_ms "$FORWARD_MS" --argjson per_seq "$FORWARD_MS_PER_SEQ" \
    --argjson max_tokens "$MAX_TOKENS" --argjson rounds "$ROUNDS" --arg warmup "${WARMUP:-min(batch, 16)}" \
    --arg dtype "$LOGITS_DTYPE" --argjson seed "$SEED" --arg candidates "${CANDIDATES:-router default}" \
    --arg refine "${REFINE:-router default}" \
    --argjson started "$(date +%s)" \
    '{git_commit: (if $commit == "null" then null else $commit end), git_dirty: $dirty,
      command: $ARGS.positional, started_unix: $started, host: $host, cpus: $cpus, load_before: $load,
      rows: {path: $rows, sha256: $rows_sha, base_model: $model, arms: ($arms | split(" ")), prompts: $prompts,
             record_prompts: $record_prompts, record_tokens: $record_tokens},
      grid: {wires: ($wires | split(" ")), batches: ($batches | split(" ") | map(tonumber)),
             arms: ($grid_arms | split(" ") | map(tonumber)), vocabs: ($vocabs | split(" ") | map(tonumber)),
             samplings: ($samplings | split(" ")), forward_ms: $forward_ms, forward_ms_per_seq: $per_seq,
             max_tokens: $max_tokens, rounds: $rounds, warmup: $warmup, logits_dtype: $dtype, seed: $seed,
             sparse_candidates: $candidates, sparse_refine_candidates: $refine}}' \
    --args -- "${COMMAND_LINE[@]}" >"$OUT/run.json"
say "load average before: $LOAD_BEFORE on $(nproc) CPUs (timings are only trustworthy on a quiet machine)"

# ---- one cell
sampling_args() { # SAMPLING -> TEMPERATURE, TOP_P
    case "$1" in
    greedy) TEMPERATURE=0 TOP_P="" ;;
    t*) local s="${1#t}"
        TEMPERATURE="${s%%-p*}"
        TOP_P=""
        if [[ "$s" == *-p* ]]; then TOP_P="${s#*-p}"; fi ;;
    *) die "sampling $1: write greedy, tT or tT-pP (e.g. t0.7-p0.9)" ;;
    esac
}

run_cell() {
    local wire="$1" batch="$2" narms="$3" vocab="$4" sampling="$5"
    local id="$wire-b$batch-a$narms-v$vocab-$sampling"
    local dir="$OUT/cells/$id"
    if grep -q "\"id\":\"$id\"" "$CELLS_FILE"; then
        say "cell $id: done before (RESUME=1)"
        return 0
    fi
    rm -rf "$dir"
    mkdir -p "$dir"
    ((narms <= ${#ARM_NAMES[@]})) || die "ARMS=$narms: only ${#ARM_NAMES[@]} ARMs are recorded (${ARM_NAMES[*]})"
    sampling_args "$sampling"
    say "cell $id"
    local sim=("$BIN/genarm-sim-worker" --vocab-size "$vocab" --rows "$ROWS" --seed "$SEED"
        --forward-ms "$FORWARD_MS" --forward-ms-per-seq "$FORWARD_MS_PER_SEQ")
    start_service sim-base "$dir/sim-base.log" "${sim[@]}" --role base
    local sim_pids=("$LAST_PID")
    wait_listening sim-base "$LAST_PID" "$dir/sim-base.log" grpc
    local router=("$BIN/genarm-router" --listen 127.0.0.1:0 --served-model-name sim --base "http://$ADDR"
        --max-batch-size "$batch" --max-batch-tokens $((batch * 256)) --max-waiting $((batch * 2 > 256 ? batch * 2 : 256))
        --logits-dtype "$LOGITS_DTYPE")
    [[ "$HAS_WIRE_FLAG" == 1 ]] && router+=(--logits-wire "$wire")
    [[ -n "$CANDIDATES" && "$wire" == sparse ]] && router+=(--sparse-candidates "$CANDIDATES")
    [[ -n "$REFINE" && "$wire" == sparse ]] && router+=(--sparse-refine-candidates "$REFINE")
    local guidance="" i name
    for ((i = 0; i < narms; i++)); do
        name="${ARM_NAMES[$i]}"
        start_service "sim-arm-$name" "$dir/sim-arm-$name.log" "${sim[@]}" --role reward --reward-name "$name"
        sim_pids+=("$LAST_PID")
        wait_listening "sim-arm-$name" "$LAST_PID" "$dir/sim-arm-$name.log" grpc
        router+=(--rm "$name=http://$ADDR")
        guidance+="${guidance:+,}$name=1"
    done
    start_service router "$dir/router.log" "${router[@]}"
    local router_pid="$LAST_PID"
    wait_listening router "$LAST_PID" "$dir/router.log" http
    local url="http://$ADDR"
    wait_ready "$url" "$dir/router.log"
    local warmup="${WARMUP:-$((batch < 16 ? batch : 16))}"
    local bench=("$BIN/genarm" bench --url "$url" --prompts "$PROMPT_FILE" --concurrency "$batch"
        --max-tokens "$MAX_TOKENS" --requests $((batch * ROUNDS)) --warmup "$warmup" --seed "$SEED"
        --temperature "$TEMPERATURE" --model-file "rows=$ROWS" --out "$dir/bench")
    [[ -n "$TOP_P" ]] && bench+=(--top-p "$TOP_P")
    [[ -n "$guidance" ]] && bench+=(--guidance "$guidance")
    printf '%q ' "${router[@]}" >"$dir/router.cmd"
    # CPU over the whole bench (warm-up included) against the steps over the same window.
    local steps0 router_cpu0 sims_cpu0=0 p
    steps0="$(steps_total "$url")"
    router_cpu0="$(cpu_ms "$router_pid")"
    for p in "${sim_pids[@]}"; do sims_cpu0=$((sims_cpu0 + $(cpu_ms "$p"))); done
    if ! "${bench[@]}" >"$dir/bench.log" 2>&1; then
        check_services
        printf 'production_shape: error: genarm bench failed in cell %s; its log ends:\n' "$id" >&2
        log_tail "$dir/bench.log"
        printf '  the router log %s ends:\n' "$dir/router.log" >&2
        log_tail "$dir/router.log"
        exit 1
    fi
    check_services
    local steps1 router_cpu1 sims_cpu1=0
    steps1="$(steps_total "$url")"
    router_cpu1="$(cpu_ms "$router_pid")"
    for p in "${sim_pids[@]}"; do sims_cpu1=$((sims_cpu1 + $(cpu_ms "$p"))); done
    curl -sf --max-time 30 "$url/metrics" >"$dir/metrics.txt" || die "cell $id: GET $url/metrics failed"
    stop_services
    jq -cn --arg id "$id" --arg wire "$wire" --argjson batch "$batch" --argjson arms "$narms" \
        --argjson vocab "$vocab" --arg sampling "$sampling" --argjson temperature "$TEMPERATURE" \
        --arg top_p "$TOP_P" --arg guidance "$guidance" --argjson warmup "$warmup" \
        --arg router_cmd "$(cat "$dir/router.cmd")" --arg dir "cells/$id" \
        --argjson cpu_steps "$((steps1 - steps0))" --argjson router_cpu_ms "$((router_cpu1 - router_cpu0))" \
        --argjson workers_cpu_ms "$((sims_cpu1 - sims_cpu0))" \
        '{id: $id, wire: $wire, batch: $batch, arms: $arms, vocab: $vocab, sampling: $sampling,
          temperature: $temperature, top_p: (if $top_p == "" then null else ($top_p | tonumber) end),
          guidance: $guidance, warmup: $warmup, router_command: $router_cmd, dir: $dir,
          cpu: {steps: $cpu_steps, router_ms: $router_cpu_ms, workers_ms: $workers_cpu_ms}}' >>"$CELLS_FILE"
}

NCELLS=0
for _w in $WIRES; do for _b in $BATCHES; do for _a in $ARMS; do for _v in $VOCABS; do for _s in $SAMPLINGS; do
    NCELLS=$((NCELLS + 1))
done; done; done; done; done
say "grid: wires [$WIRES] × batch [$BATCHES] × ARMs [$ARMS] × vocab [$VOCABS] × sampling [$SAMPLINGS] = $NCELLS cells"
for wire in $WIRES; do
    for vocab in $VOCABS; do
        for sampling in $SAMPLINGS; do
            for batch in $BATCHES; do
                for narms in $ARMS; do
                    run_cell "$wire" "$batch" "$narms" "$vocab" "$sampling"
                done
            done
        done
    done
done

jq --arg load "$(cut -d' ' -f1-3 /proc/loadavg)" '. + {load_after: $load}' "$OUT/run.json" >"$OUT/run.json.tmp"
mv "$OUT/run.json.tmp" "$OUT/run.json"
python3 "$ROOT/benchmarks/production_shape_report.py" "$OUT"
