# shellcheck shell=bash
# scripts/lib.sh: shell helpers shared by the benchmark and recipe scripts (source it; bash only).
#   launch_cluster LOG ARGS...   starts `$GENARM launch ARGS... --port 0 --quiet` in its own process
#                                group, waits (300 s at most) for its URL and sets URL and LAUNCH_PID;
#                                an EXIT trap stops the whole group if the script dies.
#   stop_cluster                 stops it (SIGTERM to the group) and waits.

launch_cluster() {
    local log="$1"
    shift
    setsid "$GENARM" launch "$@" --port 0 --quiet >"$log" 2>&1 &
    LAUNCH_PID=$!
    trap 'kill -TERM -- -$LAUNCH_PID 2>/dev/null || true' EXIT
    URL=""
    for _ in $(seq 1 300); do
        URL="$(sed -n 's/^GENARM_LISTENING http \(.*\)$/http:\/\/\1/p' "$log" | head -1)"
        [[ -n "$URL" ]] && return 0
        kill -0 "$LAUNCH_PID" 2>/dev/null || { cat "$log" >&2; exit 1; }
        sleep 1
    done
    echo "the cluster did not become ready in 300 s" >&2
    cat "$log" >&2
    exit 1
}

stop_cluster() {
    kill -TERM -- "-$LAUNCH_PID" 2>/dev/null || true
    wait "$LAUNCH_PID" 2>/dev/null || true
    trap - EXIT
}
