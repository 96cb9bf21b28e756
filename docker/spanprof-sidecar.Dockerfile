# syntax=docker/dockerfile:1.7
# spanprof-sidecar: the spanprof-sampler container the operator injects into opted-in pods.
# Symbolization happens in-process (blazesym, statically linked, with Rust and C++ demangling): the
# app's binaries and their .eh_frame/.symtab/DWARF are read through /proc/<pid>/root, so nothing of
# the app has to be in this image. The runtime image carries glibc and libgcc_s (the binary links
# them), CA certificates and tzdata. The sidecar needs CAP_PERFMON (and CAP_SYS_PTRACE to read other
# users' /proc/<pid>/root); the operator sets that security context, overriding the image's non-root
# default user (or runs it as the pod's user with capabilities: none).
#
# Build from the repository root:
#   docker build -f docker/spanprof-sidecar.Dockerfile -t ghcr.io/spanprof/spanprof-sidecar:0.1.0 .

ARG RUST_VERSION=1.95
FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
# Release build of this one binary; the caches make rebuilds incremental (BuildKit).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p spanprof-sidecar --bin spanprof-sidecar \
 && install -D -m 0755 target/release/spanprof-sidecar /out/spanprof-sidecar

# distroless "cc": glibc, libgcc_s, CA certificates, tzdata, no shell; user nonroot (65532).
FROM gcr.io/distroless/cc-debian12:nonroot
EXPOSE 4041
COPY --from=build /out/spanprof-sidecar /usr/local/bin/spanprof-sidecar
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/spanprof-sidecar"]
