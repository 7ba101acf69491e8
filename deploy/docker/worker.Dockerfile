# syntax=docker/dockerfile:1
# genarm worker image: `genarm-base-worker` and `genarm-rm-worker` in one image (the pod's
# command picks one). Default: the CUDA build (candle's `cuda` feature, NCCL tensor
# parallelism) on an NVIDIA CUDA 13.0 runtime base, non-root.
#
# Build from the repository root:
#   GPU (default):
#     docker build -f deploy/docker/worker.Dockerfile -t genarm/worker:cuda .
#   GPU for another architecture (CUDA compute capability, e.g. 80 = A100, 90 = H100/H200):
#     docker build -f deploy/docker/worker.Dockerfile --build-arg CUDA_COMPUTE_CAP=80 -t genarm/worker:cuda-sm80 .
#   CPU variant: the same Dockerfile with the default features (no CUDA) on plain Ubuntu:
#     docker build -f deploy/docker/worker.Dockerfile \
#       --build-arg CARGO_FEATURES= \
#       --build-arg BUILDER_IMAGE=ubuntu:24.04 --build-arg RUNTIME_IMAGE=ubuntu:24.04 \
#       -t genarm/worker:cpu .
#
# The CUDA binaries need, at run time, the driver's libcuda.so.1 (driver >= 580 for CUDA 13,
# injected by the NVIDIA container toolkit / device plugin) and libcublas, libcudart,
# libcurand and libnccl, which the CUDA runtime image ships. Models are not baked in: mount
# them (see deploy/kubernetes).

ARG BUILDER_IMAGE=nvidia/cuda:13.0.1-devel-ubuntu24.04
ARG RUNTIME_IMAGE=nvidia/cuda:13.0.1-runtime-ubuntu24.04

FROM ${BUILDER_IMAGE} AS builder
ARG RUST_VERSION=1.95.0
# Features passed to cargo; empty = the CPU build.
ARG CARGO_FEATURES="genarm-base-worker/cuda genarm-rm-worker/cuda"
# The build machine has no GPU, so nvidia-smi cannot tell candle which kernels to compile.
ARG CUDA_COMPUTE_CAP=90
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl protobuf-compiler gcc g++ make pkg-config \
 && rm -rf /var/lib/apt/lists/*
ENV RUSTUP_HOME=/opt/rustup CARGO_HOME=/opt/cargo PATH=/opt/cargo/bin:$PATH
RUN curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --default-toolchain ${RUST_VERSION}
WORKDIR /src
COPY . .
# libcuda.so is the driver's; the devel image's link stub (soname libcuda.so.1) satisfies the
# linker and the real driver library is loaded at run time. Harmless for the CPU build.
ENV CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP} \
    LIBRARY_PATH=/usr/local/cuda/lib64/stubs
RUN --mount=type=cache,target=/opt/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
      -p genarm-base-worker -p genarm-rm-worker \
      ${CARGO_FEATURES:+--features "$CARGO_FEATURES"} \
 && install -D -m 0755 target/release/genarm-base-worker /out/genarm-base-worker \
 && install -D -m 0755 target/release/genarm-rm-worker /out/genarm-rm-worker

FROM ${RUNTIME_IMAGE}
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin genarm
COPY --from=builder /out/ /usr/local/bin/
USER 10001:10001
ENV RUST_LOG=info
# 50051: gRPC (genarm.v1.Worker + grpc.health.v1, probed by Kubernetes gRPC probes).
# 9090: HTTP /metrics (when --metrics-listen / GENARM_METRICS_LISTEN is set).
EXPOSE 50051 9090
# No ENTRYPOINT: the pod spec names genarm-base-worker or genarm-rm-worker.
CMD ["genarm-base-worker", "--help"]
