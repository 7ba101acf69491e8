#!/usr/bin/env bash
# make-goldens.sh: regenerates the transformers goldens in crates/genarm-model/tests/goldens/.
#
# NOT run in CI. The goldens it writes are committed; CI only compares the engine against them
# (crates/genarm-model/tests/golden_transformers.rs). Rerun it when a fixture, the fixture
# prompts (genarm_testkit::PROMPTS) or the SmolLM2 prompts in scripts/make_goldens.py change.
#
# What it does:
#   1. creates a throwaway venv (default ${GENARM_CACHE_DIR:-$HOME/.cache/genarm}/golden-venv,
#      override with GOLDEN_VENV) and installs the versions pinned in
#      scripts/goldens-requirements.txt (torch, transformers, tokenizers, safetensors, gguf, numpy,
#      jinja2, ...) from PyPI. torch from PyPI is the CUDA build and pulls several GB of nvidia-*
#      wheels; only its CPU path is used. A venv that already has exactly those versions is reused.
#   2. runs scripts/fetch-smollm2.sh to cache the SmolLM2-135M-Instruct GGUF (checksum verified)
#      at ${GENARM_SMOLLM2_GGUF:-${GENARM_CACHE_DIR:-$HOME/.cache/genarm}/smollm2-135m-instruct.gguf}.
#   3. runs scripts/make_goldens.py: float32 CPU eager-attention forwards of every fixture under
#      crates/genarm-testkit/fixtures/ and of the GGUF (dequantized by transformers), writing
#      {name}.json (versions, prompt texts, token ids) and {name}.safetensors (logits per prompt);
#      and the chat-template goldens of genarm-text (crates/genarm-text/tests/data/: the GGUF's
#      template and chat_template_goldens.json, transformers' renderings).
#
# Extra arguments go to make_goldens.py (e.g. --only llama-mha, or --only chat-templates, which
# needs no torch).
# Needs: python3 (3.10+) with venv, sha256sum, network access to PyPI, ~8 GB of disk for the venv.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE_DIR="${GENARM_CACHE_DIR:-$HOME/.cache/genarm}"
VENV="${GOLDEN_VENV:-$CACHE_DIR/golden-venv}"
GGUF="${GENARM_SMOLLM2_GGUF:-$CACHE_DIR/smollm2-135m-instruct.gguf}"

say() { printf 'make-goldens: %s\n' "$*" >&2; }

# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"
ensure_pinned_venv "$VENV" "$ROOT/scripts/goldens-requirements.txt"

if [[ -z "${GENARM_SMOLLM2_GGUF:-}" ]]; then
    "$ROOT/scripts/fetch-smollm2.sh"
fi
[[ -f "$GGUF" ]] || { say "error: GGUF not found at $GGUF"; exit 1; }

cd "$ROOT"
say "running make_goldens.py"
# No GPU is wanted even where one exists: the goldens are CPU float32.
CUDA_VISIBLE_DEVICES="" "$VENV/bin/python" "$ROOT/scripts/make_goldens.py" --gguf "$GGUF" "$@"
say "done; goldens in crates/genarm-model/tests/goldens/"
