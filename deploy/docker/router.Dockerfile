# syntax=docker/dockerfile:1
# genarm-router image: a Rust builder stage, then a slim Debian runtime holding only the
# `genarm-router` binary, running as a non-root user.
#
# Build from the repository root (the context must be the workspace):
#   docker build -f deploy/docker/router.Dockerfile -t genarm/router:latest .
# The router needs no GPU and no model files: it loads tokenizers and chat templates from the
# workers over gRPC.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS builder
# protoc compiles proto/genarm/v1/worker.proto; gcc/make build the oniguruma regex library of
# the tokenizers crate (statically linked).
RUN apt-get update \
 && apt-get install -y --no-install-recommends protobuf-compiler gcc g++ make pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# Cache mounts keep the registry and target dir between builds (BuildKit).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p genarm-router --bin genarm-router \
 && install -D -m 0755 target/release/genarm-router /out/genarm-router

FROM debian:${DEBIAN_RELEASE}-slim
# ca-certificates only: the router speaks plain HTTP/gRPC inside the cluster, but an OTLP
# endpoint or etcd behind TLS needs the CA bundle.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin genarm
COPY --from=builder /out/genarm-router /usr/local/bin/genarm-router
USER 10001:10001
# Listen on every interface inside the container (the binary's default is loopback).
ENV GENARM_LISTEN=0.0.0.0:8000 \
    RUST_LOG=info
# HTTP: the OpenAI API, /health (liveness), /ready (readiness) and /metrics.
EXPOSE 8000
# No HEALTHCHECK: Kubernetes probes /health and /ready (deploy/kubernetes).
ENTRYPOINT ["/usr/local/bin/genarm-router"]
