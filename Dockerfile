# syntax=docker/dockerfile:1
# The one `chronos` image: `chronos operator` (the Helm chart runs this) and `chronos serve` (the
# engine of each ChronosDatabase, which the operator runs). Multi-stage: a Rust build stage, then
# distroless (glibc, CA certificates, no shell, no package manager) as the non-root user 65532.
#
#   docker build -t ghcr.io/chronos-dev/chronos:0.1.0 .
#
# CI here has no container engine: it lints this file (hadolint) and checks its shape
# (scripts/validate.sh); the image itself is not built in CI.

ARG RUST_VERSION=1.94.1

# The full (not -slim) image: rusqlite's bundled SQLite and ring compile C with its gcc.
FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock rustfmt.toml ./
COPY src ./src
# Cargo.toml names these targets: cargo refuses a manifest whose targets are missing.
COPY benches ./benches
COPY tests ./tests
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin chronos \
 && install -D -m 0755 target/release/chronos /out/chronos

# Debian 12 like the build stage (same glibc); :nonroot runs as uid/gid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="chronos" \
      org.opencontainers.image.description="Versioned JSON records on MongoDB + S3, and their Kubernetes operator" \
      org.opencontainers.image.source="https://github.com/chronos-dev/chronos" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/chronos /usr/local/bin/chronos
USER 65532:65532
# Embedded mode (no --config) keeps its data in ./data: the non-root user's home is writable.
WORKDIR /home/nonroot
# 8080: the engine's HTTP API (chronos serve); 8081: the operator's health and metrics.
EXPOSE 8080 8081
ENTRYPOINT ["/usr/local/bin/chronos"]
CMD ["serve", "--listen", "0.0.0.0:8080"]
