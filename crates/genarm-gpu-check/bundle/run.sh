#!/usr/bin/env bash
# run.sh: runs one program of the genarm GPU bundle (dist/gpu/, written by
# scripts/build-gpu-bundle.sh from crates/genarm-gpu-check/bundle/run.sh) after checking that this
# machine can: x86_64, glibc new enough, an NVIDIA driver (libcuda.so.1) new enough for CUDA 13.0,
# a GPU of the compute capability the kernels were built for (when nvidia-smi can tell), and the
# CUDA 13 runtime libraries, looked up in this machine's Python site-packages (the pip wheels
# nvidia/cu13/lib and nvidia/nccl/lib) and the usual system folders. Each failed check exits with
# status 3 and one line saying what is missing and how to fix it; nothing is run. The programs are
# shipped as bin/NAME.xz and unpacked (checked against their SHA-256) on their first run.
#
#   run.sh PROGRAM [ARGS...]   PROGRAM: genarm-gpu-check, genarm-base-worker, genarm-rm-worker
#   run.sh --env               only the checks, then print what was found
#
# Environment: GENARM_PYTHON (the Python whose site-packages hold the CUDA wheels; default
# python3), GENARM_CUDA_LIB_DIRS (extra ':'-separated folders searched first), GENARM_GPU_DATA
# (given to the programs; default the bundle's data/). For tests: GENARM_GPU_PROBE_ROOT makes
# every probe look under that folder instead of / (no ldconfig, no nvidia-smi, no Python unless
# GENARM_PYTHON is set).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
probe_root=${GENARM_GPU_PROBE_ROOT:-}

say() { printf 'genarm-gpu: %s\n' "$*" >&2; }
refuse() {
  say "cannot run on this machine: $*"
  exit 3
}
usage() {
  cat <<'EOF'
usage: run.sh PROGRAM [ARGS...]   run a bundled program after checking this machine
       run.sh --env               check this machine and print what was found
programs: genarm-gpu-check, genarm-base-worker, genarm-rm-worker (each takes --help)
EOF
}

# True when dotted version $1 >= $2 (numeric fields; missing fields count as 0).
version_ge() {
  local IFS=. i x y
  local -a a b
  read -r -a a <<<"$1"
  read -r -a b <<<"$2"
  for ((i = 0; i < ${#a[@]} || i < ${#b[@]}; i++)); do
    x=${a[i]:-0} y=${b[i]:-0}
    x=${x//[^0-9]/} y=${y//[^0-9]/}
    x=$((10#${x:-0})) y=$((10#${y:-0}))
    ((x > y)) && return 0
    ((x < y)) && return 1
  done
  return 0
}

# ---- arguments
[ $# -ge 1 ] || {
  usage >&2
  exit 2
}
mode=run
prog=
case "$1" in
  -h | --help)
    usage
    exit 0
    ;;
  --env) mode="env" ;;
  -*)
    usage >&2
    exit 2
    ;;
  *) prog=$1 ;;
esac
shift

[ -f "$here/bundle.env" ] || refuse "$here/bundle.env is missing: not a complete bundle (rebuild it with scripts/build-gpu-bundle.sh)"
# shellcheck source=/dev/null
. "$here/bundle.env"
: "${GENARM_BUNDLE_PROGRAMS:?}" "${GENARM_BUNDLE_GLIBC_MIN:?}" "${GENARM_BUNDLE_DRIVER_MIN:?}"
: "${GENARM_BUNDLE_COMPUTE_CAP:?}" "${GENARM_BUNDLE_CUDA_LIBS?}" "${GENARM_BUNDLE_PIP:?}"
if [ "$mode" = run ]; then
  case " $GENARM_BUNDLE_PROGRAMS " in
    *" $prog "*) ;;
    *)
      say "unknown program '$prog': this bundle has $GENARM_BUNDLE_PROGRAMS"
      exit 2
      ;;
  esac
  [ -x "$here/bin/$prog" ] || [ -f "$here/bin/$prog.xz" ] \
    || refuse "$here/bin/$prog.xz is missing (rebuild the bundle)"
fi

# ---- CPU and C library
arch=$(uname -m)
[ "$arch" = x86_64 ] || refuse "this bundle is built for x86_64 Linux, this machine is $arch"
glibc=$(getconf GNU_LIBC_VERSION 2>/dev/null | awk '{print $2}') || true
[ -n "$glibc" ] || refuse "no GNU C library found (getconf GNU_LIBC_VERSION failed); the bundle needs glibc >= $GENARM_BUNDLE_GLIBC_MIN"
version_ge "$glibc" "$GENARM_BUNDLE_GLIBC_MIN" \
  || refuse "glibc $glibc is older than the $GENARM_BUNDLE_GLIBC_MIN the binaries need (build the bundle on an older distribution)"

# ---- driver: libcuda.so.1 and its version
driver_dirs=(/usr/lib/x86_64-linux-gnu /usr/lib64 /usr/lib /usr/local/nvidia/lib64 /usr/local/nvidia/lib
  /usr/lib/wsl/lib /run/nvidia/driver/usr/lib/x86_64-linux-gnu /usr/local/cuda/compat)
libcuda=
libcuda_dir=
if [ -z "$probe_root" ]; then
  ldconfig_bin=$(command -v ldconfig || echo /sbin/ldconfig)
  libcuda=$("$ldconfig_bin" -p 2>/dev/null | awk '$1 == "libcuda.so.1" && /x86-64/ {print $NF; exit}') || true
fi
if [ -z "$libcuda" ]; then
  IFS=: read -r -a ld_dirs <<<"${LD_LIBRARY_PATH:-}"
  for d in ${ld_dirs[@]+"${ld_dirs[@]}"} "${driver_dirs[@]/#/$probe_root}"; do
    if [ -n "$d" ] && [ -e "$d/libcuda.so.1" ]; then
      libcuda="$d/libcuda.so.1"
      libcuda_dir=$d
      break
    fi
  done
fi
[ -n "$libcuda" ] || refuse "no NVIDIA driver: libcuda.so.1 is neither in ldconfig's cache nor in LD_LIBRARY_PATH or ${driver_dirs[*]}. This bundle needs an NVIDIA GPU (compute capability ${GENARM_BUNDLE_COMPUTE_CAP:0:1}.${GENARM_BUNDLE_COMPUTE_CAP:1}) with driver >= $GENARM_BUNDLE_DRIVER_MIN (CUDA 13.0)"

driver=
if [ -r "$probe_root/proc/driver/nvidia/version" ]; then
  driver=$(sed -n 's/.*Kernel Module[^0-9]*\([0-9][0-9]*\.[0-9][0-9.]*\).*/\1/p' "$probe_root/proc/driver/nvidia/version" | head -n 1)
fi
if [ -z "$driver" ]; then
  real=$(readlink -f "$libcuda" 2>/dev/null || echo "$libcuda")
  case "${real##*/}" in
    libcuda.so.[0-9]*.[0-9]*) driver=${real##*/libcuda.so.} ;;
  esac
fi
smi=
[ -z "$probe_root" ] && smi=$(command -v nvidia-smi || true)
if [ -z "$driver" ] && [ -n "$smi" ]; then
  driver=$("$smi" --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -n 1 | tr -d ' ') || true
fi
if [ -n "$driver" ]; then
  version_ge "$driver" "$GENARM_BUNDLE_DRIVER_MIN" \
    || refuse "NVIDIA driver $driver is older than $GENARM_BUNDLE_DRIVER_MIN, which CUDA 13.0 needs: upgrade the driver"
else
  say "warning: could not tell the NVIDIA driver version (need >= $GENARM_BUNDLE_DRIVER_MIN); trying anyway"
fi

# ---- GPU architecture (only nvidia-smi can tell without CUDA)
want_cap="${GENARM_BUNDLE_COMPUTE_CAP:0:1}.${GENARM_BUNDLE_COMPUTE_CAP:1}"
caps=
if [ -n "$smi" ]; then
  caps=$("$smi" --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | tr -d ' ' | sort -u | tr '\n' ' ') || true
  caps=${caps% }
  case "$caps" in
    "" | *[!0-9.\ ]*) caps= ;;
    "$want_cap") ;;
    *) refuse "the kernels are built for compute capability $want_cap (sm_${GENARM_BUNDLE_COMPUTE_CAP}a) but this machine's GPUs are $caps: rebuild with CUDA_COMPUTE_CAP set for them" ;;
  esac
fi

# ---- CUDA 13 runtime libraries
lib_dirs=()
IFS=: read -r -a extra <<<"${GENARM_CUDA_LIB_DIRS:-}"
for d in ${extra[@]+"${extra[@]}"}; do [ -n "$d" ] && lib_dirs+=("$d"); done
python=${GENARM_PYTHON:-}
if [ -z "$python" ] && [ -z "$probe_root" ]; then
  python=$(command -v python3 || command -v python || true)
fi
site_dirs=()
if [ -n "$python" ]; then
  while IFS= read -r sp; do [ -n "$sp" ] && site_dirs+=("$sp"); done < <("$python" -c '
import site, sys
dirs = list(getattr(site, "getsitepackages", lambda: [])())
dirs.append(site.getusersitepackages())
dirs.extend(p for p in sys.path if p.endswith("-packages"))
print("\n".join(dict.fromkeys(dirs)))' 2>/dev/null || true)
fi
for sp in ${site_dirs[@]+"${site_dirs[@]}"}; do
  for sub in nvidia/cu13/lib nvidia/nccl/lib nvidia/cublas/lib nvidia/cuda_runtime/lib nvidia/curand/lib nvidia/cuda_nvrtc/lib; do
    [ -d "$sp/$sub" ] && lib_dirs+=("$sp/$sub")
  done
done
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/local/cuda-13.0/lib64 \
  /usr/lib/x86_64-linux-gnu /usr/lib64; do
  lib_dirs+=("$probe_root$d")
done
found_dirs=()
missing=()
for lib in $GENARM_BUNDLE_CUDA_LIBS; do
  hit=
  for d in ${lib_dirs[@]+"${lib_dirs[@]}"}; do
    if [ -e "$d/$lib" ]; then
      hit=$d
      break
    fi
  done
  if [ -z "$hit" ]; then
    missing+=("$lib")
  else
    case " ${found_dirs[*]-} " in *" $hit "*) ;; *) found_dirs+=("$hit") ;; esac
  fi
done
if [ ${#missing[@]} -gt 0 ]; then
  where=${python:-no Python found}
  refuse "CUDA 13 runtime libraries not found: ${missing[*]} (searched the site-packages of $where, GENARM_CUDA_LIB_DIRS and /usr/local/cuda). Install them with: ${python:-python3} -m $GENARM_BUNDLE_PIP (or set GENARM_PYTHON to the Python that has them)"
fi
[ -n "$libcuda_dir" ] && found_dirs+=("$libcuda_dir")

path=$(
  IFS=:
  echo "${found_dirs[*]-}"
)
export LD_LIBRARY_PATH="$path${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export GENARM_GPU_DATA="${GENARM_GPU_DATA:-$here/data}"
# What genarm-gpu-check reports about the bundle and the driver.
export GENARM_BUNDLE_COMMIT="${GENARM_BUNDLE_COMMIT:-}" GENARM_GPU_DRIVER="$driver"

if [ "$mode" = env ]; then
  cat <<EOF
bundle:          $here (commit ${GENARM_BUNDLE_COMMIT:-?}, built ${GENARM_BUNDLE_BUILT:-?})
glibc:           $glibc (needs >= $GENARM_BUNDLE_GLIBC_MIN)
driver:          ${driver:-unknown} (needs >= $GENARM_BUNDLE_DRIVER_MIN), $libcuda
compute cap:     ${caps:-unknown} (built for $want_cap)
cuda libraries:  $GENARM_BUNDLE_CUDA_LIBS
LD_LIBRARY_PATH: $LD_LIBRARY_PATH
GENARM_GPU_DATA: $GENARM_GPU_DATA
EOF
  exit 0
fi
# ---- the program: shipped xz-compressed (the bundle must stay small to carry), unpacked once
# next to the archive, or into a cache folder when the bundle is read-only.
bin="$here/bin/$prog"
if [ ! -x "$bin" ]; then
  packed="$here/bin/$prog.xz"
  want=
  for kv in ${GENARM_BUNDLE_SHA256:-}; do
    [ "${kv%%=*}" = "$prog" ] && want=${kv#*=}
  done
  dir="$here/bin"
  if [ ! -w "$dir" ]; then
    dir="${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/genarm-gpu/${want:0:16}"
    mkdir -p "$dir" || refuse "the bundle is read-only and $dir cannot be made to unpack $prog into"
  fi
  bin="$dir/$prog"
  if [ ! -x "$bin" ]; then
    part="$dir/.$prog.$$"
    unpacker=$(command -v xz || true)
    unpy=${python:-$(command -v python3 || true)}
    if [ -n "$unpacker" ]; then
      "$unpacker" -dc "$packed" >"$part" || {
        rm -f "$part"
        refuse "xz could not unpack $packed: the bundle is damaged"
      }
    elif [ -n "$unpy" ]; then
      "$unpy" -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
        "$packed" "$part" || {
        rm -f "$part"
        refuse "Python could not unpack $packed: the bundle is damaged"
      }
    else
      refuse "cannot unpack $packed: needs xz or python3"
    fi
    if [ -n "$want" ] && command -v sha256sum >/dev/null; then
      got=$(sha256sum "$part" | cut -d' ' -f1)
      [ "$got" = "$want" ] || {
        rm -f "$part"
        refuse "$packed unpacks to sha256 $got, expected $want: the bundle is damaged (copy it again)"
      }
    fi
    chmod 755 "$part"
    mv -f "$part" "$bin"
  fi
fi
exec "$bin" "$@"
