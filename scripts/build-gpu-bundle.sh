#!/usr/bin/env bash
# build-gpu-bundle.sh: builds the CUDA bundle dist/gpu/ for a Hopper (sm_90) machine that has a
# driver and Python but no Rust: genarm-base-worker, genarm-rm-worker and genarm-gpu-check built
# with `--features cuda` and stripped, the committed fixtures and goldens the check compares
# against, and the wrapper run.sh that finds the CUDA 13 libraries in the target's Python
# site-packages and refuses clearly when the machine cannot run the bundle. See docs/gpu.md.
#
#   scripts/build-gpu-bundle.sh [--out DIR]      # default DIR: dist/gpu
#
# Works from a clean checkout with nothing but Rust, python3 (venv, pip; PyPI reachable), gcc,
# xz and binutils: the CUDA 13.0 toolkit comes from PyPI wheels pinned to match driver 580,
# installed once into ${GENARM_CACHE_DIR:-~/.cache/genarm}/cuda13 (the same cache as
# scripts/check-cuda.sh, about 1.5 GB). A clean build took 13 minutes on 2 busy cores; the bundle
# is 32 MiB.
#
# Environment:
#   GENARM_CUDA_TOOLKIT      an existing toolkit folder (bin/nvcc, include, lib64) to use instead
#                            of installing one
#   GENARM_GPU_TARGET_DIR    cargo target dir (default target/gpu-bundle: never the CPU build's)
#   CUDA_COMPUTE_CAP         default 90 (Hopper; candle compiles it as sm_90a)
#   GENARM_GPU_BUNDLE_MAX_MB fail when the bundle is larger (default 60)
#   GENARM_CARGO_JOBS        cargo -j (default: cargo's)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

say() { printf 'build-gpu-bundle: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }
step() { printf '\n== %s (%ss)\n' "$*" "$(($(date +%s) - started))" >&2; }

out="$root/dist/gpu"
while [ $# -gt 0 ]; do
  case "$1" in
    --out) [ $# -ge 2 ] || die "--out needs a directory"; out=$2; shift 2 ;;
    --out=*) out=${1#--out=}; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done
case "$out" in /*) ;; *) out="$root/$out" ;; esac

# Pinned so the PTX matches driver 580 / CUDA 13.0; an unpinned nvcc pulls a newer nvvm/crt that
# the driver may refuse. The runtime libraries on the GPU machine come from the same wheels.
TOOLKIT_PIP="cuda-toolkit[nvcc,nvvm,crt,cccl,cudart,cublas,curand,nvrtc]==13.0.2"
NCCL_PIP="nvidia-nccl-cu13==2.28.9"
RUNTIME_PIP="pip install 'cuda-toolkit[cudart,cublas,curand,nvrtc]==13.0.2' 'nvidia-nccl-cu13==2.28.9'"
DRIVER_MIN=580
PROGRAMS=(genarm-base-worker genarm-rm-worker genarm-gpu-check)
FEATURES="genarm-base-worker/cuda,genarm-rm-worker/cuda,genarm-gpu-check/cuda"
compute_cap=${CUDA_COMPUTE_CAP:-90}
max_mb=${GENARM_GPU_BUNDLE_MAX_MB:-60}
target="${GENARM_GPU_TARGET_DIR:-$root/target/gpu-bundle}"
case "$target" in /*) ;; *) target="$root/$target" ;; esac
started=$(date +%s)

for tool in cargo python3 gcc strip readelf sha256sum xz; do
  command -v "$tool" >/dev/null || die "$tool is required"
done
[ -f crates/genarm-gpu-check/bundle/run.sh ] || die "crates/genarm-gpu-check/bundle/run.sh is missing"

# 1. The CUDA 13.0 toolkit, laid out as a toolkit folder (bin, nvvm, include, lib64).
step "CUDA toolkit"
if [ -n "${GENARM_CUDA_TOOLKIT:-}" ]; then
  tk=$GENARM_CUDA_TOOLKIT
  [ -x "$tk/bin/nvcc" ] || die "GENARM_CUDA_TOOLKIT=$tk has no bin/nvcc"
else
  cache="${GENARM_CACHE_DIR:-$HOME/.cache/genarm}/cuda13"
  venv="$cache/venv"
  tk="$cache/toolkit"
  if [ ! -x "$tk/bin/nvcc" ]; then
    say "installing $TOOLKIT_PIP $NCCL_PIP into $venv (about 1.5 GB, once)"
    [ -x "$venv/bin/python" ] || python3 -m venv "$venv" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
    "$venv/bin/pip" install -q --disable-pip-version-check "$TOOLKIT_PIP" "$NCCL_PIP" \
      || die "pip install of the CUDA toolkit wheels failed (is PyPI reachable?)"
    sp=$("$venv/bin/python" -c 'import site; print(site.getsitepackages()[0])')
    [ -x "$sp/nvidia/cu13/bin/nvcc" ] || die "the wheels installed no $sp/nvidia/cu13/bin/nvcc"
    mkdir -p "$tk/lib64" "$tk/include"
    ln -sfn "$sp/nvidia/cu13/bin" "$tk/bin"
    ln -sfn "$sp/nvidia/cu13/nvvm" "$tk/nvvm"
    for f in "$sp"/nvidia/cu13/include/* "$sp"/nvidia/nccl/include/*; do ln -sfn "$f" "$tk/include/"; done
    for f in "$sp"/nvidia/cu13/lib/*.so* "$sp"/nvidia/nccl/lib/*.so*; do
      b=$(basename "$f")
      ln -sfn "$f" "$tk/lib64/$b"
      u="${b%%.so*}.so"
      [ -e "$tk/lib64/$u" ] || ln -sfn "$f" "$tk/lib64/$u"
    done
  fi
fi
tk=$(cd "$tk" && pwd)
nvcc_release=$("$tk/bin/nvcc" --version | sed -n 's/.*release \([0-9.]*\),.*/\1/p')
[ "$nvcc_release" = "13.0" ] || die "$tk/bin/nvcc is CUDA $nvcc_release, expected 13.0 (driver $DRIVER_MIN)"
[ -f "$tk/include/nccl.h" ] || die "$tk/include/nccl.h is missing (the NCCL wheel $NCCL_PIP)"
say "toolkit $tk (nvcc $nvcc_release)"

export CUDA_ROOT="$tk" CUDA_PATH="$tk" CUDA_HOME="$tk" CUDA_TOOLKIT_ROOT_DIR="$tk"
export NVCC="$tk/bin/nvcc" PATH="$tk/bin:$PATH" CUDA_COMPUTE_CAP="$compute_cap"
export CUDAFORGE_THREADS="${CUDAFORGE_THREADS:-2}"
export CARGO_TARGET_DIR="$target"
# The binaries are stripped: no debug info to build.
export CARGO_PROFILE_RELEASE_DEBUG=false

# 2. A link-time stand-in for the driver library. No wheel ships libcuda.so (the driver does), and
# candle links it directly: every cu* function of cudarc's driver bindings, returning
# CUDA_ERROR_UNKNOWN, with the driver's soname so the binaries load the real one at run time.
step "libcuda link stub"
cudarc_manifest=$(cargo metadata --format-version 1 --features genarm-model/cuda 2>/dev/null \
  | python3 -c 'import json, sys
pkgs = [p for p in json.load(sys.stdin)["packages"] if p["name"] == "cudarc"]
print(pkgs[0]["manifest_path"] if pkgs else "")') || die "cargo metadata failed"
[ -n "$cudarc_manifest" ] || die "cudarc is not in the dependency graph of genarm-model/cuda"
driver_rs="$(dirname "$cudarc_manifest")/src/driver/sys/mod.rs"
[ -f "$driver_rs" ] || die "$driver_rs is missing"
stub="$target/cuda-stub"
mkdir -p "$stub"
python3 - "$driver_rs" >"$stub/libcuda_stub.c" <<'PY'
import re, sys
names = sorted(set(re.findall(r"^pub unsafe fn (cu[A-Za-z0-9_]+)\(", open(sys.argv[1]).read(), re.M)))
if len(names) < 100:
    sys.exit(f"only {len(names)} cu* functions found in {sys.argv[1]}: cudarc's layout changed")
print("/* Link-time stub of libcuda.so.1, generated by scripts/build-gpu-bundle.sh. Never loaded. */")
for n in names:
    print(f"int {n}(void) {{ return 999; }}")
PY
gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$stub/libcuda.so" "$stub/libcuda_stub.c"
say "$(grep -c '^int cu' "$stub/libcuda_stub.c") driver functions stubbed in $stub/libcuda.so"
export RUSTFLAGS="${RUSTFLAGS:-} -L native=$stub"

# 3. The build.
step "cargo build --release --features cuda (target $target)"
pkgs=()
for p in "${PROGRAMS[@]}"; do pkgs+=(-p "$p"); done
nice -n 10 cargo build --release ${GENARM_CARGO_JOBS:+-j "$GENARM_CARGO_JOBS"} "${pkgs[@]}" --features "$FEATURES" \
  || die "cargo build failed"

# 4. The bundle, assembled next to its final place and moved there at the end.
step "assembling $out"
tmp="$out.tmp.$$"
trap 'rm -rf "$tmp"' EXIT
rm -rf "$tmp"
mkdir -p "$tmp/bin" "$tmp/data/fixtures" "$tmp/data/goldens"
needed=()
glibc_min=2.17
shas=()
stripped="$target/gpu-bundle-stripped"
mkdir -p "$stripped"
for p in "${PROGRAMS[@]}"; do
  bin="$stripped/$p"
  strip --strip-all -o "$bin" "$target/release/$p"
  readelf -d "$bin" | grep -q 'Shared library: \[libcuda.so.1\]' \
    || die "$p does not link libcuda.so.1: was it built with --features cuda?"
  while read -r lib; do needed+=("$lib"); done < <(readelf -d "$bin" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')
  v=$(readelf -V "$bin" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -V | tail -1)
  glibc_min=$(printf '%s\n%s\n' "$glibc_min" "${v:-2.17}" | sort -V | tail -1)
  shas+=("$p=$(sha256sum "$bin" | cut -d' ' -f1)")
  # The three binaries are ~55 MB each, two thirds of it candle's CUDA kernels; xz brings each to
  # ~6 MB and run.sh unpacks a program on its first run.
  say "compressing $p ($(($(stat -c %s "$bin") / 1048576)) MiB)"
  xz -9 -T1 -c "$bin" >"$tmp/bin/$p.xz"
done
cuda_libs=()
system_libs=()
for lib in $(printf '%s\n' "${needed[@]}" | sort -u); do
  case "$lib" in
    libcuda.so.*) ;; # the driver's own, found separately
    libcu* | libnccl* | libnvrtc* | libnvJitLink* | libnvvm*) cuda_libs+=("$lib") ;;
    *) system_libs+=("$lib") ;;
  esac
done
cp -R crates/genarm-testkit/fixtures/. "$tmp/data/fixtures/"
cp crates/genarm-model/tests/goldens/*.json crates/genarm-model/tests/goldens/*.safetensors "$tmp/data/goldens/"
cp crates/genarm-gpu-check/bundle/run.sh "$tmp/run.sh"
chmod 755 "$tmp/run.sh"
commit=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
dirty=
if [ -n "$(git status --porcelain 2>/dev/null)" ]; then dirty="+local-changes"; fi
{
  echo "# Written by scripts/build-gpu-bundle.sh; read by run.sh."
  echo "GENARM_BUNDLE_COMMIT='$commit$dirty'"
  echo "GENARM_BUNDLE_BUILT='$(date -u +%Y-%m-%dT%H:%M:%SZ)'"
  echo "GENARM_BUNDLE_RUSTC='$(rustc --version)'"
  echo "GENARM_BUNDLE_NVCC='$nvcc_release'"
  echo "GENARM_BUNDLE_COMPUTE_CAP='$compute_cap'"
  echo "GENARM_BUNDLE_DRIVER_MIN='$DRIVER_MIN'"
  echo "GENARM_BUNDLE_GLIBC_MIN='$glibc_min'"
  echo "GENARM_BUNDLE_PROGRAMS='${PROGRAMS[*]}'"
  echo "GENARM_BUNDLE_CUDA_LIBS='${cuda_libs[*]}'"
  echo "GENARM_BUNDLE_SHA256='${shas[*]}'"
  echo "GENARM_BUNDLE_SYSTEM_LIBS='${system_libs[*]}'"
  echo "GENARM_BUNDLE_PIP=\"$RUNTIME_PIP\""
} >"$tmp/bundle.env"
cat >"$tmp/README.txt" <<EOF
genarm GPU bundle (commit $commit$dirty, CUDA $nvcc_release, sm_$compute_cap, needs driver >= $DRIVER_MIN).
  ./run.sh --env                                   check this machine, run nothing
  ./run.sh genarm-gpu-check --out result.json      GPU smoke and speed check (add --smollm2 FILE.gguf)
  ./run.sh genarm-base-worker --device cuda ...    the workers (docs/gpu.md in the repository)
The programs are xz-compressed in bin/; run.sh unpacks each on its first run.
CUDA libraries come from this machine's Python: $RUNTIME_PIP
EOF
sums=$(cd "$tmp" && find . -type f | LC_ALL=C sort | xargs sha256sum)
printf '%s\n' "$sums" >"$tmp/MANIFEST.sha256"
rm -rf "$out"
mkdir -p "$(dirname "$out")"
mv "$tmp" "$out"
trap - EXIT

# 5. Size, and the wrapper's own checks on this machine.
bytes=$(du -sb "$out" | cut -f1)
mb=$(((bytes + 1048575) / 1048576))
step "done"
say "bundle $out: $mb MiB ($bytes bytes) in $(($(date +%s) - started)) s"
for p in "${PROGRAMS[@]}"; do
  say "  bin/$p.xz $(($(stat -c %s "$out/bin/$p.xz") / 1048576)) MiB (unpacked $(($(stat -c %s "$stripped/$p") / 1048576)) MiB)"
done
say "  needs glibc >= $glibc_min, driver >= $DRIVER_MIN, CUDA libraries: ${cuda_libs[*]}"
if env_out=$("$out/run.sh" --env 2>&1); then
  say "run.sh --env on this machine: ok"
else
  say "run.sh --env on this machine (expected to refuse without a GPU): ${env_out##*$'\n'}"
fi
[ "$mb" -le "$max_mb" ] || die "the bundle is $mb MiB, over the $max_mb MiB limit (GENARM_GPU_BUNDLE_MAX_MB)"
