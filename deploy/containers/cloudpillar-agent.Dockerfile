# syntax=docker/dockerfile:1
# `cloudpillar-agent`: the device agent.
# A static musl binary on distroless/static, run as uid 65532, without the TPM key store
# (tpm2-tss is a glibc shared library; install the agent on the host to use a TPM).
# Build from the repository root:
#
#   docker build -f deploy/containers/cloudpillar-agent.Dockerfile \
#     -t cloudpillar/cloudpillar-agent:0.1.0 .
#
# Multi-arch: each platform compiles natively
# (docker buildx build --platform linux/amd64,linux/arm64 ...).

# The toolchain pinned in rust-toolchain.toml.
ARG RUST_VERSION=1.95.0
# Another base (one with a shell, say) can be given at build time.
ARG RUNTIME_IMAGE=gcr.io/distroless/static-debian12:nonroot

FROM docker.io/library/rust:${RUST_VERSION}-slim-bookworm AS build
# musl-gcc builds ring's C and assembly parts for the static target.
# Build stage only: the Debian release fixes the version, nothing of it reaches the image.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends musl-tools \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    triple="$(uname -m)-unknown-linux-musl" \
    && rustup target add "$triple" \
    && cargo build --release --locked --target "$triple" --no-default-features \
        -p cloudpillar-agent --bin cloudpillar-agent \
    && install -D -m 0755 "target/$triple/release/cloudpillar-agent" /out/cloudpillar-agent

FROM ${RUNTIME_IMAGE}
LABEL org.opencontainers.image.title="cloudpillar-agent" \
      org.opencontainers.image.description="CloudPillar device agent" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/cloudpillar/cloudpillar"
COPY --from=build /out/cloudpillar-agent /usr/local/bin/cloudpillar-agent
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/cloudpillar-agent"]
