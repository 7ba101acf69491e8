# shellcheck shell=bash
# scripts/lib.sh: shell helpers shared by the benchmark and recipe scripts (source it; bash only).
#   launch_cluster LOG ARGS...   starts `$GENARM launch ARGS... --port 0 --quiet` in its own process
#                                group, waits (300 s at most) for its URL and sets URL and LAUNCH_PID;
#                                an EXIT trap stops the whole group if the script dies.
#   stop_cluster                 stops it (SIGTERM to the group) and waits.
#   ensure_pinned_venv VENV PINS unless VENV's python already has every `name==version` of the
#                                requirements file PINS, creates VENV (python3 -m venv) and runs
#                                `pip install -r PINS` into it.

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

# True when VENV's python has exactly the versions PINS names (a local suffix such as +cu132 is
# the build of the pinned version).
pinned_venv_ok() {
    local venv="$1" pins="$2"
    [[ -x "$venv/bin/python" ]] || return 1
    "$venv/bin/python" - "$pins" <<'EOF' 2>/dev/null
import sys
from importlib.metadata import version
for line in open(sys.argv[1]):
    line = line.split("#", 1)[0].strip()
    if line:
        name, _, want = line.partition("==")
        if version(name.strip()).split("+")[0] != want.strip():
            sys.exit(1)
EOF
}

ensure_pinned_venv() {
    local venv="$1" pins="$2"
    pinned_venv_ok "$venv" "$pins" && return 0
    printf 'installing the versions pinned in %s into %s (PyPI, slow)\n' "$pins" "$venv" >&2
    mkdir -p "$(dirname "$venv")"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --disable-pip-version-check --quiet -r "$pins"
    pinned_venv_ok "$venv" "$pins" || { printf 'error: %s still lacks the pins of %s\n' "$venv" "$pins" >&2; return 1; }
}
