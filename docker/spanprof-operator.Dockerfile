# syntax=docker/dockerfile:1.7
# spanprof-operator: the SpanProfiling controller, the mutating webhook (HTTPS :9443) and its TLS; /metrics, /healthz, /readyz on :8080.
#
# Build from the repository root:
#   docker build -f docker/spanprof-operator.Dockerfile -t ghcr.io/spanprof/spanprof-operator:0.1.0 .

ARG RUST_VERSION=1.95
FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
# Release build of this one binary; the caches make rebuilds incremental (BuildKit).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p spanprof-operator --bin spanprof-operator \
 && install -D -m 0755 target/release/spanprof-operator /out/spanprof-operator

# distroless "cc": glibc, libgcc_s, CA certificates, tzdata, no shell; user nonroot (65532).
FROM gcr.io/distroless/cc-debian12:nonroot
EXPOSE 9443 8080
COPY --from=build /out/spanprof-operator /usr/local/bin/spanprof-operator
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/spanprof-operator"]
